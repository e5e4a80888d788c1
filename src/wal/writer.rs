//! Appending to the WAL: the insert buffer, group commit, segment rotation
//! and the fail-stop latch.
//!
//! Appending encodes a record into an in-memory buffer and assigns its LSN;
//! no I/O happens. Flushing makes everything up to an LSN durable. Flushes
//! use group commit: the first caller to take the I/O lock becomes the
//! leader, writes everything appended so far, syncs once, and publishes the
//! new durable LSN; callers queued behind it find their records already
//! durable and return without I/O.
//!
//! Invariants:
//!
//! - **Commit rule:** [`Wal::flush`] returns `Ok` only once every byte before
//!   the requested LSN has been synced. A commit is acknowledged after that.
//!   On a cluster's leader ([`Wal::with_replication`]), a commit
//!   ([`Wal::flush_commit`]) is acknowledged once the Raft group has
//!   committed it, whose logs hold its bytes durably, without waiting for
//!   the leader's own sync; [`Wal::durable_lsn`], which pages, checkpoints
//!   and the archiver honour, needs both the leader's sync and its durable
//!   record of the group's commit.
//! - **Sector isolation:** every flush ends on a 512-byte sector boundary
//!   (a `Pad` record fills the gap), so a later torn write can never damage a
//!   sector holding acknowledged bytes.
//! - **Fail-stop:** the first failed write or sync latches the WAL. Every
//!   later call fails with [`WalError::Stopped`] until the database is
//!   reopened and recovery runs. A failed fsync is never retried: Linux may
//!   already have dropped the data while a retry would report success.
//! - **Crash-safe segments:** a new segment is zero-filled under a temporary
//!   name, synced, renamed into place, and its directory synced before any
//!   record is written to it. A crash leaves either no segment or a complete
//!   empty one.
//! - **Segments ahead:** each time the writer starts a segment it asks for
//!   the next one ([`Wal::segment_wanted`]); a background task creates it
//!   ([`Wal::prepare_next_segment`]), so committers do not wait for a 16 MiB
//!   zero-fill and its sync. Creating, recycling and removing segment files
//!   happen under one lock, and the writer opens a segment it has not yet
//!   used under that lock too, so it never writes into a segment whose
//!   directory entry is not yet durable (a crash could drop the entry and
//!   the acknowledged records in it).
//! - **Recycling:** a segment is retired only when the caller says crash
//!   recovery no longer needs it, and only if `may_remove` agrees (the
//!   archiver's hook: a segment waits until it is archived). A retired
//!   segment is renamed to a future segment's name instead of being deleted,
//!   so appends overwrite allocated blocks rather than zero-filling new ones.
//!   Its stale records never validate there, because each record's CRC
//!   covers its own LSN.
//! - **Durable cut:** on open, the bytes after the end of the valid log are
//!   zeroed and later segments removed, durably, before anything is appended,
//!   so a record from before a crash can never reappear after new writes.
//!   When the log ends mid-sector, the Resume record that links past the
//!   torn sector is made durable before `open` returns: otherwise the zeroes
//!   could complete the failed record into a valid one (found by seed 1624).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::WalError;
use super::lsn::Lsn;
use super::reader::LogEnd;
use super::record::{Record, RecordKind, HEADER_LEN, MAX_PAYLOAD_LEN};
use super::replication::ReplicationGate;
use super::segment::{parse_segment_file_name, WalOptions};
use crate::env::{self, File, Fs, SECTOR_SIZE};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};

const TEMP_PREFIX: &str = "xlogtemp.";

/// Counters describing the WAL's work since it was opened.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes written to segment files (records and padding).
    pub bytes_written: AtomicU64,
    /// Successful group flushes (each ends in one sync per touched segment).
    pub flushes: AtomicU64,
    /// Segment files created (zero-filled), by the writer or ahead of it.
    pub segments_created: AtomicU64,
    /// Of those, the ones created ahead of the writer, in the background.
    pub segments_prepared: AtomicU64,
    /// Retired segments renamed to future names for reuse.
    pub segments_recycled: AtomicU64,
    /// Retired segments removed.
    pub segments_removed: AtomicU64,
}

/// What [`Wal::retire_segments`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetireReport {
    /// Segments renamed to future names, ready for reuse.
    pub recycled: Vec<String>,
    /// Segments removed.
    pub removed: Vec<String>,
    /// Segments kept because `may_remove` said no (e.g. not yet archived).
    pub held: Vec<String>,
}

struct InsertBuffer {
    /// The LSN of `bytes[0]`.
    start: Lsn,
    bytes: Vec<u8>,
    /// Where the next record goes.
    next: Lsn,
    /// The end of the last record appended through [`Wal::append`] (not
    /// the WAL's own padding, switch or resume records).
    appended_end: Lsn,
}

