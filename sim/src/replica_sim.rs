//! The replicated workload: three or five [`ReplicaNode`]s, each with a
//! database on a simulated disk of its own, replicating the WAL through
//! Raft on a seeded network, while clients commit transactions on
//! whichever node leads.
//!
//! The world advances in simulated milliseconds: each one it delivers the
//! messages due, ticks the nodes' Raft clocks (with seeded jitter), lets
//! every node advance, then sleeps a millisecond, in which the clients, the
//! databases' background tasks and a new leader's opening run on madsim's
//! deterministic scheduler.
//!
//! # Faults (for the first [`FAULT_PHASE_MS`])
//!
//! - **Network:** messages dropped and delayed (up to 300 ms, so they
//!   arrive out of order); partitions that cut one node (often the
//!   leader) or a minority off, for up to 1.5 s.
//! - **Nodes:** power failures (the disk loses and tears what was not
//!   synced; half of them aimed at the leader) with a restart after up to
//!   600 ms; injected read, write and fsync errors, after which the node
//!   stops (fail-stop) and restarts from its disk.
//! - **Clocks:** the wall clock steps up to a minute either way, as NTP
//!   does (commit timestamps; Raft's ticks are the world's).
//!
//! Clients each insert two rows (a key and its twin) per transaction, on
//! the leader they see, and roll one transaction in five back on purpose. A
//! commit that returns `Ok` is acknowledged; any error leaves its outcome
//! unknown, and failover's undo must roll back what was open.
//!
//! Then the faults stop: down nodes restart, the network heals, and the
//! group must elect a leader that opens the database and commits a final
//! row; the leader shuts down cleanly, and every node must apply the WAL
//! through the shutdown's checkpoint.
//!
//! # The oracle
//!
//! - `replica_converges`: after the faults, a leader serves within the
//!   deadline and every node applies the leader's whole WAL.
//! - `replica_acked_lost`: every acknowledged row is on every node (each
//!   node's database is opened on its own at the end).
//! - `replica_agreement`: every node holds exactly the same rows, and only
//!   rows some client tried to insert.
//! - `replica_atomicity`: no row without its twin (half a transaction), and
//!   none of a transaction rolled back on purpose.
//! - `replica_replayed_uncommitted`: no follower ever replays WAL past the
//!   most any node that led knew the group had committed (a leader learns
//!   a commit before any follower can apply it).
//! - `replica_no_panic`/fail-stop errors other than injected I/O errors
//!   (a gap in the replicated WAL, a replay that fails) fail the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::backup::{stream, take_into, BackupRequest, Progress as BackupProgress, Sink};
use thunderdb::cluster::raft::{ExportedLog, Message, RaftConfig};
use thunderdb::cluster::replica::{
    install_snapshot, LogPin, RebuildDirs, RebuildTarget, ReplicaConfig, ReplicaNode, ReplicaRole, ReplicaStatus,
};
use thunderdb::db::{Database, EngineConfig};
use thunderdb::env::{Env, FaultConfig, Fs, SimClock, SimDisk};
use thunderdb::wal::Lsn;

use crate::wal_run::{SeedFailure, SeedOutcome};

/// How long the faults run, in simulated milliseconds.
pub const FAULT_PHASE_MS: u64 = 3_000;
/// How long the healed group has to converge.
const CONVERGE_MS: u64 = 15_000;
const TICK_MS: u64 = 20;
const ELECTION_TICK: usize = 10;
const HEARTBEAT_TICK: usize = 2;
const TABLE: &str = "rows";
/// Where a rebuild's backup lands on the node's new disk.
const SNAPSHOT: &str = "/snapshot";
/// The keys of the row the healed group must commit: one per attempt,
/// since an attempt that failed may still have committed.
const FINAL_KEY: u64 = 1 << 62;
/// Each transaction inserts a row and its twin, whose key has this bit.
const TWIN: u64 = 1 << 63;

/// Runs one seed of the replicated workload.
pub async fn run_replica_seed(seed: u64) -> Result<SeedOutcome, SeedFailure> {
    let mut world = World::new(seed);
    world.bootstrap().await?;
    let result = world.run().await;
    world.stop_clients();
    result?;
    world.finish().await
}

