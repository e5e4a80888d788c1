//! One seeded WAL run: writers append and flush on a faulty disk, crashes cut
//! in at random I/O boundaries (recovery included), and after every recovery
//! the oracle checks the log against the model.
//!
//! The run has three parts:
//!
//! 1. **Swarm draw.** From the seed: the segment size, the number of
//!    concurrent writers, the fault kinds and their rates.
//! 2. **Crash cycles.** Each cycle recovers (the reader finds the end, the WAL
//!    cuts the tail), checks the oracle, arms a crash countdown, and lets the
//!    writers run until they stop (crash, fail-stop latch, or work done).
//!    Some countdowns are short enough to crash during recovery itself.
//!    Beside the writers, a checkpointer moves the redo point (the oldest LSN
//!    recovery reads from, as a control file would hold it) forward to an
//!    acknowledged record and retires the segments before it, recycling some.
//! 3. **Liveness.** Faults stop; the system must recover, accept writes and
//!    make them durable within a bounded number of attempts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::env::{AtRestLoss, DiskTrace, FaultConfig, FaultKind, Fs, SimDisk, SECTOR_SIZE};
use thunderdb::probe::Phase;
use thunderdb::wal::{parse_segment_file_name, Lsn, Record, Wal, WalError, WalOptions, WalReader};
use thunderdb_workloads::wal_log::{random_record, WalModel};

/// Crash cycles per seed with a sparse crash schedule (long runs between
/// crashes), and with a frequent one (a crash every few dozen I/Os).
const SPARSE_CYCLES: u32 = 8;
const FREQUENT_CYCLES: u32 = 20;
/// Records each writer attempts per cycle, at most.
const RECORDS_PER_WRITER: u32 = 40;
/// Recovery attempts in the liveness phase before declaring the system stuck.
const LIVENESS_ATTEMPTS: u32 = 3;

/// What a passing seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// Rolling hash of every I/O, fault and model event.
    pub trace_hash: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Crashes (power losses) simulated.
    pub crashes: u64,
    /// Recoveries that completed and passed the oracle.
    pub recoveries: u64,
    /// Records the WAL accepted.
    pub records_accepted: u64,
    /// Records acknowledged durable.
    pub records_acknowledged: u64,
    /// WAL segments retired behind the redo point (recycled or removed).
    pub segments_retired: u64,
    /// Storage checkpoints taken.
    pub checkpoints: u64,
    /// Injected bit rot was reported as corruption, ending the run: the
    /// right outcome, since only a restore can repair it.
    pub corruption_detected: bool,
    /// I/O operations the disk performed.
    pub io_ops: u64,
    /// Every disk event, for finding where two runs diverge.
    pub trace: Arc<DiskTrace>,
}

/// A seed that broke an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// The check that failed.
    pub check: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {} failed check `{}`: {}", self.seed, self.check, self.detail)
    }
}

struct Swarm {
    opts: WalOptions,
    writers: u32,
    faults: FaultConfig,
    /// Rot a bit of durable, evidenced log after some crashes.
    bit_rot: bool,
    /// Lose sectors of durable, evidenced log at rest after some crashes:
    /// they read back as zeroes or as their contents before their last sync.
    lose_at_rest: bool,
    /// Aim crashes at the tail cut's removal of later segments, before its
    /// directory sync: then recovery runs again on what the crash left.
    aim_tail_cut: bool,
    /// When recovery finds the log ending mid-sector, crash at the next
    /// sync, with torn writes on and half the torn sectors garbage: the
    /// first write after the torn sector is the one that must never touch
    /// it.
    aim_torn_sector: bool,
    /// Crash every few dozen I/Os instead of every few hundred: the
    /// crash, reopen, short write, crash sequences that test the tail cut.
    frequent_crashes: bool,
    /// Every record has this payload size: stale records left by a crash
    /// then line up with new record boundaries, which random sizes rarely do.
    uniform_payload: Option<usize>,
}