struct SegmentWriter {
    /// Every byte before this has been written (not necessarily synced).
    written: Lsn,
    open: BTreeMap<u64, Arc<dyn File>>,
    /// Written since their last sync. A segment leaves this set only once
    /// a sync of it has returned `Ok`, so a flush abandoned mid-sync leaves
    /// the next flush to sync it again.
    unsynced: BTreeSet<u64>,
}

/// The write-ahead log, open for appending.
pub struct Wal {
    fs: Arc<dyn Fs>,
    opts: WalOptions,
    insert: Mutex<InsertBuffer>,
    io: tokio::sync::Mutex<SegmentWriter>,
    /// Held while segment files are created, renamed, removed, or opened
    /// for the first write (lock order: `io`, then this).
    files: Mutex<()>,
    /// Notified when the writer starts a segment: the next one is wanted.
    segment_wanted: Arc<tokio::sync::Notify>,
    durable_lsn: AtomicU64,
    /// Set on a cluster's leader: durable means durable on a majority.
    gate: Option<Arc<ReplicationGate>>,
    /// The fail-stop latch; shared with a sync running on another thread.
    stopped: Arc<Mutex<Option<String>>>,
    /// A standby's: nothing may be appended or flushed.
    read_only: bool,
    stats: WalStats,
}

impl Wal {
    /// Opens the WAL for appending after the valid log that a reader found to
    /// end at `end`. The tail after `end` is cut off durably first.
    pub fn open(fs: Arc<dyn Fs>, opts: WalOptions, end: LogEnd) -> Result<Wal, WalError> {
        opts.validate()?;
        let dir = &opts.dir;
        fs.create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
        let end = end.lsn();
        let resume_at =
            if active(PlantedBug::RewriteTornSector) { end } else { Lsn(end.0.next_multiple_of(SECTOR_SIZE)) };
        if !active(PlantedBug::SkipTailCut) {
            cut_tail(fs.as_ref(), &opts, end, resume_at)?;
        }
        let mut insert = InsertBuffer { start: resume_at, bytes: Vec::new(), next: resume_at, appended_end: end };
        if resume_at != end {
            // The sector holding `end` also holds records recovery has read
            // (now synced). It is never rewritten; the log continues at the
            // next sector, linked by a Resume record.
            let resume =
                Record { kind: RecordKind::Resume, xid: 0, prev_lsn: Lsn::ZERO, payload: end.0.to_le_bytes().to_vec() };
            let len = resume.encode_into(&mut insert.bytes, resume_at, opts.timeline, end);
            insert.next = resume_at.plus(len);
        }
        let writer = SegmentWriter { written: resume_at, open: BTreeMap::new(), unsynced: BTreeSet::new() };
        let wal = Wal {
            fs,
            opts,
            insert: Mutex::new(insert),
            io: tokio::sync::Mutex::new(writer),
            files: Mutex::new(()),
            segment_wanted: Arc::new(tokio::sync::Notify::new()),
            durable_lsn: AtomicU64::new(end.0),
            gate: None,
            stopped: Arc::new(Mutex::new(None)),
            read_only: false,
            stats: WalStats::default(),
        };
        if resume_at != end {
            // The Resume record must be durable before anything else: until
            // it is, the record that failed at `end` can still validate if
            // the bytes after the torn sector are completed by zeroes (the
            // cut, or a fresh segment) that happen to be its true contents.
            // Padded to a whole sector, so no later write touches it.
            let mut writer = wal.io.try_lock().expect("no one else holds a WAL that is still opening");
            wal.write_buffer(&mut writer, true)?;
            wal.sync_here(&mut writer)?;
            wal.set_durable(writer.written);
        }
        wal.segment_wanted.notify_one();
        Ok(wal)
    }

    /// Opens the WAL of a standby that replays archived segments: the log
    /// read so far ends at `end` and is durable (it was fetched whole), and
    /// nothing may be appended. Nothing on disk is touched: the tail after
    /// `end` may be the first part of a record whose rest arrives with the
    /// next segment. Every append and flush past `end` fails.
    pub fn read_only(fs: Arc<dyn Fs>, opts: WalOptions, end: Lsn) -> Wal {
        let insert = InsertBuffer { start: end, bytes: Vec::new(), next: end, appended_end: end };
        let writer = SegmentWriter { written: end, open: BTreeMap::new(), unsynced: BTreeSet::new() };
        Wal {
            fs,
            opts,
            insert: Mutex::new(insert),
            io: tokio::sync::Mutex::new(writer),
            files: Mutex::new(()),
            segment_wanted: Arc::new(tokio::sync::Notify::new()),
            durable_lsn: AtomicU64::new(end.0),
            gate: None,
            stopped: Arc::new(Mutex::new(None)),
            read_only: true,
            stats: WalStats::default(),
        }
    }

    /// A standby's read-only WAL grew: the log through `end` is on disk,
    /// so pages that changes before it made may be written.
    pub fn extend_read_only(&self, end: Lsn) {
        debug_assert!(self.read_only, "only a standby's read-only WAL grows by replay");
        let mut insert = self.lock_insert();
        if end > insert.next {
            *insert = InsertBuffer { start: end, bytes: Vec::new(), next: end, appended_end: end };
        }
        self.durable_lsn.fetch_max(end.0, Ordering::Release);
    }

