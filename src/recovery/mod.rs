//! ARIES crash recovery: analysis, redo, undo.
//!
//! [`recover`] opens a store from what is on disk, whatever state a crash
//! left it in:
//!
//! 1. **Analysis** reads the log from the last checkpoint's redo point (the
//!    control file names it; without one, from the start of the log) to its
//!    end. It rebuilds the transaction table (every transaction the
//!    checkpoint's end record lists, plus every one that logged since, less
//!    those whose commit or abort record follows) and the dirty page table
//!    (the checkpoint's, plus every page a record touches, each with the
//!    first LSN that dirtied it). Transactions left in the table are the
//!    losers. The reader decides where the valid log ends, and the WAL is
//!    opened there, cutting the torn tail durably.
//! 2. **Redo** repeats history: every storage record from the redo point is
//!    applied to its pages unless a page's LSN shows it already there (losers'
//!    changes and compensation records included). A page torn by the crash
//!    is rebuilt, because its first change after the checkpoint logged its
//!    full image, and redo installs images without reading the disk.
//!
//!    Analysis and redo are one pass over the log, since both start at the
//!    redo point and redo needs nothing analysis learns further on: each
//!    record is read and checked once, taken into the tables, then redone.
//!    Redo runs over a read-only WAL whose durable point follows the pass
//!    (a page may be written back once the log through its LSN is read);
//!    the WAL is opened for appends, cutting the tail, after the pass.
//! 3. **Undo** rolls each loser back through the store's own rollback: newest
//!    change first, each undone by key and logged as a compensation record
//!    whose undo-next LSN skips what it undid, then an abort record. A crash
//!    during undo leaves compensation records that the next recovery redoes
//!    and then jumps past, so nothing is undone twice.
//!
//! Recovery is idempotent: it only appends to the log (the cut tail aside),
//! and replaying it again reaches the same state. The caller takes a
//! checkpoint afterwards (the end-of-recovery checkpoint), which makes the
//! next recovery start from here.
//!
//! It logs the lines operators know from the documentation, with real counts
//! and timings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::env::{Clock, Fs};
use crate::probe::{self, Phase, Probe};
use crate::storage::{
    ActiveTxnEntry, BufferError, BufferPool, ControlFile, ControlState, Op, Redo, Store, StoreError, DATA_FILE_NAME,
};
use crate::wal::{read_history, Lsn, Record, RecordKind, ReplicationGate, Wal, WalOptions, WalReader};

/// Where a store lives and how much memory its pool gets.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory: the data file and the control file.
    pub data_dir: PathBuf,
    /// The WAL's directory and format.
    pub wal: WalOptions,
    /// The buffer pool's size in bytes.
    pub pool_bytes: u64,
    /// How many bytes of undo information one transaction keeps in memory;
    /// beyond that its rollback reads its records back from the WAL.
    pub undo_memory: usize,
    /// The identity a new database gets (one whose control file predates
    /// identities gets it too); an existing one keeps its own.
    pub new_system_id: u64,
    /// A cluster leader's link to its group (see [`Wal::with_replication`]).
    pub replication: Option<Arc<ReplicationGate>>,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Whether the database had not been shut down cleanly (crash recovery
    /// ran and logged its lines).
    pub crashed: bool,
    /// The last complete checkpoint, if any.
    pub checkpoint_lsn: Option<Lsn>,
    /// Where redo started.
    pub redo_from: Lsn,
    /// Pages in the dirty page table after analysis.
    pub dirty_pages: usize,
    /// Transactions without an end record: rolled back.
    pub losers: usize,
    /// Storage records redo examined.
    pub records_replayed: u64,
    /// Of those, records applied to a page (the rest were already there).
    pub records_applied: u64,
    /// WAL bytes from the redo point to the end of the log.
    pub wal_bytes: u64,
    /// Changes undone while rolling back the losers.
    pub changes_undone: u64,
    /// Where the valid log ended.
    pub end_lsn: Lsn,
    /// Wall time from start to end.
    pub duration: Duration,
    /// Of which: the pass of analysis and redo (with opening the log for
    /// appends), and undo.
    pub phases: [Duration; 2],
    /// The log lines, as logged.
    pub lines: Vec<String>,
}

