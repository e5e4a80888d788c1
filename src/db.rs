//! The engine's front door: [`Database`] opens (recovering), hands out
//! transactions, checkpoints and shuts down.
//!
//! One [`Store`] sits behind an async mutex: each call holds it only while it
//! changes pages and appends records, never while it waits for a lock or a
//! sync, so many transactions run at once and share group commits. Strict
//! two-phase locking ([`crate::txn::lock`]) keeps them serializable.
//!
//! Tables live in a catalog, itself a B+tree at page 0 whose rows map a
//! table's name to its root page and an opaque description (the SQL layer's
//! schema). Creating or dropping a table is a catalog row change, so it is
//! transactional and recovered like any other. A dropped table's pages are
//! not reused yet.
//!
//! A background checkpointer runs every `checkpoint_interval`, and early
//! when more than `max_wal_size` of WAL has been written since the last
//! checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;

use crate::archive::cleanup::BackupHistory;
use crate::archive::{ArchiveConfig, ArchiveError, ArchiveStatus, Archiver};
use crate::env::{Clock, Env};
use crate::recovery::{self, RecoveryReport, StoreOptions};
use crate::storage::{CheckpointRun, CheckpointTail, ControlFile, ControlState, Store, StoreError, Tree};
use crate::txn::lock::{LockError, LockManager};
use crate::txn::{Table, Transaction};
use crate::wal::{parse_segment_file_name, Lsn, ReplicationGate, Wal, WalCompression, WalOptions};

/// The random stream that draws a new database's identity.
const RNG_SYSTEM_ID: u64 = 0x1d;

/// How long a clean shutdown waits for the archiver's last attempt.
const SHUTDOWN_ARCHIVE_WAIT: Duration = Duration::from_secs(10);

/// The fraction of the checkpoint interval over which the background
/// checkpointer spreads its page writes (PostgreSQL's
/// `checkpoint_completion_target` default).
const CHECKPOINT_COMPLETION_TARGET: f64 = 0.9;

/// At most this many pauses in a spread checkpoint: its pages are written in
/// as many steps.
const CHECKPOINT_STEPS_MAX: usize = 64;

/// How many pages a full-speed checkpoint (an operator's, a backup's)
/// writes per hold of the store: writers wait at most for these.
const CHECKPOINT_WRITE_BATCH: usize = 32;

/// While commits are flowing, background work that gives way to them
/// rests this many times as long as its last step took, so that it takes
/// at most a `1 / (1 + YIELD_FACTOR)` share of the time (of a core, and of
/// the disk's queue) from them.
const YIELD_FACTOR: u32 = 9;

/// Paces background work (a backup's copy, its start checkpoint) behind
/// commits: after a step during which a WAL flush happened, it rests
/// `YIELD_FACTOR` times as long as the step took. With no commits, the
/// work runs at full speed.
pub struct CommitYield<'a> {
    wal: &'a Wal,
    clock: &'a dyn Clock,
    flushes_seen: u64,
    step_started: Duration,
}

impl<'a> CommitYield<'a> {
    fn new(wal: &'a Wal, clock: &'a dyn Clock) -> Self {
        let flushes_seen = wal.stats().flushes.load(Ordering::Relaxed);
        Self { wal, clock, flushes_seen, step_started: clock.monotonic() }
    }

    /// Starts timing a step.
    pub fn step(&mut self) {
        self.step_started = self.clock.monotonic();
    }

    /// Ends a step: rests if a commit was flushed since the last one ended.
    /// Returns whether it rested.
    pub async fn rest(&mut self) -> bool {
        let flushes = self.wal.stats().flushes.load(Ordering::Relaxed);
        let committing = flushes != self.flushes_seen;
        self.flushes_seen = flushes;
        if committing {
            let step = self.clock.monotonic().saturating_sub(self.step_started);
            tokio::time::sleep(step * YIELD_FACTOR).await;
        }
        committing
    }
}

/// The catalog's tree: the first page ever allocated.
pub const CATALOG: Tree = Tree { root: 0 };

