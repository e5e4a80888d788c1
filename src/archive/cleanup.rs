//! Retention of the archive directory (`wal_archive_retention`).
//!
//! The goal is that every point of the retention window stays restorable.
//! A point is restorable from a base backup that ended before it plus every
//! archived segment from that backup's first needed segment on. So the
//! oldest segment kept is the first one needed by the *newest backup that
//! ended before the window began*; everything from there on is kept, and
//! with it every backup that needs it.
//!
//! The archive knows its backups because each backup leaves a small
//! history record there, `<first segment>.<offset>.backup` (JSON), as
//! PostgreSQL's `.backup` files do. Without a backup older than the window,
//! nothing is deleted: any segment may still be needed. Timeline history
//! files are never deleted.
//!
//! Cleanup runs on an archive directory only; with `wal_archive_command`
//! the object store's own lifecycle rules expire old WAL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backup::rfc3339;
use crate::env::Fs;
use crate::wal::{parse_segment_file_name, segment_file_name, Lsn};

/// A backup's history record in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHistory {
    /// The backup's id.
    pub backup_id: String,
    /// Where it was written.
    pub destination: String,
    /// The oldest WAL a restore of it reads.
    pub wal_start_lsn: Lsn,
    /// Its start checkpoint.
    pub start_lsn: Lsn,
    /// Where it is consistent.
    pub end_lsn: Lsn,
    /// Its timeline.
    pub timeline: u32,
    /// The WAL segment size.
    pub wal_segment_size: u64,
    /// When it started and ended (RFC 3339).
    pub start_time: String,
    /// When it ended (RFC 3339).
    pub end_time: String,
    /// When it ended, µs since the epoch.
    pub end_micros: u64,
}

impl BackupHistory {
    /// The record's file name: the first segment it needs and the offset
    /// there, as PostgreSQL names its `.backup` files.
    pub fn file_name(&self) -> String {
        let size = self.wal_segment_size;
        let segno = self.wal_start_lsn.0 / size;
        format!("{}.{:08X}.backup", segment_file_name(self.timeline, segno, size), self.wal_start_lsn.0 % size)
    }

    /// The first segment it needs.
    pub fn first_segno(&self) -> u64 {
        self.wal_start_lsn.0 / self.wal_segment_size
    }
}

/// One file cleanup removes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The file in the archive directory.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Why it may go.
    pub reason: String,
}

/// What cleanup would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The files it would delete, oldest first.
    pub deletions: Vec<Deletion>,
    /// The backup the oldest kept segment belongs to, if one anchors the
    /// window.
    pub anchor: Option<BackupHistory>,
    /// When the retention window begins (RFC 3339).
    pub window_start: String,
    /// Why nothing is deleted, when that is the answer.
    pub note: Option<String>,
}

impl Plan {
    /// The plan as `archive-cleanup` prints it; `done` after deleting.
    pub fn render(&self, done: bool) -> String {
        let mut out = String::new();
        let verb = if done { "deleted" } else { "would delete" };
        for deletion in &self.deletions {
            out.push_str(&format!("{verb} {} ({} bytes): {}\n", deletion.name, deletion.bytes, deletion.reason));
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("{note}\n"));
        }
        let total: u64 = self.deletions.iter().map(|d| d.bytes).sum();
        out.push_str(&format!(
            "{} {} files, {total} bytes\n",
            if done { "Deleted" } else { "Would delete" },
            self.deletions.len()
        ));
        match &self.anchor {
            Some(anchor) => out.push_str(&format!(
                "Oldest point still restorable: {} (backup {} at {}, LSN {}, WAL from {})\n",
                anchor.end_time,
                anchor.backup_id,
                anchor.destination,
                anchor.end_lsn,
                segment_file_name(anchor.timeline, anchor.first_segno(), anchor.wal_segment_size)
            )),
            None => out.push_str("Oldest point still restorable: unchanged (nothing anchors the window)\n"),
        }
        out
    }
}

/// Why cleanup could not run.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct CleanupError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

