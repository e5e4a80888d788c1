//! One Raft node: raft-rs's `RawNode` over the durable [`RaftLog`], driven
//! by its caller.
//!
//! The caller owns time and the network. It calls [`RaftNode::tick`] on its
//! clock, [`RaftNode::step`] for each message that arrives, and
//! [`RaftNode::advance`] after either; `advance` hands the messages to send
//! to the caller's `send`, makes what raft-rs asks durable, and returns the
//! entries now committed, in order. The simulator is one such caller, the
//! server's driver another: the same code under both.
//!
//! The order inside `advance` is raft-rs's contract: messages a leader may
//! send before its own append are handed to `send` first (so the append to
//! followers runs in parallel with the leader's write), then the append
//! and the hard state are made durable, and only then are the messages
//! that promise them (votes, append acknowledgements) handed over.

use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::{Entry, HardState, Message, MessageType};
use raft::{Config, GetEntriesContext, RawNode, SnapshotStatus, StateRole, Storage};

use super::log::{RaftLog, RaftLogError};
use crate::env::Fs;
use crate::planted::{self, PlantedBug};
use crate::probe::{self, Probe};

/// A node's place in the group and its timing, in ticks.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's id (non-zero).
    pub node_id: u64,
    /// Every voting member's id, this node's included.
    pub voters: Vec<u64>,
    /// Ticks without a leader's word before a follower campaigns. The range
    /// raft-rs randomises within is pinned to this one value, because its
    /// randomness (rand 0.8) is outside the simulator's control; the caller
    /// adds seeded jitter to the ticks instead.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
}

/// What one [`RaftNode::advance`] produced.
#[derive(Debug, Default)]
pub struct Advanced {
    /// Entries now committed, in log order, to apply.
    pub committed: Vec<Entry>,
    /// A snapshot the leader sent, now durable, which replaces the state
    /// machine: its index and data. The committed entries above follow it.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Reads whose leadership a majority confirmed: each read's context
    /// (from [`RaftNode::read`]) and the commit index it must wait for.
    /// Once the node has applied that index, its state answers the read
    /// linearizably.
    pub reads: Vec<(Vec<u8>, u64)>,
}

/// A leader's log as [`RaftNode::export`] hands it to a node being
/// rebuilt.
#[derive(Debug, Clone, Default)]
pub struct ExportedLog {
    /// The last entry left out, as (index, term): the node holds what it
    /// committed by other means. `None` when the entries start at index 1.
    pub base: Option<(u64, u64)>,
    /// The entries after it.
    pub entries: Vec<Entry>,
    /// The hard state the node starts from.
    pub hard_state: HardState,
}

/// Why a proposal was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals.
    #[error("not the leader (the leader is {})", leader.map_or("unknown".into(), |id| format!("node {id}")))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// raft-rs refused it (e.g. a leadership transfer is under way).
    #[error("proposal dropped: {0}")]
    Dropped(raft::Error),
}

/// A Raft node with its durable log.
pub struct RaftNode {
    raw: RawNode<RaftLog>,
    /// Reads answered without asking the group (only under a planted bug).
    local_reads: Vec<(Vec<u8>, u64)>,
    /// On a follower, the highest index a leader said every voter holds
    /// and the group committed ([`RaftNode::held_by_all`]).
    told_held: u64,
}

