//! The cluster workload: a Raft group of three or five [`RaftNode`]s, each
//! on a simulated disk of its own, exchanging messages over a seeded network,
//! while clients propose writes to whichever node leads.
//!
//! raft-rs is sans-IO, so the run is a discrete-event loop in simulated
//! milliseconds, driven entirely by the seed: message delivery times, every
//! fault, each node's ticks. No task scheduler is involved, so a seed replays
//! exactly on both builds.
//!
//! # Faults (for the first [`FAULT_PHASE_MS`])
//!
//! - **Network:** messages dropped, delayed (up to 400 ms, so they arrive
//!   out of order) and duplicated; partitions that split the group in two,
//!   often cutting the leader off, for up to 1.5 s.
//! - **Nodes:** power failures (the disk loses and tears what was not
//!   synced), some aimed inside a log append or a log open, some just after
//!   a node granted its vote, with a quick restart; fsync and write
//!   errors, after which the node stops and restarts from its disk; read
//!   errors while opening.
//! - **Clocks:** a node stalls for up to 0.8 s, then its missed ticks all
//!   fire at once, as after a clock jump or a long pause; a node's clock
//!   runs 3 to 8 times slow for up to 1.5 s (half the time the leader's,
//!   whose lease then outlasts its leadership); each tick's interval has
//!   seeded jitter.
//!
//! Clients write (a key and a value) to whichever node believes it leads,
//! and read a key there through Raft's ReadIndex.
//!
//! Then the faults stop: every node restarts, the network heals, and the
//! group must elect a leader, commit a final marker, and converge.
//!
//! # The oracle
//!
//! - `raft_log_agreement`: no two nodes ever apply different entries at the
//!   same index (checked on every apply, across restarts).
//! - `raft_acked_lost`: the same, when the entry replaced was acknowledged
//!   to its client; and at the end, every acknowledged write is in the log
//!   at the index it was acknowledged at.
//! - `raft_election_safety`: at most one leader per term.
//! - `raft_apply_order`: each node applies entries in index order, without
//!   gaps.
//! - `raft_linearizable`: a write proposed after another was acknowledged
//!   is ordered after it in the log.
//! - `raft_linearizable_read`: a read returns the key's latest write
//!   acknowledged before the read began, or a later one; never an older.
//! - `raft_converges`: once the faults stop, a leader is elected within the
//!   deadline and every node ends with the same applied index and the same
//!   contents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::cluster::raft::{Entry, Message, MessageType, RaftConfig, RaftLogError, RaftNode};
use thunderdb::env::{FaultConfig, FaultKind, SimDisk};
use thunderdb::probe::Phase;

use crate::wal_run::{SeedFailure, SeedOutcome};

/// How long the faults run, in simulated milliseconds.
pub const FAULT_PHASE_MS: u64 = 4_000;
/// How long the healed group has to converge.
const CONVERGE_MS: u64 = 8_000;
const TICK_MS: u64 = 20;
const ELECTION_TICK: usize = 10;
const HEARTBEAT_TICK: usize = 2;

/// Runs one seed of the cluster workload.
pub async fn run_cluster_seed(seed: u64) -> Result<SeedOutcome, SeedFailure> {
    ClusterSim::new(seed).run()
}

/// The seed's draws.
struct Plan {
    nodes: u64,
    drop_rate: f64,
    delay_rate: f64,
    duplicate_rate: f64,
    /// Per millisecond.
    crash_rate: f64,
    partition_rate: f64,
    pause_rate: f64,
    slow_clock_rate: f64,
    /// Of the client's operations, the share that are reads.
    read_share: f64,
    /// Per millisecond: a client proposes.
    propose_rate: f64,
    /// A node compacts its log once it has applied this many entries past
    /// its snapshot (never, for some seeds).
    compact_every: Option<u64>,
    faults: FaultConfig,
}