impl Swarm {
    /// Draws the swarm options. `knobs` draws the size thresholds that gate
    /// code paths (docs/simulation.md, "Thresholds"): a stream of its own,
    /// so that adding one leaves every other draw of a seed as it was.
    fn draw(rng: &mut ChaCha8Rng, knobs: &mut ChaCha8Rng) -> Self {
        let segment_size = [1024, 4096, 65536][rng.random_range(0..3)];
        let opts = WalOptions::new("/thunderdb/wal")
            .with_segment_size(segment_size)
            .with_write_behind_bytes(draw_write_behind(knobs))
            .with_zero_fill_chunk(draw_zero_fill_chunk(knobs, segment_size));
        let lose_at_rest = knobs.random_bool(0.3);
        let aim_tail_cut = knobs.random_bool(0.2);
        let aim_torn_sector = knobs.random_bool(0.2);
        let writers = rng.random_range(1..=8);
        let mut faults = FaultConfig::swarm(rng);
        if aim_torn_sector {
            faults.torn_writes = true;
            faults.torn_garbage_percent = 50;
        }
        Swarm {
            opts,
            lose_at_rest,
            aim_tail_cut,
            aim_torn_sector,
            writers,
            faults,
            bit_rot: rng.random_bool(0.3),
            frequent_crashes: rng.random_bool(0.3),
            uniform_payload: if rng.random_bool(0.3) { Some(rng.random_range(0..300)) } else { None },
        }
    }
}

/// The write-behind threshold: the default (4 MiB, which no seed reaches)
/// half the time, else a few hundred bytes to a few KiB, so that appends
/// write the buffer out unsynced and flushes find it written, not durable.
pub fn draw_write_behind(knobs: &mut ChaCha8Rng) -> u64 {
    if knobs.random_bool(0.5) {
        thunderdb::wal::DEFAULT_WRITE_BEHIND_BYTES
    } else {
        knobs.random_range(64..8192)
    }
}

/// The zero-fill chunk: the default (1 MiB, larger than any simulated
/// segment) half the time, else from one sector to the whole segment.
pub fn draw_zero_fill_chunk(knobs: &mut ChaCha8Rng, segment_size: u64) -> u64 {
    if knobs.random_bool(0.5) {
        thunderdb::wal::DEFAULT_ZERO_FILL_CHUNK
    } else {
        knobs.random_range(512..=segment_size)
    }
}

/// How often opening an existing file fails (EIO): on a fifth of the seeds,
/// up to one open in twenty. On a stream of its own, so the other draws of
/// old seeds stay.
pub fn draw_open_error_rate(seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(knobs_seed(seed) ^ 0x09e4_u64.rotate_left(48));
    if rng.random_bool(0.2) {
        rng.random_range(0.0..0.05)
    } else {
        0.0
    }
}

/// The seed of a seed's `knobs` stream.
pub fn knobs_seed(seed: u64) -> u64 {
    seed ^ 0x6b6e_6f62_735f_5f5f
}

struct Run {
    seed: u64,
    rng: ChaCha8Rng,
    /// Draws the aimed schedules, on a stream of its own.
    knobs: ChaCha8Rng,
    /// In the liveness phase: no faults, no crashes, no aims.
    liveness: bool,
    disk: SimDisk,
    swarm: Swarm,
    model: Arc<Mutex<WalModel>>,
    /// Where recovery starts reading: the durable redo point.
    redo_point: Arc<Mutex<Lsn>>,
    crashes: u64,
    recoveries: u64,
    accepted: u64,
    acknowledged: u64,
    retired: u64,
    /// Bit rot injected into the log that recovery has not yet reported.
    rotted: bool,
    corruption_detected: bool,
}

