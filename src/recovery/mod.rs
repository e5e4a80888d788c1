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
use crate::wal::{read_history, Lsn, RecordKind, Wal, WalOptions, WalReader};

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
    /// Of which: analysis, redo and undo.
    pub phases: [Duration; 3],
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

/// Recovers the store in `opts` (see the module docs) and returns it open,
/// with every loser rolled back, and what recovery did. `clock` times it.
pub async fn recover(
    fs: Arc<dyn Fs>,
    clock: &dyn Clock,
    opts: &StoreOptions,
) -> Result<(Store, RecoveryReport), StoreError> {
    let started = clock.monotonic();
    let mut report = RecoveryReport::default();
    let control = ControlFile::load(fs.as_ref(), &opts.data_dir)?;
    let (start, durable_floor) = match control {
        Some(control) => (control.redo_lsn, control.checkpoint_lsn.plus(1)),
        None => (opts.wal.first_lsn(), Lsn::ZERO),
    };
    report.checkpoint_lsn = control.map(|control| control.checkpoint_lsn);
    report.redo_from = start;
    // The log is the control file's timeline's, with its history: the
    // segments below each switch point are its ancestors'.
    let mut wal_opts = opts.wal.clone();
    if let Some(control) = control.filter(|control| control.timeline > 1) {
        wal_opts.timeline = control.timeline;
        wal_opts.history = read_history(fs.as_ref(), &wal_opts.dir, control.timeline)
            .map_err(|detail| StoreError::BadHistory { detail })?
            .map(|history| history.switches)
            .unwrap_or_default();
    }
    let opts = &StoreOptions { wal: wal_opts, ..opts.clone() };

    // Phase 1: analysis.
    let mut losers: BTreeMap<u64, Loser> = BTreeMap::new();
    let mut ended: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeMap<u32, Lsn> = BTreeMap::new();
    let mut next_xid = control.map_or(1, |control| control.next_xid);
    let mut changes = 0u64;
    let mut last_commit_micros = 0;
    let mut reader = WalReader::new(fs.clone(), opts.wal.clone(), start).durable_through(durable_floor);
    loop {
        let next = {
            let _phase = probe::enter(Phase::RecoveryAnalysis);
            reader.next_record()?
        };
        let Some((lsn, record)) = next else { break };
        next_xid = next_xid.max(record.xid + 1);
        match record.kind {
            RecordKind::Commit | RecordKind::Abort => {
                last_commit_micros = last_commit_micros.max(record.commit_time_micros().unwrap_or(0));
                losers.remove(&record.xid);
                ended.insert(record.xid);
            }
            RecordKind::Data => match Op::peek(&record.payload) {
                Some((pages, undo_next)) => {
                    changes += 1;
                    for page_no in pages {
                        dirty.entry(page_no).or_insert(lsn);
                    }
                    if record.xid != 0 {
                        let xid = record.xid;
                        let loser = losers.entry(xid).or_insert_with(|| Loser {
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
                        last_commit_micros = last_commit_micros.max(newest);
                        for entry in active.into_iter().filter(|entry| !ended.contains(&entry.xid)) {
                            losers.entry(entry.xid).or_insert(Loser { entry, resumed: false });
                        }
                        for (page_no, rec_lsn) in listed {
                            dirty.entry(page_no).or_insert(rec_lsn);
                        }
                    }
                }
            },
            _ => {}
        }
    }
    let end = reader.end().expect("the reader reached the end");
    report.end_lsn = end.lsn();
    report.wal_bytes = end.lsn().0.saturating_sub(start.0);
    report.dirty_pages = dirty.len();
    report.losers = losers.len();
    let clean = control.is_some_and(|control| control.state == ControlState::ShutDown);
    report.crashed = !clean && (control.is_some() || changes > 0);
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
    }

    report.phases[0] = clock.monotonic().saturating_sub(started);

    // Phase 2: redo.
    let wal = Arc::new(Wal::open(fs.clone(), opts.wal.clone(), end)?);
    let data_path = opts.data_dir.join(DATA_FILE_NAME);
    let pool = BufferPool::open(fs.clone(), &data_path, opts.pool_bytes).map_err(BufferError::from)?;
    let system_id = control.map(|control| control.system_id).filter(|id| *id != 0).unwrap_or(opts.new_system_id);
    let mut store = Store::new(fs.clone(), &opts.data_dir, pool, wal, next_xid, opts.undo_memory, system_id)?;
    store.recovered_commit_time(last_commit_micros);
    let mut reader = WalReader::new(fs.clone(), opts.wal.clone(), start).durable_through(durable_floor);
    while let Some((lsn, record)) = reader.next_record()? {
        if record.kind != RecordKind::Data || lsn >= end.lsn() {
            continue;
        }
        let op = decode(lsn, &record.payload)?;
        if matches!(op, Op::CheckpointBegin | Op::CheckpointEnd { .. }) {
            continue;
        }
        report.records_replayed += 1;
        let _phase = probe::enter(Phase::StorageRedo);
        let applied = store.redo(lsn.plus(record.encoded_len()), op).await?;
        if applied == Redo::Applied {
            report.records_applied += 1;
        }
    }
    if report.crashed {
        report.say(format!(
            "Phase 2 (Redo): Replaying from LSN {start}... {} records replayed",
            thousands(report.records_replayed)
        ));
    }

    report.phases[1] = clock.monotonic().saturating_sub(started) - report.phases[0];

    // Phase 3: undo.
    {
        let _phase = probe::enter(Phase::RecoveryUndo);
        for (_, loser) in losers.into_iter().rev() {
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
    report.phases[2] = report.duration.saturating_sub(report.phases[0] + report.phases[1]);
    if report.crashed {
        report.say(format!(
            "Phase 3 (Undo): Rolling back {} active transactions... done",
            thousands(report.losers as u64)
        ));
        report.say(format!("Recovery complete in {:.2}s", report.duration.as_secs_f64()));
    }
    Ok((store, report))
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
