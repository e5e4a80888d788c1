//! The real environment: `std::fs` with real `fsync`/`fdatasync`, and the
//! system clock. This is the only engine module allowed to touch the world
//! directly; `clippy.toml` bans the calls everywhere else.
//!
//! `RealFs` syncs the parent directory after every create, rename and remove,
//! so a namespace change is durable when the call returns. Engine code still
//! calls [`Fs::sync_dir`] explicitly, because the simulated disk does not do
//! this for it and the simulator must see the engine's own discipline.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::clock::Clock;
use super::seam::{File, Fs};

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(std::fs::File);

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn with_path(err: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{op} {}: {err}", path.display()))
}

impl File for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the life of `self.0`; offset 0
        // and length 0 name the whole file; the flag only starts writeback.
        let rc = unsafe { libc::sync_file_range(self.0.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Fs for RealFs {
    fn syncs_block(&self) -> bool {
        true
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| with_path(e, "open", path))?;
        Ok(Box::new(RealFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| with_path(e, "create", path))?;
        self.sync_dir(parent_of(path))?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if parent_of(from) != parent_of(to) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rename {} -> {}: not in the same directory", from.display(), to.display()),
            ));
        }
        std::fs::rename(from, to).map_err(|e| with_path(e, "rename", from))?;
        self.sync_dir(parent_of(to))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path).map_err(|e| with_path(e, "remove", path))?;
        self.sync_dir(parent_of(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| with_path(e, "list", dir))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| with_path(e, "sync directory", dir))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| with_path(e, "create directory", dir))?;
        self.sync_dir(dir)?;
        self.sync_dir(parent_of(dir))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
}

/// The system clock. Under madsim the standard library's clock calls are
/// intercepted, so this clock is simulated there too.
#[derive(Debug)]
pub struct RealClock {
    origin: Instant,
}

impl RealClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for RealClock {
    fn wall_micros(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs;
        let path = dir.path().join("a");
        let file = fs.create(&path).unwrap();
        file.write_all_at(b"hello", 3).unwrap();
        file.sync_data().unwrap();
        assert_eq!(file.len().unwrap(), 8);
        let mut buf = [0u8; 8];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0\0hello");
        assert!(fs.create(&path).is_err(), "create never truncates an existing file");
        fs.rename(&path, &dir.path().join("b")).unwrap();
        assert_eq!(fs.list(dir.path()).unwrap(), vec!["b".to_string()]);
        fs.remove(&dir.path().join("b")).unwrap();
        assert!(fs.list(dir.path()).unwrap().is_empty());
        let err = fs.open(&path).err().unwrap();
        assert!(err.to_string().contains(&path.display().to_string()), "errors name the file: {err}");
    }
}

/// Runs commands through `sh -c`, with stdin closed and stdout discarded;
/// stderr is captured for the log. Dropping the future kills the command.
#[cfg(not(madsim))]
#[derive(Debug, Default, Clone, Copy)]
pub struct ShellCommands;

#[cfg(not(madsim))]
#[async_trait::async_trait]
impl super::command::CommandRunner for ShellCommands {
    async fn run(&self, command: &str) -> io::Result<super::command::CommandOutput> {
        use std::process::Stdio;
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("running `sh -c {command:?}`: {e}")))?;
        Ok(super::command::CommandOutput {
            status: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_string(),
        })
    }
}