/// Runs one seed to its verdict.
pub async fn run_wal_seed(seed: u64) -> Result<SeedOutcome, SeedFailure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut knobs = ChaCha8Rng::seed_from_u64(knobs_seed(seed));
    let mut swarm = Swarm::draw(&mut rng, &mut knobs);
    swarm.faults.open_error_rate = draw_open_error_rate(seed);
    let disk = SimDisk::new(rng.random(), swarm.faults.clone());
    let mut run = Run {
        seed,
        rng,
        knobs,
        liveness: false,
        disk,
        swarm,
        model: Arc::new(Mutex::new(WalModel::default())),
        redo_point: Arc::new(Mutex::new(Lsn::ZERO)),
        crashes: 0,
        recoveries: 0,
        accepted: 0,
        acknowledged: 0,
        retired: 0,
        rotted: false,
        corruption_detected: false,
    };
    run.disk.fs().create_dir_all(&run.swarm.opts.dir).map_err(|e| run.fail("setup", e.to_string()))?;
    *run.redo_point.lock().expect("redo point lock") = run.swarm.opts.first_lsn();
    let (cycles, countdowns) =
        if run.swarm.frequent_crashes { (FREQUENT_CYCLES, 12..80) } else { (SPARSE_CYCLES, 50..1500) };
    for _ in 0..cycles {
        // One time in five, the crash lands within the first I/Os: during
        // recovery's reads or its tail cut.
        let countdown = if run.rng.random_bool(0.2) {
            run.rng.random_range(0..12)
        } else {
            run.rng.random_range(countdowns.clone())
        };
        run.disk.set_crash_countdown(Some(countdown));
        if run.swarm.aim_tail_cut && run.knobs.random_bool(0.5) {
            // The first operation is the first removal; later ones land
            // after some removals, before the directory sync that makes
            // them durable (or on it).
            run.disk.set_crash_in_phase(Phase::WalTailCutRemove, run.knobs.random_range(0..4));
        }
        if let Some(wal) = run.recover().await? {
            run.write(Arc::new(wal)).await;
        }
        if run.corruption_detected {
            break;
        }
        run.crash();
        run.maybe_rot();
        run.maybe_lose_at_rest();
    }
    if !run.corruption_detected {
        run.liveness().await?;
    }
    let model = run.model.lock().expect("model lock");
    Ok(SeedOutcome {
        seed,
        trace_hash: run.disk.trace_hash() ^ (model.accepted_count() as u64).rotate_left(32),
        faults: run.disk.fault_counts(),
        crashes: run.crashes,
        recoveries: run.recoveries,
        records_accepted: run.accepted,
        records_acknowledged: run.acknowledged,
        segments_retired: run.retired,
        checkpoints: 0,
        corruption_detected: run.corruption_detected,
        io_ops: run.disk.op_count(),
        trace: Arc::new(run.disk.trace()),
    })
}

impl Run {
    fn fail(&self, check: &'static str, detail: String) -> SeedFailure {
        SeedFailure { seed: self.seed, check, detail }
    }

    /// With the swarm's bit rot on, now and then flips a bit in the durable
    /// log where evidence of durability follows it, so a correct reader must
    /// report it (cutting it off would lose acknowledged records).
    fn maybe_rot(&mut self) {
        if !self.swarm.bit_rot || !self.rng.random_bool(0.5) {
            return;
        }
        let Some(evidenced) = self.evidenced() else { return };
        let at = Lsn(self.rng.random_range(evidenced));
        let opts = &self.swarm.opts;
        self.rotted |= self.disk.rot_at(&opts.path(opts.segno(at)), opts.offset(at));
    }

    /// The durable log that evidence of durability follows: from the redo
    /// point to the evidence point, if that is not empty.
    fn evidenced(&self) -> Option<std::ops::Range<u64>> {
        let from = *self.redo_point.lock().expect("redo point lock");
        let to = self.model.lock().expect("model lock").evidence_point();
        (from < to).then_some(from.0..to.0)
    }

    /// With the swarm's loss at rest on, now and then loses one to four
    /// sectors of the durable log below the evidence point, as zeroes or as
    /// their previous contents: a correct reader reports corruption there,
    /// naming the segment and LSN, and never takes it for the end of the log.
    fn maybe_lose_at_rest(&mut self) {
        if !self.swarm.lose_at_rest || !self.knobs.random_bool(0.5) {
            return;
        }
        let Some(evidenced) = self.evidenced() else { return };
        let to = Lsn(evidenced.end);
        let at = Lsn(self.knobs.random_range(evidenced));
        // Whole sectors below the evidence point, which is a flush's end and
        // so a sector boundary: the evidence itself stays intact.
        let sectors = self.knobs.random_range(1..=4).min((to.0 - at.0).div_ceil(SECTOR_SIZE));
        let loss = if self.knobs.random_bool(0.5) { AtRestLoss::Zeroed } else { AtRestLoss::Stale };
        let opts = &self.swarm.opts;
        let in_segment = (opts.segment_size - opts.offset(at)).div_ceil(SECTOR_SIZE);
        self.rotted |=
            self.disk.lose_at_rest(&opts.path(opts.segno(at)), opts.offset(at), sectors.min(in_segment), loss);
    }

