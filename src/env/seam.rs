//! The traits every engine component uses to reach the disk.
//!
//! The surface is deliberately narrow (after redb's storage backend): a file
//! is a byte array with positional reads and writes, a length and two kinds
//! of sync; a file system creates, opens, renames, removes and lists files and
//! syncs directories. Nothing here buffers: callers decide when to sync.
//!
//! Semantics every implementation must honour (they are Linux's, which
//! [`SimFs`](super::SimFs) models and [`RealFs`](super::RealFs) inherits):
//!
//! - A write is durable only after `sync_data`/`sync_all` on its file returns
//!   `Ok`.
//! - A create, rename or remove is durable only after `sync_dir` on the parent
//!   directory returns `Ok`.
//! - After a failed sync the unsynced data may be gone, and a second sync may
//!   report success anyway. Callers must treat a failed sync as fatal.
//! - `write_at` may write fewer bytes than asked; `write_all_at` loops.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::clock::Clock;
use super::command::{CommandRunner, NoCommands};

/// The unit [`File::write_all_skipping_zeroes_at`] leaves unwritten: a
/// file system block.
pub const HOLE_BLOCK: usize = 4096;

/// Whether `bytes` are all zeroes (compared a block at a time, which the
/// C library does many bytes per instruction).
pub fn all_zeroes(bytes: &[u8]) -> bool {
    static ZEROES: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];
    bytes.chunks(HOLE_BLOCK).all(|chunk| chunk == &ZEROES[..chunk.len()])
}

/// Splits `buf`, which lies at `offset` in its file, into runs, in order:
/// each a range of `buf` and whether it is whole [`HOLE_BLOCK`]s of zeroes
/// (aligned in the file) or not.
pub fn zero_runs(buf: &[u8], offset: u64) -> impl Iterator<Item = (Range<usize>, bool)> + '_ {
    // The end of the block `from` lies in, and whether `from..end` is a
    // whole block of zeroes.
    let block = move |from: usize| {
        let end = (from + HOLE_BLOCK - ((offset + from as u64) % HOLE_BLOCK as u64) as usize).min(buf.len());
        (end, end - from == HOLE_BLOCK && all_zeroes(&buf[from..end]))
    };
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let (end, zeroes) = (at < buf.len()).then(|| block(at))?;
        at = end;
        while at < buf.len() {
            let (end, next) = block(at);
            if next != zeroes {
                break;
            }
            at = end;
        }
        Some((start..at, zeroes))
    })
}

/// An open file: positional I/O, length, sync.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is not a question the engine asks
pub trait File: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at or past the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`; returns how many were
    /// written, which may be fewer (a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Sets the file's length, zero-filling when it grows.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Makes the file's data (and the metadata needed to read it) durable:
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all its metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Asks the operating system to start writing the file's dirty data
    /// back now, without waiting for it (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`, as PostgreSQL's `checkpoint_flush_after`
    /// does), so that a later sync has little left to do. A hint: it makes
    /// nothing durable, and the simulated disk ignores it.
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }

    /// Writes all of `buf` at `offset`, looping over short writes.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let written = self.write_at(buf, offset)?;
            if written == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"));
            }
            buf = &buf[written..];
            offset += written as u64;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` as [`File::write_all_at`] does, except each
    /// block of [`HOLE_BLOCK`] bytes (aligned in the file) that is all
    /// zeroes: that is left unwritten, a hole once the file's length
    /// reaches past it ([`File::set_len`]). For a file written from its
    /// start, whose unwritten bytes read as zeroes: a copy of a data file
    /// with free pages, or of a WAL segment's unused tail, then costs no
    /// writes and no disk space for them. Returns the bytes written.
    fn write_all_skipping_zeroes_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut written = 0;
        for (run, zeroes) in zero_runs(buf, offset) {
            if !zeroes {
                written += run.len();
                self.write_all_at(&buf[run.clone()], offset + run.start as u64)?;
            }
        }
        Ok(written)
    }

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof` if the file is
    /// too short.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let read = self.read_at(buf, offset)?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ends before offset {}", offset + buf.len() as u64),
                ));
            }
            buf = &mut buf[read..];
            offset += read as u64;
        }
        Ok(())
    }
}

/// A file system: the namespace operations the engine needs.
pub trait Fs: Send + Sync {
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Creates a new, empty file for reading and writing. Fails with
    /// `AlreadyExists` if the path exists: nothing is ever truncated by
    /// accident.
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists. Both
    /// must be in the same directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the creates, renames and removes in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents. Directories are created at set-up
    /// time, and implementations make them durable before returning.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Whether a sync on this file system takes real time, so that a
    /// caller with other work waiting runs it on a blocking thread
    /// ([`crate::env::offload`]). The simulated disk's syncs return at
    /// once, and a thread outside the runtime's scheduler would make the
    /// simulator's runs differ from one replay to the next.
    fn syncs_block(&self) -> bool {
        false
    }
}

/// A failed step of [`write_atomically`]: what, on which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct AtomicWriteError {
    /// The step.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// Writes `name` in `dir` whole or not at all: a temporary file
/// (`name.tmp`, replacing a leftover one), synced, renamed into place, and
/// the directory synced. A crash at any point leaves the old file or the
/// new one, never a mix.
pub fn write_atomically(fs: &dyn Fs, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    fn fail(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { op, path, source }
    }
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    if fs.exists(&temp).map_err(fail("stat", &temp))? {
        fs.remove(&temp).map_err(fail("remove", &temp))?;
    }
    let file = fs.create(&temp).map_err(fail("create", &temp))?;
    file.write_all_at(bytes, 0).map_err(fail("write", &temp))?;
    file.sync_all().map_err(fail("sync", &temp))?;
    drop(file);
    fs.rename(&temp, &path).map_err(fail("rename", &temp))?;
    fs.sync_dir(dir).map_err(fail("sync directory", dir))
}