impl RaftNode {
    /// Opens the node's log in `dir` (creating it on first start) and
    /// starts raft-rs over it as a follower.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, config: &RaftConfig) -> Result<Self, RaftLogError> {
        let log = RaftLog::open(fs, dir, config.node_id, &config.voters)?;
        let raft_config = Config {
            id: config.node_id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            min_election_tick: config.election_tick,
            max_election_tick: config.election_tick + 1,
            // A leader that cannot hear a majority steps down, and a node
            // cut off cannot disturb the group with higher terms when it
            // comes back.
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // Followers learn a commit with the next append or heartbeat,
            // not from a message of its own: under load that halves the
            // messages, and the follower syncs, of every round.
            skip_bcast_commit: true,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, log, &logger).expect("a validated configuration over a readable log");
        Ok(Self { raw, local_reads: Vec::new(), told_held: 0 })
    }

    /// One tick of the node's clock.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Takes a message from a peer. Messages raft-rs cannot use (from a
    /// removed peer, or local kinds) are dropped, as the network may drop
    /// any message.
    pub fn step(&mut self, message: Message) {
        if message.msg_type == MessageType::MsgAppend {
            if let Ok(held) = <[u8; 8]>::try_from(message.context.as_ref()) {
                self.told_held = self.told_held.max(u64::from_le_bytes(held));
            }
        }
        if self.is_stale_rejection(&message) {
            probe::hit(Probe::RaftStaleRejectionDropped);
            return;
        }
        let _ = self.raw.step(message);
    }

    /// Whether `message` is a follower's rejection of an append, in this
    /// leader's term, that would send it back to entries it is known to
    /// hold: sent before a later append matched, and delayed. In this term a
    /// follower never loses the entries it acknowledged, so the rejection
    /// is stale. raft-rs takes it in its probe state, where it moves the
    /// follower's next index back to the rejection's hint whatever the
    /// follower matched, and that may be before the first entry a compacted
    /// log holds: raft-rs then sends a snapshot, which no node can take
    /// (found by replica seed 2557).
    fn is_stale_rejection(&self, message: &Message) -> bool {
        if message.msg_type != MessageType::MsgAppendResponse || !message.reject || !self.is_leader() {
            return false;
        }
        let Some(progress) = self.raw.raft.prs().get(message.from) else {
            return false;
        };
        message.term == self.term() && message.index.min(message.reject_hint.saturating_add(1)) <= progress.matched
    }

    /// The highest index that every voter holds and the group committed:
    /// the entries up to it may leave any voter's log, since no leader will
    /// ever have to send them to anyone (raft-rs would send a snapshot,
    /// which a node cannot take). A leader knows it from its followers'
    /// progress and tells them with each append (in the message's
    /// `context`, which raft-rs does not use on appends); a follower knows
    /// what its leaders told it. It only grows: committed entries never
    /// leave a voter's log but by compaction, which keeps them held.
    pub fn held_by_all(&self) -> u64 {
        if !self.is_leader() {
            return self.told_held.min(self.commit_index());
        }
        let matched = self.raw.raft.prs().iter().map(|(_, progress)| progress.matched).min().unwrap_or(0);
        matched.min(self.commit_index())
    }

    /// Proposes `data` as a new entry; it is committed once a later
    /// [`RaftNode::advance`] returns it.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        self.raw.propose(Vec::new(), data).map_err(ProposeError::Dropped)
    }

    /// Starts a linearizable read (Raft's ReadIndex): the leader records its
    /// commit index and confirms with a heartbeat round that a majority
    /// still follows it. A later [`RaftNode::advance`] returns `context`
    /// with the index to wait for; a read the node cannot confirm (it lost
    /// its leadership, or has not committed an entry in its term yet) never
    /// comes back, and the client retries elsewhere.
    pub fn read(&mut self, context: Vec<u8>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        if planted::active(PlantedBug::RaftReadWithoutQuorum) {
            // The leader trusts that it still leads.
            self.local_reads.push((context, self.commit_index()));
            return Ok(());
        }
        self.raw.read_index(context);
        Ok(())
    }

    /// Hands `send` the messages to send, in order, makes durable what
    /// raft-rs asks, and returns what to apply. Messages that do not depend
    /// on this node's disk reach `send` before its writes, the others after
    /// them. An error means the log's state on disk is unknown: the node
    /// must stop, and reopen from disk (messages already handed over may be
    /// sent; raft-rs allows it).
    pub fn advance(&mut self, send: &mut (dyn FnMut(Message) + Send)) -> Result<Advanced, RaftLogError> {
        let mut out = Advanced { reads: std::mem::take(&mut self.local_reads), ..Advanced::default() };
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        if ready.ss().is_some_and(|soft| soft.raft_state == StateRole::Leader) {
            probe::hit(Probe::RaftLeaderElected);
        }
        // A leader's appends tell what every voter holds.
        let held = if self.is_leader() { self.held_by_all() } else { 0 };
        let mut send = |mut message: Message| {
            if message.msg_type == MessageType::MsgAppend && held > 0 {
                message.context = held.to_le_bytes().to_vec().into();
            }
            send(message)
        };
        // A leader's messages go out before its writes (raft-rs allows it),
        // commit indexes it has not recorded yet included: a commit is a
        // majority's durable fact, not this node's.
        ready.take_messages().into_iter().for_each(&mut send);
        for read in ready.take_read_states() {
            probe::hit(Probe::RaftReadConfirmed);
            out.reads.push((read.request_ctx, read.index));
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot();
            self.raw.mut_store().apply_snapshot(snapshot)?;
            out.snapshot = Some((snapshot.get_metadata().index, snapshot.data.to_vec()));
        }
        out.committed.extend(ready.take_committed_entries());
        let hard_state = self.hard_state_to_persist(ready.hs(), !ready.entries().is_empty());
        let leader = self.is_leader();
        let store = self.raw.mut_store();
        store.sync_off_worker(leader);
        store.persist(ready.entries(), hard_state.as_ref())?;
        if planted::active(PlantedBug::RaftAckBeforeMajority) && self.is_leader() {
            // The leader's own durable append taken as the commit.
            out.committed.extend(ready.entries().iter().cloned());
        }
        ready.take_persisted_messages().into_iter().for_each(&mut send);
        let mut light = self.raw.advance(ready);
        if light.commit_index().is_some() && !self.is_leader() {
            self.record_commit()?;
        }
        light.take_messages().into_iter().for_each(&mut send);
        out.committed.extend(light.take_committed_entries());
        self.raw.advance_apply();
        Ok(out)
    }

    /// The hard state a ready's write must carry, if any: a new term or
    /// vote always (no message may promise one before it is durable), and
    /// a commit index this node has not recorded yet, on a follower with
    /// every write (it applies the entries next), on a leader only with an
    /// append. A leader's commit index is for its own restart: it tells
    /// pages and checkpoints what they may depend on
    /// ([`RaftNode::recorded_commit`]), and riding on the next append it
    /// costs no sync of its own; [`RaftNode::record_commit`] records it
    /// sooner when they wait for it.
    fn hard_state_to_persist(&self, changed: Option<&HardState>, appends: bool) -> Option<HardState> {
        let durable = self.raw.store().hard_state();
        let current = self.raw.raft.hard_state();
        let promises = changed.is_some_and(|hs| hs.term != durable.term || hs.vote != durable.vote);
        let unrecorded = current.commit > durable.commit;
        if unrecorded && appends && self.is_leader() {
            probe::hit(Probe::RaftCommitRecordedWithAppend);
        }
        (promises || (unrecorded && (appends || !self.is_leader()))).then_some(current)
    }

    /// Makes the commit index durable if this node has not recorded it
    /// yet; whether it wrote.
    pub fn record_commit(&mut self) -> Result<bool, RaftLogError> {
        let current = self.raw.raft.hard_state();
        if current.commit <= self.raw.store().commit() {
            return Ok(false);
        }
        self.raw.mut_store().persist(&[], Some(&current))?;
        Ok(true)
    }

    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: u64) -> Option<Entry> {
        let store = self.raw.store();
        store.entries(index, index + 1, None, GetEntriesContext::empty(false)).ok()?.pop()
    }

    /// The commit index this node has recorded durably: after a restart it
    /// knows the group committed at least this much.
    pub fn recorded_commit(&self) -> u64 {
        self.raw.store().commit()
    }

    /// Compacts the log behind `index`, which the caller has applied and
    /// whose state there is `data`: a snapshot that a follower too far
    /// behind is sent instead of the entries.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftLogError> {
        self.raw.mut_store().compact(index, data)
    }

    /// The node's last snapshot: its index (0 if it has none) and data. A
    /// restarted node's state machine starts from it.
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        let (index, data) = self.raw.store().snapshot();
        (index, data.to_vec())
    }

    /// The index of the node's last snapshot (0 if it has none): its log
    /// holds the entries after it.
    pub fn snapshot_index(&self) -> u64 {
        self.raw.store().snapshot().0
    }

    /// Tells raft-rs whether the snapshot it sent to `peer` arrived, as a
    /// transport learns when its send completes or fails. Until told,
    /// raft-rs sends `peer` nothing else: a lost snapshot, or a follower
    /// that stopped before answering one, would stall it.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.raw.report_snapshot(peer, status);
    }

    /// Whether this node believes it leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|id| *id != 0)
    }

    /// On a leader, what node `rebuilding`, which lost its log, needs to
    /// rejoin as a caught-up follower: the durable entries of this log
    /// after those `skip` says it holds already, and a hard state in this
    /// term that votes for this leader and commits what it committed (see
    /// [`RaftLog::adopt`]).
    ///
    /// `skip` is handed the entries in order until it returns false; only
    /// entries every other voter is known to hold are left out, so that
    /// whichever node leads later never has to send a voter an entry it
    /// lacks (raft-rs would send a snapshot, which a node cannot take). A
    /// log that starts after a snapshot (its node was rebuilt itself) leaves
    /// out at least the entries before it, which every voter held then.
    pub fn export(&self, rebuilding: u64, skip: &mut dyn FnMut(&Entry) -> bool) -> Result<ExportedLog, String> {
        if !self.is_leader() {
            return Err(format!("node {} is not the leader", self.raw.raft.id));
        }
        let store = self.raw.store();
        let first = store.first_index().map_err(|e| e.to_string())?;
        let last = store.last_index();
        let entries =
            store.entries(first, last + 1, None, GetEntriesContext::empty(false)).map_err(|e| e.to_string())?;
        let commit =
            if planted::active(PlantedBug::ReplicaRebuildCommitsWholeLog) { last } else { self.commit_index() };
        let hard_state =
            HardState { term: self.term(), vote: self.raw.raft.id, commit: commit.min(last), ..HardState::default() };
        let others = self.raw.raft.prs().iter().filter(|(id, _)| **id != rebuilding);
        let held = others.map(|(_, progress)| progress.matched).min().unwrap_or(u64::MAX);
        let limit = held.min(self.commit_index());
        let skipped = entries.iter().take_while(|entry| entry.index <= limit && skip(entry)).count();
        let base = match skipped.checked_sub(1) {
            Some(at) => Some((entries[at].index, entries[at].term)),
            None if first > 1 => Some((first - 1, store.term(first - 1).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(ExportedLog { base, entries: entries[skipped..].to_vec(), hard_state })
    }

    /// Whether the node is campaigning (a candidate, or a pre-candidate
    /// testing whether it could win).
    pub fn is_candidate(&self) -> bool {
        matches!(self.raw.raft.state, StateRole::Candidate | StateRole::PreCandidate)
    }

    /// On a leader, each voter's id and the highest index the leader knows
    /// it holds, by id; empty on other nodes.
    pub fn progress(&self) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut progress: Vec<(u64, u64)> = self.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect();
        progress.sort_unstable();
        progress
    }

    /// The node's current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The highest index this node knows committed.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index of the node's last durable log entry.
    pub fn last_index(&self) -> u64 {
        self.raw.store().last_index()
    }

    /// The index of the node's last log entry, durable or not (a leader's
    /// proposals are in its log before they are durable).
    pub fn last_proposed_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use raft::eraftpb::MessageType;

    use super::*;
    use crate::env::{FaultConfig, SimDisk};

    fn config(node_id: u64) -> RaftConfig {
        RaftConfig { node_id, voters: vec![1, 2, 3], election_tick: 10, heartbeat_tick: 2 }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/raft")
    }

    /// Advances `node`, and returns the messages it sent.
    fn messages(node: &mut RaftNode) -> Vec<Message> {
        let mut sent = Vec::new();
        node.advance(&mut |message| sent.push(message)).unwrap();
        sent
    }

    #[test]
    fn a_vote_survives_a_power_failure_so_no_node_votes_twice_in_a_term() {
        for seed in 0..20 {
            let disks: Vec<SimDisk> = (0..3).map(|i| SimDisk::new(seed * 3 + i, FaultConfig::power_loss())).collect();
            let open = |i: usize| RaftNode::open(disks[i].fs(), &dir(), &config(i as u64 + 1)).unwrap();
            // Node 2 is cut off; node 1 campaigns, and node 3 grants its
            // vote. The power fails at node 3 the moment the vote is out,
            // before any leader's append reaches it.
            let (mut candidate, mut voter) = (open(0), open(2));
            let mut vote = None;
            'campaign: for _ in 0..40 {
                candidate.tick();
                let mut to_voter = messages(&mut candidate);
                to_voter.retain(|m| m.to == 3);
                for message in to_voter {
                    voter.step(message);
                    for reply in messages(&mut voter) {
                        if reply.msg_type == MessageType::MsgRequestVoteResponse && !reply.reject {
                            vote = Some(reply.term);
                            break 'campaign;
                        }
                        candidate.step(reply);
                    }
                }
            }
            let term = vote.expect("node 3 granted node 1 a vote");
            disks[2].crash();
            let mut voter = open(2);
            assert_eq!(voter.term(), term, "seed {seed}: the term is durable");
            // Node 2's request for the same term, from a longer log,
            // arrives late (a retransmission).
            let request = Message {
                msg_type: MessageType::MsgRequestVote,
                from: 2,
                to: 3,
                term,
                log_term: term,
                index: 100,
                ..Default::default()
            };
            voter.step(request);
            let answer = messages(&mut voter);
            let response = answer.iter().find(|m| m.msg_type == MessageType::MsgRequestVoteResponse && m.to == 2);
            assert!(
                response.is_some_and(|m| m.reject),
                "seed {seed}: node 3 voted for node 1 in term {term}; it must refuse node 2: {answer:?}"
            );
        }
    }

    /// Delivers the messages `from` sends, and the answers, among `nodes`
    /// (index = id - 1), dropping any to or from a node `cut` names, until
    /// no message is left.
    fn pump(nodes: &mut [RaftNode], cut: &[u64]) {
        let mut queue: Vec<Message> = Vec::new();
        loop {
            for node in nodes.iter_mut() {
                queue.extend(messages(node));
            }
            if queue.is_empty() {
                return;
            }
            for message in std::mem::take(&mut queue) {
                if !cut.contains(&message.to) && !cut.contains(&message.from) {
                    nodes[message.to as usize - 1].step(message);
                }
            }
        }
    }

    /// Three nodes on `disks`, node 1 elected.
    fn group_led_by_node_1(disks: &[SimDisk]) -> Vec<RaftNode> {
        let mut nodes: Vec<RaftNode> =
            (0..3).map(|i| RaftNode::open(disks[i].fs(), &dir(), &config(i as u64 + 1)).unwrap()).collect();
        while !nodes[0].is_leader() {
            nodes[0].tick();
            pump(&mut nodes, &[]);
        }
        nodes
    }

    #[test]
    fn an_export_leaves_out_only_committed_entries_every_other_voter_holds() {
        let disks: Vec<SimDisk> = (0..3).map(|i| SimDisk::new(40 + i, FaultConfig::none())).collect();
        let mut nodes = group_led_by_node_1(&disks);
        for n in 0..3u8 {
            nodes[0].propose(vec![n]).unwrap();
            pump(&mut nodes, &[]);
        }
        // Node 3 is cut off while three more entries commit on nodes 1 and 2.
        for n in 3..6u8 {
            nodes[0].propose(vec![n]).unwrap();
            pump(&mut nodes, &[3]);
        }
        let held_by_3 = nodes[0].progress().into_iter().find(|(id, _)| *id == 3).unwrap().1;
        let committed = nodes[0].commit_index();
        assert!(held_by_3 < committed, "node 3 lags: {held_by_3} of {committed}");
        let mut everything = |_: &Entry| true;
        // Rebuilding node 2: node 3 must still be sent what it lacks by
        // whichever node leads later, node 2 included.
        let for_2 = nodes[0].export(2, &mut everything).unwrap();
        assert_eq!(for_2.base.map(|(index, _)| index), Some(held_by_3));
        assert_eq!(for_2.entries.first().map(|e| e.index), Some(held_by_3 + 1));
        // Rebuilding node 3: node 2 holds everything committed.
        let for_3 = nodes[0].export(3, &mut everything).unwrap();
        assert_eq!(for_3.base.map(|(index, _)| index), Some(committed));
        assert_eq!(for_3.hard_state.commit, committed);
        // `skip` stops the cut where it says.
        let mut first_two = |entry: &Entry| entry.index <= 2;
        assert_eq!(nodes[0].export(3, &mut first_two).unwrap().base.map(|(index, _)| index), Some(2));
        // A node rebuilt from that log exports from its first entry on.
        let disk = SimDisk::new(50, FaultConfig::none());
        let mut log = RaftLog::open(disk.fs(), &dir(), 3, &[1, 2, 3]).unwrap();
        log.adopt(&for_3).unwrap();
        drop(log);
        let rebuilt = RaftNode::open(disk.fs(), &dir(), &config(3)).unwrap();
        assert_eq!(rebuilt.snapshot().0, committed, "the log starts after a snapshot at the base");
    }

    #[test]
    fn a_leader_records_its_commit_index_with_its_next_append_and_followers_with_every_write() {
        let disks: Vec<SimDisk> = (0..3).map(|i| SimDisk::new(60 + i, FaultConfig::power_loss())).collect();
        let mut nodes = group_led_by_node_1(&disks);
        nodes[0].record_commit().unwrap();
        // One entry, one round: the followers' answers commit it on the
        // leader, which has nothing to append after it.
        nodes[0].propose(vec![1]).unwrap();
        pump(&mut nodes, &[]);
        let committed = nodes[0].commit_index();
        assert_eq!(committed, nodes[0].last_index(), "the entry is committed");
        assert!(nodes[0].recorded_commit() < committed, "a commit alone costs the leader no write");
        // The next append carries it.
        nodes[0].propose(vec![2]).unwrap();
        let appends = messages(&mut nodes[0]);
        assert_eq!(nodes[0].recorded_commit(), committed, "recorded with the append");
        for message in appends {
            nodes[message.to as usize - 1].step(message);
        }
        pump(&mut nodes, &[]);
        // Followers record each commit they learn with the write that
        // learns it, before they apply what it commits.
        for follower in &nodes[1..] {
            assert_eq!(follower.recorded_commit(), follower.commit_index());
        }
        // Asked, the leader records at once; a power failure keeps it.
        let committed = nodes[0].commit_index();
        assert!(nodes[0].recorded_commit() < committed);
        assert!(nodes[0].record_commit().unwrap());
        assert!(!nodes[0].record_commit().unwrap(), "nothing left to record");
        drop(nodes);
        disks[0].crash();
        let reopened = RaftNode::open(disks[0].fs(), &dir(), &config(1)).unwrap();
        assert_eq!(reopened.recorded_commit(), committed);
    }

    #[test]
    fn followers_learn_what_every_voter_holds_and_a_late_rejection_never_sends_a_leader_back_past_it() {
        let disks: Vec<SimDisk> = (0..3).map(|i| SimDisk::new(70 + i, FaultConfig::none())).collect();
        let mut nodes = group_led_by_node_1(&disks);
        nodes[0].propose(vec![0]).unwrap();
        pump(&mut nodes, &[]);
        let all = nodes[0].commit_index();
        assert_eq!(nodes[0].held_by_all(), all);
        // Node 3 is cut off while three more entries commit: what every
        // voter holds stays where node 3 stopped, on the leader and, told
        // with each append, on node 2.
        for n in 1..4u8 {
            nodes[0].propose(vec![n]).unwrap();
            pump(&mut nodes, &[3]);
        }
        assert!(nodes[0].commit_index() > all);
        assert_eq!(nodes[0].held_by_all(), all);
        assert_eq!(nodes[1].held_by_all(), all);
        // Back, node 3 catches up; the next append tells the followers.
        for _ in 0..4 {
            nodes[0].tick();
            pump(&mut nodes, &[]);
        }
        nodes[0].propose(vec![4]).unwrap();
        pump(&mut nodes, &[]);
        let held = nodes[0].held_by_all();
        assert_eq!(held, nodes[0].last_index(), "every voter holds every entry");
        assert!(nodes[1..].iter().all(|node| node.held_by_all() == held - 1), "told with the last append");
        // The leader drops what everyone holds. A rejection of the next
        // index puts node 3 in raft-rs's probe state at `held`; then a late
        // one arrives, sent before node 3 held `held`. raft-rs would move
        // node 3 back to its hint, before the log's first entry, and send
        // it a snapshot, which no node takes.
        nodes[0].compact(held, Vec::new()).unwrap();
        let rejection = |index, hint| Message {
            msg_type: MessageType::MsgAppendResponse,
            from: 3,
            to: 1,
            term: nodes[0].term(),
            index,
            reject: true,
            reject_hint: hint,
            ..Message::default()
        };
        let (news, late) = (rejection(held + 1, held), rejection(held, held - 3));
        assert!(!nodes[0].is_stale_rejection(&news));
        assert!(nodes[0].is_stale_rejection(&late));
        for message in [news, late] {
            nodes[0].step(message);
            let sent = messages(&mut nodes[0]);
            assert!(sent.iter().all(|m| m.msg_type != MessageType::MsgSnapshot), "{sent:?}");
        }
    }
}