    fn crash(&mut self) {
        self.disk.crash();
        self.crashes += 1;
    }

    /// Reads the log, checks it against the model, and opens the WAL. An I/O
    /// error (injected, or the crash countdown) ends the attempt with `None`;
    /// corruption or a model mismatch fails the seed.
    async fn recover(&mut self) -> Result<Option<Wal>, SeedFailure> {
        let fs: Arc<dyn Fs> = self.disk.fs();
        let opts = self.swarm.opts.clone();
        let redo_point = *self.redo_point.lock().expect("redo point lock");
        let mut reader = WalReader::new(fs.clone(), opts.clone(), redo_point);
        if redo_point != opts.first_lsn() {
            // The record at a moved redo point was acknowledged: it must be there.
            reader = reader.durable_through(redo_point.plus(1));
        }
        let mut recovered = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Some(entry)) => recovered.push(entry),
                Ok(None) => break,
                Err(WalError::Corrupt { .. }) if self.rotted => {
                    self.corruption_detected = true;
                    return Ok(None);
                }
                Err(e @ WalError::Corrupt { .. }) => return Err(self.fail("wal_no_corruption", e.to_string())),
                Err(_) => return Ok(None),
            }
        }
        self.model.lock().expect("model lock").check(&recovered).map_err(|d| self.fail("wal_durable_prefix", d))?;
        let end = reader.end().expect("the reader reached the end");
        match Wal::open(fs, opts, end) {
            Ok(wal) => {
                self.check_tail_cut_durable(end.lsn())?;
                if self.swarm.aim_torn_sector && !self.liveness && end.lsn().0 % SECTOR_SIZE != 0 {
                    // The power fails at the first sync after the torn
                    // sector, while the first write after it is in flight.
                    self.disk.set_crash_in_phase(Phase::WalSync, 0);
                }
                // Only an opened WAL makes this recovery's end the truth: a
                // crash while opening leaves the previous truth in force.
                self.model.lock().expect("model lock").reset_to(&recovered);
                self.recoveries += 1;
                Ok(Some(wal))
            }
            Err(e) if e.is_corruption() => Err(self.fail("wal_no_corruption", e.to_string())),
            Err(_) => Ok(None),
        }
    }

    /// Once the WAL has opened, its tail cut is durable: the media holds no
    /// segment past the one the log resumes in, so no crash can bring back
    /// records from beyond the end recovery found.
    fn check_tail_cut_durable(&self, end: Lsn) -> Result<(), SeedFailure> {
        let opts = &self.swarm.opts;
        let resume_segno = opts.segno(Lsn(end.0.next_multiple_of(SECTOR_SIZE)));
        let survivors: Vec<String> = self
            .disk
            .durable_names(&opts.dir)
            .into_iter()
            .filter(|name| {
                parse_segment_file_name(name, opts.segment_size).is_some_and(|(_, segno)| segno > resume_segno)
            })
            .collect();
        if survivors.is_empty() {
            return Ok(());
        }
        Err(self.fail(
            "wal_tail_cut_durable",
            format!("the WAL opened with its end at {end}, yet the media still holds later segments {survivors:?}"),
        ))
    }

    /// Runs the writers until each stops.
    async fn write(&mut self, wal: Arc<Wal>) {
        let mut tasks = Vec::new();
        for writer in 0..self.swarm.writers {
            let wal = wal.clone();
            let model = self.model.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
            let xid_base = u64::from(writer) << 32 | self.crashes << 16;
            let uniform = self.swarm.uniform_payload;
            tasks.push(tokio::spawn(async move { writer_task(wal, model, &mut rng, xid_base, uniform).await }));
        }
        let checkpointer = {
            let (wal, model, redo_point) = (wal.clone(), self.model.clone(), self.redo_point.clone());
            let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
            tokio::spawn(async move { checkpointer_task(wal, model, redo_point, &mut rng).await })
        };
        self.retired += checkpointer.await.expect("checkpointer task panicked");
        for task in tasks {
            let (accepted, acknowledged) = task.await.expect("writer task panicked");
            self.accepted += accepted;
            self.acknowledged += acknowledged;
        }
    }

    /// Faults off: the system must come back and make new writes durable.
    async fn liveness(&mut self) -> Result<(), SeedFailure> {
        self.liveness = true;
        self.disk.set_faults(FaultConfig::none());
        for _ in 0..LIVENESS_ATTEMPTS {
            self.disk.set_crash_countdown(None);
            let Some(wal) = self.recover().await? else {
                if self.corruption_detected {
                    // Reported, as it must be; only a restore repairs it.
                    return Ok(());
                }
                self.crash();
                continue;
            };
            let mut last = Lsn::ZERO;
            for xid in 0..5 {
                let record = Record::commit(xid, last, xid);
                let hint = wal.durable_lsn();
                let (lsn, end) = wal.append(&record).await.map_err(|e| self.fail("liveness", e.to_string()))?;
                self.model.lock().expect("model lock").accepted(lsn, record, hint);
                last = lsn;
                let durable = wal.flush(end).await.map_err(|e| self.fail("liveness", e.to_string()))?;
                self.model.lock().expect("model lock").acknowledged(durable);
            }
            drop(wal);
            self.crash();
            return match self.recover().await? {
                Some(_) => Ok(()),
                None => Err(self.fail("liveness", "recovery failed with faults off".into())),
            };
        }
        Err(self.fail("liveness", format!("no clean recovery in {LIVENESS_ATTEMPTS} attempts with faults off")))
    }
}

