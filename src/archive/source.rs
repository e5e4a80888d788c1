//! Reading the WAL archive back: the archive sources that restores use.
//!
//! A source fetches one file by name to a path: from the archive directory
//! (`--wal-archive-dir` or `wal_archive_dir`), or through
//! `wal_restore_command` (`%n` the file wanted, `%f` the path to write). A
//! file the archive does not have is a clean [`Fetched::NotFound`], never an
//! error that looks like corruption: restores ask for segments past the
//! archive's end, and for timeline history files that may not exist. A
//! restore command's non-zero exit means "not found", as PostgreSQL's
//! `restore_command` does; its stderr goes to the log.
//!
//! [`fetch_wal`] brings every segment from a backup's first needed one on
//! into a WAL directory, checking each one's size; the replay that follows
//! checks every record's checksum, and each record's checksum covers its
//! LSN and timeline, so a segment under the wrong name or from another
//! timeline fails there, named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::{substitute, Env};
use crate::wal::WalOptions;

/// Where archived files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSource {
    /// An archive directory.
    Dir(PathBuf),
    /// `wal_restore_command`.
    Command(String),
}

/// Whether a fetch found the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Written to the destination.
    Found,
    /// Not in the archive.
    NotFound,
}

/// How long a restore command may run.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

impl ArchiveSource {
    /// The source a configuration names: `wal_archive_dir`, else
    /// `wal_restore_command`, else none.
    pub fn configured(archive_dir: &str, restore_command: &str) -> Option<ArchiveSource> {
        if !archive_dir.trim().is_empty() {
            Some(ArchiveSource::Dir(PathBuf::from(archive_dir.trim())))
        } else if !restore_command.trim().is_empty() {
            Some(ArchiveSource::Command(restore_command.trim().to_string()))
        } else {
            None
        }
    }

    /// Fetches `name` to `dest`: under a temporary name, renamed into
    /// place once whole, so a file under `dest`'s name is never partial.
    /// Not synced: a restore's files need no durability of their own (a
    /// point-in-time recovery cut by a crash starts over, and what it
    /// finishes with, its checkpoint makes durable), and a sync of every
    /// fetched segment would cost more than the copy.
    pub async fn fetch(&self, env: &Env, name: &str, dest: &Path) -> Result<Fetched, String> {
        let dest_dir = dest.parent().unwrap_or(Path::new("."));
        let dest_name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let temp = dest_dir.join(format!("{dest_name}.fetching"));
        if env.fs.exists(&temp).unwrap_or(false) {
            env.fs.remove(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
        }
        match self {
            ArchiveSource::Dir(dir) => {
                let path = dir.join(name);
                if !env.fs.exists(&path).map_err(|e| format!("{}: {e}", path.display()))? {
                    return Ok(Fetched::NotFound);
                }
                let bytes = super::read_file(env.fs.as_ref(), &path).map_err(|e| e.to_string())?;
                let file = env.fs.create(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
                file.write_all_at(&bytes, 0).map_err(|e| format!("{}: {e}", temp.display()))?;
                env.fs.rename(&temp, dest).map_err(|e| format!("{}: {e}", temp.display()))?;
                Ok(Fetched::Found)
            }
            ArchiveSource::Command(template) => {
                // The command writes the temporary name; it is renamed into
                // place only once the command succeeded.
                let command = substitute(template, &temp.to_string_lossy(), name);
                let output = match tokio::time::timeout(RESTORE_TIMEOUT, env.commands.run(&command)).await {
                    Err(_) => {
                        return Err(format!("wal_restore_command ran longer than {RESTORE_TIMEOUT:?} for {name}"))
                    }
                    Ok(result) => result.map_err(|e| format!("running wal_restore_command for {name}: {e}"))?,
                };
                if !output.success() {
                    tracing::info!(file = name, status = ?output.status, stderr = %output.stderr, "wal_restore_command: not found");
                    return Ok(Fetched::NotFound);
                }
                if !env.fs.exists(&temp).unwrap_or(false) {
                    return Err(format!(
                        "wal_restore_command exited 0 for {name} but wrote nothing to {}: check that it writes %f",
                        temp.display()
                    ));
                }
                env.fs.rename(&temp, dest).map_err(|e| format!("{}: {e}", temp.display()))?;
                Ok(Fetched::Found)
            }
        }
    }
}

/// How many segments a restore fetches at once.
pub const FETCH_AHEAD: u64 = 4;

/// What [`fetch_wal`] brought.
#[derive(Debug, Clone, Default)]
pub struct FetchedWal {
    /// The segments fetched, in order, without a gap.
    pub names: Vec<String>,
    /// Where fetching stopped at a gap (a segment missing while a later one
    /// is there), named: the WAL after it cannot be replayed.
    pub gap: Option<String>,
}

/// Fetches every archived segment from `from_segno` on into `opts.dir`
/// (replacing a partial copy a backup left there), until the archive has
/// no more, or a gap. Segments are named for
/// `opts`' timeline, following its history. [`FETCH_AHEAD`] fetches run at
/// once (restore commands in parallel). A segment that is not whole is
/// refused, named. `progress` hears each segment fetched.
pub async fn fetch_wal(
    source: &ArchiveSource,
    env: &Env,
    opts: &WalOptions,
    from_segno: u64,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<FetchedWal, String> {
    let mut fetched = FetchedWal::default();
    let mut segno = from_segno;
    loop {
        let batch: Vec<u64> = (segno..segno + FETCH_AHEAD).collect();
        let staging = |segno: u64| opts.dir.join(format!("{}.archived", opts.file_name(segno)));
        let wanted: Vec<(String, PathBuf)> =
            batch.iter().map(|segno| (opts.file_name(*segno), staging(*segno))).collect();
        let results = futures::future::join_all(wanted.iter().map(|(name, path)| source.fetch(env, name, path))).await;
        let results: Vec<Fetched> = results.into_iter().collect::<Result<_, _>>()?;
        for (i, (segno, found)) in batch.iter().zip(&results).enumerate() {
            let name = opts.file_name(*segno);
            if *found == Fetched::NotFound {
                // The end of the archive, unless a later one is there.
                let later = match batch[i + 1..].iter().zip(&results[i + 1..]).find(|(_, f)| **f == Fetched::Found) {
                    Some((later, _)) => Some(opts.file_name(*later)),
                    None => {
                        let next = opts.file_name(segno + 1);
                        let probe = opts.dir.join(format!("{next}.archived"));
                        let found = source.fetch(env, &next, &probe).await? == Fetched::Found;
                        found.then_some(next)
                    }
                };
                for segno in batch.iter().chain([segno + 1].iter()) {
                    let _ = env.fs.remove(&staging(*segno));
                }
                fetched.gap = later.map(|later| {
                    format!(
                        "the WAL archive has a gap: {name} is missing, but {later} is there; \
                         nothing after the gap can be replayed"
                    )
                });
                return Ok(fetched);
            }
            let staged = staging(*segno);
            let len =
                env.fs.open(&staged).and_then(|file| file.len()).map_err(|e| format!("{}: {e}", staged.display()))?;
            if len != opts.segment_size {
                for segno in &batch {
                    let _ = env.fs.remove(&staging(*segno));
                }
                return Err(format!(
                    "archived segment {name} is {len} bytes, not a whole {}-byte segment: the archive's copy is incomplete",
                    opts.segment_size
                ));
            }
            let dest = opts.dir.join(&name);
            env.fs.rename(&staged, &dest).map_err(|e| format!("{}: {e}", staged.display()))?;
            progress(&name);
            fetched.names.push(name);
        }
        segno += batch.len() as u64;
    }
}