/// Engine settings (the `[storage]` config section, and where files live).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (data file, control file).
    pub data_dir: PathBuf,
    /// The WAL directory.
    pub wal_dir: PathBuf,
    /// The buffer pool's size in bytes.
    pub buffer_pool_size: u64,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// How full-page images are stored in the WAL (`wal_compression`).
    pub wal_compression: WalCompression,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// WAL written since the last checkpoint that triggers one early.
    pub max_wal_size: u64,
    /// How long a transaction waits for a lock before it is rolled back.
    pub lock_timeout: Duration,
    /// Bytes of undo information a transaction keeps in memory for a fast
    /// rollback; a larger transaction's rollback reads the rest back from
    /// the WAL. Not a config key: it bounds memory, the simulator shrinks it.
    pub undo_memory: usize,
    /// The WAL's write-behind threshold, zero-fill chunk and recycled
    /// segments (see [`WalOptions`]). Not config keys either: the defaults
    /// serve, and the simulator draws small ones to reach the paths they
    /// gate.
    pub wal_write_behind_bytes: u64,
    /// See [`WalOptions::zero_fill_chunk`].
    pub wal_zero_fill_chunk: u64,
    /// See [`WalOptions::recycled_segments_max`].
    pub wal_recycled_segments_max: usize,
    /// WAL archiving, when on (`wal_archive_enabled`).
    pub archive: Option<ArchiveConfig>,
    /// Set only by a point-in-time recovery, which opens the database while
    /// its marker ([`crate::backup::pitr::PITR_MARKER`]) is there; any
    /// other open refuses a directory whose recovery did not finish.
    pub point_in_time_recovery: bool,
    /// Set on a cluster's leader: the WAL is durable only once the group
    /// holds it ([`crate::wal::Wal::with_replication`]).
    pub replication: Option<Arc<ReplicationGate>>,
}

impl EngineConfig {
    /// The defaults (SPEC.md), with files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        EngineConfig {
            data_dir: root.join("data"),
            wal_dir: root.join("wal"),
            buffer_pool_size: 128 << 20,
            wal_segment_size: 16 << 20,
            wal_compression: WalCompression::default(),
            checkpoint_interval: Duration::from_secs(30),
            max_wal_size: 512 << 20,
            lock_timeout: Duration::from_secs(10),
            undo_memory: crate::storage::UNDO_MEMORY_DEFAULT,
            wal_write_behind_bytes: crate::wal::DEFAULT_WRITE_BEHIND_BYTES,
            wal_zero_fill_chunk: crate::wal::DEFAULT_ZERO_FILL_CHUNK,
            wal_recycled_segments_max: crate::wal::DEFAULT_RECYCLED_SEGMENTS_MAX,
            archive: None,
            point_in_time_recovery: false,
            replication: None,
        }
    }

    pub(crate) fn store_options(&self, new_system_id: u64) -> StoreOptions {
        StoreOptions {
            data_dir: self.data_dir.clone(),
            wal: WalOptions {
                write_behind_bytes: self.wal_write_behind_bytes,
                zero_fill_chunk: self.wal_zero_fill_chunk,
                recycled_segments_max: self.wal_recycled_segments_max,
                compression: self.wal_compression,
                ..WalOptions::new(&self.wal_dir).with_segment_size(self.wal_segment_size)
            },
            pool_bytes: self.buffer_pool_size,
            undo_memory: self.undo_memory,
            new_system_id,
            replication: self.replication.clone(),
        }
    }
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The storage engine failed (I/O, corruption, a row too large). After
    /// an I/O error the engine has stopped (fail-stop) until restart.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transaction could not get a lock and was rolled back.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The transaction was already rolled back (a deadlock, a lock timeout,
    /// an error, or shutdown).
    #[error("transaction {xid} was rolled back earlier; only ROLLBACK is accepted now")]
    Aborted {
        /// The transaction.
        xid: u64,
    },
    /// An insert found a row with the same key.
    #[error("duplicate key in table \"{table}\": a row with this primary key already exists")]
    DuplicateKey {
        /// The table.
        table: String,
    },
    /// A table with that name exists.
    #[error("table \"{0}\" already exists")]
    TableExists(String),
    /// No table has that name.
    #[error("table \"{0}\" does not exist")]
    NoSuchTable(String),
    /// A point-in-time recovery into the data directory did not finish.
    #[error("{} holds an unfinished point-in-time recovery: {detail}", crate::backup::pitr::PITR_MARKER)]
    PitrUnfinished {
        /// What it was and how to finish it.
        detail: String,
    },
    /// The data directory is a standby's, not yet promoted.
    #[error("the data directory is a standby's (standby.signal is there): {detail}")]
    Standby {
        /// How to open it.
        detail: String,
    },
    /// The database is shutting down.
    #[error("the database is shutting down")]
    ShuttingDown,
    /// The archiver could not start (its status file is unreadable).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl DbError {
    /// Whether the client should simply retry the transaction.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Lock(_))
    }

    /// Whether the error reports damaged data on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, DbError::Store(e) if e.is_corruption())
    }
}

