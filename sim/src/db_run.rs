//! One seeded run of the transactional engine: concurrent sessions run a mix
//! of workloads through [`Database`] on a faulty disk, crashes cut in at
//! random I/O boundaries (recovery included), and after every recovery the
//! oracle compares every table with the model.
//!
//! Workloads (each session picks one per transaction, by swarm weights):
//!
//! - **kv:** a few puts, deletes and reads on one table, sometimes after a
//!   range delete (a scan, then a delete of each row found); a read must see
//!   the last committed value (serializable reads), or the transaction's own
//!   write. Some transactions roll back.
//! - **bank:** transfers between accounts (read both, write both: lock
//!   upgrades, so deadlocks are common and their victims retry) and audits
//!   that scan the table and check the total is conserved.
//! - **long:** a hundred or more writes, a checkpoint in the middle, then a
//!   rollback, a commit, or nothing at all (the client goes silent and the
//!   crash cuts it off, leaving recovery to undo it).
//! - **churn:** create a table with a few rows, or drop one.
//! - **large rows:** rows near the 1,996-byte limit.
//! - **sql:** the bank again, through a SQL [`Session`](thunderdb::sql::Session)
//!   on its own table: `BEGIN`, two `SELECT`s checked against the model, two
//!   `UPDATE … SET balance = balance ± n`, then `COMMIT` (or `ROLLBACK`); or
//!   an audit, `SELECT count(*), sum(balance)`. Deadlock victims retry.
//!
//! Swarm draws per seed: sessions (1 to 6), the buffer pool (4 pages to
//! 256), WAL segment size, `max_wal_size`, `checkpoint_interval`, key
//! length, the workload weights, the fault kinds and the crash schedule.
//! Sessions sleep a few simulated milliseconds between transactions, so
//! the interval checkpointer fires in simulated time, and now and then step
//! the wall clock up to a minute either way, as NTP does.
//!
//! After each crash the oracle requires: recovery succeeds or fails only on
//! an injected I/O error (never corruption); the state equals the model
//! after a prefix of the commit order holding every acknowledged commit;
//! the bank's total is conserved. The run ends with a liveness phase: faults
//! off, the database must open, commit, shut down cleanly and reopen
//! without crash recovery, holding exactly what was committed.

use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::pitr_sim::{PitrBase, PitrCheck};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::db::{Database, DbError, EngineConfig};
use thunderdb::env::{AtRestLoss, Clock, Env, FaultConfig, Fs, SimClock, SimDisk, CRASH_MESSAGE, SECTOR_SIZE};
use thunderdb::probe::Phase;
use thunderdb::sql::index;
use thunderdb::sql::types::{decode_row, encode_key_part, encode_row, Column, IndexDef, Schema};
use thunderdb::sql::{Output, SqlError, SqlType, Value};
use thunderdb::storage::{ControlFile, StoreError, DATA_FILE_NAME, PAGE_SIZE};
use thunderdb::txn::{Table, Transaction};
use thunderdb::wal::{Lsn, WalCompression, WalOptions};
use thunderdb_workloads::commit_times::{read_commit_times, CommitTimes, CommitWindow};
use thunderdb_workloads::db::{bank_total, describe, short, DbModel, Rows, State, Write};

use thunderdb::backup::manifest::Manifest;
use thunderdb::backup::restore::restore_files;
use thunderdb::backup::verify::{read_manifest, verify, Report, Scratch};
use thunderdb::backup::{take, BackupRequest, Progress};

use crate::archive_sim::{self, plant_foreign, ArchiveOracle, ArchivePlan, SimCommands};
use crate::wal_run::{draw_write_behind, draw_zero_fill_chunk, knobs_seed, SeedFailure, SeedOutcome};

const CYCLES: u32 = 5;
/// Point-in-time recoveries per seed that has a backup and an archive,
/// each to its own target, with its own fault, on a disk of its own.
const PITR_ATTEMPTS: u64 = 6;
/// Standbys started from each point-in-time recovery seed's backup.
const STANDBY_ATTEMPTS: u64 = 8;

/// Where a cycle's backup goes, on a disk of its own.
const BACKUP_DIR: &str = "/backups/full";
const TXNS_PER_SESSION: u32 = 12;
const ACCOUNTS: u16 = 12;
const OPENING_BALANCE: i64 = 1_000;
const KV: &str = "kv";
const BANK: &str = "bank";
/// The SQL workload's accounts: `(id BIGINT PRIMARY KEY, balance BIGINT)`.
const LEDGER: &str = "ledger";
/// The ledger's secondary index, on its balance.
const LEDGER_INDEX: &str = "ledger_balance";
/// The largest key plus value a row may have.
const ROW_MAX: usize = 1996;

#[derive(Clone)]
struct Swarm {
    config: EngineConfig,
    sessions: u32,
    long_keys: bool,
    value_max: usize,
    /// Weights of kv, bank, long, churn, large rows, sql.
    weights: [u32; 6],
    faults: FaultConfig,
    /// Lose durable sectors at rest after some crashes, in the WAL below
    /// the evidence point or in the data file.
    lose_at_rest: bool,
    /// An aimed schedule, or none.
    aim: Aim,
    /// Crash in the `n`th WAL operation of a checkpoint's segment
    /// retirement, after its control file is durable: redo then starts from
    /// a checkpoint that transactions ran through (a spread one), whose
    /// pages dirtied since are not on disk.
    crash_after_checkpoint: Option<u64>,
    /// Take an online backup during each cycle's work, or not.
    backup: Option<BackupPlan>,
    /// Archive WAL, or not.
    archive: Option<ArchivePlan>,
}

/// How a cycle's online backup runs: into a disk of its own, with power
/// loss on, sometimes cut by a crash of that disk.
#[derive(Debug, Clone, Copy)]
struct BackupPlan {
    /// Simulated milliseconds after the sessions start.
    delay_ms: u64,
    include_wal: bool,
    compress: bool,
    /// Crash the backup's disk after this many of its operations.
    crash_after: Option<u64>,
    /// Seeds the backup disk.
    disk_seed: u64,
    /// Bytes per copy step, and a pause between steps: small ones make a
    /// backup span checkpoints and many commits.
    chunk_bytes: usize,
    pause_ms: u64,
    /// Checkpoints run every few milliseconds while the backup copies, so
    /// it must hold its WAL and keep its own start checkpoint.
    checkpoints_during: bool,
    /// No injected I/O errors on the live disk (crashes and power loss
    /// stay), so that the backup has a chance to complete.
    calm: bool,
}

/// Nine seeds in ten of those that do not archive crash right after checkpoints (see
/// `Swarm::crash_after_checkpoint`). On a stream of its own.
fn draw_crash_after_checkpoint(seed: u64) -> Option<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0xc4a5_u64.rotate_left(16));
    rng.random_bool(0.9).then(|| rng.random_range(0..2))
}

/// How page images are logged: a quarter of the seeds store them
/// uncompressed (still without their hole). On a stream of its own, so the
/// other draws of old seeds stay.
fn draw_wal_compression(seed: u64) -> WalCompression {
    let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0x1c0e_u64.rotate_left(32));
    if rng.random_bool(0.25) {
        WalCompression::Off
    } else {
        WalCompression::Zstd
    }
}

impl BackupPlan {
    /// Drawn on a stream of its own, so the other draws of old seeds stay.
    fn draw(seed: u64) -> Option<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0xb4c6_u64.rotate_left(40));
        rng.random_bool(0.6).then(|| BackupPlan {
            delay_ms: rng.random_range(0..20),
            include_wal: rng.random_bool(0.85),
            compress: rng.random_bool(0.5),
            crash_after: rng.random_bool(0.25).then(|| rng.random_range(0..120)),
            disk_seed: rng.random(),
            chunk_bytes: [PAGE_SIZE, PAGE_SIZE, 2 * PAGE_SIZE, 1 << 20][rng.random_range(0..4)],
            pause_ms: [0, 1, 5, 20][rng.random_range(0..4)],
            checkpoints_during: rng.random_bool(0.5),
            calm: rng.random_bool(0.5),
        })
    }
}

