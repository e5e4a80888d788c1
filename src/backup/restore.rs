//! Restoring a backup into a server's directories and replaying it to its
//! end LSN: `thunderdb --restore-pitr latest --restore-backup DIR`. A backup
//! without its WAL restores only its data files here; the caller fetches
//! the WAL from an archive ([`crate::archive::source::fetch_wal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::manifest::{FileEntry, Manifest};
use super::verify::{read_manifest, restore_entry, Problem};
use crate::env::Fs;
use crate::storage::CONTROL_FILE_NAME;
use crate::wal::{Lsn, RecordKind, WalReader};

/// What a restore put in place.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Data pages restored.
    pub pages: u64,
    /// Files written (those already in place with the right bytes are kept).
    pub files_written: usize,
}

/// What the restored WAL holds from the backup's start to its end.
#[derive(Debug, Clone, Default)]
pub struct WalSummary {
    /// Commit records.
    pub commits: u64,
    /// The last commit's time, µs since the Unix epoch.
    pub last_commit_micros: Option<u64>,
    /// Where the log ends.
    pub end: Lsn,
}

/// Restores the backup in `backup` (on `fs`) into `data_dir` and `wal_dir`
/// (on `target`), which must be empty or hold exactly this backup's files
/// (as the documented step-by-step leaves them). Checks every file's
/// checksums on the way; refuses, naming the file, before replacing
/// anything that is not the backup's own.
pub fn restore_files(
    fs: &dyn Fs,
    backup: &Path,
    target: &dyn Fs,
    data_dir: &Path,
    wal_dir: &Path,
) -> Result<Restored, String> {
    let plan = RestorePlan::new(fs, backup, target, data_dir, wal_dir)?;
    let files_written = plan.restore(fs, backup, target, &|_| true)?;
    let pages = plan.manifest.data_pages;
    Ok(Restored { manifest: plan.manifest, pages, files_written })
}

/// A restore checked against its target directories, not yet done.
#[derive(Debug)]
pub struct RestorePlan {
    /// The backup's manifest (its own checksum verified).
    pub manifest: Manifest,
    /// Each file to restore, by destination path.
    wanted: BTreeMap<String, FileEntry>,
    /// Destinations that already hold the backup's copy.
    in_place: BTreeSet<String>,
    dirs: [PathBuf; 2],
}

impl RestorePlan {
    /// Reads the manifest and checks that `data_dir` and `wal_dir` (on
    /// `target`) are empty or hold only this backup's files; creates them.
    pub fn new(
        fs: &dyn Fs,
        backup: &Path,
        target: &dyn Fs,
        data_dir: &Path,
        wal_dir: &Path,
    ) -> Result<RestorePlan, String> {
        let manifest = read_manifest(fs, backup).map_err(|p| p.to_string())?;
        let dir_of = |restore_path: &str| if restore_path.starts_with("data/") { data_dir } else { wal_dir };
        let wanted: BTreeMap<String, FileEntry> = manifest
            .files
            .iter()
            .filter(|f| f.restore_path.starts_with("data/") || f.restore_path.starts_with("wal/"))
            .map(|f| (dir_of(&f.restore_path).join(file_name(&f.restore_path)).display().to_string(), f.clone()))
            .collect();
        let mut in_place = BTreeSet::new();
        for dir in [data_dir, wal_dir] {
            target.create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for name in target.list(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                let path = dir.join(&name);
                let key = path.display().to_string();
                let same =
                    wanted.get(&key).is_some_and(|entry| crc_of(target, &path).is_ok_and(|crc| crc == entry.checksum));
                if !same {
                    return Err(format!(
                        "{} is not empty: {} is not this backup's copy of a file; restore into empty directories",
                        dir.display(),
                        path.display()
                    ));
                }
                in_place.insert(key);
            }
        }
        Ok(RestorePlan { manifest, wanted, in_place, dirs: [data_dir.to_path_buf(), wal_dir.to_path_buf()] })
    }

    /// Restores the files whose manifest path (`data/…`, `wal/…`) `which`
    /// selects, each under a temporary name, synced, then renamed, the
    /// control file last; the directories are synced at the end. Returns
    /// the files written.
    pub fn restore(
        &self,
        fs: &dyn Fs,
        backup: &Path,
        target: &dyn Fs,
        which: &dyn Fn(&str) -> bool,
    ) -> Result<usize, String> {
        let mut problems: Vec<Problem> = Vec::new();
        let mut files_written = 0;
        // The control file last: until it is in place the directory holds
        // no database, so a restore cut short is never opened as one.
        let control = format!("data/{CONTROL_FILE_NAME}");
        let (last, first): (Vec<_>, Vec<_>) = self
            .wanted
            .iter()
            .filter(|(_, entry)| which(&entry.restore_path))
            .partition(|(_, entry)| entry.restore_path == control);
        for (key, entry) in first.into_iter().chain(last) {
            if self.in_place.contains(key) {
                continue;
            }
            let path = Path::new(key);
            let temp = path.with_extension("restoring");
            if target.exists(&temp).unwrap_or(false) {
                target.remove(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
            }
            restore_entry(fs, backup, entry, Some((target, temp.clone())), &self.manifest.free_pages, &mut problems);
            if let Some(problem) = problems.first() {
                let _ = target.remove(&temp);
                return Err(format!("the backup is damaged, nothing more was restored: {problem}"));
            }
            target.open(&temp).and_then(|file| file.sync_all()).map_err(|e| format!("sync {}: {e}", temp.display()))?;
            target.rename(&temp, path).map_err(|e| format!("{}: {e}", temp.display()))?;
            files_written += 1;
        }
        for dir in &self.dirs {
            target.sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(files_written)
    }
}

fn file_name(restore_path: &str) -> &str {
    restore_path.rsplit('/').next().unwrap_or(restore_path)
}

fn crc_of(fs: &dyn Fs, path: &Path) -> std::io::Result<String> {
    let file = fs.open(path)?;
    let mut crc = crc32fast::Hasher::new();
    // A mebibyte a read: a node's rebuild checks hundreds of them in place.
    let mut buf = vec![0; 1 << 20];
    let mut offset = 0;
    loop {
        let read = file.read_at(&mut buf, offset)?;
        if read == 0 {
            return Ok(super::manifest::checksum_text(crc.finalize()));
        }
        crc.update(&buf[..read]);
        offset += read as u64;
    }
}

/// Counts the commits in the restored WAL from the backup's start to its
/// end, for the restore's report. Every record before `durable_through` is
/// known complete (segments fetched from an archive): a bad one there is
/// corruption, never the end of the log.
pub fn summarize_wal(
    fs: std::sync::Arc<dyn Fs>,
    wal_dir: &Path,
    manifest: &Manifest,
    durable_through: Lsn,
) -> Result<WalSummary, String> {
    let mut reader =
        WalReader::new(fs, manifest.wal_options(wal_dir), manifest.wal_start_lsn).durable_through(durable_through);
    let mut summary = WalSummary::default();
    while let Some((lsn, record)) = reader.next_record().map_err(|e| e.to_string())? {
        if record.kind == RecordKind::Commit && lsn >= manifest.start_lsn {
            summary.commits += 1;
            summary.last_commit_micros = record.commit_time_micros().or(summary.last_commit_micros);
        }
    }
    summary.end = reader.end().map_or(Lsn::ZERO, |end| end.lsn());
    Ok(summary)
}
