//! The archive-fed standby: a server that follows a primary by replaying
//! the WAL segments the primary archives, as PostgreSQL's standby with a
//! `restore_command` does, and that a promotion turns into a primary.
//!
//! - **Start** ([`restore_base`]): a backup of the primary is restored into
//!   empty data and WAL directories, and [`STANDBY_SIGNAL`] is written
//!   first: while it is there, a normal start refuses the directory (a
//!   primary opened on a standby's files would write the primary's
//!   timeline a second time), and only a standby or its promotion opens it.
//! - **Following** ([`Standby::catch_up`]): every segment the archive holds
//!   past the last one fetched is fetched whole into the WAL directory, and
//!   a replay round ([`crate::recovery::Replayer`]) runs analysis and
//!   redo, without undo, the first from the control file's redo point,
//!   each later one from where the last ended; one that replayed a
//!   checkpoint ends with a *restartpoint*: the pages written and synced,
//!   then the control file moved to the last checkpoint replayed. A crash or restart
//!   resumes from there. Segments before the restartpoint are removed (the
//!   archive keeps them). A record that runs into a segment not yet
//!   archived ends the round; the next round reads it whole.
//! - **Promotion** ([`Standby::promote`]): a last fetch (no round: the
//!   opening below replays it), a scan that finds where the log ends, then
//!   the log is branched there onto a new timeline (the first the archive
//!   has no history file for), exactly as a point-in-time recovery to
//!   `latest` branches it, and the database opens: crash recovery from the
//!   restartpoint rolls back the transactions open at the end, and its
//!   checkpoint makes the result durable. The signal file is removed last.
//!   A crash part way leaves the signal: the next start as a standby sees
//!   the control file already on the new timeline and finishes the
//!   promotion.
//!
//! The standby checks the archive is its primary's: segments of the
//! backup's own WAL must match the archive's copies up to the backup's
//! end.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::source::{fetch_wal, ArchiveSource, Fetched};
use crate::backup::pitr::{branch, clear_dir, format_micros, prefix_checksum, prefix_checksums};
use crate::backup::restore::RestorePlan;
use crate::db::{Database, EngineConfig};
use crate::env::{write_atomically, Env};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Probe};
use crate::recovery::{Replayed, Replayer};
use crate::storage::ControlFile;
use crate::wal::{
    history_file_name, parse_segment_file_name, read_history, Lsn, RecordKind, TimelineHistory, WalOptions, WalReader,
};

/// The file in the data directory that makes it a standby's.
pub const STANDBY_SIGNAL: &str = "standby.signal";

/// What the signal file records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StandbySignal {
    /// The backup the standby started from.
    pub backup: String,
    /// Its id.
    pub backup_id: String,
    /// Whether the backup's files are all in place.
    pub restored: bool,
    /// The timeline followed.
    pub timeline: u32,
    /// The backup's end LSN: a promotion before the WAL reaches it is
    /// refused (the copy is consistent only from there on).
    pub backup_end_lsn: u64,
    /// The backup's own WAL segments: name, the bytes final at the
    /// backup's end, and their checksum. The archive's copies must match.
    pub own_wal: Vec<(String, u64, u32)>,
}

impl StandbySignal {
    fn store(&self, env: &Env, data_dir: &Path) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(self).expect("the signal serializes");
        write_atomically(env.fs.as_ref(), data_dir, STANDBY_SIGNAL, &text).map_err(|e| e.to_string())
    }
}