impl BackupPlan {
    /// For an archiving seed without a backup of its own: one with neither
    /// crashes of its disk nor calm (the live disk keeps its faults), so
    /// that a point-in-time recovery has a base.
    fn draw_for_pitr(seed: u64) -> Option<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0x9171_u64.rotate_left(48));
        Some(BackupPlan {
            delay_ms: rng.random_range(0..20),
            include_wal: rng.random_bool(0.7),
            compress: rng.random_bool(0.5),
            crash_after: None,
            disk_seed: rng.random(),
            chunk_bytes: [PAGE_SIZE, 2 * PAGE_SIZE, 1 << 20][rng.random_range(0..3)],
            pause_ms: [0, 1, 5][rng.random_range(0..3)],
            checkpoints_during: rng.random_bool(0.5),
            calm: false,
        })
    }
}

/// Schedules that steer a seed at a rare state the oracle must judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    None,
    /// A transaction writes, a checkpoint runs, and the transaction rolls
    /// back: each compensation record is its page's first change after the
    /// checkpoint. Then the power fails while the next checkpoint writes
    /// those pages out, with torn writes on.
    RollbackAfterCheckpoint,
    /// Data-file syncs during a checkpoint's flush fail often.
    CheckpointSyncError,
    /// A transaction changes a page that is clean but imaged since the last
    /// checkpoint, a checkpoint begins right after that change, and the
    /// transaction commits after it; then the power fails.
    CheckpointBeforeCommit,
}

impl Swarm {
    /// Draws the swarm options; `knobs` draws the size thresholds that gate
    /// code paths, on a stream of its own (see `wal_run`).
    fn draw(rng: &mut ChaCha8Rng, knobs: &mut ChaCha8Rng) -> Self {
        let mut config = EngineConfig::new("/thunderdb");
        let pool_pages = [4, 16, 256][rng.random_range(0..3)];
        config.buffer_pool_size = pool_pages * 8192;
        // Tied to the pool's draw (no draw of its own, so regression seeds
        // keep their scenarios): with tiny pools, rollbacks read some or
        // all of their undo records back from the WAL.
        config.undo_memory = match pool_pages {
            4 => 0,
            16 => 2048,
            _ => thunderdb::storage::UNDO_MEMORY_DEFAULT,
        };
        config.wal_segment_size = [4096, 65536][rng.random_range(0..2)];
        config.max_wal_size = [16 << 10, 256 << 10, 64 << 20][rng.random_range(0..3)];
        config.checkpoint_interval = Duration::from_millis([20, 200, 30_000][rng.random_range(0..3)]);
        config.lock_timeout = Duration::from_millis(500);
        config.wal_write_behind_bytes = draw_write_behind(knobs);
        config.wal_zero_fill_chunk = draw_zero_fill_chunk(knobs, config.wal_segment_size);
        config.wal_recycled_segments_max = knobs.random_range(0..=4);
        let lose_at_rest = knobs.random_bool(0.3);
        let aim = match knobs.random_range(0..100) {
            0..30 => Aim::RollbackAfterCheckpoint,
            30..42 => Aim::CheckpointSyncError,
            42..67 => Aim::CheckpointBeforeCommit,
            _ => Aim::None,
        };
        if matches!(aim, Aim::RollbackAfterCheckpoint | Aim::CheckpointBeforeCommit) {
            config.buffer_pool_size = 4 * PAGE_SIZE as u64;
        }
        let mut weight = |max| if rng.random_bool(0.8) { rng.random_range(1..=max) } else { 0 };
        let mut weights = [weight(6), weight(6), weight(2), weight(2), weight(2), weight(4)];
        if weights.iter().all(|w| *w == 0) {
            weights[0] = 1;
        }
        let mut faults = FaultConfig::swarm(rng);
        if aim == Aim::RollbackAfterCheckpoint {
            faults.torn_writes = true;
        }
        Swarm {
            config,
            sessions: rng.random_range(1..=6),
            long_keys: rng.random_bool(0.3),
            value_max: [64, 400][rng.random_range(0..2)],
            weights,
            faults,
            lose_at_rest,
            aim,
            crash_after_checkpoint: None,
            backup: None,
            archive: None,
        }
    }

    fn key(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        self.key_of(rng.random_range(0..KEY_SPACE))
    }

    fn key_of(&self, id: u16) -> Vec<u8> {
        let mut key = id.to_be_bytes().to_vec();
        if self.long_keys {
            key.resize(300, b'k');
        }
        key
    }
}

/// Random keys are drawn from `0..KEY_SPACE`; loads in key order append
/// past it.
const KEY_SPACE: u16 = 300;

/// Rows per `insert_many` call of a load in key order.
const LOAD_BATCH: usize = 24;

/// What the sessions share: the model, and the first failure any saw.
#[derive(Default)]
struct Shared {
    model: DbModel,
    failure: Option<(&'static str, String)>,
    next_table: u32,
    /// Loads in key order have written keys up to `KEY_SPACE + appended`.
    appended: u16,
    commits: u64,
    acknowledged: u64,
    /// Where each acknowledged commit's time must lie.
    times: CommitTimes,
    /// The log below this LSN has durable evidence after it: an
    /// acknowledged commit appended when the log was already durable past
    /// it, so damage there must be reported, never taken for the end.
    evidence: Lsn,
    /// Wall-clock steps so far, and the highest time the clock had shown
    /// before the last one.
    wall_steps: u64,
    wall_high_micros: u64,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fail(shared: &SharedRef, check: &'static str, detail: String) {
    lock(shared).failure.get_or_insert((check, detail));
}

struct Run {
    seed: u64,
    rng: ChaCha8Rng,
    disk: SimDisk,
    clock: Arc<SimClock>,
    swarm: Swarm,
    shared: SharedRef,
    crashes: u64,
    recoveries: u64,
    checkpoints: u64,
    /// Draws the at-rest damage, on a stream of its own.
    knobs: ChaCha8Rng,
    /// Durable data was lost at rest: a corruption report is now a right
    /// outcome (only a restore repairs it), and it ends the run.
    damaged: bool,
    corruption_detected: bool,
    /// The archive command, in command mode.
    commands: Option<Arc<SimCommands>>,
    archive_oracle: ArchiveOracle,
    /// Every commit that survived, in log order: the point-in-time
    /// recovery oracle's reference.
    history: DbModel,
    /// A completed backup's files, for the point-in-time recovery oracle
    /// (archiving seeds).
    pitr_base: Option<PitrBase>,
}

/// Runs one seed of the transactional workloads to its verdict.
pub async fn run_db_seed(seed: u64) -> Result<SeedOutcome, SeedFailure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut knobs = ChaCha8Rng::seed_from_u64(knobs_seed(seed));
    let mut swarm = Swarm { backup: BackupPlan::draw(seed), ..Swarm::draw(&mut rng, &mut knobs) };
    swarm.archive = ArchivePlan::draw(seed);
    swarm.config.archive = swarm.archive.map(|plan| plan.config());
    swarm.config.wal_compression = draw_wal_compression(seed);
    // Not on archiving seeds: the point-in-time recovery oracle needs their
    // cycles to run long (an open error, like a crash, cuts one short).
    swarm.crash_after_checkpoint = draw_crash_after_checkpoint(seed).filter(|_| swarm.archive.is_none());
    swarm.faults.open_error_rate =
        if swarm.archive.is_some() { 0.0 } else { crate::wal_run::draw_open_error_rate(seed) };
    if swarm.archive.is_some() && swarm.backup.is_none() {
        // Every archiving seed takes a backup too: the point-in-time
        // recovery oracle starts from one.
        swarm.backup = BackupPlan::draw_for_pitr(seed);
    }
    if swarm.backup.is_some_and(|plan| plan.calm) {
        // Injected I/O errors stop the engine (fail-stop), and a backup of a
        // stopped engine fails: half the backup seeds leave only crashes
        // and power loss on the live disk, so that backups complete.
        let faults = &mut swarm.faults;
        (faults.fsync_error_rate, faults.read_error_rate, faults.write_error_rate, faults.no_space_rate) =
            (0.0, 0.0, 0.0, 0.0);
        faults.open_error_rate = 0.0;
    }

    let disk = SimDisk::new(rng.random(), swarm.faults.clone());
    let commands = swarm.archive.filter(|plan| plan.command).map(|plan| Arc::new(SimCommands::new(&disk, plan)));
    if let Some(segno) = swarm.archive.and_then(|plan| plan.foreign_segno) {
        // Set up before the run, faults off.
        disk.set_faults(FaultConfig::none());
        plant_foreign(disk.fs().as_ref(), segno, swarm.config.wal_segment_size);
        disk.set_faults(swarm.faults.clone());
    }
    let mut run = Run {
        seed,
        rng,
        disk,
        clock: Arc::new(SimClock::new(1_700_000_000_000_000)),
        swarm,
        shared: SharedRef::default(),
        crashes: 0,
        recoveries: 0,
        checkpoints: 0,
        knobs,
        damaged: false,
        corruption_detected: false,
        commands,
        archive_oracle: ArchiveOracle::default(),
        history: DbModel::default(),
        pitr_base: None,
    };
    for _ in 0..CYCLES {
        let countdown =
            if run.rng.random_bool(0.2) { run.rng.random_range(0..40) } else { run.rng.random_range(50..1000) };
        // A backup reads the live disk too, and needs the database to live
        // long enough to finish now and then.
        let countdown = if run.swarm.backup.is_some() { countdown * 4 } else { countdown };
        run.disk.set_crash_countdown(Some(countdown));
        if run.swarm.aim == Aim::CheckpointSyncError {
            let rate = run.knobs.random_range(0.1..0.6);
            run.disk.set_phase_fsync_error(Some((Phase::CheckpointFlush, rate)));
        }
        if let Some(db) = run.open().await? {
            // Armed once the open's own checkpoint is done.
            if let Some(ops) = run.swarm.crash_after_checkpoint {
                run.disk.set_crash_in_phase(Phase::WalRetire, ops);
            }
            run.work(db).await?;
        }
        if run.corruption_detected {
            break;
        }
        run.disk.crash();
        run.crashes += 1;
        run.maybe_lose_at_rest();
    }
    if !run.corruption_detected {
        run.liveness().await?;
    }
    let shared = lock(&run.shared);
    Ok(SeedOutcome {
        seed,
        trace_hash: run.disk.trace_hash(),
        faults: run.disk.fault_counts(),
        crashes: run.crashes,
        recoveries: run.recoveries,
        records_accepted: shared.commits,
        records_acknowledged: shared.acknowledged,
        segments_retired: 0,
        checkpoints: run.checkpoints,
        corruption_detected: run.corruption_detected,
        io_ops: run.disk.op_count(),
        trace: Arc::new(run.disk.trace()),
    })
}

impl Run {
    fn fail(&self, check: &'static str, detail: String) -> SeedFailure {
        SeedFailure { seed: self.seed, check, detail }
    }