/// Counters since open.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Transactions committed (with a durable commit record, or read-only).
    pub committed: AtomicU64,
    /// Transactions rolled back.
    pub aborted: AtomicU64,
    /// Checkpoints completed.
    pub checkpoints: AtomicU64,
    /// Commits stamped with the previous commit's time because the wall
    /// clock read earlier (it was stepped back): commit times never go
    /// backwards in log order.
    pub commit_time_clamps: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) env: Env,
    pub(crate) store: tokio::sync::Mutex<Store>,
    pub(crate) wal: Arc<Wal>,
    pub(crate) locks: LockManager,
    pub(crate) stats: DbStats,
    pub(crate) shutting_down: AtomicBool,
    config: EngineConfig,
    last_checkpoint: Mutex<Lsn>,
    checkpoint_wanted: Arc<Notify>,
    /// Held by a checkpoint from its begin to its end: checkpoints never
    /// overlap. Taken before the store, never while holding it.
    checkpoint_serial: tokio::sync::Mutex<()>,
    /// Callers waiting for their checkpoint's turn (an operator's, a
    /// backup's, the shutdown's): while there are any, a spread checkpoint
    /// under way writes its remaining pages at full speed.
    checkpoint_waiters: AtomicU64,
    /// Wakes a spread checkpoint's pause: a caller waits for its turn, or
    /// the database is going away.
    checkpoint_hurry: Notify,
    /// WAL that running backups still need: from each LSN here on, no
    /// segment is retired ([`WalHold`]).
    wal_holds: Mutex<BTreeMap<u64, Lsn>>,
    next_hold: AtomicU64,
    /// The WAL archiver, when archiving is on.
    archiver: Option<Arc<Archiver>>,
    /// Wakes the archiver: a segment completed.
    archive_wanted: Arc<Notify>,
    /// The segment the durable log had reached when the archiver was last
    /// woken.
    durable_segno: AtomicU64,
    /// The WAL's end after the last checkpoint (and its switch): a
    /// checkpoint switches segments only if something was written since.
    quiet_end: Mutex<Lsn>,
    /// The [`Database`] handle was dropped or closed: background tasks end.
    closed: AtomicBool,
    archiver_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// Asks the checkpointer for an early checkpoint if the WAL has grown
    /// past `max_wal_size` since the last one.
    pub(crate) fn wal_written(&self) {
        let since = self.wal.end_lsn().0.saturating_sub(self.last_checkpoint.lock().map(|lsn| lsn.0).unwrap_or(0));
        if since > self.config.max_wal_size {
            self.checkpoint_wanted.notify_one();
        }
        self.wake_archiver_if_segment_completed();
    }

    fn wake_archiver_if_segment_completed(&self) {
        if self.archiver.is_some() {
            let segno = self.wal.options().segno(self.wal.durable_lsn());
            if self.durable_segno.fetch_max(segno, Ordering::Relaxed) < segno {
                self.archive_wanted.notify_one();
            }
        }
    }

    /// Stops the archiver task and waits until it has. Archiving is
    /// crash-safe at every step, so cutting it anywhere is safe: what it
    /// was doing is redone at the next start.
    async fn stop_archiver(&self) {
        self.closed.store(true, Ordering::Release);
        let task = self.archiver_task.lock().expect("archiver task lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether background work should stop: shutdown began, or the handle
    /// is gone.
    fn stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire)
    }

    /// Takes a checkpoint at once, after any checkpoint under way (which
    /// it hurries).
    async fn checkpoint(&self, state: ControlState) -> Result<Lsn, DbError> {
        let _serial = self.checkpoint_turn().await;
        if state == ControlState::ShutDown {
            // A clean shutdown's checkpoint claims that nothing needs redo:
            // no writer may slip in between its writes.
            let mut store = self.store.lock().await;
            return self.checkpoint_locked(&mut store, state).await;
        }
        self.checkpoint_batched(false).await
    }

    /// A checkpoint now, by a caller that holds its turn: it begins, writes
    /// the pages dirty at its begin a batch at a time, letting the store go
    /// between batches, and syncs the data file without the store, so that
    /// writers never wait for its writes or its sync; then it ends. Returns
    /// the checkpoint's LSN. The batches follow each other at once, or
    /// (`yield_to_commits`) give way to commits as a backup's copy does
    /// ([`CommitYield`]) until another caller waits for its turn.
    async fn checkpoint_batched(&self, yield_to_commits: bool) -> Result<Lsn, DbError> {
        let (mut run, busy, after_begin) = self.checkpoint_start().await?;
        let mut pacing = CommitYield::new(&self.wal, self.env.clock.as_ref());
        while run.pages_due() > 0 {
            pacing.step();
            self.store.lock().await.checkpoint_write(&mut run, CHECKPOINT_WRITE_BATCH).await?;
            run.start_writeback();
            let hurried = self.checkpoint_waiters.load(Ordering::Acquire) > 0 || self.stopping();
            let rested = yield_to_commits && !hurried && pacing.rest().await;
            if !rested {
                // Let writers on this thread in before the next batch.
                tokio::task::yield_now().await;
            }
        }
        run.sync_written(&self.wal)?;
        self.checkpoint_end(run, busy, after_begin).await
    }

    /// Logs the end of a checkpoint in production begun as `run` (`busy`
    /// and `after_begin` as [`Shared::checkpoint_start`] gave them), then
    /// lets the store go before finishing it: writers never wait for the
    /// end record's sync, the control file's or the WAL's retirement.
    async fn checkpoint_end(&self, run: CheckpointRun, busy: bool, after_begin: Lsn) -> Result<Lsn, DbError> {
        let (tail, logged_end, busy) = {
            let mut store = self.store.lock().await;
            // Transactions that logged during the writes count as work
            // since the last checkpoint too: their segment must be
            // switched out.
            let busy = busy || self.wal.appended_end() > after_begin;
            let tail = store.checkpoint_log_end(run, ControlState::InProduction).await?;
            (tail, self.wal.appended_end(), busy)
        };
        self.checkpoint_finish(tail, logged_end, busy).await
    }

    /// Begins a checkpoint: the run, whether anything was logged since the
    /// last one ended, and the end of the log after the begin record.
    async fn checkpoint_start(&self) -> Result<(CheckpointRun, bool, Lsn), DbError> {
        let busy = self.written_since_quiet();
        let mut store = self.store.lock().await;
        let run = store.checkpoint_begin().await?;
        Ok((run, busy, self.wal.appended_end()))
    }

    /// Waits for any checkpoint under way to end, asking it to hurry; the
    /// guard keeps the next one from starting.
    async fn checkpoint_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.checkpoint_waiters.fetch_add(1, Ordering::AcqRel);
        self.checkpoint_hurry.notify_one();
        let turn = self.checkpoint_serial.lock().await;
        self.checkpoint_waiters.fetch_sub(1, Ordering::AcqRel);
        turn
    }

    /// Whether anything was logged since the last checkpoint's end (and
    /// its segment switch).
    fn written_since_quiet(&self) -> bool {
        self.wal.appended_end() > *self.quiet_end.lock().expect("quiet_end lock")
    }

    /// A checkpoint at once, by a caller that holds its turn
    /// ([`Shared::checkpoint_turn`]) and the store.
    async fn checkpoint_locked(&self, store: &mut Store, state: ControlState) -> Result<Lsn, DbError> {
        let busy = self.written_since_quiet();
        let run = store.checkpoint_begin().await?;
        let tail = store.checkpoint_log_end(run, state).await?;
        self.checkpoint_finish(tail, self.wal.appended_end(), busy).await
    }

    /// The background checkpointer's checkpoint, spread: it begins, then
    /// writes the pages dirty at its begin a few at a time, letting the
    /// store go between steps, over `CHECKPOINT_COMPLETION_TARGET` of the
    /// checkpoint interval (as PostgreSQL's `checkpoint_completion_target`
    /// does), so that writers never wait for its writes; then it ends. A
    /// caller waiting for its turn makes it write the rest at once. The
    /// checkpoints that WAL growth past `max_wal_size` asks for are spread
    /// too, as PostgreSQL's are: `max_wal_size` is a soft bound.
    async fn spread_checkpoint(&self) -> Result<(), DbError> {
        let _serial = self.checkpoint_serial.lock().await;
        if self.stopping() {
            return Ok(());
        }
        let (mut run, busy, after_begin) = self.checkpoint_start().await?;
        let steps = run.pages_due().clamp(1, CHECKPOINT_STEPS_MAX);
        let per_step = run.pages_due().div_ceil(steps).max(1);
        let pause = self.config.checkpoint_interval.mul_f64(CHECKPOINT_COMPLETION_TARGET) / steps as u32;
        let mut paused = false;
        while run.pages_due() > 0 {
            if self.checkpoint_waiters.load(Ordering::Acquire) == 0 && !self.stopping() {
                tokio::select! {
                    biased;
                    () = self.checkpoint_hurry.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
                paused = true;
            }
            self.store.lock().await.checkpoint_write(&mut run, per_step).await?;
            run.start_writeback();
        }
        run.sync_written(&self.wal)?;
        if paused {
            crate::probe::hit(crate::probe::Probe::CheckpointSpread);
        }
        self.checkpoint_end(run, busy, after_begin).await.map(|_| ())
    }

    /// Finishes a checkpoint whose end record is logged, the log then
    /// ending at `logged_end`. It retires no segment that a [`WalHold`]
    /// covers or that is not archived yet. With archiving on, it then
    /// switches to a new segment if anything was written (`busy`) since the
    /// last checkpoint, so the archive is never more than a checkpoint
    /// interval behind.
    async fn checkpoint_finish(&self, tail: CheckpointTail, logged_end: Lsn, busy: bool) -> Result<Lsn, DbError> {
        let held_from = self.wal_holds.lock().ok().and_then(|holds| holds.values().min().copied());
        let opts = self.wal.options();
        let may_retire = |name: &str| {
            if let (Some(held), Some((_, segno))) = (held_from, parse_segment_file_name(name, opts.segment_size)) {
                if segno >= opts.segno(held) {
                    crate::probe::hit(crate::probe::Probe::BackupHeldSegment);
                    return false;
                }
            }
            self.archiver.as_ref().is_none_or(|archiver| archiver.may_remove(name))
        };
        let lsn = tail.finish(&may_retire).await?;
        if let Ok(mut last) = self.last_checkpoint.lock() {
            *last = lsn;
        }
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        // Writers may have logged since the end record: what they logged is
        // work since this checkpoint unless a switch has sent it out.
        let mut quiet = logged_end;
        if self.archiver.is_some() && busy {
            if let Some(next) = self.wal.switch_segment().await.map_err(StoreError::from)? {
                quiet = next;
            }
            self.wake_archiver_if_segment_completed();
        }
        *self.quiet_end.lock().expect("quiet_end lock") = quiet;
        Ok(lsn)
    }
}

