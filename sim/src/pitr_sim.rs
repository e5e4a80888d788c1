//! The point-in-time recovery oracle.
//!
//! Seeds that archive and complete a backup keep a copy of the backup. At
//! the end of the run (a clean shutdown archived everything), the backup
//! and the archive are copied onto a disk of their own and recovered to a
//! target drawn from the log: a time (at, just before or just after a
//! commit's stamp), an LSN (at, just before or just after a commit record)
//! or `latest`. The expected state comes from the history model, which
//! holds every commit that survived every crash with its LSN, and from the
//! commit stamps in the archived log:
//!
//! - **`pitr_target_exact`:** a time target gives exactly the commits
//!   stamped at or before it; an LSN target the commits whose records
//!   begin at or before it; `latest` every commit archived.
//! - **`pitr_refuses_unreachable`:** a target before the backup's end or
//!   past the archive's last commit is refused, never replayed short.
//! - **`pitr_completes`:** a reachable target with nothing in its way
//!   completes. A segment removed from the archive before the target must
//!   be refused; a flipped bit may be (it may also fall where no record
//!   is), but never silently change the result.
//! - **`pitr_reruns`:** a crash part way (power loss on the recovery's
//!   disk) leaves a directory a normal open refuses, and the same command
//!   rerun gives the same result; a recovery that reported success
//!   survives a crash right after.
//! - **`pitr_new_timeline`:** the recovered server, archiving into the
//!   same archive, changes no file the archive held, and a second
//!   recovery (`latest`) from the same backup follows its timeline to
//!   exactly what it committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use thunderdb::archive::source::ArchiveSource;
use thunderdb::archive::{ArchiveConfig, ArchiveMode};
use thunderdb::backup::manifest::{Manifest, MANIFEST_NAME};
use thunderdb::backup::pitr::{point_in_time_recovery, PitrRequest, Target, PITR_MARKER};
use thunderdb::db::{Database, DbError, EngineConfig};
use thunderdb::env::{Env, FaultConfig, Fs, SimClock, SimDisk};
use thunderdb::storage::{DATA_FILE_NAME, PAGE_SIZE};
use thunderdb::wal::{parse_segment_file_name, segment_file_name, Lsn, RecordKind, WalOptions, WalReader};
use thunderdb_workloads::db::{describe, first_difference, DbModel};

use crate::archive_sim::read_all;
use crate::db_run::read_state;

const BACKUP: &str = "/backup";
const ARCHIVE: &str = "/archive";

/// A completed backup's files, kept before the backup oracle damages them.
#[derive(Debug, Clone)]
pub struct PitrBase {
    /// Its manifest.
    pub manifest: Manifest,
    /// Every file, by its path in the backup.
    pub files: Vec<(String, Vec<u8>)>,
}

impl PitrBase {
    /// Copies the backup in `dir` on `fs`.
    pub fn copy(fs: &dyn Fs, dir: &Path, manifest: &Manifest) -> std::io::Result<Self> {
        let mut files = Vec::new();
        let paths = manifest.files.iter().map(|f| f.path.clone()).chain([MANIFEST_NAME.to_string()]);
        for path in paths {
            files.push((path.clone(), read_all(fs, &dir.join(&path))?));
        }
        Ok(PitrBase { manifest: manifest.clone(), files })
    }
}

pub(crate) fn put(fs: &dyn Fs, path: &Path, bytes: &[u8]) {
    fs.create_dir_all(path.parent().expect("a parent")).expect("the oracle's disk");
    let file = fs.create(path).expect("the oracle's disk");
    file.write_all_at(bytes, 0).expect("the oracle's disk");
    file.sync_all().expect("the oracle's disk");
    let mut dir = path.parent();
    while let Some(parent) = dir {
        fs.sync_dir(parent).expect("the oracle's disk");
        dir = parent.parent();
    }
}

/// What the oracle expects of a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The state of the commits below this LSN.
    Below(u64),
    /// A refusal (why, for the message).
    Refused(&'static str),
}

/// A fault put in the recovery's way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    None,
    /// A segment removed from the archive.
    Missing(String, u64),
    /// A bit flipped in an archived segment.
    Flipped(String, u64),
    /// Power lost after this many I/O operations of the recovery.
    Crash(u64),
}