    fn env(&self) -> Env {
        let env = Env::new(self.disk.fs(), self.clock.clone(), self.seed);
        match &self.commands {
            Some(commands) => env.with_commands(commands.clone()),
            None => env,
        }
    }

    /// The archive oracle's check at an open (see `archive_sim`).
    fn observe_archive(&mut self, db: &Database) -> Result<(), SeedFailure> {
        // Once the live WAL lost sectors at rest, a segment the archiver had
        // shipped but not yet recorded (a crash in between) is shipped again
        // after the restart as it now reads: the archiver does not check
        // records' checksums before shipping (docs/simulation.md).
        if self.swarm.archive.is_none() || self.damaged {
            return Ok(());
        }
        let opts = db.wal().options();
        let complete_below = opts.segno(db.wal().durable_lsn());
        let fs = self.disk.fs();
        self.archive_oracle
            .observe(
                fs.as_ref(),
                &opts.dir,
                opts.segment_size,
                complete_below,
                self.commands.as_deref(),
                self.swarm.archive.and_then(|plan| plan.foreign_segno),
            )
            .map_err(|(check, detail)| self.fail(check, detail))
    }

    /// Opens (recovering) and checks the state against the model. An I/O
    /// error (injected, or the countdown) ends the attempt with `None`;
    /// corruption or a model mismatch fails the seed.
    async fn open(&mut self) -> Result<Option<Database>, SeedFailure> {
        // What the crash left of the log since the last checkpoint, read
        // before recovery's own checkpoint moves the redo point past it.
        match self.logged_commit_times() {
            Ok((redo, logged)) => {
                let mut shared = lock(&self.shared);
                shared.times.check(&logged).map_err(|detail| self.fail("commit_times", detail))?;
                shared.times.forget_before(redo);
            }
            Err(e) if e.is_corruption() => return self.corruption(e.to_string()),
            // An injected error or the crash countdown: recovery meets it too.
            Err(_) => {}
        }
        let db = match Database::open(self.env(), self.swarm.config.clone()).await {
            Ok(db) => db,
            Err(e) if e.is_corruption() => return self.corruption(e.to_string()),
            Err(_) => return Ok(None),
        };
        let found = match read_state(&db).await {
            Ok(found) => found,
            Err(e) if e.is_corruption() => return self.corruption(e.to_string()),
            Err(_) => return Ok(None),
        };
        {
            let shared = lock(&self.shared);
            let applied = shared.model.check(&found).map_err(|detail| self.fail("durable_prefix", detail))?;
            shared.model.record_survivors(applied, &mut self.history);
        }
        if let Some(bank) = found.get(BANK) {
            let total = bank_total(bank).map_err(|detail| self.fail("bank_conserved", detail))?;
            if total != i64::from(ACCOUNTS) * OPENING_BALANCE {
                return Err(self.fail("bank_conserved", format!("the accounts hold {total} after recovery")));
            }
        }
        if let Some(ledger) = found.get(LEDGER) {
            let mut total = 0;
            for value in ledger.values() {
                total += ledger_balance(value).map_err(|detail| self.fail("bank_conserved", detail))?;
            }
            if total != i64::from(ACCOUNTS) * OPENING_BALANCE {
                return Err(self.fail("bank_conserved", format!("the SQL ledger holds {total} after recovery")));
            }
        }
        self.observe_archive(&db)?;
        let fresh = !found.contains_key(KV);
        lock(&self.shared).model.adopt(found);
        self.recoveries += 1;
        if fresh && setup(&db, &self.shared, &self.clock).await.is_err() {
            return Ok(None);
        }
        Ok(Some(db))
    }

    /// Corruption was reported: the right outcome after durable data was
    /// lost at rest (the run ends there), a failed seed otherwise.
    fn corruption(&mut self, detail: String) -> Result<Option<Database>, SeedFailure> {
        if !self.damaged {
            return Err(self.fail("no_corruption", detail));
        }
        self.corruption_detected = true;
        Ok(None)
    }

    /// With the swarm's loss at rest on, now and then loses durable sectors:
    /// in the WAL, one to four sectors below the evidence point (zeroed or
    /// stale); in the data file, a whole page or one sector zeroed. Recovery must rebuild the page from its logged image or
    /// report corruption, never read a zeroed page as an empty one, and
    /// never take the damaged log for its end.
    fn maybe_lose_at_rest(&mut self) {
        if !self.swarm.lose_at_rest || !self.knobs.random_bool(0.5) {
            return;
        }
        let config = &self.swarm.config;
        let loss = if self.knobs.random_bool(0.5) { AtRestLoss::Zeroed } else { AtRestLoss::Stale };
        if self.knobs.random_bool(0.5) {
            let opts = WalOptions::new(&config.wal_dir).with_segment_size(config.wal_segment_size);
            let evidence = lock(&self.shared).evidence;
            if evidence <= opts.first_lsn() {
                return;
            }
            // Within the last few segments below the evidence point, which
            // is a flush's end and so a sector boundary.
            let from = Lsn(evidence.0.saturating_sub(4 * opts.segment_size).max(opts.first_lsn().0));
            let at = Lsn(self.knobs.random_range(from.0..evidence.0));
            let sectors = self.knobs.random_range(1..=4u64).min((evidence.0 - at.0).div_ceil(SECTOR_SIZE));
            let in_segment = (opts.segment_size - opts.offset(at)).div_ceil(SECTOR_SIZE);
            let path = opts.path(opts.segno(at));
            self.damaged |= self.disk.lose_at_rest(&path, opts.offset(at), sectors.min(in_segment), loss);
        } else {
            let path = config.data_dir.join(DATA_FILE_NAME);
            let Some(len) = self.disk.durable_image(&path).map(|image| image.len() as u64) else { return };
            if len < PAGE_SIZE as u64 {
                return;
            }
            let page = self.knobs.random_range(0..len / PAGE_SIZE as u64);
            let sector = self.knobs.random_range(0..PAGE_SIZE as u64 / SECTOR_SIZE);
            // Zeroes only: a stale sector can be a whole stale page (when the
            // page's last write changed only that sector), which no checksum
            // sees (seed 1002157).
            let (offset, sectors) = if self.knobs.random_bool(0.5) {
                (page * PAGE_SIZE as u64, PAGE_SIZE as u64 / SECTOR_SIZE)
            } else {
                (page * PAGE_SIZE as u64 + sector * SECTOR_SIZE, 1)
            };
            self.damaged |= self.disk.lose_at_rest(&path, offset, sectors, AtRestLoss::Zeroed);
        }
    }