/// Plans cleanup of the archive in `dir` for a window of `retention`
/// ending at `now_micros`.
pub fn plan(fs: &dyn Fs, dir: &Path, retention: Duration, now_micros: u64) -> Result<Plan, CleanupError> {
    let names = fs.list(dir).map_err(|source| CleanupError { op: "list", path: dir.to_path_buf(), source })?;
    let window_micros = now_micros.saturating_sub(retention.as_micros() as u64);
    let window_start = rfc3339(window_micros);
    let mut backups = Vec::new();
    for name in names.iter().filter(|name| name.ends_with(".backup")) {
        let path = dir.join(name);
        let bytes = crate::archive::read_file(fs, &path).map_err(|e| CleanupError {
            op: "read",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        match serde_json::from_slice::<BackupHistory>(&bytes) {
            Ok(history) => backups.push((name.clone(), history)),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "not a backup history record; ignored"),
        }
    }
    let anchor = backups
        .iter()
        .filter(|(_, history)| history.end_micros <= window_micros)
        .max_by_key(|(_, history)| (history.end_micros, history.end_lsn))
        .map(|(_, history)| history.clone());
    let Some(anchor) = anchor else {
        return Ok(Plan {
            deletions: Vec::new(),
            anchor: None,
            window_start: window_start.clone(),
            note: Some(format!(
                "Nothing to delete: no backup in the archive ended before the retention window began \
                 ({window_start}), so every archived segment may still be needed"
            )),
        });
    };
    let keep_from = anchor.first_segno();
    let keep_name = segment_file_name(anchor.timeline, keep_from, anchor.wal_segment_size);
    let why = format!(
        "before {keep_name}, the first segment backup {} needs; it ended {}, the newest backup before the \
         retention window began ({window_start})",
        anchor.backup_id, anchor.end_time
    );
    let mut deletions = Vec::new();
    for name in &names {
        let old = match parse_segment_file_name(name, anchor.wal_segment_size) {
            Some((_, segno)) => segno < keep_from,
            None => backups.iter().any(|(file, history)| file == name && history.first_segno() < keep_from),
        };
        if old {
            let path = dir.join(name);
            let bytes = fs.open(&path).and_then(|file| file.len()).unwrap_or(0);
            deletions.push(Deletion { name: name.clone(), bytes, reason: why.clone() });
        }
    }
    Ok(Plan { deletions, anchor: Some(anchor), window_start, note: None })
}

/// Deletes what `plan` lists, durably.
pub fn apply(fs: &dyn Fs, dir: &Path, plan: &Plan) -> Result<(), CleanupError> {
    for deletion in &plan.deletions {
        let path = dir.join(&deletion.name);
        fs.remove(&path).map_err(|source| CleanupError { op: "remove", path, source })?;
    }
    if !plan.deletions.is_empty() {
        fs.sync_dir(dir).map_err(|source| CleanupError { op: "sync directory", path: dir.to_path_buf(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{FaultConfig, SimDisk};

    const SIZE: u64 = 1 << 20;
    const DAY: u64 = 86_400_000_000;

    fn history(id: &str, first_segno: u64, end_micros: u64) -> BackupHistory {
        BackupHistory {
            backup_id: id.into(),
            destination: format!("/backups/{id}"),
            wal_start_lsn: Lsn(first_segno * SIZE + 0x28),
            start_lsn: Lsn(first_segno * SIZE + 0x28),
            end_lsn: Lsn(first_segno * SIZE + 0x1000),
            timeline: 1,
            wal_segment_size: SIZE,
            start_time: rfc3339(end_micros - 1_000_000),
            end_time: rfc3339(end_micros),
            end_micros,
        }
    }

    fn archive(backups: &[BackupHistory]) -> (SimDisk, PathBuf) {
        let disk = SimDisk::new(0, FaultConfig::none());
        let fs = disk.fs();
        let dir = PathBuf::from("/archive");
        fs.create_dir_all(&dir).unwrap();
        for segno in 1..=20 {
            fs.create(&dir.join(segment_file_name(1, segno, SIZE))).unwrap().write_all_at(&[1; 16], 0).unwrap();
        }
        fs.create(&dir.join("00000002.history")).unwrap();
        for backup in backups {
            let bytes = serde_json::to_vec(backup).unwrap();
            fs.create(&dir.join(backup.file_name())).unwrap().write_all_at(&bytes, 0).unwrap();
        }
        (disk, dir)
    }

    #[test]
    fn keeps_everything_from_the_newest_backup_before_the_window() {
        let now = 30 * DAY;
        let backups = [history("old", 3, 20 * DAY), history("anchor", 8, 22 * DAY), history("recent", 15, 28 * DAY)];
        let (disk, dir) = archive(&backups);
        let plan = plan(disk.fs().as_ref(), &dir, Duration::from_secs(7 * 86_400), now).unwrap();
        assert_eq!(plan.anchor.as_ref().map(|a| a.backup_id.as_str()), Some("anchor"));
        let names: Vec<&str> = plan.deletions.iter().map(|d| d.name.as_str()).collect();
        let mut expected: Vec<String> = (1..8).map(|segno| segment_file_name(1, segno, SIZE)).collect();
        expected.push(backups[0].file_name());
        expected.sort();
        assert_eq!(names, expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(plan.deletions[0].reason.contains("backup anchor"), "{}", plan.deletions[0].reason);
        let text = plan.render(false);
        assert!(text.contains("would delete 000000010000000000000001 (16 bytes)"), "{text}");
        assert!(text.contains("Oldest point still restorable: 1970-01-23T00:00:00Z (backup anchor"), "{text}");
        apply(disk.fs().as_ref(), &dir, &plan).unwrap();
        disk.crash();
        let left = disk.fs().list(&dir).unwrap();
        assert!(left.contains(&segment_file_name(1, 8, SIZE)) && !left.contains(&segment_file_name(1, 7, SIZE)));
        assert!(left.contains(&"00000002.history".to_string()), "timeline history is never deleted");
        assert!(left.contains(&backups[1].file_name()) && left.contains(&backups[2].file_name()));
    }

    #[test]
    fn without_a_backup_before_the_window_nothing_goes() {
        let (disk, dir) = archive(&[history("recent", 15, 28 * DAY)]);
        let plan = plan(disk.fs().as_ref(), &dir, Duration::from_secs(7 * 86_400), 30 * DAY).unwrap();
        assert!(plan.deletions.is_empty() && plan.anchor.is_none());
        assert!(plan.render(false).contains("no backup in the archive ended before the retention window"));
    }
}