    /// The options the WAL was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    /// Every byte before this LSN is durable: on this node's disk, and on
    /// a cluster's leader also on a majority of the nodes
    /// ([`Wal::with_replication`]).
    pub fn durable_lsn(&self) -> Lsn {
        match &self.gate {
            Some(gate) if !active(PlantedBug::ReplicaAckOnLocalFlush) => self.local_durable().min(gate.replicated()),
            _ => self.local_durable(),
        }
    }

    /// Every byte before this LSN is durable on this node's disk.
    pub fn local_durable(&self) -> Lsn {
        Lsn(self.durable_lsn.load(Ordering::Acquire))
    }

    /// Makes this WAL a cluster leader's: [`Wal::flush`] returns only once
    /// `gate` says a majority holds what it flushed, and
    /// [`Wal::durable_lsn`] (which pages, checkpoints and the archiver
    /// honour) stops there too, so nothing outside the log ever depends on
    /// WAL that a failover could drop. The gate learns each local flush.
    pub fn with_replication(mut self, gate: Option<Arc<ReplicationGate>>) -> Self {
        if let Some(gate) = &gate {
            gate.set_local(self.local_durable());
        }
        self.gate = gate;
        self
    }

    fn set_durable(&self, lsn: Lsn) {
        self.durable_lsn.store(lsn.0, Ordering::Release);
        if let Some(gate) = &self.gate {
            gate.set_local(lsn);
        }
    }

    /// Where the next record will be appended.
    pub fn end_lsn(&self) -> Lsn {
        self.lock_insert().next
    }

    /// The end of the last record appended since open (the end of the
    /// recovered log before any): unlike [`Wal::end_lsn`], padding that a
    /// flush adds or a segment switch does not move it, so it tells whether
    /// anything was logged since a given point.
    pub fn appended_end(&self) -> Lsn {
        self.lock_insert().appended_end
    }

    /// Counters since open.
    pub fn stats(&self) -> &WalStats {
        &self.stats
    }

    /// Appends a record to the log buffer and returns its LSN and the LSN just
    /// past it. The record is not durable until [`flush`](Self::flush) covers
    /// the returned end. An error means the record was not appended; once it
    /// has its LSN, the append returns `Ok` even if writing the buffer behind
    /// fails (that latches the WAL, and the next flush reports it).
    pub async fn append(&self, record: &Record) -> Result<(Lsn, Lsn), WalError> {
        self.check_running()?;
        if record.payload.len() > MAX_PAYLOAD_LEN {
            return Err(WalError::RecordTooLarge { len: record.payload.len(), max: MAX_PAYLOAD_LEN });
        }
        assert!(!record.kind.is_internal(), "{:?} records are the WAL's own", record.kind);
        let (lsn, end, buffered) = {
            let mut insert = self.lock_insert();
            let lsn = insert.next;
            let len = record.encode_into(&mut insert.bytes, lsn, self.opts.timeline, self.local_durable());
            insert.next = lsn.plus(len);
            insert.appended_end = insert.next;
            (lsn, insert.next, insert.bytes.len())
        };
        if buffered as u64 >= self.opts.write_behind_bytes {
            // The record has its LSN and is in the log: any flush may make
            // it durable, so the append has succeeded whatever happens to
            // this write. A failure latches the WAL, and the flush the
            // caller needs reports it (found by seed 46: an append that
            // failed here had already been written and synced by another
            // committer's flush, and a caller told "not appended" would
            // never expect to see it again).
            probe::hit(Probe::WriteBehind);
            let mut writer = self.io.lock().await;
            if self.check_running().is_ok() {
                if let Err(error) = self.write_buffer(&mut writer, false) {
                    self.stop(error);
                }
            }
        }
        Ok((lsn, end))
    }

    /// Makes every record before `upto` durable. Concurrent callers share one
    /// sync (group commit). On a cluster's leader it then waits until a
    /// majority holds them too, and this node has recorded so
    /// ([`Wal::durable_lsn`] covers them: a page may depend on them); if
    /// the node loses its leadership first, it fails and the caller's
    /// outcome is unknown, as after a failed sync.
    pub async fn flush(&self, upto: Lsn) -> Result<Lsn, WalError> {
        self.flush_to(upto, true).await
    }

    /// [`Wal::flush`] for a commit's acknowledgement. On a cluster's leader
    /// it writes the records and returns once a majority holds them: the
    /// group's Raft logs hold the same bytes, durably, and a restarted node
    /// writes its WAL again from its own ([`crate::cluster::replica`]). So
    /// the leader's own sync is left to the next flush that needs it (a
    /// page's, a checkpoint's) or to [`Wal::sync_written`], and what this
    /// returns is not for the WAL rule.
    pub async fn flush_commit(&self, upto: Lsn) -> Result<Lsn, WalError> {
        self.flush_to(upto, false).await
    }