    /// The commit records the log holds from the last checkpoint's redo
    /// point (or the start of the log) to its end, with that point.
    fn logged_commit_times(&self) -> Result<(Lsn, Vec<(Lsn, u64)>), StoreError> {
        let fs = self.disk.fs();
        let config = &self.swarm.config;
        let opts = WalOptions::new(&config.wal_dir).with_segment_size(config.wal_segment_size);
        let control = ControlFile::load(fs.as_ref(), &config.data_dir)?;
        let redo = control.map_or(opts.first_lsn(), |control| control.redo_lsn);
        Ok((redo, read_commit_times(fs, opts, redo)?))
    }

    /// Runs the sessions (and the swarm's backup) until they finish or the
    /// engine stops.
    async fn work(&mut self, db: Database) -> Result<(), SeedFailure> {
        let db = Arc::new(db);
        let mut handles = Vec::new();
        for _ in 0..self.swarm.sessions {
            let seed = self.rng.random();
            let session = Session::new(self, db.clone(), self.swarm.clone(), seed);
            handles.push(tokio::spawn(session.run(TXNS_PER_SESSION)));
        }
        let backup = self.swarm.backup.map(|plan| {
            let disk = SimDisk::new(plan.disk_seed ^ self.crashes, FaultConfig::power_loss());
            disk.set_crash_countdown(plan.crash_after);
            let (db, fs) = (db.clone(), disk.fs());
            let mut pacing = ChaCha8Rng::seed_from_u64(plan.disk_seed);
            let task = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
                let copying = Arc::new(std::sync::atomic::AtomicBool::new(true));
                if plan.checkpoints_during {
                    let (db, copying) = (db.clone(), copying.clone());
                    tokio::spawn(async move {
                        while copying.load(std::sync::atomic::Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(pacing.random_range(1..8))).await;
                            if db.checkpoint().await.is_err() {
                                return;
                            }
                        }
                    });
                }
                let request = BackupRequest {
                    chunk_bytes: plan.chunk_bytes,
                    pause: Duration::from_millis(plan.pause_ms),
                    yield_to_commits: false,
                    ..BackupRequest::new(BACKUP_DIR, plan.include_wal, plan.compress, String::new())
                };
                let outcome = take(&db, fs.as_ref(), "bk-sim", &request, &Progress::default()).await;
                copying.store(false, std::sync::atomic::Ordering::Relaxed);
                outcome.map_err(|e| e.to_string())
            });
            (plan, disk, task)
        });
        for handle in handles {
            handle.await.map_err(|e| self.fail("no_panic", format!("a session panicked: {e}")))?;
        }
        if let Some((plan, disk, task)) = backup {
            let outcome = task.await.map_err(|e| self.fail("no_panic", format!("the backup panicked: {e}")))?;
            // Nothing stood in the backup's way: no I/O errors injected, no
            // crash of either disk, the engine still running.
            // Nor data lost at rest, which a backup must refuse to copy.
            let unhindered = plan.calm
                && !self.damaged
                && !disk.is_crashed()
                && !self.disk.is_crashed()
                && db.wal().check_running().is_ok();
            self.check_backup(plan, &disk, outcome, unhindered).await?;
        }
        self.checkpoints += db.stats().checkpoints.load(std::sync::atomic::Ordering::Relaxed);
        // Nothing of this database may touch the disk once it is down.
        if let Some(db) = Arc::into_inner(db) {
            db.close().await;
        }
        let failure = lock(&self.shared).failure.take();
        match failure {
            Some(("no_corruption", detail)) => self.corruption(detail).map(|_| ()),
            Some((check, detail)) => Err(self.fail(check, detail)),
            None => Ok(()),
        }
    }

    /// The backup oracle. The backup's disk loses power first (what was not
    /// synced is gone). Then a backup that reported success must verify,
    /// and restore to exactly the commits below its end LSN; with a bit
    /// flipped anywhere in its files it must fail to verify. A backup that
    /// failed (an error, a crash of either disk) must never verify.
    async fn check_backup(
        &mut self,
        plan: BackupPlan,
        disk: &SimDisk,
        outcome: Result<Manifest, String>,
        unhindered: bool,
    ) -> Result<(), SeedFailure> {
        if let (Err(error), true) = (&outcome, unhindered) {
            return Err(self.fail(
                "backup_completes",
                format!("a backup failed with nothing in its way (calm disks, no crash, the engine running): {error}"),
            ));
        }
        disk.crash();
        disk.set_crash_countdown(None);
        let fs = disk.fs();
        let dir = std::path::Path::new(BACKUP_DIR);
        let report = self.verify_backup(fs.as_ref(), dir).await;
        let manifest = match outcome {
            Ok(manifest) => manifest,
            // The last step, the directory sync after the manifest's rename,
            // cut by a crash that kept the rename: every file and the
            // manifest were durable before it, so the backup is whole, and is
            // held to everything a completed one is.
            Err(error)
                if report.passed() && error.ends_with(&format!("sync directory {BACKUP_DIR}: {CRASH_MESSAGE}")) =>
            {
                read_manifest(fs.as_ref(), dir).map_err(|p| self.fail("backup_verifies", p.to_string()))?
            }
            Err(error) if report.passed() => {
                return Err(self.fail("cut_backup_never_verifies", format!("the backup failed ({error}) but verifies")));
            }
            Err(_) => return Ok(()),
        };
        if !report.passed() {
            return Err(
                self.fail("backup_verifies", format!("a completed backup fails to verify:\n{}", report.render()))
            );
        }
        if self.swarm.archive.is_some_and(|plan| plan.foreign_segno.is_none()) && self.pitr_base.is_none() {
            self.pitr_base = PitrBase::copy(fs.as_ref(), dir, &manifest).ok();
        }
        if plan.include_wal {
            let found = self.restore_backup(fs.as_ref(), dir, &manifest).await?;
            lock(&self.shared)
                .model
                .check_backup(&found, manifest.end_lsn.0)
                .map_err(|detail| self.fail("backup_restores", detail))?;
        }
        // A flipped bit anywhere in the backup's files.
        let file = &manifest.files[self.knobs.random_range(0..manifest.files.len())];
        let offset = self.knobs.random_range(0..file.stored_size.max(1));
        if disk.rot_at(&dir.join(&file.path), offset) {
            let report = self.verify_backup(fs.as_ref(), dir).await;
            if report.passed() {
                return Err(self.fail(
                    "backup_damage_detected",
                    format!("a bit flipped at byte {offset} of {} and the backup still verifies", file.path),
                ));
            }
        }
        Ok(())
    }

    async fn verify_backup(&self, fs: &dyn thunderdb::env::Fs, dir: &std::path::Path) -> Report {
        let scratch = SimDisk::new(0, FaultConfig::none());
        let scratch = Scratch { fs: scratch.fs(), dir: "/scratch".into() };
        verify(fs, dir, &scratch, self.clock.clone(), &mut |_, _| {}).await
    }

    /// Restores the backup on a disk of its own and reads every table.
    async fn restore_backup(
        &self,
        fs: &dyn thunderdb::env::Fs,
        dir: &std::path::Path,
        manifest: &Manifest,
    ) -> Result<State, SeedFailure> {
        let target = SimDisk::new(1, FaultConfig::none());
        let mut config = EngineConfig::new("/restored");
        config.wal_segment_size = manifest.wal_segment_size;
        config.buffer_pool_size = 64 * PAGE_SIZE as u64;
        restore_files(fs, dir, target.fs().as_ref(), &config.data_dir, &config.wal_dir)
            .map_err(|e| self.fail("backup_restores", format!("restoring the files failed: {e}")))?;
        let env = Env::new(target.fs(), self.clock.clone(), self.seed);
        let db = Database::open(env, config)
            .await
            .map_err(|e| self.fail("backup_restores", format!("opening the restored backup failed: {e}")))?;
        read_state(&db).await.map_err(|e| self.fail("backup_restores", format!("reading the restored backup: {e}")))
    }

    /// Faults off: the database must open, commit, shut down cleanly and
    /// reopen without crash recovery, holding exactly what was committed.
    async fn liveness(&mut self) -> Result<(), SeedFailure> {
        self.disk.set_faults(FaultConfig::none());
        self.disk.set_phase_fsync_error(None);
        self.disk.set_crash_countdown(None);
        if let Some(commands) = &self.commands {
            commands.calm();
        }
        let Some(db) = self.open().await? else {
            if self.corruption_detected {
                // Reported, as it must be; only a restore repairs it.
                return Ok(());
            }
            return Err(self.fail("liveness", "the database did not open with faults off".into()));
        };
        let db = Arc::new(db);
        let swarm = Swarm { weights: [1, 1, 0, 0, 0, 1], aim: Aim::None, ..self.swarm.clone() };
        let seed = self.rng.random();
        let session = Session::new(self, db.clone(), swarm, seed);
        session.run(5).await;
        if let Some((check, detail)) = lock(&self.shared).failure.take() {
            return Err(self.fail(check, detail));
        }
        let db = Arc::into_inner(db).expect("the session is done");
        db.shutdown().await.map_err(|e| self.fail("liveness", format!("clean shutdown failed: {e}")))?;
        if self.swarm.archive.is_none() {
            self.check_retired()?;
        }
        let expected = lock(&self.shared).model.expected();
        let db = Database::open(self.env(), self.swarm.config.clone())
            .await
            .map_err(|e| self.fail("liveness", format!("reopening after a clean shutdown failed: {e}")))?;
        if db.recovery_report().crashed {
            return Err(self.fail("clean_shutdown", "crash recovery ran after a clean shutdown".into()));
        }
        let found = read_state(&db).await.map_err(|e| self.fail("liveness", e.to_string()))?;
        if found != expected {
            return Err(self.fail(
                "clean_shutdown",
                format!("after a clean shutdown found ({}), expected ({})", describe(&found), describe(&expected)),
            ));
        }
        if let Some(plan) = self.swarm.archive {
            self.check_archive(db, plan, &expected).await?;
        }
        Ok(())
    }

    /// **`wal_retired`:** after a clean shutdown, with nothing holding WAL
    /// (no archiving; backups' holds end with their cycle), no segment before the one holding the
    /// last checkpoint's redo point is left: retirement happened. (Recycled
    /// segments carry future names.)
    fn check_retired(&self) -> Result<(), SeedFailure> {
        let fs = self.disk.fs();
        let config = &self.swarm.config;
        let opts = WalOptions::new(&config.wal_dir).with_segment_size(config.wal_segment_size);
        let control = ControlFile::load(fs.as_ref(), &config.data_dir)
            .map_err(|e| self.fail("liveness", format!("reading the control file: {e}")))?
            .ok_or_else(|| self.fail("liveness", "no control file after a clean shutdown".into()))?;
        let needed = opts.segno(control.redo_lsn);
        let names = fs.list(&opts.dir).unwrap_or_default();
        let stale: Vec<&String> = names
            .iter()
            .filter(|name| {
                thunderdb::wal::parse_segment_file_name(name, opts.segment_size)
                    .is_some_and(|(_, segno)| segno < needed)
            })
            .collect();
        if !stale.is_empty() {
            return Err(self.fail(
                "wal_retired",
                format!(
                    "after a clean shutdown with redo point {}, segments {stale:?} are still there",
                    control.redo_lsn
                ),
            ));
        }
        Ok(())
    }

    /// The end-of-run archive checks (`archive_sim::check_final`), then the
    /// archive alone is replayed into an empty database, which must hold
    /// exactly the committed state: the clean shutdown archived everything.
    async fn check_archive(&mut self, db: Database, plan: ArchivePlan, expected: &State) -> Result<(), SeedFailure> {
        self.observe_archive(&db)?;
        // Give the reopened server's archiver time to try (and, with a
        // foreign file in the way, to fail and say so).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let opts = db.wal().options().clone();
        let status = db.archive_status().expect("archiving is on");
        let durable_segno = opts.segno(db.wal().durable_lsn());
        db.close().await;
        let fs = self.disk.fs();
        let segments = archive_sim::check_final(
            fs.as_ref(),
            &opts.dir,
            opts.segment_size,
            durable_segno,
            &status,
            &plan,
            self.commands.as_deref(),
        )
        .map_err(|(check, detail)| self.fail(check, detail))?;
        if plan.foreign_segno.is_some() {
            // The archive stops before the foreign file: not the whole log.
            return Ok(());
        }
        let scratch = SimDisk::new(2, FaultConfig::none());
        let mut config = EngineConfig::new("/replay");
        config.wal_segment_size = opts.segment_size;
        config.buffer_pool_size = 64 * PAGE_SIZE as u64;
        let scratch_fs = scratch.fs();
        scratch_fs.create_dir_all(&config.wal_dir).expect("scratch");
        for (name, bytes) in &segments {
            let file = scratch_fs.create(&config.wal_dir.join(name)).expect("scratch");
            file.write_all_at(bytes, 0).expect("scratch");
        }
        let env = Env::new(scratch.fs(), self.clock.clone(), self.seed);
        let replayed = match Database::open(env, config).await {
            Ok(db) => read_state(&db).await,
            Err(e) => Err(e),
        };
        match replayed {
            Ok(found) if found == *expected => self.check_pitr(&segments.into_iter().collect()).await,
            Ok(found) => Err(self.fail(
                "archive_replays",
                format!(
                    "replaying the archive's {} segments gave ({}), expected ({}): {}",
                    segments.len(),
                    describe(&found),
                    describe(expected),
                    thunderdb_workloads::db::first_difference(&found, expected)
                ),
            )),
            // Durable WAL lost at rest may have been archived as it was.
            Err(e) if e.is_corruption() && self.damaged => Ok(()),
            Err(e) => Err(self
                .fail("archive_replays", format!("replaying the archive's {} segments failed: {e}", segments.len()))),
        }
    }
}