/// The environment handed to every engine component.
#[derive(Clone)]
pub struct Env {
    /// The file system.
    pub fs: Arc<dyn Fs>,
    /// Wall-clock and monotonic time.
    pub clock: Arc<dyn Clock>,
    /// Shell commands (the archive and restore commands).
    pub commands: Arc<dyn CommandRunner>,
    seed: u64,
}

impl Env {
    /// An environment over the given file system and clock. `seed` feeds
    /// every random choice the engine makes.
    /// It runs no commands until [`with_commands`](Self::with_commands).
    pub fn new(fs: Arc<dyn Fs>, clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self { fs, clock, commands: Arc::new(NoCommands), seed }
    }

    /// The same environment, running commands with `commands`.
    pub fn with_commands(mut self, commands: Arc<dyn CommandRunner>) -> Self {
        self.commands = commands;
        self
    }

    /// The environment's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A seeded generator for one named purpose. Different streams give
    /// independent sequences from the same seed, so adding a consumer of
    /// randomness does not perturb the others.
    pub fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::env::{RealClock, RealFs};

    #[test]
    fn random_streams_are_fixed_by_the_seed_and_independent() {
        let env = |seed| Env::new(Arc::new(RealFs), Arc::new(RealClock::new()), seed);
        let draw = |env: &Env, stream| -> Vec<u64> { (0..4).map(|_| env.rng(stream).random()).collect() };
        let sequence = |env: &Env, stream| -> Vec<u64> {
            let mut rng = env.rng(stream);
            (0..4).map(|_| rng.random()).collect()
        };
        assert_eq!(sequence(&env(7), 1), sequence(&env(7), 1), "a seed and stream replay exactly");
        assert_ne!(sequence(&env(7), 1), sequence(&env(7), 2), "streams are independent");
        assert_ne!(sequence(&env(7), 1), sequence(&env(8), 1), "seeds differ");
        assert_eq!(env(7).seed(), 7);
        let fresh = draw(&env(7), 3);
        assert!(fresh.windows(2).all(|w| w[0] == w[1]), "each call starts the stream afresh");
    }

    #[test]
    fn zero_blocks_are_skipped_and_read_back_as_zeroes() {
        use crate::env::{FaultConfig, SimDisk};
        let disk = SimDisk::new(1, FaultConfig::none());
        let fs = disk.fs();
        fs.create_dir_all(Path::new("/d")).unwrap();
        // Blocks: data, zero, zero, data, zero (partial at the end), from an
        // offset inside a block and from a block boundary.
        for offset in [0u64, 100, HOLE_BLOCK as u64] {
            let mut bytes = vec![0u8; HOLE_BLOCK * 5 - 7];
            bytes[..10].fill(1);
            bytes[HOLE_BLOCK * 3 + 5] = 2;
            let path = PathBuf::from(format!("/d/f{offset}"));
            let file = fs.create(&path).unwrap();
            let written = file.write_all_skipping_zeroes_at(&bytes, offset).unwrap();
            file.set_len(offset + bytes.len() as u64).unwrap();
            let mut back = vec![9u8; bytes.len()];
            file.read_exact_at(&mut back, offset).unwrap();
            assert_eq!(back, bytes, "offset {offset}");
            assert!(written < bytes.len() - HOLE_BLOCK, "offset {offset}: {written} bytes written");
            assert!(written >= HOLE_BLOCK, "offset {offset}: the data blocks are written");
        }
    }

    #[test]
    fn zero_runs_cover_the_buffer_and_alternate_and_only_whole_aligned_blocks_are_zero_runs() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let offset = rng.random_range(0..3 * HOLE_BLOCK as u64);
            let mut buf = vec![0u8; rng.random_range(0..6 * HOLE_BLOCK)];
            for _ in 0..rng.random_range(0..4) {
                if !buf.is_empty() {
                    let at = rng.random_range(0..buf.len());
                    buf[at] = 1;
                }
            }
            let runs: Vec<_> = zero_runs(&buf, offset).collect();
            let mut at = 0;
            for (i, (run, zeroes)) in runs.iter().enumerate() {
                assert_eq!(run.start, at, "runs are contiguous");
                assert!(!run.is_empty());
                if i > 0 {
                    assert_ne!(runs[i - 1].1, *zeroes, "runs alternate");
                }
                if *zeroes {
                    assert_eq!((offset + run.start as u64) % HOLE_BLOCK as u64, 0, "aligned");
                    assert_eq!(run.len() % HOLE_BLOCK, 0, "whole blocks");
                    assert!(all_zeroes(&buf[run.clone()]));
                }
                at = run.end;
            }
            assert_eq!(at, buf.len(), "the runs cover the buffer");
            // A whole aligned block of zeroes is never sent as bytes.
            let first = (HOLE_BLOCK - (offset % HOLE_BLOCK as u64) as usize) % HOLE_BLOCK;
            for start in (first..buf.len()).step_by(HOLE_BLOCK) {
                let end = start + HOLE_BLOCK;
                if end <= buf.len() && all_zeroes(&buf[start..end]) {
                    assert!(runs.iter().any(|(run, zeroes)| *zeroes && run.start <= start && end <= run.end));
                }
            }
        }
    }
}