    async fn flush_to(&self, upto: Lsn, recorded: bool) -> Result<Lsn, WalError> {
        let local = match &self.gate {
            Some(_) if !recorded => self.write_local(upto).await?,
            _ => self.flush_local(upto).await?,
        };
        match &self.gate {
            None => Ok(local),
            Some(_) if active(PlantedBug::ReplicaAckOnLocalFlush) => Ok(local),
            Some(gate) => {
                if gate.committed() < upto {
                    probe::hit(Probe::FlushWaitsForMajority);
                }
                let majority = gate.wait(upto, recorded, || self.check_running()).await?;
                Ok(majority.min(local))
            }
        }
    }

    /// On a cluster's leader, makes every byte written for shipping durable
    /// on this disk too (the leader's periodic sync: commits do not wait
    /// for it, see [`Wal::flush_commit`]).
    pub async fn sync_written(&self) -> Result<Lsn, WalError> {
        match &self.gate {
            Some(gate) => self.flush_local(gate.written()).await,
            None => Ok(self.local_durable()),
        }
    }

    /// On a cluster's leader, writes every record before `upto` to the
    /// segments in a whole flush's run (sector-padded, so its bytes never
    /// change) and hands it to the gate for shipping, without a sync.
    /// Concurrent callers share one write. Returns where the written log
    /// ends.
    async fn write_local(&self, upto: Lsn) -> Result<Lsn, WalError> {
        let gate = self.gate.as_ref().expect("only a leader's WAL ships unsynced runs");
        if gate.written() >= upto {
            return Ok(gate.written());
        }
        let mut writer = self.io.lock().await;
        self.check_running()?;
        if gate.written() >= upto {
            probe::hit(Probe::GroupCommitFollower);
            return Ok(gate.written());
        }
        // As in `flush_local`: one write serves the committers ready to run.
        tokio::task::yield_now().await;
        self.write_run(&mut writer)?;
        Ok(writer.written)
    }

    /// Writes the buffer as a flush's run (sector-padded) and, on a
    /// cluster's leader, hands it to the gate for shipping.
    fn write_run(&self, writer: &mut SegmentWriter) -> Result<(), WalError> {
        self.write_buffer(writer, true).map_err(|e| self.stop(e))?;
        if let Some(gate) = &self.gate {
            gate.set_written(writer.written);
        }
        Ok(())
    }

    async fn flush_local(&self, upto: Lsn) -> Result<Lsn, WalError> {
        if self.local_durable() >= upto {
            return Ok(self.local_durable());
        }
        let mut writer = self.io.lock().await;
        self.check_running()?;
        if self.local_durable() >= upto {
            probe::hit(Probe::GroupCommitFollower);
            return Ok(self.local_durable());
        }
        if writer.written > self.local_durable() {
            // A write-behind put records out without syncing them: written is
            // not durable, and only the sync below makes it so.
            probe::hit(Probe::FlushFoundWrittenNotDurable);
            if active(PlantedBug::AckOnWritten) && writer.written >= upto {
                return Ok(writer.written);
            }
        }
        // Let committers that are ready to run append before the leader
        // takes the buffer, so one sync serves them too.
        tokio::task::yield_now().await;
        let target = self.lock_insert().next;
        assert!(upto <= target, "flush({upto}) past the end of the log ({target})");
        // Shipped while it syncs (the replication module's docs).
        self.write_run(&mut writer)?;
        // The sync takes time on a real disk, and other tasks run meanwhile.
        // Yielding here gives the simulator that window too, so a bug that
        // leaks state between the write and the sync can be observed.
        if active(PlantedBug::AckBeforeSync) {
            self.set_durable(writer.written);
        }
        tokio::task::yield_now().await;
        if let Err(error) = self.sync(&mut writer).await {
            if active(PlantedBug::IgnoreFsyncError) {
                tracing::warn!(%error, "planted bug: ignoring a failed sync");
                writer.unsynced.clear();
            } else if active(PlantedBug::RetryFsync) {
                self.sync(&mut writer).await.map_err(|e| self.stop(e))?;
            } else {
                return Err(self.stop(error));
            }
        }
        let durable = writer.written;
        assert!(durable >= upto, "the flush covered {upto}");
        assert!(
            durable.0 % SECTOR_SIZE == 0 || active(PlantedBug::NoSectorPadding),
            "flushes end on sector boundaries"
        );
        self.set_durable(durable);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(durable)
    }

    /// Appends a commit record and waits until it is durable. Returns its LSN.
    pub async fn commit(&self, xid: u64, prev_lsn: Lsn, commit_time_micros: u64) -> Result<Lsn, WalError> {
        let (lsn, end) = self.append(&Record::commit(xid, prev_lsn, commit_time_micros)).await?;
        self.flush_commit(end).await?;
        Ok(lsn)
    }