impl Plan {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let mut rate = |max: f64| if rng.random_bool(0.7) { rng.random_range(0.0..max) } else { 0.0 };
        let drop_rate = rate(0.15);
        let delay_rate = rate(0.1);
        let duplicate_rate = rate(0.1);
        let crash_rate = rate(0.003);
        let partition_rate = rate(0.002);
        let pause_rate = rate(0.001);
        let slow_clock_rate = rate(0.002);
        let mut faults = FaultConfig::power_loss();
        faults.fsync_error_rate = rate(0.01);
        faults.write_error_rate = rate(0.005);
        faults.read_error_rate = rate(0.002);
        Self {
            nodes: if rng.random_bool(0.6) { 3 } else { 5 },
            drop_rate,
            delay_rate,
            duplicate_rate,
            crash_rate,
            partition_rate,
            pause_rate,
            slow_clock_rate,
            read_share: rng.random_range(0.0..0.5),
            propose_rate: rng.random_range(0.03..0.3),
            compact_every: rng.random_bool(0.7).then(|| rng.random_range(8..64)),
            faults,
        }
    }
}

/// A node that is running: raft-rs and the state it applied.
struct Live {
    raft: RaftNode,
    applied: u64,
    /// Each key's last write: its id and log index.
    contents: BTreeMap<u64, (u64, u64)>,
    next_tick: u64,
    /// Reads the group confirmed, waiting for their index to be applied:
    /// (read id, index).
    confirmed_reads: Vec<(u64, u64)>,
    /// The index of the node's last snapshot.
    snapshot_index: u64,
}

struct Node {
    id: u64,
    disk: SimDisk,
    live: Option<Live>,
    /// When a stopped node starts again.
    restart_at: u64,
    /// A stalled node neither ticks nor takes messages until then.
    stalled_until: u64,
    /// The node's clock runs `slow_factor` times slow until then.
    slow_until: u64,
    slow_factor: u64,
}

/// A write: a client's id for it, and a key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Write {
    id: u64,
    key: u64,
    value: u64,
}