/// Reads the signal in `data_dir`, if it is a standby's.
pub fn read_signal(env: &Env, data_dir: &Path) -> Result<Option<StandbySignal>, String> {
    let path = data_dir.join(STANDBY_SIGNAL);
    if !env.fs.exists(&path).map_err(|e| format!("{}: {e}", path.display()))? {
        return Ok(None);
    }
    let bytes = crate::archive::read_file(env.fs.as_ref(), &path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is damaged: {e}", path.display()))
}

/// Restores `backup` into the engine's data and WAL directories as a
/// standby's starting point (see the module docs). They must be empty, or
/// hold what an unfinished run of this left (it is cleared and the restore
/// starts over), or already be this standby's (nothing is done).
pub fn restore_base(env: &Env, engine: &EngineConfig, backup: &Path) -> Result<(), String> {
    let fs = env.fs.as_ref();
    let (data_dir, wal_dir) = (&engine.data_dir, &engine.wal_dir);
    match read_signal(env, data_dir)? {
        Some(signal) if signal.restored => {
            tracing::info!(backup = %signal.backup_id, "the data directory already holds this standby");
            return Ok(());
        }
        Some(_) => {
            tracing::warn!("a standby's restore into {} did not finish: starting over", data_dir.display());
            for dir in [wal_dir, data_dir] {
                clear_dir(fs, dir, STANDBY_SIGNAL)?;
            }
        }
        None => {
            // A run cut while it wrote the signal left only its temporary
            // file (nothing is restored before the signal).
            let temp = data_dir.join(format!("{STANDBY_SIGNAL}.tmp"));
            if fs.exists(&temp).map_err(|e| format!("{}: {e}", temp.display()))? {
                fs.remove(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
                fs.sync_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
            }
        }
    }
    let plan = RestorePlan::new(fs, backup, fs, data_dir, wal_dir)?;
    let manifest = &plan.manifest;
    let mut signal = StandbySignal {
        backup: backup.display().to_string(),
        backup_id: manifest.backup_id.clone(),
        restored: false,
        timeline: manifest.timeline,
        backup_end_lsn: manifest.end_lsn.0,
        own_wal: Vec::new(),
    };
    signal.store(env, data_dir)?;
    plan.restore(fs, backup, fs, &|_| true)?;
    signal.own_wal = prefix_checksums(fs, manifest, wal_dir)?
        .into_iter()
        .map(|(segno, limit, checksum)| (manifest.wal_options(wal_dir).file_name(segno), limit, checksum))
        .collect();
    signal.restored = true;
    signal.store(env, data_dir)?;
    tracing::info!(
        backup = %manifest.backup_id,
        start_lsn = %manifest.start_lsn,
        end_lsn = %manifest.end_lsn,
        "restored the backup as a standby's starting point"
    );
    Ok(())
}

/// What a standby reports (`GET /admin/cluster/status`, `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StandbyStatus {
    /// The timeline followed.
    pub timeline: u32,
    /// Where the WAL replayed so far ends.
    pub replay_lsn: Lsn,
    /// Where a restart would resume replaying.
    pub restartpoint_lsn: Lsn,
    /// The last segment fetched from the archive.
    pub last_segment: Option<String>,
    /// Segments fetched since the server started.
    pub segments_fetched: u64,
    /// The newest commit replayed (µs since the Unix epoch; 0: none).
    pub last_commit_micros: u64,
    /// Transactions open at the end of the WAL replayed.
    pub open_transactions: usize,
    /// Why the last fetch or replay failed, if it did.
    pub last_error: Option<String>,
}

impl StandbyStatus {
    /// The newest commit replayed, as RFC 3339.
    pub fn last_commit_time(&self) -> Option<String> {
        (self.last_commit_micros > 0).then(|| format_micros(self.last_commit_micros))
    }
}

/// What a promotion did.
#[derive(Debug, Clone, Default)]
pub struct Promotion {
    /// The new timeline.
    pub timeline: u32,
    /// Where the old timeline's log ended: the new one starts here.
    pub stop: Lsn,
    /// Transactions open there, rolled back.
    pub rolled_back: usize,
    /// The newest commit kept (µs since the Unix epoch; 0: none).
    pub last_commit_micros: u64,
}

/// A standby that follows the archive (see the module docs).
pub struct Standby {
    env: Env,
    engine: EngineConfig,
    source: ArchiveSource,
    signal: StandbySignal,
    /// The followed timeline's log in the WAL directory.
    chain: WalOptions,
    /// The next segment to fetch.
    next_segno: u64,
    /// The log before this is in segments fetched whole.
    complete_through: Lsn,
    /// The control file is already on a newer timeline: a promotion was
    /// cut short.
    promotion_cut: bool,
    /// The replay, once its first round ran.
    replayer: Option<Replayer>,
    status: StandbyStatus,
}

impl Standby {
    /// Opens the standby in the engine's directories, which
    /// [`restore_base`] prepared.
    pub async fn open(env: &Env, engine: &EngineConfig, source: ArchiveSource) -> Result<Standby, String> {
        let fs = env.fs.as_ref();
        let signal = match read_signal(env, &engine.data_dir)? {
            Some(signal) if signal.restored => signal,
            Some(signal) => {
                return Err(format!(
                    "the restore of backup {} into {} did not finish: rerun `thunderdb --restore-backup {} --config \
                     FILE`",
                    signal.backup_id,
                    engine.data_dir.display(),
                    signal.backup
                ))
            }
            None => {
                return Err(format!(
                    "{} is not a standby's data directory (it has no {STANDBY_SIGNAL}): a standby starts from a \
                     backup of its primary, with `thunderdb --restore-backup BACKUP_DIR --config FILE`",
                    engine.data_dir.display()
                ))
            }
        };
        let control = ControlFile::load(fs, &engine.data_dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the standby's data directory {} has no control file", engine.data_dir.display()))?;
        let mut engine = engine.clone();
        engine.wal_segment_size = control.wal_segment_size;
        let mut chain = WalOptions { timeline: signal.timeline, ..WalOptions::new(&engine.wal_dir) }
            .with_segment_size(control.wal_segment_size);
        if signal.timeline > 1 && read_history(fs, &engine.wal_dir, signal.timeline)?.is_none() {
            // The timeline's history (which ancestor holds the log below
            // each switch) comes from the archive.
            let name = history_file_name(signal.timeline);
            let staging = engine.wal_dir.join(format!("{name}.fetched"));
            if source.fetch(env, &name, &staging).await? == Fetched::NotFound {
                return Err(format!("the archive has no {name}: the history of timeline {}", signal.timeline));
            }
            let path = engine.wal_dir.join(&name);
            fs.rename(&staging, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        chain.history = read_history(fs, &engine.wal_dir, signal.timeline)?.map(|h| h.switches).unwrap_or_default();
        let promotion_cut = control.timeline != signal.timeline;
        let status = StandbyStatus {
            timeline: signal.timeline,
            replay_lsn: control.redo_lsn,
            restartpoint_lsn: control.redo_lsn,
            ..StandbyStatus::default()
        };
        Ok(Standby {
            env: env.clone(),
            next_segno: chain.segno(control.redo_lsn),
            engine,
            source,
            signal,
            chain,
            complete_through: Lsn::ZERO,
            promotion_cut,
            replayer: None,
            status,
        })
    }

    /// What it reports.
    pub fn status(&self) -> &StandbyStatus {
        &self.status
    }

    /// Whether a promotion was cut short: [`promote`](Self::promote)
    /// finishes it, and nothing else may run.
    pub fn promotion_cut(&self) -> bool {
        self.promotion_cut
    }

    /// Fetches what the archive holds past the last segment fetched and,
    /// if anything came (or nothing was replayed yet), replays it. Returns
    /// the segments fetched.
    pub async fn catch_up(&mut self) -> Result<u64, String> {
        let result = self.fetch_and_replay().await;
        self.status.last_error = result.as_ref().err().cloned();
        result
    }

    async fn fetch_and_replay(&mut self) -> Result<u64, String> {
        let first = self.next_segno;
        let count = self.fetch().await?;
        if !self.can_replay()? {
            return Ok(count);
        }
        if count > 0 || self.replayer.is_none() {
            let before = self.status.replay_lsn;
            let replayed = self.replay().await?;
            if before.0 % self.chain.segment_size != 0
                && self.chain.segno(before) + 1 == first
                && count > 0
                && replayed.end > before
            {
                probe::hit(Probe::StandbyResumedSpanningRecord);
            }
        }
        Ok(count)
    }

    /// Fetches every segment the archive holds past the last one fetched,
    /// durably. Returns how many came.
    async fn fetch(&mut self) -> Result<u64, String> {
        if self.promotion_cut {
            return Err("a promotion was cut short: promote again to finish it".into());
        }
        let fetched = fetch_wal(&self.source, &self.env, &self.chain, self.next_segno, &mut |_| {}).await?;
        if let Some(gap) = &fetched.gap {
            tracing::warn!("{gap}; the standby waits for the missing segment");
        }
        let count = fetched.names.len() as u64;
        let fs = self.env.fs.as_ref();
        for name in &fetched.names {
            self.check_own_copy(name)?;
            // The fetch does not sync; the replay writes pages whose
            // changes are in these segments, and its restartpoint moves the
            // redo point into them, so they must be durable first (the WAL
            // rule, as on the primary).
            let path = self.engine.wal_dir.join(name);
            if !active(PlantedBug::StandbyFetchWithoutSync) {
                fs.open(&path)
                    .and_then(|file| file.sync_data())
                    .map_err(|e| format!("sync {}: {e}", path.display()))?;
            }
        }
        if count > 0 && !active(PlantedBug::StandbyFetchWithoutSync) {
            let dir = &self.engine.wal_dir;
            fs.sync_dir(dir).map_err(|e| format!("sync {}: {e}", dir.display()))?;
        }
        if count > 0 {
            self.next_segno += count;
            // Every fetched segment is whole: a record that runs past the
            // last one ends the round; anything else wrong in them is damage.
            self.complete_through = Lsn(self.next_segno * self.chain.segment_size);
            self.status.segments_fetched += count;
            self.status.last_segment = fetched.names.last().cloned();
        }
        Ok(count)
    }

    /// Whether the WAL from the restartpoint on is here: not while the
    /// archive does not reach the backup's start yet.
    fn can_replay(&self) -> Result<bool, String> {
        let redo_segment = self.chain.path(self.chain.segno(self.status.restartpoint_lsn));
        let here = self.env.fs.exists(&redo_segment).map_err(|e| format!("{}: {e}", redo_segment.display()))?;
        if !here {
            tracing::debug!(segment = %self.chain.file_name(self.next_segno), "standby: waiting for the archive");
        }
        Ok(here)
    }

    /// Reads the log from the restartpoint to its end, checking every
    /// record, without replaying it: where it ends, and the newest commit.
    fn scan_to_end(&self) -> Result<(Lsn, u64), String> {
        let mut reader = WalReader::new(self.env.fs.clone(), self.chain.clone(), self.status.restartpoint_lsn)
            .durable_through(self.complete_through);
        let mut last_commit = self.status.last_commit_micros;
        while let Some((_, record)) =
            reader.next_record().map_err(|e| format!("the archived WAL cannot be replayed: {e}"))?
        {
            if record.kind == RecordKind::Commit {
                last_commit = last_commit.max(record.commit_time_micros().unwrap_or(0));
            }
        }
        Ok((reader.end().expect("the reader reached the end").lsn(), last_commit))
    }

    /// An archived segment that the backup also copied must match the
    /// backup's copy up to the backup's end: otherwise the archive is
    /// another database's.
    fn check_own_copy(&self, name: &str) -> Result<(), String> {
        let Some((_, limit, checksum)) = self.signal.own_wal.iter().find(|(own, _, _)| own == name) else {
            return Ok(());
        };
        let path = self.engine.wal_dir.join(name);
        if prefix_checksum(self.env.fs.as_ref(), &path, *limit)? != *checksum {
            return Err(format!(
                "archived segment {name} differs from backup {}'s own copy: the archive holds WAL of another \
                 database or timeline",
                self.signal.backup_id
            ));
        }
        Ok(())
    }

    async fn replay(&mut self) -> Result<Replayed, String> {
        let opts = self.engine.store_options(0);
        let replayed = match &mut self.replayer {
            Some(replayer) => replayer.round(self.complete_through).await,
            None => {
                Replayer::start(self.env.fs.clone(), &opts, self.complete_through).await.map(|(replayer, replayed)| {
                    self.replayer = Some(replayer);
                    replayed
                })
            }
        };
        let replayed = replayed.map_err(|e| {
            // The next round starts over from the restartpoint.
            self.replayer = None;
            format!("replaying the archived WAL failed: {e}")
        })?;
        self.status.replay_lsn = replayed.end;
        self.status.restartpoint_lsn = replayed.restartpoint;
        self.status.last_commit_micros = self.status.last_commit_micros.max(replayed.last_commit_micros);
        self.status.open_transactions = replayed.open_transactions;
        self.remove_before(self.chain.segno(replayed.restartpoint))?;
        tracing::debug!(end = %replayed.end, restartpoint = %replayed.restartpoint, applied = replayed.records_applied, "standby replay round");
        Ok(replayed)
    }

    /// Removes the segments before `segno` (the archive keeps them; no
    /// restart reads them).
    fn remove_before(&self, segno: u64) -> Result<(), String> {
        let fs = self.env.fs.as_ref();
        let dir = &self.engine.wal_dir;
        for name in fs.list(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            if parse_segment_file_name(&name, self.chain.segment_size).is_some_and(|(_, n)| n < segno) {
                let path = dir.join(&name);
                fs.remove(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The first timeline the archive has no history file for, past this
    /// one.
    async fn new_timeline(&self) -> Result<u32, String> {
        let mut timeline = self.chain.timeline + 1;
        loop {
            let name = history_file_name(timeline);
            let staging = self.engine.wal_dir.join(format!("{name}.fetched"));
            if self.source.fetch(&self.env, &name, &staging).await? == Fetched::NotFound {
                return Ok(timeline);
            }
            self.env.fs.remove(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
            timeline += 1;
        }
    }

    /// Promotes the standby (see the module docs): after this, the engine's
    /// directories hold a primary on a new timeline, shut down cleanly,
    /// that [`Database::open`] opens for writes.
    pub async fn promote(mut self) -> Result<Promotion, String> {
        // Its pages are the opening's to replay: none may be written beside it.
        self.replayer = None;
        let env = self.env.clone();
        let fs = env.fs.as_ref();
        let data_dir = self.engine.data_dir.clone();
        let (timeline, stop) = if self.promotion_cut {
            probe::hit(Probe::StandbyPromotionFinished);
            let control = ControlFile::load(fs, &data_dir).map_err(|e| e.to_string())?.ok_or("no control file")?;
            tracing::warn!(timeline = control.timeline, "a promotion was cut short: finishing it");
            (control.timeline, None)
        } else {
            // What is left is fetched, not replayed here: the opening below
            // replays it from the restartpoint anyway.
            self.fetch().await?;
            if !self.can_replay()? {
                return Err(format!(
                    "the archive does not reach backup {}'s start yet: segment {} is not in it",
                    self.signal.backup_id,
                    self.chain.file_name(self.chain.segno(self.status.restartpoint_lsn))
                ));
            }
            let (stop, last_commit) = self.scan_to_end()?;
            self.status.last_commit_micros = last_commit;
            if stop.0 < self.signal.backup_end_lsn {
                return Err(format!(
                    "the WAL replayed ends at {stop}, before backup {}'s end LSN {}: the standby is not consistent \
                     yet; segment {} is not in the archive",
                    self.signal.backup_id,
                    Lsn(self.signal.backup_end_lsn),
                    self.chain.file_name(self.next_segno)
                ));
            }
            let timeline = self.new_timeline().await?;
            let parent =
                read_history(fs, &self.engine.wal_dir, self.chain.timeline)?.unwrap_or_else(TimelineHistory::default);
            let history = parent.child(self.chain.timeline, stop, "promoted");
            branch(fs, &self.chain, stop, &BTreeMap::new(), timeline, &history, &data_dir)?;
            (timeline, Some(stop))
        };
        let mut engine = self.engine.clone();
        engine.point_in_time_recovery = true;
        let db =
            Database::open(self.env.clone(), engine).await.map_err(|e| format!("replaying the WAL failed: {e}"))?;
        let rolled_back = db.recovery_report().losers;
        let stop = stop.unwrap_or(db.recovery_report().end_lsn);
        db.shutdown().await.map_err(|e| format!("the closing checkpoint failed: {e}"))?;
        let signal = data_dir.join(STANDBY_SIGNAL);
        fs.remove(&signal).map_err(|e| format!("{}: {e}", signal.display()))?;
        fs.sync_dir(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        probe::hit(Probe::StandbyPromoted);
        tracing::info!(
            timeline,
            stop = %stop,
            rolled_back,
            history = %history_file_name(timeline),
            "promoted: the standby ended recovery and continues on a new timeline, open for writes"
        );
        Ok(Promotion { timeline, stop, rolled_back, last_commit_micros: self.status.last_commit_micros })
    }
}