    /// Ends the segment being written early, so that it is complete and can
    /// be archived: appends a `Switch` record, makes the log durable through
    /// it, and moves the next append to the next segment's start (the rest
    /// of the segment is never written; the reader jumps over it). Returns
    /// where the next append goes (the next segment's start), or `None`
    /// when the log already stands at a segment's start.
    pub async fn switch_segment(&self) -> Result<Option<Lsn>, WalError> {
        let mut writer = self.io.lock().await;
        self.check_running()?;
        let (start, bytes, boundary) = {
            let mut insert = self.lock_insert();
            let at = insert.next;
            if self.opts.offset(at) == 0 {
                return Ok(None);
            }
            let switch = Record { kind: RecordKind::Switch, xid: 0, prev_lsn: Lsn::ZERO, payload: Vec::new() };
            let len = switch.encode_into(&mut insert.bytes, at, self.opts.timeline, self.local_durable());
            // No padding: nothing is ever written after it in this segment,
            // so no later write can tear its sector.
            let boundary = Lsn(at.plus(len).0.next_multiple_of(self.opts.segment_size));
            let start = insert.start;
            (insert.start, insert.next) = (boundary, boundary);
            (start, std::mem::take(&mut insert.bytes), boundary)
        };
        assert_eq!(start, writer.written, "the log is written without gaps");
        self.write_out(&mut writer, start, &bytes).map_err(|e| self.stop(e))?;
        writer.written = boundary;
        self.sync(&mut writer).await.map_err(|e| self.stop(e))?;
        self.set_durable(boundary);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        probe::hit(Probe::SegmentSwitched);
        drop(writer);
        // On a cluster's leader, the segment is complete (for the archiver,
        // and for whoever waits on it) once the group holds it.
        self.flush(boundary).await?;
        Ok(Some(boundary))
    }

    /// Retires the segments that lie wholly before `needed_from`, the oldest
    /// LSN crash recovery still needs (a checkpoint's redo point). Segments
    /// for which `may_remove(name)` is false are held (the archiver's hook).
    /// Up to `keep_ready` retired segments are renamed to the next unused
    /// segment names for reuse; the rest are removed. The renames and removals
    /// are durable when this returns.
    pub async fn retire_segments(
        &self,
        needed_from: Lsn,
        keep_ready: usize,
        may_remove: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<RetireReport, WalError> {
        let writer = self.io.lock().await;
        self.check_running()?;
        let _files = self.lock_files();
        let _phase = probe::enter(Phase::WalRetire);
        let first_needed = self.opts.segno(needed_from) + u64::from(active(PlantedBug::RecycleNeededSegment));
        assert!(needed_from <= self.local_durable(), "retiring WAL that is not durable yet: {needed_from}");
        let dir = &self.opts.dir;
        let names = self.fs.list(dir).map_err(|e| WalError::io("list", dir, e))?;
        let ours: Vec<(u64, &String)> = names
            .iter()
            .filter_map(|name| match parse_segment_file_name(name, self.opts.segment_size) {
                Some((timeline, segno)) if self.opts.owns_segment(timeline, segno) => Some((segno, name)),
                _ => None,
            })
            .collect();
        let mut next_free =
            ours.iter().map(|(segno, _)| segno + 1).max().unwrap_or(0).max(self.opts.segno(writer.written) + 1);
        let ready = ours.iter().filter(|(segno, _)| *segno > self.opts.segno(writer.written)).count();
        let mut report = RetireReport::default();
        for (segno, name) in ours.into_iter().filter(|(segno, _)| *segno < first_needed) {
            assert!(segno < self.opts.segno(writer.written), "retiring segment {name}, which is being written");
            if !may_remove(name) {
                report.held.push(name.clone());
                continue;
            }
            let path = dir.join(name);
            if ready + report.recycled.len() < keep_ready {
                let future = self.opts.path(next_free);
                self.fs.rename(&path, &future).map_err(|e| self.stop(WalError::io("rename", &path, e)))?;
                report.recycled.push(self.opts.file_name(next_free));
                next_free += 1;
            } else {
                self.fs.remove(&path).map_err(|e| self.stop(WalError::io("remove", &path, e)))?;
                report.removed.push(name.clone());
            }
        }
        if !report.recycled.is_empty() || !report.removed.is_empty() {
            self.fs.sync_dir(dir).map_err(|e| self.stop(WalError::io("sync directory", dir, e)))?;
        }
        self.stats.segments_recycled.fetch_add(report.recycled.len() as u64, Ordering::Relaxed);
        self.stats.segments_removed.fetch_add(report.removed.len() as u64, Ordering::Relaxed);
        Ok(report)
    }

    /// What a background task waits on: notified when the writer starts a
    /// segment (and once when the WAL opens), so the next one is wanted.
    /// Dropping the WAL notifies it too, so the task can see it is gone.
    pub fn segment_wanted(&self) -> Arc<tokio::sync::Notify> {
        self.segment_wanted.clone()
    }

    /// Creates the segment after the one being appended to, if it does not
    /// exist yet (neither created before nor recycled), so the writer finds
    /// it ready. Returns whether it created one. Blocking I/O: 16 MiB of
    /// zeroes and two syncs. A failure latches the WAL, as it would have
    /// when the writer created the segment itself.
    pub fn prepare_next_segment(&self) -> Result<bool, WalError> {
        self.check_running()?;
        let next = self.opts.segno(self.lock_insert().next) + 1;
        let _files = self.lock_files();
        self.check_running()?;
        let path = self.opts.path(next);
        if self.fs.exists(&path).map_err(|e| self.stop(WalError::io("stat", &path, e)))? {
            return Ok(false);
        }
        create_segment(self.fs.as_ref(), &self.opts, next).map_err(|e| self.stop(e))?;
        self.stats.segments_created.fetch_add(1, Ordering::Relaxed);
        self.stats.segments_prepared.fetch_add(1, Ordering::Relaxed);
        probe::hit(Probe::SegmentPrepared);
        Ok(true)
    }

    fn lock_insert(&self) -> MutexGuard<'_, InsertBuffer> {
        self.insert.lock().expect("WAL insert lock poisoned")
    }