/// Everything the check needs from the run.
pub struct PitrCheck<'a> {
    /// The seed (for the disks).
    pub seed: u64,
    /// The run's clock.
    pub clock: Arc<SimClock>,
    /// The run's knob stream: targets and faults.
    pub knobs: &'a mut ChaCha8Rng,
    /// Every commit that survived, in log order.
    pub history: &'a DbModel,
    /// The backup.
    pub base: &'a PitrBase,
    /// The archive's files.
    pub archive: &'a BTreeMap<String, Vec<u8>>,
}

type Failure = (&'static str, String);

impl PitrCheck<'_> {
    /// Runs the check (see the module docs).
    pub async fn run(self) -> Result<(), Failure> {
        let manifest = &self.base.manifest;
        let size = manifest.wal_segment_size;
        let disk = SimDisk::new(self.seed ^ 0x7177, FaultConfig::power_loss());
        let fs = disk.fs();
        for (path, bytes) in &self.base.files {
            put(fs.as_ref(), &Path::new(BACKUP).join(path), bytes);
        }
        for (name, bytes) in self.archive {
            put(fs.as_ref(), &Path::new(ARCHIVE).join(name), bytes);
        }
        // From the log's start when the archive has it: the first commit
        // stamped after a time target may precede the backup.
        let from =
            if self.archive.contains_key(&segment_file_name(1, 1, size)) { Lsn(size) } else { manifest.wal_start_lsn };
        let (commits, end) = scan(fs.clone(), size, from)
            .map_err(|e| ("pitr_target_exact", format!("the archive does not read back: {e}")))?;
        let knobs = self.knobs;
        // Distinct commit stamps (with the next one up) that a time target
        // can stop after: past every commit before the backup's end, and
        // not the last.
        let backup_newest = commits.iter().filter(|(lsn, _)| *lsn < manifest.end_lsn).map(|(_, t)| *t).max();
        // Where the first commit after the target changes something, so
        // that keeping it by mistake shows.
        let mut reachable_times = Vec::new();
        for pair in commits.windows(2) {
            let ((_, time), (next_lsn, next)) = (pair[0], pair[1]);
            if next > time
                && backup_newest.is_none_or(|newest| time >= newest)
                && self.history.changed_at(next_lsn.0) == Some(true)
            {
                reachable_times.push((time, next));
            }
        }
        let later: Vec<(Lsn, u64)> = commits.iter().copied().filter(|(lsn, _)| *lsn >= manifest.end_lsn).collect();
        let (target, expect) = match (knobs.random_range(0..20), later.choose(knobs)) {
            (13..17, Some(&(lsn, _))) => {
                let at = Lsn(match knobs.random_range(0..3) {
                    0 => lsn.0.saturating_sub(8).max(manifest.end_lsn.0),
                    1 => lsn.0,
                    _ => lsn.0 + 8,
                });
                (Target::Lsn(at), Expect::Below(at.0 + 1))
            }
            (0..13, Some(_)) if !reachable_times.is_empty() => {
                // A stamp after the backup's last commit and before the
                // archive's last: at it, or between it and the next.
                let &(time, next) = reachable_times.choose(knobs).expect("not empty");
                let at = if knobs.random_bool(0.5) { time } else { knobs.random_range(time..next) };
                // The first commit stamped after the target: the stop.
                let expect = match commits.iter().find(|(_, t)| *t > at) {
                    None => Expect::Refused("past the last commit archived"),
                    Some((lsn, _)) if *lsn < manifest.end_lsn => Expect::Refused("before the backup's end"),
                    Some((lsn, _)) => Expect::Below(lsn.0),
                };
                (Target::Time(at), expect)
            }
            (17..19, _) => {
                // Unreachable on purpose.
                match knobs.random_range(0..3) {
                    0 => (Target::Lsn(Lsn(manifest.end_lsn.0 - 8)), Expect::Refused("before the backup's end")),
                    1 => (Target::Lsn(Lsn(end.0 + 8)), Expect::Refused("past the archive's end")),
                    _ => {
                        let last = commits.last().map_or(0, |(_, t)| *t);
                        (Target::Time(last + 1), Expect::Refused("past the last commit archived"))
                    }
                }
            }
            _ => (Target::Latest, Expect::Below(u64::MAX)),
        };
        // The archive's segments from the backup's first on (not the last:
        // without it `latest` just ends earlier).
        let first = manifest.wal_start_lsn.0 / size;
        let segments: Vec<(String, u64)> = self
            .archive
            .keys()
            .filter_map(|name| parse_segment_file_name(name, size).map(|(_, segno)| (name.clone(), segno)))
            .filter(|(_, segno)| *segno >= first)
            .collect();
        let stop_segno = match expect {
            Expect::Below(lsn) => lsn.min(end.0) / size,
            Expect::Refused(_) => u64::MAX,
        };
        let fault = match knobs.random_range(0..100) {
            0..10 if segments.len() > 1 => {
                let (name, segno) = segments[..segments.len() - 1].choose(knobs).expect("some").clone();
                fs.remove(&Path::new(ARCHIVE).join(&name)).expect("the oracle's disk");
                Fault::Missing(name, segno)
            }
            10..20 if !segments.is_empty() => {
                let (name, segno) = segments.choose(knobs).expect("some").clone();
                disk.rot_at(&Path::new(ARCHIVE).join(&name), knobs.random_range(0..size));
                Fault::Flipped(name, segno)
            }
            20..45 => Fault::Crash(knobs.random_range(1..400)),
            _ => Fault::None,
        };
        let mut config = EngineConfig::new("/restored");
        config.wal_segment_size = size;
        config.buffer_pool_size = 64 * PAGE_SIZE as u64;
        config.archive = Some(ArchiveConfig::new(ArchiveMode::Dir(ARCHIVE.into())));
        let request = PitrRequest {
            backup: BACKUP.into(),
            target,
            source: Some(ArchiveSource::Dir(ARCHIVE.into())),
            timeline: None,
            engine: config.clone(),
        };
        let env = || Env::new(disk.fs(), self.clock.clone(), self.seed);
        let what = format!("recovery to {target} ({expect:?}, fault {fault:?})");
        if let Fault::Crash(ops) = fault {
            disk.set_crash_countdown(Some(ops));
        }
        let mut outcome = point_in_time_recovery(&env(), &request, &mut |_| {}).await;
        let mut finished = false;
        if let Fault::Crash(_) = fault {
            let crashed = disk.is_crashed();
            disk.set_crash_countdown(None);
            disk.crash();
            let marker = disk.fs().exists(&config.data_dir.join(PITR_MARKER)).unwrap_or(false);
            if marker {
                match Database::open(env(), config.clone()).await {
                    Err(DbError::PitrUnfinished { .. }) => {}
                    Err(e) => {
                        return Err(("pitr_reruns", format!("{what}: cut by a crash; a normal open failed: {e}")))
                    }
                    Ok(_) => {
                        return Err(("pitr_reruns", format!("{what}: cut by a crash; a normal open went ahead")));
                    }
                }
            }
            // The data file is restored only after the marker is written,
            // and the marker is removed last: with the one and not the
            // other, the recovery finished before the power went (in the
            // directory sync after the marker's removal, say), and is
            // checked as one that did.
            let restored = disk.fs().exists(&config.data_dir.join(DATA_FILE_NAME)).unwrap_or(false);
            finished = !marker && (outcome.is_ok() || restored);
            if !finished && (outcome.is_err() || crashed) {
                outcome = point_in_time_recovery(&env(), &request, &mut |_| {}).await;
            }
        }
        // What the recovery reached: its stop, if it said.
        let outcome: Result<Option<Lsn>, String> = match outcome {
            Ok(done) => Ok(Some(done.stop)),
            Err(_) if finished => Ok(None),
            Err(e) => Err(e),
        };
        let reached = |stop: &Option<Lsn>| stop.map_or_else(|| "its end before a crash".to_string(), |s| s.to_string());
        // The scan reads to the record that begins at or after the stop: in
        // the stop's segment, or the next after a segment switch. `latest`
        // reads everything.
        let latest = target == Target::Latest;
        let may_refuse = match &fault {
            Fault::Missing(_, segno) | Fault::Flipped(_, segno) => latest || *segno <= stop_segno.saturating_add(1),
            Fault::None | Fault::Crash(_) => false,
        };
        let must_refuse = matches!(expect, Expect::Refused(_))
            || matches!(&fault, Fault::Missing(_, segno) if latest || *segno < stop_segno);
        let below = match (expect, &outcome) {
            (_, Err(_)) if must_refuse || may_refuse => return Ok(()),
            (Expect::Refused(why), Ok(stop)) => {
                return Err((
                    "pitr_refuses_unreachable",
                    format!("{what}: expected a refusal ({why}), but it recovered to {}", reached(stop)),
                ));
            }
            (_, Ok(stop)) if must_refuse => {
                return Err((
                    "pitr_completes",
                    format!("{what}: a segment before the target is missing, yet it recovered to {}", reached(stop)),
                ));
            }
            (_, Err(e)) => return Err(("pitr_completes", format!("{what}: failed: {e}"))),
            (Expect::Below(below), Ok(_)) => below,
        };
        let db = Database::open(env(), config.clone())
            .await
            .map_err(|e| ("pitr_completes", format!("{what}: the recovered database does not open: {e}")))?;
        let found = read_state(&db).await.map_err(|e| ("pitr_completes", format!("{what}: reading: {e}")))?;
        self.history
            .check_backup(&found, below)
            .map_err(|detail| ("pitr_target_exact", format!("{what}: {detail}")))?;
        if fault != Fault::None {
            db.close().await;
            return Ok(());
        }

        // The new timeline: the recovered server commits and archives; the
        // archive keeps every file it had, and a second recovery follows.
        let before: BTreeMap<String, Vec<u8>> = archive_files(disk.fs().as_ref());
        commit_marker_rows(&db, knobs.random_range(1..4)).await.map_err(|e| ("pitr_new_timeline", e))?;
        let expected = read_state(&db).await.map_err(|e| ("pitr_new_timeline", e.to_string()))?;
        db.shutdown().await.map_err(|e| ("pitr_new_timeline", format!("{what}: shutting down: {e}")))?;
        let after = archive_files(disk.fs().as_ref());
        for (name, bytes) in &before {
            if after.get(name) != Some(bytes) {
                return Err((
                    "pitr_new_timeline",
                    format!("{what}: the recovered server changed {name} in the archive"),
                ));
            }
        }
        let mut second = request.clone();
        second.target = Target::Latest;
        second.engine = EngineConfig { archive: None, ..EngineConfig::new("/second") };
        second.engine.wal_segment_size = size;
        second.engine.buffer_pool_size = 64 * PAGE_SIZE as u64;
        let done = point_in_time_recovery(&env(), &second, &mut |_| {})
            .await
            .map_err(|e| ("pitr_new_timeline", format!("{what}, then a second to latest: {e}")))?;
        let db = Database::open(env(), second.engine.clone())
            .await
            .map_err(|e| ("pitr_new_timeline", format!("the second recovery does not open: {e}")))?;
        let found = read_state(&db).await.map_err(|e| ("pitr_new_timeline", e.to_string()))?;
        db.close().await;
        if found != expected {
            return Err((
                "pitr_new_timeline",
                format!(
                    "{what}, then commits on timeline {}, then a second recovery to latest (timeline {}) gave ({}), \
                     expected ({}): {}",
                    done.timeline - 1,
                    done.timeline,
                    describe(&found),
                    describe(&expected),
                    first_difference(&found, &expected)
                ),
            ));
        }
        Ok(())
    }
}