struct Plan {
    nodes: u64,
    clients: u64,
    drop_rate: f64,
    delay_rate: f64,
    /// Per millisecond.
    crash_rate: f64,
    partition_rate: f64,
    /// Per millisecond: the wall clock (shared by every node) steps up to
    /// a minute either way, as NTP does.
    clock_jump_rate: f64,
    /// Per millisecond: a node's disk is lost, and the node is rebuilt from
    /// the leader (its online backup onto the new disk, then its Raft log).
    rebuild_rate: f64,
    faults: FaultConfig,
    engine: EngineConfig,
    replay_interval: Duration,
    /// A node compacts its Raft log once this many entries it may drop
    /// have gathered (`u64::MAX`: never).
    compact_every: u64,
}

impl Plan {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let mut rate = |max: f64| if rng.random_bool(0.7) { rng.random_range(0.0..max) } else { 0.0 };
        let drop_rate = rate(0.1);
        let delay_rate = rate(0.1);
        let crash_rate = rate(0.003);
        let partition_rate = rate(0.002);
        let clock_jump_rate = rate(0.002);
        let rebuild_rate = rate(0.001);
        let mut faults = FaultConfig::power_loss();
        faults.fsync_error_rate = rate(0.002);
        faults.write_error_rate = rate(0.001);
        faults.read_error_rate = rate(0.001);
        let mut engine = EngineConfig::new("/db");
        engine.wal_segment_size = [1 << 16, 1 << 17, 1 << 20][rng.random_range(0..3)];
        engine.buffer_pool_size = rng.random_range(16..256) * thunderdb::storage::PAGE_SIZE as u64;
        engine.checkpoint_interval = Duration::from_millis(rng.random_range(100..2_000));
        engine.max_wal_size = 4 << 20;
        engine.wal_zero_fill_chunk = 1 << 14;
        Self {
            nodes: if rng.random_bool(0.7) { 3 } else { 5 },
            clients: rng.random_range(1..=4),
            drop_rate,
            delay_rate,
            crash_rate,
            partition_rate,
            clock_jump_rate,
            rebuild_rate,
            faults,
            engine,
            replay_interval: Duration::from_millis(rng.random_range(10..300)),
            compact_every: u64::MAX,
        }
    }
}

struct Node {
    id: u64,
    disk: SimDisk,
    live: Option<ReplicaNode>,
    restart_at: u64,
    next_tick: u64,
    /// The node lost its disk and is being rebuilt.
    rebuild: Option<Rebuild>,
    /// How many disks it has had.
    disks: u64,
}

enum Rebuild {
    /// Waiting for a leader that serves.
    Waiting,
    /// The leader (by index) is taking its backup onto the new disk, its
    /// Raft log pinned until it is exported.
    Copying(usize, tokio::task::JoinHandle<Result<Lsn, String>>, LogPin),
}

/// What the clients did, shared with the world.
#[derive(Default)]
struct Model {
    /// Rows some client tried to insert.
    attempted: BTreeSet<u64>,
    /// Rows whose commit returned `Ok`.
    acked: BTreeSet<u64>,
    /// Rows whose transaction the client rolled back on purpose.
    rolled_back: BTreeSet<u64>,
    /// The database of the node that leads, as the clients see it: not a
    /// strong reference, which would keep a deposed leader's engine alive.
    leader: Option<Weak<Database>>,
    /// The faults are over: the clients stop.
    stop: bool,
    /// The healed group committed the final row.
    final_acked: bool,
}

type SharedModel = Arc<Mutex<Model>>;

fn lock(model: &SharedModel) -> std::sync::MutexGuard<'_, Model> {
    model.lock().expect("model lock poisoned")
}