    fn lock_files(&self) -> MutexGuard<'_, ()> {
        self.files.lock().expect("WAL segment-files lock poisoned")
    }

    /// `Ok` while the WAL runs; [`WalError::Stopped`] once an I/O error has
    /// latched it. Readers of pages check it too: after a fail-stop, pages
    /// may hold changes whose undo could not be logged, so nothing is served.
    pub fn check_running(&self) -> Result<(), WalError> {
        if self.read_only {
            return Err(WalError::Stopped { cause: "a standby's WAL is read-only until it is promoted".into() });
        }
        self.check_not_halted()
    }

    /// `Ok` unless an I/O error or [`Wal::halt`] stopped the engine (a
    /// standby's read-only WAL passes: its replay writes pages). Checked
    /// before every page write.
    pub fn check_not_halted(&self) -> Result<(), WalError> {
        match &*self.stopped.lock().expect("WAL latch poisoned") {
            Some(cause) => Err(WalError::Stopped { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Stops the engine (fail-stop) for a reason outside the WAL, e.g. a
    /// rollback that could not finish: from now on every append, flush and
    /// page read fails until restart, when recovery finishes the job.
    pub fn halt(&self, cause: &str) {
        let mut stopped = self.stopped.lock().expect("WAL latch poisoned");
        if stopped.is_none() {
            tracing::error!(cause, "engine stopped; restart to recover");
            *stopped = Some(cause.to_string());
        }
        if let Some(gate) = &self.gate {
            gate.wake();
        }
    }

    /// Latches the WAL on its first I/O error.
    fn stop(&self, error: WalError) -> WalError {
        latch(&self.stopped, &error);
        if let Some(gate) = &self.gate {
            gate.wake();
        }
        error
    }

    /// Writes out the insert buffer. With `pad`, first pads the log to a
    /// sector boundary so that the flush ends on one.
    fn write_buffer(&self, writer: &mut SegmentWriter, pad: bool) -> Result<(), WalError> {
        let (start, bytes) = {
            let mut insert = self.lock_insert();
            if pad {
                pad_to_sector(&mut insert, self.opts.timeline, self.local_durable());
            }
            let start = insert.start;
            insert.start = insert.next;
            (start, std::mem::take(&mut insert.bytes))
        };
        assert_eq!(start, writer.written, "the log is written without gaps");
        self.write_out(writer, start, &bytes)
    }

    /// Writes `bytes` at `start` (where the written log ends) across
    /// segments, creating them as needed; not synced.
    fn write_out(&self, writer: &mut SegmentWriter, start: Lsn, bytes: &[u8]) -> Result<(), WalError> {
        let _phase = probe::enter(Phase::WalWrite);
        if !bytes.is_empty() && self.opts.segno(start) != self.opts.segno(start.plus(bytes.len() as u64 - 1)) {
            probe::hit(Probe::GroupCommitSpansSegments);
        }
        let mut pos = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let segno = self.opts.segno(pos);
            let offset = self.opts.offset(pos);
            let take = rest.len().min((self.opts.segment_size - offset) as usize);
            let path = self.opts.path(segno);
            let file = self.segment_file(writer, segno)?;
            file.write_all_at(&rest[..take], offset).map_err(|e| WalError::io("write", &path, e))?;
            writer.unsynced.insert(segno);
            rest = &rest[take..];
            pos = pos.plus(take as u64);
        }
        writer.written = pos;
        self.stats.bytes_written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs every segment written since its last sync, on a blocking
    /// thread ([`env::offload`]) if the disk is real ([`Fs::syncs_block`]),
    /// so that the sessions sharing this thread run (and append the next
    /// group's commits) meanwhile. A failure latches the WAL from that
    /// thread, so that it latches even if this flush is abandoned before
    /// the sync returns.
    async fn sync(&self, writer: &mut SegmentWriter) -> Result<(), WalError> {
        if !self.fs.syncs_block() {
            return self.sync_here(writer);
        }
        let files: Vec<(u64, Arc<dyn File>)> = writer
            .unsynced
            .iter()
            .map(|&segno| (segno, writer.open.get(&segno).expect("unsynced segments stay open").clone()))
            .collect();
        let (opts, stopped, latches) = (self.opts.clone(), self.stopped.clone(), latches());
        let files = env::offload(move || {
            sync_files(files.iter().map(|(segno, file)| (*segno, &**file)), &opts, &stopped, latches).map(|()| files)
        })
        .await?;
        self.synced(writer, files.into_iter().map(|(segno, _)| segno));
        Ok(())
    }

    /// [`Wal::sync`] on this thread: on the simulated disk, and for the
    /// WAL's opening.
    fn sync_here(&self, writer: &mut SegmentWriter) -> Result<(), WalError> {
        let files = writer
            .unsynced
            .iter()
            .map(|&segno| (segno, &**writer.open.get(&segno).expect("unsynced segments stay open")));
        sync_files(files, &self.opts, &self.stopped, latches())?;
        let synced = std::mem::take(&mut writer.unsynced);
        self.synced(writer, synced);
        Ok(())
    }

    /// Marks `segnos` synced, and closes every segment before the one
    /// being written that has nothing left to sync.
    fn synced(&self, writer: &mut SegmentWriter, segnos: impl IntoIterator<Item = u64>) {
        for segno in segnos {
            writer.unsynced.remove(&segno);
        }
        let current = self.opts.segno(writer.written);
        writer.open.retain(|segno, _| *segno >= current || writer.unsynced.contains(segno));
    }

    fn segment_file<'w>(&self, writer: &'w mut SegmentWriter, segno: u64) -> Result<&'w dyn File, WalError> {
        let rotating = segno > self.opts.segno(writer.written);
        let file: &'w dyn File = match writer.open.entry(segno) {
            std::collections::btree_map::Entry::Occupied(entry) => &**entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let path = self.opts.path(segno);
                // Under the files lock: a segment being created ahead is
                // either not yet in place or in place with its directory
                // synced, and a failure to prepare it has latched the WAL.
                let _files = self.lock_files();
                self.check_running()?;
                let file = match self.fs.open(&path) {
                    Ok(file) => {
                        if rotating {
                            probe::hit(Probe::SegmentReused);
                        }
                        file
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.stats.segments_created.fetch_add(1, Ordering::Relaxed);
                        create_segment(self.fs.as_ref(), &self.opts, segno)?
                    }
                    Err(e) => return Err(WalError::io("open", path, e)),
                };
                if rotating {
                    self.segment_wanted.notify_one();
                }
                &**entry.insert(Arc::from(file))
            }
        };
        Ok(file)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Wakes the task that prepares segments, so it sees the WAL gone.
        self.segment_wanted.notify_one();
    }
}