impl RecoveryReport {
    fn say(&mut self, line: String) {
        tracing::info!("{line}");
        self.lines.push(line);
    }
}

/// A loser found by analysis. Undo reads its records back from the WAL
/// along its chain, so analysis keeps none of them.
struct Loser {
    entry: ActiveTxnEntry,
    /// Its newest record is a compensation record: an undo was under way.
    resumed: bool,
}

fn decode(lsn: Lsn, payload: &[u8]) -> Result<Op, StoreError> {
    Op::decode(payload).map_err(|e| StoreError::BadRecord { lsn, detail: e.to_string() })
}

/// What analysis found: where redo starts and the log ends, the losers,
/// the dirty pages.
struct Analysis {
    /// The options, on the control file's timeline.
    opts: StoreOptions,
    control: Option<ControlFile>,
    /// The redo point.
    start: Lsn,
    /// Below this, a bad record is corruption, never the end of the log.
    durable_floor: Lsn,
    losers: BTreeMap<u64, Loser>,
    /// Transactions whose end record was read since the last checkpoint's
    /// end record: a checkpoint that listed them open is out of date.
    ended: BTreeSet<u64>,
    dirty: BTreeMap<u32, Lsn>,
    next_xid: u64,
    last_commit_micros: u64,
    /// Storage records that change pages.
    changes: u64,
    /// Where the log read ends.
    end: Lsn,
}

/// The log's options on the control file's timeline, with its history: the
/// segments below each switch point are its ancestors'.
pub fn on_control_timeline(
    fs: &dyn Fs,
    wal: &WalOptions,
    control: Option<&ControlFile>,
) -> Result<WalOptions, StoreError> {
    let mut wal_opts = wal.clone();
    if let Some(control) = control.filter(|control| control.timeline > 1) {
        wal_opts.timeline = control.timeline;
        wal_opts.history = read_history(fs, &wal_opts.dir, control.timeline)
            .map_err(|detail| StoreError::BadHistory { detail })?
            .map(|history| history.switches)
            .unwrap_or_default();
    }
    Ok(wal_opts)
}

impl Analysis {
    /// Analysis before its first record (see the module docs): the control
    /// file, the options on its timeline and the redo point, where the log
    /// is read from. A bad record before `durable_through` is corruption.
    fn begin(fs: &Arc<dyn Fs>, opts: &StoreOptions, durable_through: Lsn) -> Result<Analysis, StoreError> {
        let control = ControlFile::load(fs.as_ref(), &opts.data_dir)?;
        let (start, durable_floor) = match control {
            Some(control) => (control.redo_lsn, control.checkpoint_lsn.plus(1)),
            None => (opts.wal.first_lsn(), Lsn::ZERO),
        };
        let wal_opts = on_control_timeline(fs.as_ref(), &opts.wal, control.as_ref())?;
        Ok(Analysis {
            opts: StoreOptions { wal: wal_opts, ..opts.clone() },
            control,
            start,
            durable_floor: durable_floor.max(durable_through),
            losers: BTreeMap::new(),
            ended: BTreeSet::new(),
            dirty: BTreeMap::new(),
            next_xid: control.map_or(1, |control| control.next_xid),
            last_commit_micros: 0,
            changes: 0,
            end: start,
        })
    }