/// The commit records from `from` in the archive, and where it ends.
fn scan(fs: Arc<dyn Fs>, size: u64, from: Lsn) -> Result<(Vec<(Lsn, u64)>, Lsn), String> {
    let mut reader = WalReader::new(fs, WalOptions::new(ARCHIVE).with_segment_size(size), from);
    let mut commits = Vec::new();
    while let Some((lsn, record)) = reader.next_record().map_err(|e| e.to_string())? {
        if record.kind == RecordKind::Commit {
            commits.push((lsn, record.commit_time_micros().expect("a commit carries its time")));
        }
    }
    Ok((commits, reader.end().expect("at the end").lsn()))
}

fn archive_files(fs: &dyn Fs) -> BTreeMap<String, Vec<u8>> {
    let dir = PathBuf::from(ARCHIVE);
    fs.list(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| read_all(fs, &dir.join(&name)).ok().map(|bytes| (name, bytes)))
        .collect()
}

/// Commits `n` transactions on the recovered server, each one row in a
/// table of its own.
pub(crate) async fn commit_marker_rows(db: &Database, n: u32) -> Result<(), String> {
    for i in 0..n {
        let mut txn = db.begin().await.map_err(|e| e.to_string())?;
        let table = match txn.table("after_pitr").await.map_err(|e| e.to_string())? {
            Some(table) => table,
            None => txn.create_table("after_pitr", b"").await.map_err(|e| e.to_string())?,
        };
        txn.put(&table, &i.to_be_bytes(), b"on the new timeline").await.map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