/// Syncs `files` in order. The first failure latches `stopped` when
/// `latches`.
fn sync_files<'f>(
    files: impl IntoIterator<Item = (u64, &'f dyn File)>,
    opts: &WalOptions,
    stopped: &Mutex<Option<String>>,
    latches: bool,
) -> Result<(), WalError> {
    let _phase = probe::enter(Phase::WalSync);
    for (segno, file) in files {
        if let Err(e) = file.sync_data() {
            let error = WalError::io("sync", opts.path(segno), e);
            if latches {
                latch(stopped, &error);
            }
            return Err(error);
        }
    }
    Ok(())
}

/// Whether a failed sync latches the WAL where it failed: always, but for
/// the planted bugs that mishandle the failure themselves.
fn latches() -> bool {
    !active(PlantedBug::IgnoreFsyncError) && !active(PlantedBug::RetryFsync)
}

/// Latches `stopped` on the WAL's first I/O error.
fn latch(stopped: &Mutex<Option<String>>, error: &WalError) {
    let mut stopped = stopped.lock().expect("WAL latch poisoned");
    if stopped.is_none() {
        tracing::error!(%error, "WAL stopped: the outcome of a write or sync is unknown; restart to recover");
        *stopped = Some(error.to_string());
    }
}

/// Fills the log up to the next sector boundary with a Pad record.
fn pad_to_sector(insert: &mut InsertBuffer, timeline: u32, durable: Lsn) {
    let gap = insert.next.0.next_multiple_of(SECTOR_SIZE) - insert.next.0;
    if gap == 0 || active(PlantedBug::NoSectorPadding) {
        return;
    }
    let len = if gap < HEADER_LEN as u64 { gap + SECTOR_SIZE } else { gap };
    let pad =
        Record { kind: RecordKind::Pad, xid: 0, prev_lsn: Lsn::ZERO, payload: vec![0; len as usize - HEADER_LEN] };
    let at = insert.next;
    let written = pad.encode_into(&mut insert.bytes, at, timeline, durable);
    assert_eq!(written, len, "a pad fills the gap exactly");
    insert.next = at.plus(written);
}