    /// Takes one record into the transaction and dirty page tables;
    /// whether it was a checkpoint's end record.
    fn note(&mut self, lsn: Lsn, record: &Record) -> Result<bool, StoreError> {
        self.next_xid = self.next_xid.max(record.xid + 1);
        match record.kind {
            RecordKind::Commit | RecordKind::Abort => {
                self.last_commit_micros = self.last_commit_micros.max(record.commit_time_micros().unwrap_or(0));
                self.losers.remove(&record.xid);
                self.ended.insert(record.xid);
            }
            RecordKind::Data => match Op::peek(&record.payload) {
                Some((pages, undo_next)) => {
                    self.changes += 1;
                    for page_no in pages {
                        self.dirty.entry(page_no).or_insert(lsn);
                    }
                    if record.xid != 0 {
                        let xid = record.xid;
                        let loser = self.losers.entry(xid).or_insert_with(|| Loser {
                            entry: ActiveTxnEntry { xid, last_lsn: Lsn::ZERO, undo_next: Lsn::ZERO },
                            resumed: false,
                        });
                        loser.entry.last_lsn = lsn;
                        // A compensation record points past what it undid.
                        loser.entry.undo_next = undo_next.unwrap_or(lsn);
                        loser.resumed = undo_next.is_some();
                    }
                }
                None => {
                    if let Op::CheckpointEnd { active, dirty: listed, last_commit_micros: newest } =
                        decode(lsn, &record.payload)?
                    {
                        self.last_commit_micros = self.last_commit_micros.max(newest);
                        for entry in active.into_iter().filter(|entry| !self.ended.contains(&entry.xid)) {
                            self.losers.entry(entry.xid).or_insert(Loser { entry, resumed: false });
                        }
                        for (page_no, rec_lsn) in listed {
                            self.dirty.entry(page_no).or_insert(rec_lsn);
                        }
                        return Ok(true);
                    }
                }
            },
            _ => {}
        }
        Ok(false)
    }

    /// The store over the data file, before redo, with a read-only WAL at
    /// the redo point: the pass moves its durable point as it reads, so
    /// that a page redo changed may be written back (the WAL rule), and
    /// crash recovery gives the store its writable WAL once the pass has
    /// found where the log ends.
    fn store(&self, fs: &Arc<dyn Fs>) -> Result<Store, StoreError> {
        let data_path = self.opts.data_dir.join(DATA_FILE_NAME);
        let pool = BufferPool::open(fs.clone(), &data_path, self.opts.pool_bytes).map_err(BufferError::from)?;
        let system_id =
            self.control.map(|control| control.system_id).filter(|id| *id != 0).unwrap_or(self.opts.new_system_id);
        let wal = Arc::new(Wal::read_only(fs.clone(), self.opts.wal.clone(), self.start));
        Store::new(fs.clone(), &self.opts.data_dir, pool, wal, self.next_xid, self.opts.undo_memory, system_id)
    }
}

/// Recovers the store in `opts` (see the module docs) and returns it open,
/// with every loser rolled back, and what recovery did. `clock` times it.
///
/// Analysis and redo share one pass over the log: both start at the redo
/// point, and redo needs nothing analysis learns later in the log (a
/// page's LSN says whether a record is already there). Each record is
/// read and checked once, and taken into the tables before it is redone.
pub async fn recover(
    fs: Arc<dyn Fs>,
    clock: &dyn Clock,
    opts: &StoreOptions,
) -> Result<(Store, RecoveryReport), StoreError> {
    let started = clock.monotonic();
    let mut report = RecoveryReport::default();

    // Phases 1 and 2: analysis and redo.
    let mut replayer = Replayer::new(fs.clone(), opts, Lsn::ZERO)?;
    let pass = replayer.pass(Phase::RecoveryAnalysis).await?;
    let end = replayer.reader.end().expect("the pass reads to the end of the log");
    let Replayer { analysis, mut store, .. } = replayer;
    let (start, control) = (analysis.start, analysis.control);
    report.checkpoint_lsn = control.map(|control| control.checkpoint_lsn);
    report.redo_from = start;
    report.end_lsn = end.lsn();
    report.wal_bytes = end.lsn().0.saturating_sub(start.0);
    report.dirty_pages = analysis.dirty.len();
    report.losers = analysis.losers.len();
    (report.records_replayed, report.records_applied) = (pass.replayed, pass.applied);
    let clean = control.is_some_and(|control| control.state == ControlState::ShutDown);
    report.crashed = !clean && (control.is_some() || analysis.changes > 0);
    if report.crashed {
        report.say("Crash recovery initiated".into());
        report.say(match report.checkpoint_lsn {
            Some(lsn) => format!("Last checkpoint LSN: {lsn}"),
            None => "Last checkpoint LSN: none (replaying the log from its start)".into(),
        });
        report.say(format!(
            "Phase 1 (Analysis): Scanning WAL... {} dirty pages, {} active transactions",
            thousands(report.dirty_pages as u64),
            thousands(report.losers as u64)
        ));
        report.say(format!(
            "Phase 2 (Redo): Replaying from LSN {start}... {} records replayed",
            thousands(report.records_replayed)
        ));
    }
    // The log is opened for appends where the pass found its end, cutting
    // the torn tail durably; undo appends after it.
    let wal =
        Arc::new(Wal::open(fs.clone(), analysis.opts.wal.clone(), end)?.with_replication(opts.replication.clone()));
    store.recovered(wal, analysis.next_xid, analysis.last_commit_micros);
    report.phases[0] = clock.monotonic().saturating_sub(started);

    // Phase 3: undo.
    {
        let _phase = probe::enter(Phase::RecoveryUndo);
        for (_, loser) in analysis.losers.into_iter().rev() {
            let xid = loser.entry.xid;
            if loser.resumed {
                probe::hit(Probe::UndoResumed);
            }
            store.adopt_loser(loser.entry);
            report.changes_undone += store.rollback(xid).await?;
            probe::hit(Probe::LoserRolledBack);
        }
        let wal = store.wal().clone();
        wal.flush(wal.end_lsn()).await?;
    }
    report.duration = clock.monotonic().saturating_sub(started);
    report.phases[1] = report.duration.saturating_sub(report.phases[0]);
    if report.crashed {
        report.say(format!(
            "Phase 3 (Undo): Rolling back {} active transactions... done",
            thousands(report.losers as u64)
        ));
        report.say(format!("Recovery complete in {:.2}s", report.duration.as_secs_f64()));
    }
    Ok((store, report))
}