impl Run {
    /// The point-in-time recovery oracle (`pitr_sim`), when a backup
    /// completed and nothing was lost at rest.
    async fn check_pitr(&mut self, archive: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<(), SeedFailure> {
        let Some(base) = self.pitr_base.take() else { return Ok(()) };
        if self.damaged {
            return Ok(());
        }
        // The clean shutdown made every commit since the last recovery durable.
        {
            let shared = lock(&self.shared);
            shared.model.record_survivors(shared.model.len(), &mut self.history);
        }
        let mut knobs = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9171_7177);
        for attempt in 0..PITR_ATTEMPTS {
            PitrCheck {
                seed: self.seed ^ attempt.rotate_left(32),
                clock: self.clock.clone(),
                knobs: &mut knobs,
                history: &self.history,
                base: &base,
                archive,
            }
            .run()
            .await
            .map_err(|(check, detail)| self.fail(check, detail))?;
        }
        for attempt in 0..STANDBY_ATTEMPTS {
            PitrCheck {
                seed: self.seed ^ attempt.rotate_left(40),
                clock: self.clock.clone(),
                knobs: &mut knobs,
                history: &self.history,
                base: &base,
                archive,
            }
            .run_standby()
            .await
            .map_err(|(check, detail)| self.fail(check, detail))?;
        }
        Ok(())
    }
}