/// An open database.
pub struct Database {
    shared: Arc<Shared>,
    recovery: RecoveryReport,
}

impl Database {
    /// Opens the database in `config`'s directories, creating it if new, and
    /// recovering it if it was not shut down cleanly (see
    /// [`recovery`]), then starts the background checkpointer.
    ///
    /// A clean start, a new database and a point-in-time recovery end with
    /// a checkpoint before this returns. A crash recovery does not wait for
    /// one (ARIES needs none: a crash before the next checkpoint replays
    /// from the same redo point again, and redo skips what pages already
    /// hold): it takes its checkpoint in the background, at full speed
    /// between writers, so clients are answered as soon as undo is done.
    pub async fn open(env: Env, config: EngineConfig) -> Result<Database, DbError> {
        // A new database's identity: its creation time in the high half, as
        // PostgreSQL's system identifier, and a random low half.
        let new_system_id =
            (env.clock.wall_micros() / 1_000_000) << 32 | u64::from(env.rng(RNG_SYSTEM_ID).random::<u32>());
        let opts = config.store_options(new_system_id);
        if !config.point_in_time_recovery {
            let marker = crate::backup::pitr::read_marker(env.fs.as_ref(), &config.data_dir)
                .map_err(|detail| DbError::PitrUnfinished { detail })?;
            if let Some(marker) = marker {
                return Err(DbError::PitrUnfinished { detail: marker.how_to_resume() });
            }
            let signal = crate::cluster::standby::read_signal(&env, &config.data_dir)
                .map_err(|detail| DbError::Standby { detail })?;
            if signal.is_some() && !crate::planted::active(crate::planted::PlantedBug::StandbySignalIgnored) {
                return Err(DbError::Standby {
                    detail: "start it with `[cluster] standby = true` to follow the archive, or promote it with \
                             `thunderdb promote`"
                        .into(),
                });
            }
        }
        for dir in [&config.data_dir, &config.wal_dir] {
            env.fs
                .create_dir_all(dir)
                .map_err(|e| StoreError::Storage(crate::storage::StorageError::io("create directory", dir, e)))?;
        }
        let (mut store, recovery) = recovery::recover(env.fs.clone(), env.clock.as_ref(), &opts).await?;
        if store.is_empty() {
            let catalog = store.create_tree().await?;
            assert_eq!(catalog, CATALOG, "the catalog is the first tree");
            tracing::info!(data_dir = %config.data_dir.display(), "initialised a new database");
        }
        let mut trees = vec![CATALOG];
        for (name, row) in store.scan(CATALOG).await? {
            trees.push(Table::decode(&name, &row).tree);
        }
        match store.reclaim_unreachable(&trees).await {
            Ok(0) => {}
            Ok(free) => {
                tracing::info!(free_pages = free, "pages no table uses will be reused before the data file grows")
            }
            // Which pages a damaged tree holds is unknown, so none is reused;
            // reading that table reports the damage.
            Err(error) if error.is_corruption() => {
                tracing::warn!(%error, "no pages will be reused: a table's pages cannot all be read");
            }
            Err(error) => return Err(error.into()),
        }
        let wal = store.wal().clone();
        let archiver = match &config.archive {
            Some(archive) => Some(Arc::new(Archiver::open(env.clone(), wal.options().clone(), archive.clone())?)),
            None => None,
        };
        let may_retire = |name: &str| archiver.as_ref().is_none_or(|archiver| archiver.may_remove(name));
        // The last checkpoint's LSN when the end-of-recovery one waits.
        let deferred = recovery.checkpoint_lsn.filter(|_| recovery.crashed && !config.point_in_time_recovery);
        let last = match deferred {
            Some(lsn) => {
                crate::probe::hit(crate::probe::Probe::RecoveryCheckpointDeferred);
                if crate::planted::active(crate::planted::PlantedBug::RecoveryMovesRedoPoint) {
                    store.planted_move_redo_point().await?;
                }
                lsn
            }
            None => store.checkpoint(ControlState::InProduction, &may_retire).await?,
        };
        let shared = Arc::new(Shared {
            env,
            store: tokio::sync::Mutex::new(store),
            wal,
            locks: LockManager::new(config.lock_timeout),
            stats: DbStats::default(),
            shutting_down: AtomicBool::new(false),
            last_checkpoint: Mutex::new(last),
            checkpoint_wanted: Arc::new(Notify::new()),
            checkpoint_serial: tokio::sync::Mutex::new(()),
            checkpoint_waiters: AtomicU64::new(0),
            checkpoint_hurry: Notify::new(),
            wal_holds: Mutex::new(BTreeMap::new()),
            next_hold: AtomicU64::new(0),
            archiver,
            archive_wanted: Arc::new(Notify::new()),
            durable_segno: AtomicU64::new(0),
            // What recovery left since the last switch is archived after
            // the first checkpoint.
            quiet_end: Mutex::new(Lsn::ZERO),
            closed: AtomicBool::new(false),
            archiver_task: Mutex::new(None),
            config,
        });
        if deferred.is_some() {
            tokio::spawn(end_of_recovery_checkpoint(Arc::downgrade(&shared)));
        } else {
            shared.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        tokio::spawn(checkpointer(Arc::downgrade(&shared), shared.checkpoint_wanted.clone()));
        tokio::spawn(segment_preparer(Arc::downgrade(&shared.wal), shared.wal.segment_wanted()));
        // A point-in-time recovery holds its new timeline's segments (the
        // retire hook) but archives nothing: a recovery cut by a crash must
        // leave no trace of its timeline in the archive. The normal start
        // that follows archives the history file, then the segments.
        if let Some(archiver) = shared.archiver.as_ref().filter(|_| !shared.config.point_in_time_recovery) {
            let task = tokio::spawn(archive_loop(Arc::downgrade(&shared), archiver.clone()));
            *shared.archiver_task.lock().expect("archiver task lock") = Some(task);
        }
        Ok(Database { shared, recovery })
    }

    /// What recovery did when this database opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(DbError::ShuttingDown);
        }
        let xid = self.shared.store.lock().await.begin();
        Ok(Transaction::new(self.shared.clone(), xid))
    }

    /// Takes a checkpoint now; returns its LSN once it is durable.
    pub async fn checkpoint(&self) -> Result<Lsn, DbError> {
        self.shared.checkpoint(ControlState::InProduction).await
    }

    /// The wall clock, in microseconds since the Unix epoch, read through
    /// the environment (so simulated runs see simulated time).
    pub fn wall_micros(&self) -> u64 {
        self.shared.env.clock.wall_micros()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
    }

    /// Counters since open.
    pub fn stats(&self) -> &DbStats {
        &self.shared.stats
    }

    /// A pacer for background work that gives way to commits.
    pub fn commit_yield(&self) -> CommitYield<'_> {
        CommitYield::new(&self.shared.wal, self.shared.env.clock.as_ref())
    }

    /// The WAL (for its position and counters).
    pub fn wal(&self) -> &Arc<Wal> {
        &self.shared.wal
    }

    /// Buffer-pool counters.
    pub async fn buffer_stats(&self) -> crate::storage::BufferStats {
        self.shared.store.lock().await.pool().stats()
    }

    /// Starts a backup: takes a checkpoint and, before the store is let go,
    /// holds the WAL from the oldest LSN a restore of this backup will read
    /// (the checkpoint's redo point, or the first record of a transaction
    /// still open, whose rollback reads back that far). Checkpoints during
    /// the backup retire no segment from there on until the hold drops.
    /// With `yield_to_commits`, the checkpoint's writes give way to commits
    /// ([`CommitYield`]), as the backup's copy does.
    pub async fn start_backup(&self, yield_to_commits: bool) -> Result<BackupStart, DbError> {
        if self.is_shutting_down() {
            return Err(DbError::ShuttingDown);
        }
        let _serial = self.shared.checkpoint_turn().await;
        // No checkpoint can retire WAL while this holds the turn, so the
        // hold is in place before any could.
        let redo = self.shared.checkpoint_batched(yield_to_commits).await?;
        let store = self.shared.store.lock().await;
        let wal_from = store.oldest_active_lsn().map_or(redo, |oldest| oldest.min(redo));
        let id = self.shared.next_hold.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut holds) = self.shared.wal_holds.lock() {
            holds.insert(id, wal_from);
        }
        let hold = WalHold { shared: self.shared.clone(), id };
        let control = ControlFile {
            state: ControlState::InProduction,
            checkpoint_lsn: redo,
            redo_lsn: redo,
            // Every id handed out since is in the log the restore replays.
            next_xid: store.next_xid(),
            timeline: self.shared.wal.options().timeline,
            wal_segment_size: self.shared.wal.options().segment_size,
            system_id: store.system_id(),
        };
        // Taken under the lock with the checkpoint done: a page free now
        // that a tree takes later is logged whole when it is taken (a
        // fresh page's first record is its image), after the redo point.
        let free_pages = crate::backup::manifest::page_ranges(store.free_page_numbers());
        Ok(BackupStart { control, wal_from, hold, free_pages })
    }

    /// Ends a backup's copy: makes every record appended so far durable and
    /// returns the end of the log, the backup's end LSN.
    pub async fn end_backup(&self) -> Result<Lsn, DbError> {
        let end = self.shared.wal.end_lsn();
        self.shared.wal.flush(end).await.map_err(StoreError::from)?;
        Ok(end)
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The environment the engine runs in.
    pub fn env(&self) -> &Env {
        &self.shared.env
    }

    /// Leaves a backup's history record in the WAL archive (when archiving
    /// is on), then applies the archive's retention. Failures are logged:
    /// the backup itself is complete, and without its record retention
    /// only keeps more.
    pub async fn record_backup(&self, history: &BackupHistory) {
        let Some(archiver) = &self.shared.archiver else { return };
        let bytes = serde_json::to_vec_pretty(history).expect("the record serializes");
        let name = history.file_name();
        match archiver.archive_file(&name, &bytes).await {
            Ok(()) => tracing::info!(file = %name, "backup history record archived"),
            Err(error) => tracing::warn!(file = %name, %error, "archiving the backup's history record failed"),
        }
        if let Err(error) = archiver.apply_retention() {
            tracing::warn!(%error, "applying wal_archive_retention failed");
        }
    }

    /// WAL archiving's status, when archiving is on.
    pub fn archive_status(&self) -> Option<ArchiveStatus> {
        self.shared.archiver.as_ref().map(|archiver| archiver.status(self.shared.wal.durable_lsn()))
    }

    /// Closes the handle and waits for the background archiver to stop, so
    /// that nothing of this database touches the disk any more (the
    /// simulator closes before it crashes the disk). Dropping a handle
    /// stops background work too, without waiting.
    pub async fn close(self) {
        self.shared.stop_archiver().await;
    }

    /// Shuts down cleanly: refuses new transactions, rolls back those still
    /// open, and takes a final checkpoint marked as a clean shutdown, so the
    /// next open needs no crash recovery. With archiving on, it then tries
    /// once (for up to 10 s) to archive what that checkpoint completed;
    /// what is left is archived at the next start.
    pub async fn shutdown(&self) -> Result<(), DbError> {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.checkpoint_wanted.notify_one();
        self.shared.checkpoint_hurry.notify_one();
        {
            let mut store = self.shared.store.lock().await;
            for xid in store.active_xids() {
                store.rollback(xid).await?;
                self.shared.stats.aborted.fetch_add(1, Ordering::Relaxed);
            }
            drop(store);
        }
        self.shared.checkpoint(ControlState::ShutDown).await?;
        if let Some(archiver) = self.shared.archiver.as_ref().filter(|_| !self.shared.config.point_in_time_recovery) {
            self.shared.stop_archiver().await;
            // Failures are logged and counted; the next start retries. A
            // hanging command does not hold the shutdown for long.
            let attempt = archiver.archive_ready(&self.shared.wal, &|| false);
            if tokio::time::timeout(SHUTDOWN_ARCHIVE_WAIT, attempt).await.is_err() {
                tracing::warn!("archiving at shutdown did not finish in time; the next start goes on with it");
            }
        }
        Ok(())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.checkpoint_wanted.notify_one();
        self.shared.checkpoint_hurry.notify_one();
        if let Some(task) = self.shared.archiver_task.lock().ok().and_then(|mut task| task.take()) {
            task.abort();
        }
    }
}