/// What one pass of analysis and redo did.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    /// Storage records that change pages, examined by redo.
    replayed: u64,
    /// Of those, records applied to a page (the rest were already there).
    applied: u64,
}

/// What one round of a standby's replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Where the log read so far ends.
    pub end: Lsn,
    /// Where the next round starts: the last checkpoint replayed (its
    /// begin record), now the control file's; before any, the one it had.
    pub restartpoint: Lsn,
    /// The newest commit replayed: its time (µs since the Unix epoch).
    pub last_commit_micros: u64,
    /// Transactions open at the end (a promotion rolls them back).
    pub open_transactions: usize,
    /// Storage records applied to a page this round.
    pub records_applied: u64,
}

/// A standby's replay (archive recovery, as PostgreSQL's standby runs it):
/// analysis and redo of the log in the WAL directory, in rounds, with
/// nothing undone and nothing appended. The first round starts at the
/// control file's redo point; each later one goes on where the last ended,
/// with the same pages in memory and the same transaction table, so a
/// round costs what the log grew by, not what it holds since the last
/// checkpoint.
///
/// A round that replayed a checkpoint's end record ends with a
/// *restartpoint*: every page redo changed is written and the data file
/// synced, and only then does the control file move its redo point to that
/// checkpoint's begin record, so a restart after a crash starts there. That
/// order is a checkpoint's: a page torn while it was written changed after
/// the old redo point, so its full image is in the log the restart replays.
/// Dropping a replayer loses nothing the log does not hold.
pub struct Replayer {
    fs: Arc<dyn Fs>,
    analysis: Analysis,
    store: Store,
    /// Positioned where the last round ended.
    reader: WalReader,
    /// The begin record of the checkpoint whose end record has not been
    /// replayed yet.
    begun: Option<Lsn>,
    /// The begin record of the last checkpoint replayed whole.
    completed: Option<Lsn>,
}

impl Replayer {
    /// Analysis and redo before their pass: the store, and a reader at the
    /// control file's redo point (see [`Replayer::start`] for
    /// `complete_through`).
    fn new(fs: Arc<dyn Fs>, opts: &StoreOptions, complete_through: Lsn) -> Result<Replayer, StoreError> {
        let analysis = Analysis::begin(&fs, opts, complete_through)?;
        let store = analysis.store(&fs)?;
        let reader = WalReader::new(fs.clone(), analysis.opts.wal.clone(), analysis.start)
            .durable_through(analysis.durable_floor);
        Ok(Replayer { fs, analysis, store, reader, begun: None, completed: None })
    }