impl Write {
    fn encode(self) -> Vec<u8> {
        [self.id, self.key, self.value].iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// `None` for the empty entry a new leader appends.
    fn decode(data: &[u8]) -> Option<Self> {
        let word = |i: usize| u64::from_le_bytes(data[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        (data.len() == 24).then(|| Write { id: word(0), key: word(1), value: word(2) })
    }
}

/// What the group committed, as every node applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Committed {
    term: u64,
    data: Vec<u8>,
    /// The node that first applied it, for messages.
    node: u64,
}

/// A read in flight: the node asked, the key, when it began.
struct Read {
    node: u64,
    key: u64,
    started: u64,
}

struct Partition {
    side: BTreeSet<u64>,
    until: u64,
}

struct ClusterSim {
    seed: u64,
    rng: ChaCha8Rng,
    plan: Plan,
    nodes: Vec<Node>,
    now: u64,
    in_flight: BTreeMap<(u64, u64), Message>,
    sequence: u64,
    partition: Option<Partition>,
    committed: BTreeMap<u64, Committed>,
    /// Writes proposed and not yet acknowledged: id to the node proposed at.
    pending: BTreeMap<u64, u64>,
    proposed_at: BTreeMap<u64, u64>,
    /// Acknowledged writes: id to (index, time).
    acked: BTreeMap<u64, (u64, u64)>,
    /// Each key's acknowledged writes: (time, index).
    acked_by_key: BTreeMap<u64, Vec<(u64, u64)>>,
    reads: BTreeMap<u64, Read>,
    reads_answered: u64,
    leaders: BTreeMap<u64, u64>,
    next_id: u64,
    crashes: u64,
    restarts: u64,
    accepted: u64,
}

impl ClusterSim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc105_7e40);
        let plan = Plan::draw(&mut rng);
        let nodes = (1..=plan.nodes)
            .map(|id| Node {
                id,
                disk: SimDisk::new(seed.wrapping_mul(31).wrapping_add(id), plan.faults.clone()),
                live: None,
                restart_at: 0,
                stalled_until: 0,
                slow_until: 0,
                slow_factor: 1,
            })
            .collect();
        Self {
            seed,
            rng,
            plan,
            nodes,
            now: 0,
            in_flight: BTreeMap::new(),
            sequence: 0,
            partition: None,
            committed: BTreeMap::new(),
            pending: BTreeMap::new(),
            proposed_at: BTreeMap::new(),
            acked: BTreeMap::new(),
            acked_by_key: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_answered: 0,
            leaders: BTreeMap::new(),
            next_id: 1,
            crashes: 0,
            restarts: 0,
            accepted: 0,
        }
    }

    fn fail(&self, check: &'static str, detail: String) -> SeedFailure {
        SeedFailure { seed: self.seed, check, detail: format!("at {} ms: {detail}", self.now) }
    }

    fn config(&self, id: u64) -> RaftConfig {
        RaftConfig {
            node_id: id,
            voters: (1..=self.plan.nodes).collect(),
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
        }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/raft")
    }

    fn run(mut self) -> Result<SeedOutcome, SeedFailure> {
        let deadline = FAULT_PHASE_MS + CONVERGE_MS;
        let mut marker: Option<(u64, u64)> = None;
        while self.now < deadline {
            if self.now < FAULT_PHASE_MS {
                self.inject_faults();
            } else if self.now == FAULT_PHASE_MS {
                self.heal();
            }
            self.restart_nodes()?;
            self.deliver();
            self.tick();
            if self.now < FAULT_PHASE_MS {
                if self.rng.random_bool(self.plan.propose_rate) {
                    if self.rng.random_bool(self.plan.read_share) {
                        self.read();
                    } else {
                        self.propose();
                    }
                }
            } else if marker.is_none_or(|(id, at)| !self.acked.contains_key(&id) && self.now > at + 500) {
                // The final marker, proposed again if its leader lost it.
                marker = self.propose().map(|id| (id, self.now));
            }
            self.advance_all()?;
            if let Some((id, _)) = marker {
                if self.converged(id) {
                    return self.finish();
                }
            }
            self.now += 1;
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|node| match &node.live {
                Some(live) => format!(
                    "node {}: term {}, leader {:?}, applied {}, last {}",
                    node.id,
                    live.raft.term(),
                    live.raft.leader(),
                    live.applied,
                    live.raft.last_index()
                ),
                None => format!("node {}: down", node.id),
            })
            .collect();
        Err(self.fail(
            "raft_converges",
            format!("no convergence {CONVERGE_MS} ms after the faults stopped; {}", states.join("; ")),
        ))
    }

    fn inject_faults(&mut self) {
        let n = self.plan.nodes as usize;
        if self.rng.random_bool(self.plan.crash_rate) {
            let index = self.rng.random_range(0..n);
            if self.nodes[index].live.is_some() {
                match self.rng.random_range(0..4) {
                    0 | 1 => self.crash(index),
                    // Aimed: the power fails inside the node's next appends,
                    // or its next snapshot and log rewrite.
                    2 => self.nodes[index].disk.set_crash_in_phase(Phase::RaftAppend, self.rng.random_range(0..4)),
                    _ => self.nodes[index].disk.set_crash_in_phase(Phase::RaftSnapshot, self.rng.random_range(0..8)),
                }
            }
        }
        if self.partition.is_none() && self.rng.random_bool(self.plan.partition_rate) {
            let leader = self.nodes.iter().find(|node| node.live.as_ref().is_some_and(|l| l.raft.is_leader()));
            let mut side = BTreeSet::new();
            // Half the time the leader is cut off with a minority.
            if let Some(leader) = leader.filter(|_| self.rng.random_bool(0.5)) {
                side.insert(leader.id);
            }
            let size = self.rng.random_range(1..=(n / 2));
            while side.len() < size {
                side.insert(self.rng.random_range(1..=n as u64));
            }
            let until = self.now + self.rng.random_range(100..1_500);
            self.partition = Some(Partition { side, until });
        }
        if self.partition.as_ref().is_some_and(|p| p.until <= self.now) {
            self.partition = None;
        }
        if self.rng.random_bool(self.plan.pause_rate) {
            let index = self.rng.random_range(0..n);
            self.nodes[index].stalled_until = self.now + self.rng.random_range(100..800);
        }
        if self.rng.random_bool(self.plan.slow_clock_rate) {
            let leader = self.nodes.iter().position(|node| node.live.as_ref().is_some_and(|l| l.raft.is_leader()));
            let index = match leader {
                Some(leader) if self.rng.random_bool(0.5) => leader,
                _ => self.rng.random_range(0..n),
            };
            self.nodes[index].slow_until = self.now + self.rng.random_range(200..1_500);
            self.nodes[index].slow_factor = self.rng.random_range(3..=8);
        }
    }

    /// The faults stop: partitions heal, stalls end, disks stop failing,
    /// and every stopped node is due to restart.
    fn heal(&mut self) {
        self.partition = None;
        for node in &mut self.nodes {
            node.stalled_until = 0;
            node.slow_until = 0;
            node.restart_at = node.restart_at.min(self.now);
            node.disk.set_faults(FaultConfig::none());
            node.disk.set_crash_countdown(None);
            if node.disk.is_crashed() {
                node.live = None;
            }
        }
    }

    fn crash(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.live = None;
        node.disk.crash();
        node.restart_at = self.now + self.rng.random_range(20..800);
        self.crashes += 1;
        let id = node.id;
        // Writes in flight at the node have an unknown outcome, and its
        // reads are never answered.
        self.pending.retain(|_, at| *at != id);
        self.reads.retain(|_, read| read.node != id);
    }

    fn restart_nodes(&mut self) -> Result<(), SeedFailure> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].live.is_some() || self.nodes[index].restart_at > self.now {
                continue;
            }
            if self.now < FAULT_PHASE_MS && self.rng.random_bool(0.1) {
                // The power fails again while the log opens.
                let ops = self.rng.random_range(0..3);
                self.nodes[index].disk.set_crash_in_phase(Phase::RaftOpen, ops);
            }
            let node = &self.nodes[index];
            match RaftNode::open(node.disk.fs(), &Self::dir(), &self.config(node.id)) {
                Ok(raft) => {
                    let next_tick = self.now + self.rng.random_range(1..=TICK_MS);
                    let (snapshot_index, data) = raft.snapshot();
                    let contents = self.check_snapshot(node.id, snapshot_index, &data)?;
                    self.nodes[index].live = Some(Live {
                        raft,
                        applied: snapshot_index,
                        contents,
                        next_tick,
                        confirmed_reads: Vec::new(),
                        snapshot_index,
                    });
                    self.restarts += 1;
                }
                // An injected error or a power failure: try again later.
                Err(RaftLogError::Io { .. } | RaftLogError::Create(_)) => {
                    if node.disk.is_crashed() {
                        self.crash(index);
                    } else {
                        self.nodes[index].restart_at = self.now + 50;
                    }
                }
                Err(error) => return Err(self.fail("raft_log_opens", format!("node {}: {error}", node.id))),
            }
        }
        Ok(())
    }

    fn partitioned(&self, from: u64, to: u64) -> bool {
        self.partition.as_ref().is_some_and(|p| p.side.contains(&from) != p.side.contains(&to))
    }

    fn send(&mut self, message: Message) {
        let faulty = self.now < FAULT_PHASE_MS;
        if self.partitioned(message.from, message.to) || (faulty && self.rng.random_bool(self.plan.drop_rate)) {
            self.lost(&message);
            return;
        }
        let copies = if faulty && self.rng.random_bool(self.plan.duplicate_rate) { 2 } else { 1 };
        for copy in 0..copies {
            // A duplicate is a late retransmission.
            let latency = if faulty && (copy == 1 || self.rng.random_bool(self.plan.delay_rate)) {
                self.rng.random_range(50..=400)
            } else {
                self.rng.random_range(1..=8)
            };
            self.sequence += 1;
            self.in_flight.insert((self.now + latency, self.sequence), message.clone());
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let message = entry.remove();
            let Some(index) = self.nodes.iter().position(|node| node.id == message.to) else { continue };
            if self.partitioned(message.from, message.to) || self.nodes[index].live.is_none() {
                self.lost(&message);
                continue;
            }
            let node = &mut self.nodes[index];
            if node.stalled_until > self.now {
                // Held until the stall ends, as a paused process's socket
                // buffers hold it.
                self.sequence += 1;
                self.in_flight.insert((node.stalled_until, self.sequence), message);
                continue;
            }
            if let Some(live) = node.live.as_mut() {
                let snapshot = message.msg_type == MessageType::MsgSnapshot;
                let (from, to) = (message.from, message.to);
                live.raft.step(message);
                if snapshot {
                    self.report_snapshot(from, to, true);
                }
            }
        }
    }

    /// A message that never arrives. A lost snapshot is reported to its
    /// sender, as a transport whose send failed would.
    fn lost(&mut self, message: &Message) {
        if message.msg_type == MessageType::MsgSnapshot {
            self.report_snapshot(message.from, message.to, false);
        }
    }

    /// Tells a snapshot's sender whether it arrived.
    fn report_snapshot(&mut self, from: u64, to: u64, delivered: bool) {
        let sender = self.nodes.iter_mut().find(|node| node.id == from);
        if let Some(live) = sender.and_then(|node| node.live.as_mut()) {
            live.raft.report_snapshot(to, delivered);
        }
    }

    fn tick(&mut self) {
        for node in &mut self.nodes {
            if node.stalled_until > self.now {
                continue;
            }
            let Some(live) = node.live.as_mut() else { continue };
            // After a stall every missed tick fires at once.
            let slow = if node.slow_until > self.now { node.slow_factor } else { 1 };
            while live.next_tick <= self.now {
                live.raft.tick();
                live.next_tick += slow * self.rng.random_range(TICK_MS - 4..=TICK_MS + 4);
            }
        }
    }

    /// A node that believes it leads, chosen at random, as a client that
    /// follows leader hints would find it.
    fn pick_leader(&mut self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.nodes[i];
                node.stalled_until <= self.now && node.live.as_ref().is_some_and(|live| live.raft.is_leader())
            })
            .collect();
        (!leaders.is_empty()).then(|| leaders[self.rng.random_range(0..leaders.len())])
    }

    /// A client reads a key at a node that believes it leads.
    fn read(&mut self) {
        let Some(index) = self.pick_leader() else { return };
        let id = self.next_id;
        let key = self.rng.random_range(0..16);
        let node = &mut self.nodes[index];
        let live = node.live.as_mut().expect("a leader is live");
        if live.raft.read(id.to_le_bytes().to_vec()).is_ok() {
            self.next_id += 1;
            self.reads.insert(id, Read { node: node.id, key, started: self.now });
        }
    }

    /// A client proposes a write to a node that believes it leads. Returns
    /// the write's id if the node took it.
    fn propose(&mut self) -> Option<u64> {
        let index = self.pick_leader()?;
        let write = Write { id: self.next_id, key: self.rng.random_range(0..16), value: self.rng.random() };
        let node = &mut self.nodes[index];
        let live = node.live.as_mut().expect("a leader is live");
        live.raft.propose(write.encode()).ok()?;
        self.next_id += 1;
        self.accepted += 1;
        self.pending.insert(write.id, node.id);
        self.proposed_at.insert(write.id, self.now);
        Some(write.id)
    }

    fn advance_all(&mut self) -> Result<(), SeedFailure> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].stalled_until > self.now {
                continue;
            }
            let Some(live) = self.nodes[index].live.as_mut() else { continue };
            let mut sent = Vec::new();
            let advanced = live.raft.advance(&mut |message| sent.push(message));
            let advanced = match advanced {
                Ok(advanced) => advanced,
                Err(_) => {
                    // The log's state on disk is unknown: stop, and restart
                    // from what the disk kept. What it sent before its
                    // writes is on the wire.
                    for message in sent {
                        self.send(message);
                    }
                    self.crash(index);
                    continue;
                }
            };
            self.check_leader(index)?;
            let voted = sent.iter().any(|m| m.msg_type == MessageType::MsgRequestVoteResponse && !m.reject);
            for message in sent {
                self.send(message);
            }
            if let Some((snapshot_index, data)) = &advanced.snapshot {
                let contents = self.check_snapshot(self.nodes[index].id, *snapshot_index, data)?;
                let live = self.nodes[index].live.as_mut().expect("advanced a live node");
                live.contents = contents;
                live.applied = *snapshot_index;
                live.snapshot_index = *snapshot_index;
            }
            let live = self.nodes[index].live.as_mut().expect("advanced a live node");
            for (context, read_index) in advanced.reads {
                let id = u64::from_le_bytes(context.try_into().expect("a read's context is its id"));
                live.confirmed_reads.push((id, read_index));
            }
            for entry in advanced.committed {
                self.apply(index, &entry)?;
            }
            self.answer_reads(index)?;
            let live = self.nodes[index].live.as_mut().expect("advanced a live node");
            if self.plan.compact_every.is_some_and(|every| live.applied >= live.snapshot_index + every) {
                let data = encode_contents(&live.contents);
                if live.raft.compact(live.applied, data).is_err() {
                    self.crash(index);
                    continue;
                }
                live.snapshot_index = live.applied;
            }
            if voted && self.now < FAULT_PHASE_MS && self.rng.random_bool(0.5) {
                // Aimed: the power fails just after a vote went out, and the
                // node is back while the election's messages still fly.
                self.crash(index);
                self.nodes[index].restart_at = self.now + self.rng.random_range(1..30);
            }
        }
        Ok(())
    }

    /// The contents a snapshot at `index` holds, checked against what the
    /// group committed up to there.
    fn check_snapshot(&self, node: u64, index: u64, data: &[u8]) -> Result<BTreeMap<u64, (u64, u64)>, SeedFailure> {
        let contents = decode_contents(data);
        let mut expected = BTreeMap::new();
        for at in 1..=index {
            let Some(committed) = self.committed.get(&at) else {
                return Err(self.fail(
                    "raft_snapshot_exact",
                    format!("node {node} holds a snapshot at index {index}, but no node ever applied index {at}"),
                ));
            };
            if let Some(write) = Write::decode(&committed.data) {
                expected.insert(write.key, (write.id, at));
            }
        }
        if contents != expected {
            let differs = expected.keys().chain(contents.keys()).find(|k| contents.get(k) != expected.get(k));
            return Err(self.fail(
                "raft_snapshot_exact",
                format!(
                    "node {node}'s snapshot at index {index} differs from the committed log at key {differs:?}: {:?} instead of {:?}",
                    differs.and_then(|k| contents.get(k)),
                    differs.and_then(|k| expected.get(k))
                ),
            ));
        }
        Ok(contents)
    }

    fn check_leader(&mut self, index: usize) -> Result<(), SeedFailure> {
        let node = &self.nodes[index];
        let Some(live) = node.live.as_ref().filter(|live| live.raft.is_leader()) else { return Ok(()) };
        let term = live.raft.term();
        match self.leaders.insert(term, node.id) {
            Some(other) if other != node.id => Err(self.fail(
                "raft_election_safety",
                format!("nodes {other} and {} were both leader in term {term}", node.id),
            )),
            _ => Ok(()),
        }
    }

    fn apply(&mut self, index: usize, entry: &Entry) -> Result<(), SeedFailure> {
        let node_id = self.nodes[index].id;
        let seen = Committed { term: entry.term, data: entry.data.to_vec(), node: node_id };
        match self.committed.get(&entry.index) {
            Some(first) if (first.term, &first.data) != (seen.term, &seen.data) => {
                let describe = |c: &Committed| match Write::decode(&c.data) {
                    Some(w) => format!("write {} (term {}, applied first by node {})", w.id, c.term, c.node),
                    None => format!("an empty entry (term {}, applied first by node {})", c.term, c.node),
                };
                let acked = Write::decode(&first.data).is_some_and(|w| self.acked.contains_key(&w.id));
                let check = if acked { "raft_acked_lost" } else { "raft_log_agreement" };
                return Err(self.fail(
                    check,
                    format!(
                        "node {node_id} applied {} at index {}, where {} was committed{}",
                        describe(&seen),
                        entry.index,
                        describe(first),
                        if acked { " and acknowledged" } else { "" }
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.committed.insert(entry.index, seen);
            }
        }
        let live = self.nodes[index].live.as_mut().expect("applying on a live node");
        if entry.index <= live.applied {
            // Reported again: already checked above against what it was.
            return Ok(());
        }
        if entry.index != live.applied + 1 {
            let applied = live.applied;
            return Err(self.fail(
                "raft_apply_order",
                format!("node {node_id} applied index {} after index {applied}", entry.index),
            ));
        }
        live.applied = entry.index;
        if let Some(write) = Write::decode(&entry.data) {
            live.contents.insert(write.key, (write.id, entry.index));
            if self.pending.get(&write.id) == Some(&node_id) {
                self.pending.remove(&write.id);
                self.acked.insert(write.id, (entry.index, self.now));
                self.acked_by_key.entry(write.key).or_default().push((self.now, entry.index));
            }
        }
        Ok(())
    }

    /// Answers the node's confirmed reads whose index it has applied, and
    /// checks each answer: it must be the key's latest write acknowledged
    /// before the read began, or a later one.
    fn answer_reads(&mut self, index: usize) -> Result<(), SeedFailure> {
        let node_id = self.nodes[index].id;
        let live = self.nodes[index].live.as_mut().expect("answering on a live node");
        let applied = live.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = live.confirmed_reads.drain(..).partition(|&(_, at)| at <= applied);
        live.confirmed_reads = waiting;
        for (id, _) in ready {
            let Some(read) = self.reads.remove(&id) else { continue };
            let live = self.nodes[index].live.as_ref().expect("answering on a live node");
            let answer = live.contents.get(&read.key).copied();
            let required = self
                .acked_by_key
                .get(&read.key)
                .and_then(|acks| acks.iter().filter(|(at, _)| *at < read.started).map(|&(_, i)| i).max());
            self.reads_answered += 1;
            if let Some(required) = required.filter(|&r| answer.is_none_or(|(_, i)| i < r)) {
                let found = answer.map_or("nothing".into(), |(write, i)| format!("write {write} (index {i})"));
                return Err(self.fail(
                    "raft_linearizable_read",
                    format!(
                        "a read of key {} begun at {} ms at node {node_id} returned {found}, but the write at index {required} was acknowledged before it began",
                        read.key, read.started
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The marker is acknowledged, and every node is up and has applied
    /// its whole log, the same length on each (a leader elected after the
    /// marker may have appended its empty entry since).
    fn converged(&self, marker: u64) -> bool {
        let Some(&(index, _)) = self.acked.get(&marker) else { return false };
        let Some(first) = self.nodes[0].live.as_ref() else { return false };
        first.applied >= index
            && self.nodes.iter().all(|node| {
                node.live
                    .as_ref()
                    .is_some_and(|live| live.applied == first.applied && live.raft.last_index() == live.applied)
            })
    }

    fn finish(self) -> Result<SeedOutcome, SeedFailure> {
        let contents: Vec<&BTreeMap<u64, (u64, u64)>> =
            self.nodes.iter().map(|node| &node.live.as_ref().expect("converged nodes are live").contents).collect();
        if let Some(odd) = contents.iter().position(|c| *c != contents[0]) {
            return Err(self.fail(
                "raft_converges",
                format!("node {} holds different contents from node 1 at the same applied index", odd + 1),
            ));
        }
        for (&id, &(index, _)) in &self.acked {
            let found = self.committed.get(&index).and_then(|c| Write::decode(&c.data)).map(|w| w.id);
            if found != Some(id) {
                return Err(self.fail(
                    "raft_acked_lost",
                    format!("write {id} was acknowledged at index {index}, which now holds {found:?}"),
                ));
            }
        }
        // Real-time order: a write proposed after another was acknowledged
        // must come after it in the log.
        let mut order: Vec<(u64, u64)> = self.acked.values().map(|&(index, at)| (at, index)).collect();
        order.sort_unstable();
        for (&index, committed) in &self.committed {
            let Some(write) = Write::decode(&committed.data) else { continue };
            let proposed = self.proposed_at[&write.id];
            // The acknowledged write with the highest index among those
            // acknowledged before this one was proposed.
            let before = order.iter().take_while(|(at, _)| *at < proposed).map(|&(_, i)| i).max();
            if let Some(earlier) = before.filter(|&earlier| earlier >= index) {
                return Err(self.fail(
                    "raft_linearizable",
                    format!(
                        "write {} was proposed at {proposed} ms, after the write at index {earlier} was acknowledged, but is at index {index}",
                        write.id
                    ),
                ));
            }
        }
        let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
        let mut trace_hash = self.committed.len() as u64;
        let mut io_ops = 0;
        for node in &self.nodes {
            for (kind, count) in node.disk.fault_counts() {
                *faults.entry(kind).or_default() += count;
            }
            trace_hash = trace_hash.rotate_left(7) ^ node.disk.trace_hash();
            io_ops += node.disk.op_count();
        }
        trace_hash ^= self.now.rotate_left(32) ^ self.sequence;
        Ok(SeedOutcome {
            seed: self.seed,
            trace_hash,
            faults,
            crashes: self.crashes,
            recoveries: self.restarts,
            records_accepted: self.accepted,
            records_acknowledged: self.acked.len() as u64,
            segments_retired: 0,
            checkpoints: 0,
            corruption_detected: false,
            io_ops,
            trace: Arc::new(self.nodes[0].disk.trace()),
        })
    }
}

fn encode_contents(contents: &BTreeMap<u64, (u64, u64)>) -> Vec<u8> {
    contents.iter().flat_map(|(key, (id, index))| [*key, *id, *index]).flat_map(u64::to_le_bytes).collect()
}

fn decode_contents(data: &[u8]) -> BTreeMap<u64, (u64, u64)> {
    let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    data.chunks_exact(24).map(|c| (word(&c[..8]), (word(&c[8..16]), word(&c[16..])))).collect()
}