/// Creates segment `segno` crash-safely: zero-filled under a temporary name,
/// synced, renamed into place, directory synced.
pub(super) fn create_segment(fs: &dyn Fs, opts: &WalOptions, segno: u64) -> Result<Box<dyn File>, WalError> {
    let _phase = probe::enter(Phase::WalRotate);
    let temp = opts.dir.join(format!("{TEMP_PREFIX}{segno}"));
    let path = opts.path(segno);
    if fs.exists(&temp).map_err(|e| WalError::io("stat", &temp, e))? {
        fs.remove(&temp).map_err(|e| WalError::io("remove", &temp, e))?;
    }
    let file = fs.create(&temp).map_err(|e| WalError::io("create", &temp, e))?;
    let zeroes = vec![0u8; opts.zero_fill_chunk.min(opts.segment_size) as usize];
    if zeroes.len() < opts.segment_size as usize {
        probe::hit(Probe::SegmentZeroFilledInChunks);
    }
    let mut offset = 0;
    while offset < opts.segment_size {
        let take = zeroes.len().min((opts.segment_size - offset) as usize);
        file.write_all_at(&zeroes[..take], offset).map_err(|e| WalError::io("zero-fill", &temp, e))?;
        offset += take as u64;
    }
    file.sync_data().map_err(|e| WalError::io("sync", &temp, e))?;
    fs.rename(&temp, &path).map_err(|e| WalError::io("rename", &temp, e))?;
    if !active(PlantedBug::SkipSegmentDirSync) {
        fs.sync_dir(&opts.dir).map_err(|e| WalError::io("sync directory", &opts.dir, e))?;
    }
    tracing::debug!(segment = %opts.file_name(segno), "created WAL segment");
    Ok(file)
}

/// How much of a segment's tail [`cut_tail`] reads or zeroes at a time.
const TAIL_PIECE: u64 = 1 << 20;

/// Makes the valid log durable up to `end`, then durably removes everything
/// from `resume_at` on: zeroes the rest of its segment and deletes later
/// segments and leftover temporary files. Returns whether anything was
/// there to remove.
pub(super) fn cut_tail(fs: &dyn Fs, opts: &WalOptions, end: Lsn, resume_at: Lsn) -> Result<bool, WalError> {
    let _phase = probe::enter(Phase::WalTailCut);
    let dir = &opts.dir;
    let names = fs.list(dir).map_err(|e| WalError::io("list", dir, e))?;
    let removing = probe::enter(Phase::WalTailCutRemove);
    let mut removed = false;
    for name in &names {
        let later = match parse_segment_file_name(name, opts.segment_size) {
            Some((timeline, segno)) => timeline == opts.timeline && segno > opts.segno(resume_at),
            None => name.starts_with(TEMP_PREFIX),
        };
        if later {
            let path = dir.join(name);
            fs.remove(&path).map_err(|e| WalError::io("remove", &path, e))?;
            removed = true;
        }
    }
    if removed && !active(PlantedBug::SkipTailCutDirSync) {
        fs.sync_dir(dir).map_err(|e| WalError::io("sync directory", dir, e))?;
    }
    drop(removing);
    for segno in BTreeSet::from([opts.segno(end), opts.segno(resume_at)]) {
        let path = opts.path(segno);
        let file = match fs.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(WalError::io("open", path, e)),
        };
        let from = if segno == opts.segno(resume_at) { opts.offset(resume_at) } else { opts.segment_size };
        let len = file.len().map_err(|e| WalError::io("stat", &path, e))?;
        // A piece at a time: a whole segment's tail would cost as much
        // fresh memory (each page faulted in and zeroed) as reading it.
        let mut piece = vec![0; TAIL_PIECE.min(len.saturating_sub(from)) as usize];
        let pieces =
            |from: u64| (from..len).step_by(TAIL_PIECE as usize).map(move |at| (at, (len - at).min(TAIL_PIECE)));
        let mut torn = false;
        for (at, n) in pieces(from) {
            let piece = &mut piece[..n as usize];
            file.read_exact_at(piece, at).map_err(|e| WalError::io("read", &path, e))?;
            torn = piece.iter().any(|b| *b != 0);
            if torn {
                break;
            }
        }
        if torn {
            removed = true;
            probe::hit(Probe::TailZeroed);
            tracing::info!(segment = %opts.file_name(segno), lsn = %resume_at, "cutting off the torn WAL tail");
            piece.fill(0);
            for (at, n) in pieces(from) {
                file.write_all_at(&piece[..n as usize], at).map_err(|e| WalError::io("zero", &path, e))?;
            }
        }
        // Also makes what recovery read before `end` durable.
        file.sync_data().map_err(|e| WalError::io("sync", &path, e))?;
    }
    Ok(removed)
}