    /// The first round: from the control file's redo point to the end of
    /// the log. The log before `complete_through` is in segments known
    /// whole: a bad record there is corruption, never the end of the log.
    pub async fn start(
        fs: Arc<dyn Fs>,
        opts: &StoreOptions,
        complete_through: Lsn,
    ) -> Result<(Replayer, Replayed), StoreError> {
        let mut replayer = Replayer::new(fs, opts, complete_through)?;
        let pass = replayer.pass(Phase::RecoveryAnalysis).await?;
        let replayed = replayer.restartpoint(pass.applied).await?;
        Ok((replayer, replayed))
    }

    /// A later round: the log from where the last round ended up to
    /// `complete_through` (or where the log ends, if sooner: a record that
    /// runs into a segment not fetched yet waits for the next round).
    pub async fn round(&mut self, complete_through: Lsn) -> Result<Replayed, StoreError> {
        self.reader.resume(complete_through)?;
        let pass = self.pass(Phase::WalRecoveryRead).await?;
        self.restartpoint(pass.applied).await
    }

    /// Reads the log from the reader's position to where it stops (its end,
    /// or the round's limit), `reading` being the phase of the reads; takes
    /// each record into the tables, then redoes it.
    async fn pass(&mut self, reading: Phase) -> Result<Pass, StoreError> {
        let mut pass = Pass::default();
        loop {
            let next = {
                let _phase = probe::enter(reading);
                self.reader.next_record()?
            };
            let Some((lsn, record)) = next else { break };
            if self.analysis.note(lsn, &record)? {
                // A later checkpoint lists only transactions open after
                // this record.
                self.analysis.ended.clear();
            }
            if let Some(redo) = self.redo(lsn, record).await? {
                pass.replayed += 1;
                pass.applied += u64::from(redo == Redo::Applied);
            }
        }
        self.analysis.end = self.reader.end().map_or(self.reader.position(), |end| end.lsn());
        self.store.wal().extend_read_only(self.analysis.end);
        Ok(pass)
    }

    /// Redoes one record: what redo did, if it is a storage record that
    /// changes pages.
    async fn redo(&mut self, lsn: Lsn, record: Record) -> Result<Option<Redo>, StoreError> {
        if record.kind != RecordKind::Data {
            return Ok(None);
        }
        let end = lsn.plus(record.encoded_len());
        // The log through this record is on disk: the pages it changes may
        // be written back.
        self.store.wal().extend_read_only(end);
        match decode(lsn, &record.payload)? {
            Op::CheckpointBegin => self.begun = Some(lsn),
            Op::CheckpointEnd { .. } => self.completed = self.begun.take().or(self.completed),
            op => {
                let _phase = probe::enter(Phase::StorageRedo);
                return Ok(Some(self.store.redo(end, op).await?));
            }
        }
        Ok(None)
    }

    /// Ends a round: a restartpoint if a checkpoint newer than the control
    /// file's was replayed (see the type's docs).
    async fn restartpoint(&mut self, records_applied: u64) -> Result<Replayed, StoreError> {
        let analysis = &mut self.analysis;
        let control = analysis.control.ok_or_else(|| StoreError::BadRecord {
            lsn: analysis.start,
            detail: "a standby's data directory has no control file".into(),
        })?;
        if let Some(begin) = self.completed.filter(|begin| *begin > control.redo_lsn) {
            if !crate::planted::active(crate::planted::PlantedBug::RestartpointSkipsPages) {
                self.store.write_all_pages().await?;
            }
            probe::hit(Probe::StandbyRestartpoint);
            let moved = ControlFile {
                state: ControlState::InArchiveRecovery,
                checkpoint_lsn: begin,
                redo_lsn: begin,
                next_xid: analysis.next_xid.max(control.next_xid),
                ..control
            };
            moved.store(self.fs.as_ref(), &analysis.opts.data_dir)?;
            analysis.control = Some(moved);
        }
        Ok(Replayed {
            end: analysis.end,
            restartpoint: analysis.control.map_or(control.redo_lsn, |control| control.redo_lsn),
            last_commit_micros: analysis.last_commit_micros,
            open_transactions: analysis.losers.len(),
            records_applied,
        })
    }
}

/// `1234567` as `1,234,567`, as the documentation prints counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