/// Where a backup starts: see [`Database::start_backup`].
pub struct BackupStart {
    /// The control file a restore starts from: the start checkpoint's.
    pub control: ControlFile,
    /// The oldest WAL a restore reads: the start checkpoint's redo point,
    /// or an older first record of a transaction open at it.
    pub wal_from: Lsn,
    /// Keeps that WAL from being retired until dropped.
    pub hold: WalHold,
    /// The data file's pages no tree reached at the start, as ranges
    /// ([`crate::backup::manifest::page_ranges`]): their bytes are garbage
    /// a restore never reads, so the copy holds them as zeroes.
    pub free_pages: Vec<[u32; 2]>,
}

/// Keeps a range of WAL from being retired while it lives.
pub struct WalHold {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WalHold {
    fn drop(&mut self) {
        if let Ok(mut holds) = self.shared.wal_holds.lock() {
            holds.remove(&self.id);
        }
    }
}

/// Archives complete segments as they appear, until the database is
/// dropped, closed or shut down; after a failure, waits with exponential
/// backoff before trying again.
async fn archive_loop(shared: Weak<Shared>, archiver: Arc<Archiver>) {
    let config = archiver.config().clone();
    let mut delay = config.retry_min;
    let mut first = true;
    loop {
        let (result, wanted) = {
            let Some(shared) = shared.upgrade() else { return };
            if shared.stopping() {
                return;
            }
            if std::mem::take(&mut first) && archiver.resuming(&shared.wal) {
                crate::probe::hit(crate::probe::Probe::ArchiveResumed);
                tracing::info!("archiving WAL segments left from before the restart");
            }
            (archiver.archive_ready(&shared.wal, &|| shared.stopping()).await, shared.archive_wanted.clone())
        };
        match result {
            Ok(_) => {
                delay = config.retry_min;
                // Biased: an unbiased select draws its branch order from
                // the runtime's thread RNG, which the simulator does not
                // seed, and the order decides whether a wake-up is kept.
                tokio::select! {
                    biased;
                    () = wanted.notified() => {}
                    () = tokio::time::sleep(config.poll) => {}
                }
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(config.retry_max);
            }
        }
    }
}

/// The checkpoint that ends a crash recovery, taken after the database has
/// opened: at full speed, letting writers in between its batches. A failure
/// stops the engine, as any checkpoint's does.
async fn end_of_recovery_checkpoint(shared: Weak<Shared>) {
    let Some(shared) = shared.upgrade() else { return };
    if shared.stopping() {
        return;
    }
    if let Err(error) = shared.checkpoint(ControlState::InProduction).await {
        tracing::error!(%error, "the end-of-recovery checkpoint failed; the engine has stopped");
    }
}

/// Creates each WAL segment before the writer needs it
/// ([`Wal::prepare_next_segment`]), so commits never wait for a zero-fill.
/// Ends when the WAL is dropped or stops.
async fn segment_preparer(wal: Weak<Wal>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let Some(wal) = wal.upgrade() else { return };
        if let Err(error) = crate::env::blocking(|| wal.prepare_next_segment()) {
            if !matches!(error, crate::wal::WalError::Stopped { .. }) {
                tracing::error!(%error, "creating the next WAL segment failed; the engine has stopped");
            }
            return;
        }
    }
}

/// Checkpoints every `checkpoint_interval`, or when asked (WAL growth),
/// until the database is dropped or shuts down. A failed checkpoint means
/// the engine has stopped: the checkpointer stops too.
async fn checkpointer(shared: Weak<Shared>, wanted: Arc<Notify>) {
    // The last checkpoint's start: the interval runs from there, so a
    // spread checkpoint's writes take up its interval, not add to it.
    let mut started: Option<Duration> = None;
    loop {
        let Some(wait) = shared.upgrade().map(|shared| {
            let since = started.map_or(Duration::ZERO, |at| shared.env.clock.monotonic().saturating_sub(at));
            shared.config.checkpoint_interval.saturating_sub(since)
        }) else {
            return;
        };
        tokio::select! {
            biased;
            () = wanted.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        if shared.stopping() {
            return;
        }
        started = Some(shared.env.clock.monotonic());
        if let Err(error) = shared.spread_checkpoint().await {
            tracing::error!(%error, "checkpoint failed; the engine has stopped");
            return;
        }
    }
}