/// Now and then moves the redo point to an acknowledged record and retires
/// the segments before it. Returns how many segments it retired.
async fn checkpointer_task(
    wal: Arc<Wal>,
    model: Arc<Mutex<WalModel>>,
    redo_point: Arc<Mutex<Lsn>>,
    rng: &mut ChaCha8Rng,
) -> u64 {
    let mut retired = 0;
    for _ in 0..4 {
        for _ in 0..rng.random_range(1..30) {
            tokio::task::yield_now().await;
        }
        let Some(point) = model.lock().expect("model lock").pick_redo_point(rng) else { continue };
        if point <= *redo_point.lock().expect("redo point lock") {
            continue;
        }
        // The control file is durable before any segment goes.
        *redo_point.lock().expect("redo point lock") = point;
        model.lock().expect("model lock").forget_before(point);
        let keep_ready = rng.random_range(0..4);
        match wal.retire_segments(point, keep_ready, &|_| true).await {
            Ok(report) => retired += (report.recycled.len() + report.removed.len()) as u64,
            Err(_) => break,
        }
    }
    retired
}

async fn writer_task(
    wal: Arc<Wal>,
    model: Arc<Mutex<WalModel>>,
    rng: &mut ChaCha8Rng,
    xid_base: u64,
    uniform_payload: Option<usize>,
) -> (u64, u64) {
    let (mut accepted, mut acknowledged) = (0, 0);
    let mut prev = Lsn::ZERO;
    for n in 0..RECORDS_PER_WRITER {
        let xid = xid_base + u64::from(n);
        let record = match uniform_payload {
            Some(len) => Record::data(xid, prev, vec![n as u8; len]),
            None => random_record(rng, xid, prev),
        };
        let hint = wal.durable_lsn();
        let Ok((lsn, end)) = wal.append(&record).await else { break };
        model.lock().expect("model lock").accepted(lsn, record, hint);
        accepted += 1;
        prev = lsn;
        if rng.random_bool(0.3) {
            if rng.random_bool(0.5) {
                // Other work between the last write and the commit: the
                // group holding this record may be in flight meanwhile.
                tokio::task::yield_now().await;
            }
            let Ok(durable) = wal.flush(end).await else { break };
            model.lock().expect("model lock").acknowledged(durable);
            acknowledged += 1;
        }
        if rng.random_bool(0.2) {
            tokio::task::yield_now().await;
        }
    }
    (accepted, acknowledged)
}