struct World {
    seed: u64,
    rng: ChaCha8Rng,
    plan: Plan,
    nodes: Vec<Node>,
    clock: Arc<SimClock>,
    now: u64,
    in_flight: BTreeMap<(u64, u64), Message>,
    sequence: u64,
    /// The nodes cut off from the rest, until when.
    partition: Option<(BTreeSet<u64>, u64)>,
    model: SharedModel,
    /// The end of the WAL the group has committed, as far as any node that
    /// led knew (the initial log's end before any).
    committed: Lsn,
    crashes: u64,
    restarts: u64,
    rebuilds: u64,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7e91_1ca5);
        let mut plan = Plan::draw(&mut rng);
        // From a generator of its own, so that drawing it leaves the rest
        // of every seed's plan as it was before compaction was built.
        let mut compaction = ChaCha8Rng::seed_from_u64(seed ^ 0xc0_4ac7);
        if compaction.random_bool(0.7) {
            plan.compact_every = compaction.random_range(2..64);
        }
        let nodes = (1..=plan.nodes)
            .map(|id| Node {
                id,
                disk: SimDisk::new(seed.wrapping_mul(37).wrapping_add(id), FaultConfig::none()),
                live: None,
                restart_at: 0,
                next_tick: 0,
                rebuild: None,
                disks: 1,
            })
            .collect();
        Self {
            seed,
            rng,
            plan,
            nodes,
            clock: Arc::new(SimClock::new(1_700_000_000_000_000)),
            now: 0,
            in_flight: BTreeMap::new(),
            sequence: 0,
            partition: None,
            model: SharedModel::default(),
            committed: Lsn::ZERO,
            crashes: 0,
            restarts: 0,
            rebuilds: 0,
            clients: Vec::new(),
        }
    }

    fn fail(&self, check: &'static str, detail: String) -> SeedFailure {
        SeedFailure { seed: self.seed, check, detail: format!("at {} ms: {detail}", self.now) }
    }

    fn env(&self, index: usize) -> Env {
        Env::new(self.nodes[index].disk.fs(), self.clock.clone(), self.seed ^ self.nodes[index].id)
    }

    fn config(&self, id: u64) -> ReplicaConfig {
        ReplicaConfig {
            raft: RaftConfig {
                node_id: id,
                voters: (1..=self.plan.nodes).collect(),
                election_tick: ELECTION_TICK,
                heartbeat_tick: HEARTBEAT_TICK,
            },
            raft_dir: PathBuf::from("/raft"),
            engine: self.plan.engine.clone(),
            replay_interval: self.plan.replay_interval,
            background_replay: false,
            compact_every: self.plan.compact_every,
            log_pins: Default::default(),
        }
    }

    /// Initialises the database on node 1 (its table created) and copies
    /// its directories to every other node, faults off.
    async fn bootstrap(&mut self) -> Result<(), SeedFailure> {
        let db = Database::open(self.env(0), self.plan.engine.clone())
            .await
            .map_err(|e| self.fail("replica_bootstrap", e.to_string()))?;
        let mut txn = db.begin().await.map_err(|e| self.fail("replica_bootstrap", e.to_string()))?;
        txn.create_table(TABLE, b"").await.map_err(|e| self.fail("replica_bootstrap", e.to_string()))?;
        txn.commit().await.map_err(|e| self.fail("replica_bootstrap", e.to_string()))?;
        db.shutdown().await.map_err(|e| self.fail("replica_bootstrap", e.to_string()))?;
        self.committed = db.wal().end_lsn();
        drop(db);
        let source = self.nodes[0].disk.fs();
        for node in &self.nodes[1..] {
            let target = node.disk.fs();
            for dir in [&self.plan.engine.data_dir, &self.plan.engine.wal_dir] {
                copy_dir(source.as_ref(), target.as_ref(), dir).map_err(|e| self.fail("replica_bootstrap", e))?;
            }
        }
        for index in 0..self.nodes.len() {
            self.nodes[index].disk.set_faults(self.plan.faults.clone());
            self.start(index)?;
        }
        for client in 0..self.plan.clients {
            let model = self.model.clone();
            let seed = self.seed ^ (client + 1).wrapping_mul(0x9e37_79b9);
            self.clients.push(tokio::spawn(run_client(client, seed, model)));
        }
        Ok(())
    }

    fn start(&mut self, index: usize) -> Result<(), SeedFailure> {
        let config = self.config(self.nodes[index].id);
        match ReplicaNode::open(self.env(index), config) {
            Ok(node) => {
                self.nodes[index].live = Some(node);
                self.nodes[index].next_tick = self.now + 1;
                self.restarts += 1;
                Ok(())
            }
            Err(error) if error.contains("injected") => {
                self.crash(index);
                Ok(())
            }
            Err(error) => Err(self.fail("replica_restart", format!("node {}: {error}", self.nodes[index].id))),
        }
    }

    /// Power fails at node `index`; it restarts after a while.
    fn crash(&mut self, index: usize) {
        self.nodes[index].live = None;
        self.nodes[index].disk.crash();
        self.crashes += 1;
        let down = if self.now < FAULT_PHASE_MS { self.rng.random_range(10..600) } else { 0 };
        self.nodes[index].restart_at = self.now + down;
    }

    fn partitioned(&self, a: u64, b: u64) -> bool {
        self.partition.as_ref().is_some_and(|(side, _)| side.contains(&a) != side.contains(&b))
    }

    async fn run(&mut self) -> Result<(), SeedFailure> {
        let deadline = FAULT_PHASE_MS + CONVERGE_MS;
        while self.now < deadline {
            if self.now < FAULT_PHASE_MS {
                self.inject_faults();
            } else if self.now == FAULT_PHASE_MS {
                self.partition = None;
                for node in &self.nodes {
                    node.disk.set_faults(FaultConfig::none());
                }
                lock(&self.model).stop = true;
            }
            self.deliver();
            self.step_nodes().await?;
            self.step_rebuilds().await?;
            // A deposed leader may not have noticed yet: the newest term's.
            let leader = self
                .nodes
                .iter()
                .filter_map(|node| node.live.as_ref())
                .filter_map(|live| live.database().map(|db| (live.status().term, db)))
                .max_by_key(|(term, _)| *term)
                .map(|(_, db)| db);
            lock(&self.model).leader = leader.as_ref().map(Arc::downgrade);
            if self.now == FAULT_PHASE_MS {
                self.clients.push(tokio::spawn(final_client(self.model.clone())));
            }
            let rebuilding = self.nodes.iter().any(|node| node.rebuild.is_some());
            if let Some(db) = leader.filter(|_| lock(&self.model).final_acked && !rebuilding) {
                return self.converge(db).await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.now += 1;
        }
        Err(self.fail(
            "replica_converges",
            format!("no leader served {CONVERGE_MS} ms after the faults stopped; {}", self.describe()),
        ))
    }

    /// A node's disk is lost: it stops, and waits to be rebuilt.
    fn lose_disk(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.live = None;
        node.disks += 1;
        node.disk =
            SimDisk::new(self.seed.wrapping_mul(37).wrapping_add(node.id * 1_000 + node.disks), FaultConfig::none());
        node.rebuild = Some(Rebuild::Waiting);
        node.restart_at = u64::MAX;
    }

    /// Moves each rebuild on: a serving leader takes an online backup onto
    /// the node's new disk (the clients write meanwhile); once it is done,
    /// the backup is restored there, the leader's Raft log becomes the
    /// node's, and the node starts. A rebuild that fails (the leader lost
    /// its term, an injected fault) starts over on a fresh disk.
    async fn step_rebuilds(&mut self) -> Result<(), SeedFailure> {
        for index in 0..self.nodes.len() {
            match self.nodes[index].rebuild.take() {
                None => {}
                Some(Rebuild::Waiting) => {
                    let leader = self
                        .nodes
                        .iter()
                        .position(|node| node.live.as_ref().is_some_and(|live| live.database().is_some()));
                    let (Some(leader), false) = (leader, leader == Some(index)) else {
                        self.nodes[index].rebuild = Some(Rebuild::Waiting);
                        continue;
                    };
                    let live = self.nodes[leader].live.as_ref().expect("it serves");
                    let (db, pin) = (live.database().expect("it serves"), live.pin_log());
                    let target = self.nodes[index].disk.fs();
                    let id = format!("rebuild-{}-{}", self.nodes[index].id, self.nodes[index].disks);
                    let engine = &self.plan.engine;
                    let dirs = RebuildDirs {
                        staging: SNAPSHOT.into(),
                        data: engine.data_dir.clone(),
                        wal: engine.wal_dir.clone(),
                    };
                    // As the server's rebuild does it: the backup streamed
                    // as it is taken, each file written where it belongs.
                    let copy = tokio::spawn(async move {
                        let request = BackupRequest::new(PathBuf::new(), true, false, String::new());
                        let progress = BackupProgress::default();
                        let (mut sending, mut receiving) = tokio::io::duplex(64 << 10);
                        let send =
                            async move { take_into(&db, Sink::Stream(&mut sending), &id, &request, &progress).await };
                        let fs = target.as_ref();
                        let mut place = |name: &str| dirs.place(fs, name);
                        let receive = stream::receive(&mut receiving, fs, &mut place);
                        let (sent, received) = tokio::join!(send, receive);
                        let start = sent.map_err(|e| e.to_string())?.start_lsn;
                        received.map(|_| start)
                    });
                    self.nodes[index].rebuild = Some(Rebuild::Copying(leader, copy, pin));
                }
                Some(Rebuild::Copying(leader, copy, pin)) if !copy.is_finished() => {
                    self.nodes[index].rebuild = Some(Rebuild::Copying(leader, copy, pin));
                }
                Some(Rebuild::Copying(leader, copy, _pin)) => {
                    // The leader may crash, lose its term or hit a disk
                    // fault while it copies: the rebuild starts over.
                    let copied = copy.await.map_err(|e| e.to_string()).and_then(|r| r);
                    let rebuilding = self.nodes[index].id;
                    let exported = copied.and_then(|start| match self.nodes[leader].live.as_ref() {
                        Some(live) => live.export_log(rebuilding, start),
                        None => Err("the leader stopped".into()),
                    });
                    let Ok(exported) = exported else {
                        self.lose_disk(index);
                        continue;
                    };
                    // On the node's new disk, without faults: this must work.
                    if let Err(error) = self.install(index, &exported) {
                        let id = self.nodes[index].id;
                        return Err(self.fail("replica_rebuild", format!("rebuilding node {id}: {error}")));
                    }
                    self.rebuilds += 1;
                    self.nodes[index].restart_at = self.now;
                    if self.now < FAULT_PHASE_MS {
                        self.nodes[index].disk.set_faults(self.plan.faults.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores the backup on the node's new disk and adopts the leader's
    /// Raft log, taken once the backup ended.
    fn install(&self, index: usize, exported: &ExportedLog) -> Result<(), String> {
        let engine = &self.plan.engine;
        let voters: Vec<u64> = (1..=self.plan.nodes).collect();
        let target = RebuildTarget {
            data_dir: &engine.data_dir,
            wal_dir: &engine.wal_dir,
            raft_dir: Path::new("/raft"),
            node_id: self.nodes[index].id,
            voters: &voters,
        };
        // As the server's rebuild does it.
        install_snapshot(self.nodes[index].disk.fs(), Path::new(SNAPSHOT), &target, exported)?;
        Ok(())
    }

    fn describe(&self) -> String {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|node| match &node.live {
                Some(live) => format!("node {}: {:?}", node.id, live.status()),
                None => format!("node {}: down", node.id),
            })
            .collect();
        states.join("; ")
    }

    /// Ticks, advances and routes, for every live node.
    async fn step_nodes(&mut self) -> Result<(), SeedFailure> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].live.is_none() && self.nodes[index].restart_at <= self.now {
                self.start(index)?;
            }
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(live) = node.live.as_mut() else { continue };
            if node.next_tick <= self.now {
                live.tick();
                // ±20% per tick, from the seed.
                node.next_tick = self.now + self.rng.random_range(TICK_MS * 4 / 5..=TICK_MS * 6 / 5);
            }
            let mut sent = Vec::new();
            let advanced = live.advance(&mut |message| sent.push(message)).await;
            // Also after a failure: what the node learned before it failed
            // was learned, and what it sent before was sent.
            let status = live.status();
            self.check_replayed(self.nodes[index].id, status)?;
            for message in sent {
                self.send(message);
            }
            match advanced {
                Ok(()) => {}
                Err(error) if error.contains("injected") => {
                    // Fail-stop on an injected I/O error: the node restarts
                    // from its disk, as the process would.
                    self.crash(index);
                }
                Err(error) => {
                    return Err(self.fail("replica_fail_stop", format!("node {}: {error}", self.nodes[index].id)))
                }
            }
        }
        Ok(())
    }

    /// A node that leads (or is taking over) knows what the group
    /// committed before any follower can apply it; a follower must never
    /// have replayed past the most any of them knew.
    fn check_replayed(&mut self, id: u64, status: ReplicaStatus) -> Result<(), SeedFailure> {
        if status.role != ReplicaRole::Follower {
            self.committed = self.committed.max(status.committed);
        } else if status.replayed > self.committed {
            return Err(self.fail(
                "replica_replayed_uncommitted",
                format!(
                    "node {id} replayed WAL to {}, past the most any leader knew committed, {}; {}",
                    status.replayed,
                    self.committed,
                    self.describe()
                ),
            ));
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        if self.partition.as_ref().is_some_and(|(_, until)| *until <= self.now) {
            self.partition = None;
        }
        if self.partition.is_none() && self.rng.random_bool(self.plan.partition_rate) {
            let leader = self.leader_id();
            let mut side = BTreeSet::new();
            if let Some(leader) = leader.filter(|_| self.rng.random_bool(0.5)) {
                side.insert(leader);
            } else {
                let count = self.rng.random_range(1..=self.plan.nodes / 2);
                while side.len() < count as usize {
                    side.insert(self.rng.random_range(1..=self.plan.nodes));
                }
            }
            let until = self.now + self.rng.random_range(100..1_500);
            self.partition = Some((side, until));
        }
        if self.rng.random_bool(self.plan.clock_jump_rate) {
            self.clock.jump_wall(self.rng.random_range(-60_000_000..=60_000_000));
        }
        if self.rng.random_bool(self.plan.rebuild_rate) {
            let index = self.rng.random_range(0..self.nodes.len());
            let leader = self.leader_id().map(|id| (id - 1) as usize);
            // One disk lost at a time: a majority keeps its disks, as the
            // group needs to rebuild anyone.
            if leader != Some(index) && self.nodes.iter().all(|node| node.rebuild.is_none()) {
                self.lose_disk(index);
            }
        }
        if self.rng.random_bool(self.plan.crash_rate) {
            let index = match self.leader_id().filter(|_| self.rng.random_bool(0.5)) {
                Some(leader) => (leader - 1) as usize,
                None => self.rng.random_range(0..self.nodes.len()),
            };
            if self.nodes[index].live.is_some() {
                self.crash(index);
            }
        }
    }

    fn leader_id(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|node| node.live.as_ref().is_some_and(|live| live.status().role == ReplicaRole::Leading))
            .map(|node| node.id)
    }

    fn send(&mut self, message: Message) {
        let faulty = self.now < FAULT_PHASE_MS;
        if self.partitioned(message.from, message.to) || (faulty && self.rng.random_bool(self.plan.drop_rate)) {
            return;
        }
        let latency = if faulty && self.rng.random_bool(self.plan.delay_rate) {
            self.rng.random_range(20..=300)
        } else {
            self.rng.random_range(1..=5)
        };
        self.sequence += 1;
        self.in_flight.insert((self.now + latency, self.sequence), message);
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let message = entry.remove();
            if self.partitioned(message.from, message.to) {
                continue;
            }
            if let Some(live) = self.nodes.get_mut(message.to as usize - 1).and_then(|node| node.live.as_mut()) {
                live.step(message);
            }
        }
    }

    /// The healed group committed the final row: the leader shuts down
    /// cleanly and every node must apply its WAL to the end.
    async fn converge(&mut self, db: Arc<Database>) -> Result<(), SeedFailure> {
        lock(&self.model).leader = None;
        let (done, mut shutdown) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = done.send(db.shutdown().await.map_err(|e| e.to_string()));
        });
        let deadline = self.now + CONVERGE_MS;
        while self.now < deadline {
            self.deliver();
            self.step_nodes().await?;
            if let Ok(result) = shutdown.try_recv() {
                result.map_err(|e| self.fail("replica_converges", format!("the leader's shutdown failed: {e}")))?;
                return self.wait_applied(deadline).await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.now += 1;
        }
        Err(self.fail("replica_converges", format!("the leader's clean shutdown did not finish; {}", self.describe())))
    }

    /// Waits until every node holds the leader's whole WAL.
    async fn wait_applied(&mut self, deadline: u64) -> Result<(), SeedFailure> {
        while self.now < deadline {
            let statuses: Vec<_> =
                self.nodes.iter().filter_map(|node| node.live.as_ref().map(|live| live.status())).collect();
            // One leader: a deposed one that has not noticed yet (a
            // partition just healed) still says it leads, and lacks what
            // the group committed since.
            let mut leaders = statuses.iter().filter(|status| status.role == ReplicaRole::Leading);
            if let (Some(leader), None) = (leaders.next(), leaders.next()) {
                let end = leader.replicated;
                if statuses.len() == self.nodes.len()
                    && statuses.iter().all(|status| status.role == ReplicaRole::Leading || status.wal_end == end)
                {
                    return Ok(());
                }
            }
            self.deliver();
            self.step_nodes().await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.now += 1;
        }
        Err(self
            .fail("replica_converges", format!("the nodes did not all apply the leader's WAL; {}", self.describe())))
    }

    fn stop_clients(&mut self) {
        let mut model = lock(&self.model);
        (model.stop, model.leader) = (true, None);
        drop(model);
        for client in self.clients.drain(..) {
            client.abort();
        }
    }

    /// Stops every node and opens each one's database on its own: every
    /// acknowledged row on each, the same rows on all.
    async fn finish(mut self) -> Result<SeedOutcome, SeedFailure> {
        for node in &mut self.nodes {
            node.live = None;
        }
        // Let the stopped engines' tasks see they are gone.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (acked, attempted, rolled_back) = {
            let model = lock(&self.model);
            (model.acked.clone(), model.attempted.clone(), model.rolled_back.clone())
        };
        let mut first: Option<(u64, BTreeSet<u64>)> = None;
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            let rows = read_rows(self.env(index), self.plan.engine.clone())
                .await
                .map_err(|e| self.fail("replica_agreement", format!("node {id}'s database does not open: {e}")))?;
            if let Some(lost) = acked.iter().find(|key| !rows.contains(key)) {
                return Err(self.fail(
                    "replica_acked_lost",
                    format!("node {id} lacks row {lost:#x}, whose commit was acknowledged ({} rows)", rows.len()),
                ));
            }
            if let Some(stray) = rows.iter().find(|key| !attempted.contains(&(*key & !TWIN))) {
                return Err(self.fail("replica_agreement", format!("node {id} holds row {stray:#x}, never inserted")));
            }
            if let Some(half) = rows.iter().find(|key| !rows.contains(&(*key ^ TWIN))) {
                return Err(self.fail(
                    "replica_atomicity",
                    format!("node {id} holds row {half:#x} without its twin: half a transaction survived"),
                ));
            }
            if let Some(undone) = rows.iter().find(|key| rolled_back.contains(&(*key & !TWIN))) {
                return Err(self.fail(
                    "replica_atomicity",
                    format!("node {id} holds row {undone:#x}, whose transaction was rolled back"),
                ));
            }
            match &first {
                None => first = Some((id, rows)),
                Some((other, expected)) if *expected != rows => {
                    let diff: Vec<_> = expected.symmetric_difference(&rows).take(5).collect();
                    return Err(self.fail(
                        "replica_agreement",
                        format!(
                            "nodes {other} and {id} differ ({} against {} rows; e.g. {diff:x?})",
                            expected.len(),
                            rows.len()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let mut faults = BTreeMap::new();
        let mut trace_hash = 0u64;
        let mut io_ops = 0;
        for node in &self.nodes {
            for (kind, count) in node.disk.fault_counts() {
                *faults.entry(kind).or_default() += count;
            }
            trace_hash = trace_hash.rotate_left(7) ^ node.disk.trace_hash();
            io_ops += node.disk.op_count();
        }
        Ok(SeedOutcome {
            seed: self.seed,
            trace_hash,
            faults,
            crashes: self.crashes,
            recoveries: self.restarts,
            records_accepted: attempted.len() as u64,
            records_acknowledged: acked.len() as u64,
            segments_retired: 0,
            checkpoints: 0,
            corruption_detected: false,
            io_ops,
            trace: Arc::new(self.nodes[0].disk.trace()),
        })
    }
}

fn key_bytes(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

/// Inserts the rows `key` and its twin in one transaction, and commits it,
/// or with `roll_back` rolls it back.
async fn insert(db: &Database, key: u64, roll_back: bool) -> Result<(), String> {
    let mut txn = db.begin().await.map_err(|e| e.to_string())?;
    let table = txn.table(TABLE).await.map_err(|e| e.to_string())?.ok_or("no table")?;
    for row in [key, key | TWIN] {
        txn.insert(&table, &key_bytes(row), format!("row {row:#x}").as_bytes()).await.map_err(|e| e.to_string())?;
    }
    if roll_back {
        txn.rollback().await.map_err(|e| e.to_string())
    } else {
        txn.commit().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// A client: inserts rows with keys of its own on the leader it sees.
async fn run_client(client: u64, seed: u64, model: SharedModel) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next = 0u64;
    loop {
        let (db, stop) = {
            let model = lock(&model);
            (model.leader.as_ref().and_then(Weak::upgrade), model.stop)
        };
        if stop {
            return;
        }
        if let Some(db) = db {
            let key = client << 32 | next;
            next += 1;
            let roll_back = rng.random_bool(0.2);
            lock(&model).attempted.insert(key);
            if roll_back {
                lock(&model).rolled_back.insert(key);
            }
            if insert(&db, key, roll_back).await.is_ok() && !roll_back {
                lock(&model).acked.insert(key);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
    }
}

/// After the faults: commits the final row on whichever node leads.
async fn final_client(model: SharedModel) {
    let mut attempt = 0;
    loop {
        let db = lock(&model).leader.as_ref().and_then(Weak::upgrade);
        if let Some(db) = db {
            let key = FINAL_KEY + attempt;
            attempt += 1;
            lock(&model).attempted.insert(key);
            if insert(&db, key, false).await.is_ok() {
                let mut model = lock(&model);
                model.acked.insert(key);
                model.final_acked = true;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens a node's database on its own and reads every row's key.
async fn read_rows(env: Env, engine: EngineConfig) -> Result<BTreeSet<u64>, String> {
    let db = Database::open(env, engine).await.map_err(|e| e.to_string())?;
    let mut txn = db.begin().await.map_err(|e| e.to_string())?;
    let table = txn.table(TABLE).await.map_err(|e| e.to_string())?.ok_or("no table")?;
    let rows =
        txn.scan(&table, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded).await.map_err(|e| e.to_string())?;
    let mut keys = BTreeSet::new();
    for (key, _) in rows {
        let key: [u8; 8] = key.as_slice().try_into().map_err(|_| format!("a key of {} bytes", key.len()))?;
        keys.insert(u64::from_be_bytes(key));
    }
    txn.rollback().await.map_err(|e| e.to_string())?;
    db.shutdown().await.map_err(|e| e.to_string())?;
    Ok(keys)
}

/// Copies the files of `dir` from one disk to another, durably.
fn copy_dir(from: &dyn Fs, to: &dyn Fs, dir: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", dir.display());
    to.create_dir_all(dir).map_err(err)?;
    for name in from.list(dir).map_err(err)? {
        let path = dir.join(&name);
        let source = from.open(&path).map_err(err)?;
        let mut bytes = vec![0; source.len().map_err(err)? as usize];
        source.read_exact_at(&mut bytes, 0).map_err(err)?;
        let target = to.create(&path).map_err(err)?;
        target.write_all_at(&bytes, 0).map_err(err)?;
        target.sync_data().map_err(err)?;
    }
    to.sync_dir(dir).map_err(err)
}