/// Every table's rows, read in one transaction.
pub(crate) async fn read_state(db: &Database) -> Result<State, DbError> {
    let mut txn = db.begin().await?;
    let mut state = State::new();
    let mut schemas = Vec::new();
    let mut index_trees = State::new();
    for table in txn.tables().await? {
        let rows: Rows = txn.scan(&table, Bound::Unbounded, Bound::Unbounded).await?.into_iter().collect();
        match index::index_of_tree(&table.name) {
            Some(index) => {
                index_trees.insert(index.to_string(), rows);
            }
            None => {
                if let Ok(schema) = Schema::decode(&table.name, &table.meta) {
                    schemas.push((table.name.clone(), schema));
                }
                state.insert(table.name, rows);
            }
        }
    }
    txn.commit().await?;
    // Every secondary index must hold exactly the entries its table's rows
    // make. One that differs, or a tree no table owns, shows in the state
    // under a name no model has, so the comparison names it.
    for (table, schema) in schemas {
        for def in &schema.indexes {
            let expected: Rows = state[&table]
                .iter()
                .map(|(pk, row)| match decode_row(&table, row) {
                    Ok(values) => index::entry(def, &values, pk),
                    Err(e) => (pk.clone(), e.message.into_bytes()),
                })
                .collect();
            let found = index_trees.remove(&def.name).unwrap_or_default();
            if found != expected {
                state.insert(format!("index {} (differs from table {table})", def.name), found);
            }
        }
    }
    for (name, rows) in index_trees {
        state.insert(format!("index tree {name} (no table has it)"), rows);
    }
    Ok(state)
}

/// Creates the kv table, the bank and the SQL ledger with their opening
/// balances.
async fn setup(db: &Database, shared: &SharedRef, clock: &SimClock) -> Result<(), DbError> {
    let mut txn = db.begin().await?;
    let mut writes =
        vec![Write::CreateTable(KV.into()), Write::CreateTable(BANK.into()), Write::CreateTable(LEDGER.into())];
    txn.create_table(KV, b"").await?;
    let bank = txn.create_table(BANK, b"").await?;
    // The ledger has a secondary index on its balance, which the SQL
    // layer keeps as it updates balances, and read_state checks.
    let balance_index = IndexDef { name: LEDGER_INDEX.into(), columns: vec![1], unique: false };
    let schema = Schema {
        columns: ["id", "balance"]
            .map(|name| Column { name: name.into(), ty: SqlType::BigInt, not_null: true, default: None })
            .to_vec(),
        primary_key: vec![0],
        indexes: vec![balance_index.clone()],
    };
    let ledger = txn.create_table(LEDGER, &schema.encode()).await?;
    let index_tree = txn.create_table(&index::tree_name(LEDGER_INDEX), LEDGER.as_bytes()).await?;
    for account in 0..ACCOUNTS {
        let (key, value) = (account.to_be_bytes().to_vec(), OPENING_BALANCE.to_le_bytes().to_vec());
        txn.put(&bank, &key, &value).await?;
        writes.push(Write::Put(BANK.into(), key, value));
        let (key, row) = ledger_row(account, OPENING_BALANCE);
        txn.put(&ledger, &key, &row).await?;
        let (entry, pk) =
            index::entry(&balance_index, &[Value::Int(account.into()), Value::Int(OPENING_BALANCE)], &key);
        txn.put(&index_tree, &entry, &pk).await?;
        writes.push(Write::Put(LEDGER.into(), key, row));
    }
    commit(db, txn, writes, shared, clock).await
}

/// The key and row the SQL layer stores for a ledger account.
fn ledger_row(account: u16, balance: i64) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::new();
    encode_key_part(&Value::Int(account.into()), &mut key);
    (key, encode_row(&[Value::Int(account.into()), Value::Int(balance)]))
}

/// A ledger row's balance.
fn ledger_balance(row: &[u8]) -> Result<i64, String> {
    match decode_row(LEDGER, row).map_err(|e| e.message)?.as_slice() {
        [_, Value::Int(balance)] => Ok(*balance),
        other => Err(format!("a ledger row holds {other:?}")),
    }
}

/// Commits, telling the model first (in commit-record order: nothing
/// yields between here and the commit taking the store) and marking the
/// commit acknowledged when it returns `Ok` with a logged commit record,
/// with the window its commit time must lie in.
async fn commit(
    db: &Database,
    txn: Transaction,
    writes: Vec<Write>,
    shared: &SharedRef,
    clock: &SimClock,
) -> Result<(), DbError> {
    let (index, steps) = {
        let mut shared = lock(shared);
        shared.commits += 1;
        (shared.model.committing(writes), shared.wall_steps)
    };
    let before = clock.wall_micros();
    let durable_before = db.wal().durable_lsn();
    let Some(lsn) = txn.commit().await? else {
        // Nothing was logged, so the commit promised nothing about durability.
        return Ok(());
    };
    let mut shared = lock(shared);
    shared.acknowledged += 1;
    shared.model.acknowledged(index);
    shared.model.logged_at(index, lsn.0);
    let window = CommitWindow {
        earliest_micros: (shared.wall_steps == steps).then_some(before),
        latest_micros: shared.wall_high_micros.max(clock.wall_micros()),
    };
    shared.times.acknowledged(lsn, window);
    shared.evidence = shared.evidence.max(durable_before);
    Ok(())
}

struct Session {
    db: Arc<Database>,
    clock: Arc<SimClock>,
    shared: SharedRef,
    swarm: Swarm,
    rng: ChaCha8Rng,
    /// Draws think time inside transactions and the aimed schedules: a
    /// stream of its own, so the workload's other draws stay as they were.
    think: ChaCha8Rng,
    /// Draws extra backward steps of the wall clock: a stream of its own
    /// (the wall clock steers no control flow, only commit stamps).
    ntp: ChaCha8Rng,
    /// Draws the batch variant of the aimed rollback: a stream of its own.
    batch_aim: ChaCha8Rng,
    /// The disk, for aimed crashes.
    disk: SimDisk,
}

impl Session {
    fn new(run: &Run, db: Arc<Database>, swarm: Swarm, seed: u64) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let think = ChaCha8Rng::seed_from_u64(seed ^ 0x7417_7417_7417_7417);
        let ntp = ChaCha8Rng::seed_from_u64(seed ^ 0x4e74_704e_7470_4e74);
        let batch_aim = ChaCha8Rng::seed_from_u64(seed ^ 0xba7c_4ba7_c4ba_7c4b);
        let (clock, shared, disk) = (run.clock.clone(), run.shared.clone(), run.disk.clone());
        Session { db, clock, shared, swarm, rng, think, ntp, batch_aim, disk }
    }

    /// Now and then, a client pause inside a transaction: simulated time
    /// passes between its first statement and its commit, so its begin time
    /// and its commit time differ.
    async fn think(&mut self) {
        if self.think.random_bool(0.3) {
            tokio::time::sleep(Duration::from_micros(self.think.random_range(1..2000))).await;
        }
    }

    /// Runs up to `txns` transactions; stops when the engine does.
    async fn run(mut self, txns: u32) {
        for _ in 0..txns {
            let pause = self.rng.random_range(0..3000);
            tokio::time::sleep(Duration::from_micros(pause)).await;
            let total: u32 = self.swarm.weights.iter().sum();
            let mut pick = self.rng.random_range(0..total);
            let kind = self.swarm.weights.iter().position(|w| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            });
            let aimed = match self.swarm.aim {
                Aim::RollbackAfterCheckpoint => self.think.random_bool(0.5),
                Aim::CheckpointBeforeCommit => self.think.random_bool(0.8),
                _ => false,
            };
            let result = match kind.expect("weights sum to the pick's range") {
                _ if aimed && self.swarm.aim == Aim::CheckpointBeforeCommit => self.checkpoint_before_commit().await,
                _ if aimed => self.rollback_after_checkpoint().await,
                0 => self.kv().await,
                1 => self.bank().await,
                2 => self.long().await,
                3 => self.churn().await,
                4 => self.large_rows().await,
                _ => self.sql().await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_corruption() => return fail(&self.shared, "no_corruption", e.to_string()),
                Err(DbError::Lock(_) | DbError::NoSuchTable(_) | DbError::TableExists(_)) => {}
                // The engine stopped (an injected fault or the crash).
                Err(_) => return,
            }
            if self.rng.random_bool(0.02) && self.db.checkpoint().await.is_err() {
                return;
            }
            if self.rng.random_bool(0.02) {
                // NTP steps the wall clock, either way; commit stamps follow
                // it forwards and are clamped when it goes back.
                let step = self.rng.random_range(-60_000_000..60_000_000);
                self.step_wall_clock(step);
            }
            if self.ntp.random_bool(0.03) {
                // More steps back, the case a commit stamp must be clamped
                // in (planted `no_commit_time_clamp`).
                let step = -self.ntp.random_range(1_000..60_000_000);
                self.step_wall_clock(step);
            }
        }
    }

    fn step_wall_clock(&self, micros: i64) {
        let mut shared = lock(&self.shared);
        shared.wall_high_micros = shared.wall_high_micros.max(self.clock.wall_micros());
        shared.wall_steps += 1;
        self.clock.jump_wall(micros);
    }

    async fn table(&self, txn: &mut Transaction, name: &str) -> Result<Table, DbError> {
        txn.table(name).await?.ok_or_else(|| DbError::NoSuchTable(name.into()))
    }

    /// Checks a read against the model: the transaction's own last write to
    /// the key, else the last committed value.
    fn check_read(&self, table: &str, key: &[u8], own: &[Write], got: &Option<Vec<u8>>) {
        let mine = own.iter().rev().find_map(|write| match write {
            Write::Put(t, k, v) if t == table && k == key => Some(Some(v.clone())),
            Write::Delete(t, k) if t == table && k == key => Some(None),
            _ => None,
        });
        let expected = mine.unwrap_or_else(|| lock(&self.shared).model.expected_value(table, key));
        if &expected != got {
            fail(
                &self.shared,
                "serializable_reads",
                format!(
                    "table {table} key {}: read {}, the model says {}",
                    short(key),
                    got.as_deref().map_or("nothing".into(), short),
                    expected.as_deref().map_or("nothing".into(), short)
                ),
            );
        }
    }

    async fn kv(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        let mut writes = Vec::new();
        if self.rng.random_bool(0.1) {
            // A range delete: scan a slice of the key space (locking the
            // table) and delete what is there, emptying leaves to merge.
            let (low, high) = (self.swarm.key(&mut self.rng), self.swarm.key(&mut self.rng));
            let (low, high) = (low.clone().min(high.clone()), low.max(high));
            for (key, _) in txn.scan(&table, Bound::Included(&low), Bound::Excluded(&high)).await? {
                txn.delete(&table, &key).await?;
                writes.push(Write::Delete(KV.into(), key));
            }
        }
        for _ in 0..self.rng.random_range(1..=8) {
            let key = self.swarm.key(&mut self.rng);
            match self.rng.random_range(0..10) {
                0..=2 => {
                    let got = txn.get(&table, &key).await?;
                    self.check_read(KV, &key, &writes, &got);
                }
                3..=4 => {
                    txn.delete(&table, &key).await?;
                    writes.push(Write::Delete(KV.into(), key));
                }
                _ => {
                    let value = vec![self.rng.random(); self.rng.random_range(0..self.swarm.value_max)];
                    txn.put(&table, &key, &value).await?;
                    writes.push(Write::Put(KV.into(), key, value));
                }
            }
        }
        if self.rng.random_bool(0.1) {
            return txn.rollback().await;
        }
        self.think().await;
        commit(&self.db, txn, writes, &self.shared, &self.clock).await
    }

    async fn bank(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let bank = self.table(&mut txn, BANK).await?;
        if self.rng.random_bool(0.2) {
            let rows: Rows = txn.scan(&bank, Bound::Unbounded, Bound::Unbounded).await?.into_iter().collect();
            let expected = lock(&self.shared).model.expected().remove(BANK).unwrap_or_default();
            if rows != expected {
                fail(
                    &self.shared,
                    "serializable_reads",
                    format!("an audit read {} accounts unlike the model's", rows.len()),
                );
            }
            match bank_total(&rows) {
                Ok(total) if total == i64::from(ACCOUNTS) * OPENING_BALANCE => {}
                Ok(total) => fail(&self.shared, "bank_conserved", format!("an audit summed {total}")),
                Err(detail) => fail(&self.shared, "bank_conserved", detail),
            }
            return txn.commit().await.map(|_| ());
        }
        let from: u16 = self.rng.random_range(0..ACCOUNTS);
        let to = (from + self.rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount = self.rng.random_range(1..200);
        let mut writes = Vec::new();
        for (account, delta) in [(from, -amount), (to, amount)] {
            let key = account.to_be_bytes().to_vec();
            let got = txn.get(&bank, &key).await?;
            self.check_read(BANK, &key, &writes, &got);
            let balance = got.as_deref().and_then(thunderdb_workloads::db::balance).unwrap_or(0);
            let value = (balance + delta).to_le_bytes().to_vec();
            txn.put(&bank, &key, &value).await?;
            writes.push(Write::Put(BANK.into(), key, value));
        }
        self.think().await;
        commit(&self.db, txn, writes, &self.shared, &self.clock).await
    }

    async fn long(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        let mut writes = Vec::new();
        let count = self.rng.random_range(60..200);
        // Half the long transactions (by the parity of their length, so
        // that the random stream stays as it was) load rows in key order
        // past every key so far: the rightmost leaf fills and splits by
        // starting a new leaf (`tree_append_split`).
        // Such a load inserts its new rows in batches (`insert_many`, as
        // COPY does), so rows that share a leaf are logged together.
        let in_key_order = count % 2 == 0;
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for step in 0..count {
            let drawn = self.swarm.key(&mut self.rng);
            let key = if in_key_order {
                let mut shared = lock(&self.shared);
                shared.appended = shared.appended.saturating_add(1);
                self.swarm.key_of(KEY_SPACE.saturating_add(shared.appended))
            } else {
                drawn
            };
            let value = vec![self.rng.random(); self.rng.random_range(0..self.swarm.value_max)];
            writes.push(Write::Put(KV.into(), key.clone(), value.clone()));
            if in_key_order {
                batch.push((key, value));
            } else {
                txn.put(&table, &key, &value).await?;
            }
            let checkpoint = step == count / 2 && self.rng.random_bool(0.5);
            if batch.len() == LOAD_BATCH || checkpoint || step + 1 == count {
                self.insert_new(&mut txn, &table, std::mem::take(&mut batch)).await?;
            }
            if checkpoint {
                // A checkpoint while the transaction is open: its undo needs
                // WAL from before the redo point.
                self.db.checkpoint().await?;
            }
        }
        match self.rng.random_range(0..10) {
            0..=4 => txn.rollback().await,
            5..=7 => commit(&self.db, txn, writes, &self.shared, &self.clock).await,
            _ => {
                // The client goes silent: the transaction stays open, holding
                // its locks, until the crash.
                txn.abandon();
                Ok(())
            }
        }
    }

    /// Inserts rows whose keys no row has (a load past every key so far);
    /// every one must go in.
    async fn insert_new(
        &mut self,
        txn: &mut Transaction,
        table: &Table,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), DbError> {
        let inserted = txn.insert_many(table, &rows).await?;
        if inserted != rows.len() {
            let detail = format!("{} of {} rows with new keys inserted", inserted, rows.len());
            fail(&self.shared, "load_inserts_new_keys", detail);
        }
        Ok(())
    }

    /// The aimed schedule `RollbackAfterCheckpoint`: writes, a checkpoint,
    /// a rollback whose every compensation record is its page's first change
    /// since, then a crash inside the next checkpoint's flush.
    async fn rollback_after_checkpoint(&mut self) -> Result<(), DbError> {
        if self.batch_aim.random_bool(0.4) {
            return self.batch_rollback_cut().await;
        }
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        for _ in 0..self.think.random_range(10..80) {
            let key = self.swarm.key(&mut self.think);
            let value = vec![self.think.random(); self.think.random_range(0..self.swarm.value_max)];
            txn.put(&table, &key, &value).await?;
        }
        self.db.checkpoint().await?;
        txn.rollback().await?;
        // The pages the rollback dirtied go out in the next checkpoint's
        // flush (the pool holds four): the power fails among those writes
        // or at their sync, leaving them torn, with the redo point still
        // before the rollback.
        self.disk.set_crash_in_phase(Phase::CheckpointFlush, self.think.random_range(0..3));
        self.db.checkpoint().await?;
        Ok(())
    }

    /// The aimed schedule `CheckpointBeforeCommit`: a row is written and committed
    /// with large rows past every key, and its leaf evicted by a scan of
    /// those (the pool holds four pages), so it is clean though imaged since the checkpoint; then a
    /// transaction changes it again, a checkpoint begins right after that
    /// change (its recovery LSN is the begin record's LSN), and the
    /// transaction commits after the checkpoint ends. The power fails at one
    /// of the next WAL writes, before anything writes the leaf again: the
    /// checkpoint must have written it (`checkpoint_page_dirtied_at_begin`),
    /// since redo from its begin record never replays the change.
    async fn checkpoint_before_commit(&mut self) -> Result<(), DbError> {
        let key = self.swarm.key_of(self.batch_aim.random_range(0..20));
        let mut value = || vec![self.batch_aim.random(); self.batch_aim.random_range(1..self.swarm.value_max)];
        let (first, second) = (value(), value());
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        txn.put(&table, &key, &first).await?;
        // Enough large rows past every key that a scan of them evicts the
        // leaf from the four-page pool.
        let filler: Vec<(Vec<u8>, Vec<u8>)> = (0..24)
            .map(|_| {
                let mut shared = lock(&self.shared);
                shared.appended = shared.appended.saturating_add(1);
                (self.swarm.key_of(KEY_SPACE.saturating_add(shared.appended)), vec![self.batch_aim.random(); 1500])
            })
            .collect();
        self.insert_new(&mut txn, &table, filler.clone()).await?;
        let mut writes = vec![Write::Put(KV.into(), key.clone(), first)];
        writes.extend(filler.into_iter().map(|(k, v)| Write::Put(KV.into(), k, v)));
        commit(&self.db, txn, writes, &self.shared, &self.clock).await?;
        let mut txn = self.db.begin().await?;
        txn.scan(&table, Bound::Excluded(&key), Bound::Unbounded).await?;
        txn.commit().await?;
        let mut txn = self.db.begin().await?;
        txn.put(&table, &key, &second).await?;
        self.db.checkpoint().await?;
        // Past the commit's own writes: the crash must come after the
        // commit is acknowledged (measured: the later the crash, the more
        // often another session's read evicts and so writes the leaf).
        self.disk.set_crash_in_phase(Phase::WalWrite, self.batch_aim.random_range(2..5));
        commit(&self.db, txn, vec![Write::Put(KV.into(), key, second)], &self.shared, &self.clock).await
    }

    /// The aimed schedule's batch variant: a load inserts rows in key order
    /// in batches, and its rollback is cut by a crash at one of the WAL
    /// writes it makes (with a small write-behind threshold, its compensation
    /// records go out as they are logged). Recovery's undo then resumes
    /// inside a batch (`batch_undo_resumed`).
    async fn batch_rollback_cut(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        let mut rows = Vec::new();
        for _ in 0..self.batch_aim.random_range(20..LOAD_BATCH * 3) {
            let key = {
                let mut shared = lock(&self.shared);
                shared.appended = shared.appended.saturating_add(1);
                self.swarm.key_of(KEY_SPACE.saturating_add(shared.appended))
            };
            rows.push((key, vec![self.batch_aim.random(); self.batch_aim.random_range(0..self.swarm.value_max)]));
        }
        for batch in rows.chunks(LOAD_BATCH) {
            self.insert_new(&mut txn, &table, batch.to_vec()).await?;
        }
        self.disk.set_crash_in_phase(Phase::WalWrite, self.batch_aim.random_range(0..4));
        txn.rollback().await
    }

    async fn churn(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let existing: Vec<String> =
            lock(&self.shared).model.expected().into_keys().filter(|name| name.starts_with('c')).collect();
        let mut writes = Vec::new();
        if !existing.is_empty() && self.rng.random_bool(0.4) {
            let name = &existing[self.rng.random_range(0..existing.len())];
            txn.drop_table(name).await?;
            writes.push(Write::DropTable(name.clone()));
        } else {
            let name = {
                let mut shared = lock(&self.shared);
                shared.next_table += 1;
                format!("c{}", shared.next_table)
            };
            let table = txn.create_table(&name, b"churn").await?;
            writes.push(Write::CreateTable(name.clone()));
            for _ in 0..self.rng.random_range(0..6) {
                let key = self.swarm.key(&mut self.rng);
                txn.put(&table, &key, b"row").await?;
                writes.push(Write::Put(name.clone(), key, b"row".to_vec()));
            }
        }
        if self.rng.random_bool(0.3) {
            return txn.rollback().await;
        }
        commit(&self.db, txn, writes, &self.shared, &self.clock).await
    }

    async fn large_rows(&mut self) -> Result<(), DbError> {
        let mut txn = self.db.begin().await?;
        let table = self.table(&mut txn, KV).await?;
        let mut writes = Vec::new();
        for _ in 0..self.rng.random_range(1..=3) {
            let key = self.swarm.key(&mut self.rng);
            let len = self.rng.random_range(ROW_MAX - 500..=ROW_MAX) - key.len();
            let value = vec![self.rng.random(); len];
            txn.put(&table, &key, &value).await?;
            writes.push(Write::Put(KV.into(), key, value));
        }
        commit(&self.db, txn, writes, &self.shared, &self.clock).await
    }

    /// A SQL session's transfer or audit on the ledger.
    async fn sql(&mut self) -> Result<(), DbError> {
        let mut session = thunderdb::sql::Session::new(self.db.clone());
        let result = self.sql_transaction(&mut session).await;
        session.close().await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.code == "XX001" => {
                fail(&self.shared, "no_corruption", e.message);
                Err(DbError::ShuttingDown)
            }
            // A deadlock victim or lock timeout: the next transaction goes on.
            Err(e) if e.is_retryable() => Ok(()),
            // The engine stopped (an injected fault or the crash).
            Err(_) => Err(DbError::ShuttingDown),
        }
    }

    async fn sql_transaction(&mut self, session: &mut thunderdb::sql::Session) -> Result<(), SqlError> {
        async fn one(session: &mut thunderdb::sql::Session, sql: &str) -> Result<Output, SqlError> {
            let (mut outputs, error) = session.run(sql).await;
            match error {
                Some(e) => Err(e),
                None => Ok(outputs.pop().expect("one statement, one output")),
            }
        }
        let total = i64::from(ACCOUNTS) * OPENING_BALANCE;
        if self.rng.random_bool(0.2) {
            // Half the audits read through the balance index (a range that
            // holds every balance the bank can reach).
            let audit = if self.rng.random_bool(0.5) {
                "SELECT count(*), sum(balance) FROM ledger"
            } else {
                "SELECT count(*), sum(balance) FROM ledger WHERE balance BETWEEN -1000000000 AND 1000000000"
            };
            let out = one(session, audit).await?;
            let expected = vec![vec![Value::Int(ACCOUNTS.into()), Value::Int(total)]];
            if !matches!(&out, Output::Rows { rows, .. } if *rows == expected) {
                fail(&self.shared, "bank_conserved", format!("a SQL audit read {out:?}"));
            }
            return Ok(());
        }
        let from: u16 = self.rng.random_range(0..ACCOUNTS);
        let to = (from + self.rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount: i64 = self.rng.random_range(1..200);
        one(session, "BEGIN").await?;
        let mut writes = Vec::new();
        for (account, delta) in [(from, -amount), (to, amount)] {
            let out = one(session, &format!("SELECT balance FROM ledger WHERE id = {account}")).await?;
            let (key, _) = ledger_row(account, 0);
            let expected = lock(&self.shared).model.expected_value(LEDGER, &key).map(|row| ledger_balance(&row));
            let got = match &out {
                Output::Rows { rows, .. } => match rows.as_slice() {
                    [row] => match row.as_slice() {
                        [Value::Int(balance)] => Some(Ok(*balance)),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            if got != expected {
                fail(
                    &self.shared,
                    "serializable_reads",
                    format!("SQL read account {account} as {out:?}; the model says {expected:?}"),
                );
                return Ok(());
            }
            let balance = got.and_then(Result::ok).unwrap_or(0);
            let sign = if delta < 0 { '-' } else { '+' };
            one(session, &format!("UPDATE ledger SET balance = balance {sign} {} WHERE id = {account}", delta.abs()))
                .await?;
            let (key, row) = ledger_row(account, balance + delta);
            writes.push(Write::Put(LEDGER.into(), key, row));
        }
        if self.rng.random_bool(0.1) {
            one(session, "ROLLBACK").await?;
            return Ok(());
        }
        let index = {
            let mut shared = lock(&self.shared);
            shared.commits += 1;
            shared.model.committing(writes)
        };
        one(session, "COMMIT").await?;
        let mut shared = lock(&self.shared);
        shared.acknowledged += 1;
        shared.model.acknowledged(index);
        Ok(())
    }
}
