//! A node of a cluster whose WAL is replicated through Raft.
//!
//! What the group agrees on is the WAL itself. The leader runs the
//! database; each of its group-commit flushes is a run of whole sectors,
//! which it reads back from its segments and proposes as one entry (a
//! *chunk*: the run's start LSN and its bytes, [`crate::wal::read_wal`]).
//! Its WAL is gated ([`ReplicationGate`]): a flush returns, and a commit is
//! acknowledged, only once the group has committed the chunk that holds it,
//! and pages, checkpoints and the archiver never run ahead of that point.
//! Followers write each committed chunk at its LSNs in their own segments
//! ([`WalCopy`]) and replay it in rounds, as the archive-fed standby does
//! ([`crate::recovery::Replayer`]), so each holds a hot copy in the
//! same format.
//!
//! **Failover.** A node that wins an election first applies every entry
//! before its term (committing raft-rs's own empty entry at the term's
//! start commits them all), then proposes a *marker*, an empty chunk at
//! the end of its WAL, and once the marker is committed opens the database
//! with the gate: crash recovery rolls back the old leader's open
//! transactions through normal undo, and those records, like everything
//! after, are shipped. Once some leader's marker is committed, no node ever
//! opens the database on WAL the group did not commit.
//!
//! **A leader that loses its term** closes its gate (commits waiting for
//! the group fail: their outcome is unknown), stops its engine, and goes
//! back to following. Its WAL may run past what the group committed; since
//! nothing outside the log ran ahead of the gate, that tail is cut off
//! ([`WalCopy::cut`]) before it replays or leads again.
//!
//! **Restarts.** A follower syncs the commit index it learns before it
//! applies the entries it commits (`RaftNode::advance`), so a restarted
//! node knows at least what it had applied. A leader acknowledges commits
//! as soon as a follower's answer tells it of them (an acknowledgement
//! needs only the majority), and records the commit index with its next
//! append; its pages, checkpoints and archiver wait for that record
//! ([`ReplicationGate::replicated`]), and a flush waiting for it has it
//! recorded at once. A deposed leader records it before it follows.
//! raft-rs hands it every committed entry again; the chunks that reach
//! past the control file's redo point are written again (their bytes are
//! the committed ones, and this is also what restores a leader's WAL it
//! wrote for its commits but had not synced), and once it has caught up
//! with what it knew committed, the WAL after the last chunk is cut,
//! whatever it held.
//!
//! **Compaction.** Every node drops the entries it no longer needs from its
//! Raft log ([`ReplicaNode::advance`] calls `compact`): those every voter
//! holds and the group committed ([`RaftNode::held_by_all`]), that this
//! node recorded as committed, and whose chunks are durable in its own WAL.
//! The snapshot that replaces them holds where the last one's chunk ended,
//! which a restart continues from. A snapshot being streamed to a node
//! that is rebuilt pins the log ([`ReplicaNode::pin_log`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::raft::{Entry, ExportedLog, Message, RaftConfig, RaftLog, RaftNode};
use crate::backup::manifest::Manifest;
use crate::backup::pitr::clear_dir;
use crate::backup::restore::RestorePlan;
use crate::db::{Database, DbError, EngineConfig};
use crate::env::{Env, Fs};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Probe};
use crate::recovery::{on_control_timeline, Replayed, Replayer};
use crate::storage::{ControlFile, CONTROL_FILE_NAME};
use crate::wal::{read_wal, Lsn, ReplicationGate, WalCopy, WalOptions, WalReader};

/// How often a leader syncs the WAL it wrote for its commits (which wait
/// for the group, not for this sync: `Wal::flush_commit`), and records the
/// group's commit index if no append has carried it, so that its archiver
/// and its status follow closely.
const WAL_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// How long a deposed leader waits for its clients to let go of the
/// database before it follows anyway.
const RELEASE_WAIT_MS: u64 = 1_000;

/// A chunk's encoding: its start LSN, then its bytes.
fn encode_chunk(start: Lsn, bytes: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + bytes.len());
    data.extend_from_slice(&start.0.to_le_bytes());
    data.extend_from_slice(bytes);
    data
}

/// A compaction's snapshot data: where the WAL of the entries it replaces
/// ends.
fn encode_snapshot_end(end: Lsn) -> Vec<u8> {
    end.0.to_le_bytes().to_vec()
}

fn decode_snapshot_end(data: &[u8]) -> Option<Lsn> {
    Some(Lsn(u64::from_le_bytes(data.try_into().ok()?)))
}

/// Holds a node's Raft log uncompacted while a snapshot is streamed from
/// it: the log it exports once the backup ends must reach back to the
/// backup's start ([`ReplicaNode::pin_log`]).
#[derive(Debug, Clone, Default)]
pub struct LogPins(Arc<AtomicUsize>);

/// One pin of [`LogPins`], released when dropped.
#[derive(Debug)]
pub struct LogPin(Arc<AtomicUsize>);

impl LogPins {
    /// Pins the log until the pin is dropped.
    pub fn pin(&self) -> LogPin {
        self.0.fetch_add(1, Ordering::SeqCst);
        LogPin(self.0.clone())
    }

    fn held(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn decode_chunk(data: &[u8]) -> Result<(Lsn, &[u8]), String> {
    let (start, bytes) =
        data.split_first_chunk::<8>().ok_or_else(|| format!("a WAL chunk of {} bytes has no start LSN", data.len()))?;
    Ok((Lsn(u64::from_le_bytes(*start)), bytes))
}

/// Where a node keeps its Raft log and its database, and its timing.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The node's place in the group.
    pub raft: RaftConfig,
    /// The Raft log's directory.
    pub raft_dir: PathBuf,
    /// The database's directories and settings (its `replication` is set
    /// by the node while it leads).
    pub engine: EngineConfig,
    /// The least time between two replay rounds on a follower.
    pub replay_interval: Duration,
    /// Replay in a task of its own, so that a long round (the WAL since the
    /// last checkpoint, read again each round) does not hold up the node's
    /// acknowledgements: the server's choice. The simulator replays inside
    /// [`ReplicaNode::advance`], where a crash stops it with its node.
    pub background_replay: bool,
    /// A node compacts its Raft log once this many entries it may drop have
    /// gathered.
    pub compact_every: u64,
    /// Pins on the log, shared with whoever streams snapshots from it.
    pub log_pins: LogPins,
}

enum Role {
    Follower,
    /// Won the election of `term`: waits until raft-rs's empty entry at
    /// `noop` is applied (so is everything before it), then proposes its
    /// marker, whose index `marker` is once proposed.
    Starting {
        term: u64,
        noop: u64,
        marker: Option<u64>,
    },
    /// The database is opening (crash recovery) on the gated WAL.
    Opening {
        term: u64,
        gate: Arc<ReplicationGate>,
        opened: oneshot::Receiver<Result<Database, DbError>>,
    },
    /// Serving.
    Leading {
        term: u64,
        gate: Arc<ReplicationGate>,
        db: Arc<Database>,
    },
}

/// A node's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Writes and replays what the group committed.
    Follower,
    /// Elected: catching up, then committing its term's marker.
    Starting,
    /// Opening the database (crash recovery) on the gated WAL.
    Opening,
    /// Serving, with the database open for writes.
    Leading,
}

/// What a node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The node's part in the group.
    pub role: ReplicaRole,
    /// The Raft term the node is in.
    pub term: u64,
    /// Where the WAL the node holds from the group ends (a leader: where
    /// its term began).
    pub wal_end: Lsn,
    /// Every byte before this is committed by the group, as far as the
    /// node knows (on a follower, `wal_end`).
    pub committed: Lsn,
    /// Every byte before this is committed by the group, and the node has
    /// recorded so durably: what its pages may depend on (on a follower,
    /// `wal_end`).
    pub replicated: Lsn,
    /// Where the last replay round ended.
    pub replayed: Lsn,
    /// The first and the last entry the node's Raft log holds (the first
    /// moves as it compacts).
    pub raft_log: (u64, u64),
}

/// On a leader, what it knows of one voter's copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberLag {
    /// The voter's node id.
    pub node_id: u64,
    /// Where the WAL the voter holds ends, as far as the leader knows (`None`:
    /// it holds less than the leader shipped in its term).
    pub match_lsn: Option<Lsn>,
    /// The bytes the leader flushed that the voter does not hold yet.
    pub lag_bytes: u64,
    /// How long ago the leader shipped the oldest chunk the voter does not
    /// hold yet (0 when it holds them all).
    pub lag_seconds: f64,
}

/// A node (see the module docs). Its caller owns time and the network: it
/// calls [`ReplicaNode::tick`] on its clock, [`ReplicaNode::step`] for each
/// message, and [`ReplicaNode::advance`] after either, and often while it
/// leads (that is when the WAL flushed since is shipped).
pub struct ReplicaNode {
    env: Env,
    config: ReplicaConfig,
    opts: WalOptions,
    raft: RaftNode,
    copy: WalCopy,
    /// Where the WAL the node holds from the group ends.
    wal_end: Lsn,
    /// The end of the last chunk applied since the node started, which the
    /// next must continue.
    last_chunk_end: Option<Lsn>,
    /// The commit index known at start: until it is applied, the WAL after
    /// `wal_end` may hold what the group never committed.
    catching_up_to: Option<u64>,
    /// Chunks ending at or before this are not written again after a
    /// restart (the control file's redo point then).
    floor: Lsn,
    /// The index of the last entry applied.
    applied: u64,
    /// On a follower, every byte of its WAL before this is durable.
    synced: Lsn,
    /// On a leader, where the next chunk starts: everything before it has
    /// been proposed.
    shipped: Lsn,
    /// On a leader, when it last synced its WAL (`WAL_SYNC_INTERVAL`).
    last_wal_sync: Duration,
    /// On a leader, the chunks it applied as committed that it has not
    /// recorded durably yet: each entry's index and where its chunk ends.
    unrecorded: VecDeque<(u64, Lsn)>,
    /// When the leader last passed a recorded commit to its gate.
    last_record: Duration,
    /// Where the last replay round ended, and when it ran.
    replayed: Lsn,
    last_replay: Option<Duration>,
    /// The replay, between rounds, once its first round ran.
    replayer: Option<Replayer>,
    /// A round running in the background (`background_replay`), and the
    /// replay it hands back.
    replaying: Option<tokio::task::JoinHandle<RoundEnded>>,
    /// On a leader, the entries it proposed in its term: each index, where
    /// its chunk ends and when it was proposed (for [`ReplicaNode::members`]).
    proposed: BTreeMap<u64, (Lsn, Duration)>,
    role: Role,
    /// The database, while this node leads and it is open.
    db: Mutex<Option<Arc<Database>>>,
}

/// Where a node being rebuilt installs a leader's snapshot.
pub struct RebuildTarget<'a> {
    /// The node's data directory.
    pub data_dir: &'a Path,
    /// The node's WAL directory.
    pub wal_dir: &'a Path,
    /// The node's Raft log's directory.
    pub raft_dir: &'a Path,
    /// The node's id.
    pub node_id: u64,
    /// Every voter's id.
    pub voters: &'a [u64],
}

/// Where a node being rebuilt writes the leader's streamed backup
/// ([`crate::backup::stream`]): the data and WAL files straight into the
/// node's directories, where [`install_snapshot`] then checks them
/// (`RestorePlan` takes a file that matches the manifest's checksum as in
/// place, so nothing is copied twice); the backup's own files and the
/// control file into `staging`. The install writes the control file last:
/// until then the node holds no database and refuses to start, so a
/// rebuild cut short is never mistaken for one.
#[derive(Debug, Clone)]
pub struct RebuildDirs {
    /// The backup's manifest, its config and the control file.
    pub staging: PathBuf,
    /// The node's data directory.
    pub data: PathBuf,
    /// The node's WAL directory.
    pub wal: PathBuf,
}

impl RebuildDirs {
    /// Where the backup's file `name` (`data/main.tdb`, `wal/…`,
    /// `backup_manifest.json`) goes, its directory created; a name that is
    /// not one a backup holds is refused.
    pub fn place(&self, fs: &dyn Fs, name: &str) -> Result<PathBuf, String> {
        let (part, file_name) = name.rsplit_once('/').unwrap_or(("", name));
        let known = ["data", "wal", ""].contains(&part) && !file_name.is_empty() && !file_name.starts_with('.');
        if !known || file_name.contains(['/', '\\']) {
            return Err(format!("the snapshot holds a file the node does not take: {name:?}"));
        }
        let dir = match part {
            "data" if file_name != CONTROL_FILE_NAME => self.data.clone(),
            "wal" => self.wal.clone(),
            _ => self.staging.join(part),
        };
        fs.create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir.join(file_name))
    }

    /// Removes what an attempt left in `staging`.
    pub fn clear_staging(&self, fs: &dyn Fs) -> Result<(), String> {
        ["data", "wal", ""].iter().try_for_each(|part| clear_dir(fs, &self.staging.join(part), ""))
    }

    /// Removes what an attempt cut short left, the node's directories
    /// included (the rebuild's own: the node's old files were moved aside).
    pub fn clear(&self, fs: &dyn Fs) -> Result<(), String> {
        self.clear_staging(fs)?;
        clear_dir(fs, &self.data, "")?;
        clear_dir(fs, &self.wal, "")
    }
}

/// Installs a leader's snapshot on a node being rebuilt: the backup in
/// `staging` (whose data and WAL files may already be in the node's
/// directories: a file whose checksum matches the manifest's is taken as in
/// place) is checked, the leader's Raft log is adopted, and the rest of the
/// backup is restored, the control file last. A node whose install was cut
/// short holds no control file, so it holds no database and refuses to
/// start. Returns the backup's manifest and the files written.
pub fn install_snapshot(
    fs: Arc<dyn Fs>,
    staging: &Path,
    target: &RebuildTarget<'_>,
    exported: &ExportedLog,
) -> Result<(Manifest, usize), String> {
    let plan = RestorePlan::new(fs.as_ref(), staging, fs.as_ref(), target.data_dir, target.wal_dir)
        .map_err(|e| format!("the snapshot does not match its manifest: {e}"))?;
    let mut log =
        RaftLog::open(fs.clone(), target.raft_dir, target.node_id, target.voters).map_err(|e| e.to_string())?;
    log.adopt(exported).map_err(|e| e.to_string())?;
    let written = plan.restore(fs.as_ref(), staging, fs.as_ref(), &|_| true)?;
    Ok((plan.manifest, written))
}

/// A replay round's end: the replay to resume (none after a failure), and
/// what the round did.
type RoundEnded = (Option<Replayer>, Result<Replayed, String>);

impl ReplicaNode {
    /// Opens the node: its Raft log, and its database's directories, which
    /// hold an initialised database (the cluster starts from one node's,
    /// copied to every node).
    pub fn open(env: Env, mut config: ReplicaConfig) -> Result<ReplicaNode, String> {
        let fs = env.fs.clone();
        let data_dir = &config.engine.data_dir;
        let control = ControlFile::load(fs.as_ref(), data_dir).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!("{} has no control file: a cluster node starts from an initialised database", data_dir.display())
        })?;
        // The segment size is the database's, whatever the configuration
        // says: the WAL copy, the replay and the leader's opening all use it.
        config.engine.wal_segment_size = control.wal_segment_size;
        // And its timeline (a group restored to a point in time continues
        // on the restore's).
        let opts = on_control_timeline(fs.as_ref(), &config.engine.store_options(0).wal, Some(&control))
            .map_err(|e| e.to_string())?;
        let raft = RaftNode::open(fs.clone(), &config.raft_dir, &config.raft).map_err(|e| e.to_string())?;
        let catching_up_to = Some(raft.commit_index());
        // A log compacted by this node continues where its snapshot's
        // entries ended (a rebuilt node's log starts after a snapshot
        // without data: its chunks continue the backup's WAL).
        let (snapshot_index, data) = raft.snapshot();
        let compacted = decode_snapshot_end(&data);
        if compacted.is_some() {
            probe::hit(Probe::ReplicaReopenedCompacted);
        }
        Ok(ReplicaNode {
            copy: WalCopy::new(fs, opts.clone()),
            opts,
            raft,
            // Known once the node has caught up (see `caught_up`).
            wal_end: compacted.unwrap_or(control.redo_lsn),
            last_chunk_end: compacted,
            catching_up_to,
            floor: control.redo_lsn,
            applied: compacted.map_or(0, |_| snapshot_index),
            synced: control.redo_lsn,
            shipped: control.redo_lsn,
            last_wal_sync: Duration::ZERO,
            unrecorded: VecDeque::new(),
            last_record: Duration::ZERO,
            replayed: Lsn::ZERO,
            last_replay: None,
            replayer: None,
            replaying: None,
            proposed: BTreeMap::new(),
            role: Role::Follower,
            db: Mutex::new(None),
            env,
            config,
        })
    }

    /// One tick of the node's Raft clock.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Takes a message from a peer. On a leader, a commit it tells of is
    /// passed to the gate at once, before [`ReplicaNode::advance`] records
    /// it durably: that is enough to acknowledge it (a majority holds it),
    /// not for pages to depend on it.
    pub fn step(&mut self, message: Message) {
        self.raft.step(message);
        self.note_commit();
    }

    /// On a leader, passes what the group committed to the gate.
    fn note_commit(&self) {
        if let Role::Opening { gate, .. } | Role::Leading { gate, .. } = &self.role {
            let commit = self.raft.commit_index();
            if let Some((_, (end, _))) = self.proposed.range(..=commit).next_back() {
                if *end > gate.replicated() {
                    probe::hit(Probe::ReplicaCommittedBeforeRecorded);
                }
                gate.set_committed(*end);
            }
        }
    }

    /// The database, while this node leads and it is open.
    pub fn database(&self) -> Option<Arc<Database>> {
        self.db.lock().expect("database slot poisoned").clone()
    }

    fn publish(&self, db: Option<Arc<Database>>) {
        *self.db.lock().expect("database slot poisoned") = db;
    }

    /// On the serving leader, its Raft log and hard state for node
    /// `rebuilding`, which is being rebuilt from a backup of it that starts
    /// at `start`
    /// ([`RaftNode::export`]): the committed entries before the first
    /// chunk that ends past `start` are left out, since the node never
    /// writes them again (its floor is the backup's start). So the log the
    /// node receives grows with the WAL since the backup, not with the
    /// group's age.
    pub fn export_log(&self, rebuilding: u64, start: Lsn) -> Result<ExportedLog, String> {
        if !matches!(self.role, Role::Leading { .. }) {
            return Err(format!("node {} is not serving as the leader", self.config.raft.node_id));
        }
        // The node's chunks continue the backup's WAL only if the log
        // reaches back to its start (`pin_log` sees to it).
        if let Some(end) = decode_snapshot_end(&self.raft.snapshot().1).filter(|end| *end > start) {
            return Err(format!(
                "node {}'s Raft log was compacted up to WAL {end}, past the backup's start {start}: the rebuild \
                 starts over",
                self.config.raft.node_id
            ));
        }
        let mut before_start = |entry: &Entry| {
            entry.data.is_empty()
                || decode_chunk(&entry.data).is_ok_and(|(at, bytes)| at.plus(bytes.len() as u64) <= start)
        };
        self.raft.export(rebuilding, &mut before_start)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.raft.leader()
    }

    /// Whether the node is campaigning for leadership.
    pub fn is_candidate(&self) -> bool {
        self.raft.is_candidate()
    }

    /// The leader's gate, while the node leads (opening or serving): its
    /// [`ReplicationGate::local_advanced`] says when there is WAL to ship.
    pub fn gate(&self) -> Option<Arc<ReplicationGate>> {
        match &self.role {
            Role::Opening { gate, .. } | Role::Leading { gate, .. } => Some(gate.clone()),
            Role::Follower | Role::Starting { .. } => None,
        }
    }

    /// On a leader, what it knows of every voter's copy (itself included),
    /// by node id; empty on other nodes.
    pub fn members(&self) -> Vec<MemberLag> {
        let Some(gate) = self.gate() else {
            return Vec::new();
        };
        let written = gate.written();
        let now = self.env.clock.monotonic();
        self.raft
            .progress()
            .into_iter()
            .map(|(node_id, matched)| {
                let held = self.proposed.range(..=matched).next_back().map(|(_, (end, _))| *end);
                let match_lsn = held.or_else(|| (matched >= self.applied).then_some(self.wal_end));
                let oldest_missing = self.proposed.range(matched + 1..).next().map(|(_, (_, at))| *at);
                MemberLag {
                    node_id,
                    match_lsn,
                    lag_bytes: written.0.saturating_sub(match_lsn.unwrap_or(self.wal_end).0),
                    lag_seconds: oldest_missing.map_or(0.0, |at| now.saturating_sub(at).as_secs_f64()),
                }
            })
            .collect()
    }

    /// What the node reports.
    pub fn status(&self) -> ReplicaStatus {
        let (role, committed, replicated) = match &self.role {
            Role::Follower => (ReplicaRole::Follower, self.wal_end, self.wal_end),
            Role::Starting { .. } => (ReplicaRole::Starting, self.committed_end(), self.wal_end),
            Role::Opening { gate, .. } => (ReplicaRole::Opening, gate.committed(), gate.replicated()),
            Role::Leading { gate, .. } => (ReplicaRole::Leading, gate.committed(), gate.replicated()),
        };
        ReplicaStatus {
            role,
            term: self.raft.term(),
            wal_end: self.wal_end,
            committed,
            replicated,
            replayed: self.replayed,
            raft_log: (self.raft.snapshot_index() + 1, self.raft.last_index()),
        }
    }

    /// Where the WAL the group committed ends as far as this node knows:
    /// the end of the last chunk at or before its commit index. A node
    /// that leads but does not serve yet knows it before it applies it
    /// (and its appends tell followers).
    fn committed_end(&self) -> Lsn {
        let after = self.applied.max(self.raft.snapshot_index());
        self.last_chunk_end(after, self.raft.commit_index()).ok().flatten().unwrap_or(self.wal_end)
    }

    /// Where the last chunk among the entries after `after`, up to `upto`,
    /// ends; `None` if they hold no chunk.
    fn last_chunk_end(&self, after: u64, upto: u64) -> Result<Option<Lsn>, String> {
        for index in (after + 1..=upto).rev() {
            let entry = self.raft.entry(index).ok_or_else(|| format!("the Raft log lacks entry {index}"))?;
            if !entry.data.is_empty() {
                let (start, bytes) = decode_chunk(&entry.data)?;
                return Ok(Some(start.plus(bytes.len() as u64)));
            }
        }
        Ok(None)
    }

    /// Ships what the leader flushed, makes durable what raft-rs asks,
    /// applies what the group committed, moves between roles, and replays
    /// on a follower. Hands `send` the messages to send (see
    /// [`RaftNode::advance`]). An error is fail-stop: the node must be
    /// dropped and reopened from its disk.
    pub async fn advance(&mut self, send: &mut (dyn FnMut(Message) + Send)) -> Result<(), String> {
        self.ship()?;
        self.sync_wal().await?;
        let advanced = self.raft.advance(send).map_err(|e| e.to_string())?;
        if let Some((index, _)) = advanced.snapshot {
            // Nodes compact only what every voter holds, so no leader
            // should ever send one.
            return Err(format!(
                "the leader sent a Raft snapshot at entry {index}: this node lacks entries the group's logs no \
                 longer hold; rebuild it from its peers with thunderdb --rebuild-from-peers"
            ));
        }
        if !advanced.committed.is_empty() && matches!(self.role, Role::Follower | Role::Starting { .. }) {
            // Chunks written into the WAL need their commit recorded first,
            // on a node that leads but does not serve yet too (a follower's
            // always is): a restart that knew only an earlier commit would
            // cut them, or, knowing no chunk committed, take the whole WAL
            // for the log the group started from, the WAL of a database
            // this node then opened included (found by replica seeds 523,
            // 619 and 878, once a leader's record began to wait for its next
            // append).
            self.raft.record_commit().map_err(|e| e.to_string())?;
        }
        for entry in &advanced.committed {
            if !entry.data.is_empty() {
                let (start, bytes) = decode_chunk(&entry.data)?;
                let end = start.plus(bytes.len() as u64);
                match &self.role {
                    Role::Opening { .. } | Role::Leading { .. } => self.unrecorded.push_back((entry.index, end)),
                    Role::Follower | Role::Starting { .. } => self.apply_chunk(entry.index, start, bytes)?,
                }
            }
            // Only once it is written: a write that fails leaves it to the
            // committed point a `Starting` leader reports (found by replica
            // seed 951, whose leader reported the WAL before the chunk it
            // failed to write as all it knew committed).
            self.applied = entry.index;
        }
        self.note_commit();
        self.record_commit(false)?;
        // The chunks written are synced only before they are replayed or
        // led on: until then the Raft log, durable, holds them, and a
        // restart writes them again (from the floor on).
        if self.catching_up_to.is_some_and(|commit| self.applied >= commit) {
            self.caught_up()?;
        }
        self.change_role().await?;
        if matches!(self.role, Role::Follower) {
            self.replay().await?;
        }
        if self.catching_up_to.is_none() {
            self.compact()?;
        }
        Ok(())
    }

    /// Drops from the Raft log the entries this node no longer needs, once
    /// `compact_every` of them have gathered and no snapshot is being
    /// streamed from it: entries every voter holds and the group committed
    /// (so no leader ever has to send them), that this node recorded as
    /// committed and applied, and whose chunks are durable in its WAL (a
    /// restart writes again only what comes after them). The snapshot's
    /// data is where the last chunk it replaces ended.
    fn compact(&mut self) -> Result<(), String> {
        let base = self.raft.snapshot_index();
        let held = match active(PlantedBug::ReplicaCompactsPastPeers) {
            true => self.raft.commit_index(),
            false => self.raft.held_by_all(),
        };
        let upto = held.min(self.raft.recorded_commit()).min(self.applied);
        if upto < base.saturating_add(self.config.compact_every) {
            return Ok(());
        }
        // Read before the pins: a pin taken after this read came before the
        // backup's checkpoint, whose redo point is past every byte durable
        // now, so what this compaction drops ends before the backup starts.
        let durable = match &self.role {
            _ if active(PlantedBug::ReplicaCompactsUnsyncedWal) => Lsn(u64::MAX),
            Role::Follower | Role::Starting { .. } => self.synced,
            Role::Opening { gate, .. } | Role::Leading { gate, .. } => gate.local(),
        };
        if self.config.log_pins.held() {
            return Ok(());
        }
        // The last entry whose chunk, and every chunk before it, is durable
        // here. Chunk ends grow with the index, so a binary search finds it
        // in a few reads however far the durable point lags.
        let (mut durable_up_to, mut past) = (base, upto + 1);
        while past - durable_up_to > 1 {
            let mid = durable_up_to + (past - durable_up_to) / 2;
            match self.last_chunk_end(base, mid)? {
                Some(end) if end > durable => past = mid,
                _ => durable_up_to = mid,
            }
        }
        if durable_up_to < base.saturating_add(self.config.compact_every) {
            return Ok(());
        }
        // Only empty entries since the snapshot: its own end holds (none
        // on a rebuilt node's, which waits for a chunk).
        let Some(end) =
            self.last_chunk_end(base, durable_up_to)?.or_else(|| decode_snapshot_end(&self.raft.snapshot().1))
        else {
            return Ok(());
        };
        self.raft.compact(durable_up_to, encode_snapshot_end(end)).map_err(|e| e.to_string())?;
        probe::hit(Probe::ReplicaLogCompacted);
        Ok(())
    }

    /// Holds the Raft log uncompacted until the pin is dropped: a snapshot
    /// streamed to a node being rebuilt takes one before its backup starts,
    /// so the log it exports after the backup reaches back to the backup's
    /// start (every entry dropped before ended before the backup's
    /// checkpoint).
    pub fn pin_log(&self) -> LogPin {
        self.config.log_pins.pin()
    }

    /// The node has applied every entry it knew committed when it started
    /// (or stopped leading): the WAL after the last chunk is cut, whatever
    /// it holds.
    fn caught_up(&mut self) -> Result<(), String> {
        self.catching_up_to = None;
        if self.last_chunk_end.is_none() {
            // No chunk was ever committed, so no leader ever opened the
            // database: the log is the one the cluster started from, whole.
            self.wal_end = WalReader::new(self.env.fs.clone(), self.opts.clone(), self.floor)
                .read_to_end()
                .map_err(|e| format!("reading the WAL from {}: {e}", self.floor))?
                .lsn();
            self.last_chunk_end = Some(self.wal_end);
        }
        if self.wal_end < self.floor {
            // Pages and checkpoints wait until the node has recorded a
            // commit durably (`ReplicationGate::replicated`), so a
            // restarted node knows committed at least what they depend on.
            return Err(format!(
                "the WAL this node knows committed ends at {}, before its control file's redo point {}: its \
                 pages depend on WAL it never recorded as committed",
                self.wal_end, self.floor
            ));
        }
        if active(PlantedBug::ReplicaKeepsUncommittedWal) {
            // The log's own end, uncommitted tail and all.
            self.wal_end = WalReader::new(self.env.fs.clone(), self.opts.clone(), self.wal_end)
                .read_to_end()
                .map_err(|e| e.to_string())?
                .lsn();
        } else {
            if self.copy.cut(self.wal_end).map_err(|e| e.to_string())? {
                probe::hit(Probe::ReplicaCutUncommitted);
            }
            self.synced = self.wal_end;
        }
        self.shipped = self.wal_end;
        Ok(())
    }

    /// Writes a committed chunk where it belongs.
    fn apply_chunk(&mut self, index: u64, start: Lsn, bytes: &[u8]) -> Result<(), String> {
        let end = start.plus(bytes.len() as u64);
        if let Some(last) = self.last_chunk_end.filter(|last| *last != start) {
            return Err(format!(
                "the replicated WAL has a gap: entry {index} starts at {start}, the entry before it ended at {last}"
            ));
        }
        if end > self.floor {
            if self.catching_up_to.is_some() {
                probe::hit(Probe::ReplicaReapplied);
                if active(PlantedBug::ReplicaRestartTrustsOwnWal) {
                    // Taken as on disk already: the node wrote it once.
                    self.last_chunk_end = Some(end);
                    self.wal_end = end;
                    return Ok(());
                }
            }
            // Only from the floor on: a segment before it is either whole
            // on disk already or not needed, and a part of one written
            // here would differ from the archive's copy of it.
            let skip = self.floor.0.saturating_sub(start.0) as usize;
            self.copy.write(start.max(self.floor), &bytes[skip..]).map_err(|e| e.to_string())?;
        }
        self.last_chunk_end = Some(end);
        self.wal_end = end;
        Ok(())
    }

    /// On a leader, records the group's commit index durably if a flush
    /// waits for it, the interval has passed, or `now`, and passes what it
    /// recorded to the gate (pages may depend on it).
    fn record_commit(&mut self, now: bool) -> Result<(), String> {
        let (Role::Opening { gate, .. } | Role::Leading { gate, .. }) = &self.role else {
            return Ok(());
        };
        let wanted = gate.recording_wanted();
        let clock = self.env.clock.monotonic();
        let due = clock.saturating_sub(self.last_record) >= WAL_SYNC_INTERVAL;
        if (now || wanted || due) && !self.unrecorded.is_empty() {
            self.raft.record_commit().map_err(|e| e.to_string())?;
            if wanted {
                probe::hit(Probe::ReplicaCommitRecordedOnDemand);
            }
        }
        let recorded = self.raft.recorded_commit();
        let held = self.unrecorded.partition_point(|(index, _)| *index <= recorded);
        if let Some((_, end)) = self.unrecorded.drain(..held).next_back() {
            gate.set_replicated(end);
            self.last_record = clock;
        }
        Ok(())
    }

    /// On a leader, proposes what its WAL flushed since the last proposal.
    fn ship(&mut self) -> Result<(), String> {
        let (Role::Opening { gate, .. } | Role::Leading { gate, .. }) = &self.role else {
            return Ok(());
        };
        let written = gate.written();
        if self.shipped < written {
            // Whole flushes: a chunk ends where a record does, so a
            // follower's replay of it ends there too.
            let bytes = read_wal(self.env.fs.as_ref(), &self.opts, self.shipped, written).map_err(|e| e.to_string())?;
            // A refusal (not the leader any more, or raft-rs is busy) is
            // retried: the role change sees the first, the next call retries.
            if self.raft.propose(encode_chunk(self.shipped, &bytes)).is_ok() {
                self.shipped = written;
                let now = self.env.clock.monotonic();
                self.proposed.insert(self.raft.last_proposed_index(), (written, now));
                // What every voter holds is no longer needed to tell lags.
                let least = self.raft.progress().iter().map(|(_, matched)| *matched).min().unwrap_or(0);
                if let Some((&floor, _)) = self.proposed.range(..=least).next_back() {
                    self.proposed = self.proposed.split_off(&floor);
                }
            }
        }
        Ok(())
    }

    /// On a serving leader, syncs the WAL written for commits once every
    /// `WAL_SYNC_INTERVAL`.
    async fn sync_wal(&mut self) -> Result<(), String> {
        let Role::Leading { db, gate, .. } = &self.role else {
            return Ok(());
        };
        let now = self.env.clock.monotonic();
        if gate.local() >= gate.written() || now.saturating_sub(self.last_wal_sync) < WAL_SYNC_INTERVAL {
            return Ok(());
        }
        self.last_wal_sync = now;
        probe::hit(Probe::ReplicaLeaderWalSynced);
        db.wal().sync_written().await.map_err(|e| format!("the leader's engine stopped: {e}"))?;
        Ok(())
    }

    async fn change_role(&mut self) -> Result<(), String> {
        if let Role::Leading { db, .. } = &self.role {
            // An I/O error stopped the engine: the node restarts, and
            // another takes over meanwhile.
            db.wal().check_running().map_err(|e| format!("the leader's engine stopped: {e}"))?;
        }
        let (leader, term) = (self.raft.is_leader(), self.raft.term());
        let role_term = match &self.role {
            Role::Follower => None,
            Role::Starting { term, .. } | Role::Opening { term, .. } | Role::Leading { term, .. } => Some(*term),
        };
        if role_term.is_some_and(|role_term| !leader || role_term != term) {
            self.demote().await?;
        }
        match &mut self.role {
            Role::Follower if leader && self.catching_up_to.is_none() => {
                self.role = Role::Starting { term, noop: self.raft.last_proposed_index(), marker: None };
            }
            Role::Starting { marker: marker @ None, noop, .. } if self.applied >= *noop => {
                // A refusal (raft-rs is busy) is retried at the next call.
                let proposed = self.raft.propose(encode_chunk(self.wal_end, &[])).is_ok();
                *marker = proposed.then(|| self.raft.last_proposed_index());
            }
            Role::Starting { marker: Some(marker), .. } if self.applied >= *marker => {
                // Crash recovery must not run beside a replay round, and
                // the log it leads on is durable.
                self.finish_replay().await?;
                // Its pages are the opening's to replay.
                self.replayer = None;
                self.copy.sync().map_err(|e| e.to_string())?;
                let gate = Arc::new(ReplicationGate::new(self.wal_end));
                self.shipped = self.wal_end;
                self.proposed.clear();
                self.unrecorded.clear();
                let engine = EngineConfig { replication: Some(gate.clone()), ..self.config.engine.clone() };
                let (send, opened) = oneshot::channel();
                let env = self.env.clone();
                tokio::spawn(async move {
                    let _ = send.send(Database::open(env, engine).await);
                });
                self.role = Role::Opening { term, gate, opened };
            }
            Role::Opening { opened, .. } => match opened.try_recv() {
                Ok(Ok(db)) => {
                    let Role::Opening { term, gate, .. } = std::mem::replace(&mut self.role, Role::Follower) else {
                        unreachable!("matched above")
                    };
                    probe::hit(Probe::ReplicaLeaderOpened);
                    tracing::info!(node = self.config.raft.node_id, term, wal = %self.wal_end, "leading: the database is open");
                    let db = Arc::new(db);
                    self.publish(Some(db.clone()));
                    self.role = Role::Leading { term, gate, db };
                }
                Ok(Err(error)) => return Err(format!("opening the database as the leader failed: {error}")),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => return Err("the database's opening task died".into()),
            },
            _ => {}
        }
        Ok(())
    }

    /// Leaves the leader's role (see the module docs), once it has
    /// recorded every commit it applied: it follows from there.
    async fn demote(&mut self) -> Result<(), String> {
        self.record_commit(true)?;
        self.unrecorded.clear();
        probe::hit(Probe::ReplicaDemoted);
        let cause = format!("node {} is no longer the leader", self.config.raft.node_id);
        let replicated = match std::mem::replace(&mut self.role, Role::Follower) {
            Role::Follower | Role::Starting { .. } => return Ok(()),
            Role::Opening { gate, opened, .. } => {
                gate.close(&cause);
                if let Ok(Ok(db)) = opened.await {
                    db.wal().halt(&cause);
                }
                gate.replicated()
            }
            Role::Leading { gate, db, .. } => {
                gate.close(&cause);
                db.wal().halt(&cause);
                self.publish(None);
                // Clients let go once their calls fail on the stopped engine;
                // one that holds on (an idle session) cannot write through
                // it any more: a halted engine writes no page.
                let mut db = db;
                for _ in 0..RELEASE_WAIT_MS {
                    match Arc::try_unwrap(db) {
                        Ok(db) => {
                            db.close().await;
                            break;
                        }
                        Err(shared) => {
                            db = shared;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                gate.replicated()
            }
        };
        tracing::info!(node = self.config.raft.node_id, wal = %replicated, "no longer leading: following");
        self.wal_end = replicated;
        self.last_chunk_end = Some(replicated);
        self.shipped = replicated;
        // Cut before anything replays: the engine wrote past `replicated`.
        self.catching_up_to = Some(self.applied);
        Ok(())
    }

    /// A replay round, when the WAL grew and the interval has passed: run
    /// here, or started in the background (whose last round, if it has
    /// ended, is taken first).
    async fn replay(&mut self) -> Result<(), String> {
        if self.replaying.as_ref().is_some_and(|task| task.is_finished()) {
            self.finish_replay().await?;
        }
        if self.replaying.is_some() || self.catching_up_to.is_some() || self.wal_end <= self.replayed {
            return Ok(());
        }
        let now = self.env.clock.monotonic();
        if self.last_replay.is_some_and(|last| now.saturating_sub(last) < self.config.replay_interval) {
            return Ok(());
        }
        self.last_replay = Some(now);
        // What a round replays is durable first: its restartpoint moves the
        // floor past it, and nothing before the floor is written again (an
        // archiver would read those segments if this node came to lead).
        self.copy.sync().map_err(|e| e.to_string())?;
        self.synced = self.wal_end;
        let (fs, opts, end) = (self.env.fs.clone(), self.config.engine.store_options(0), self.wal_end);
        let replayer = self.replayer.take();
        let round = async move {
            let (replayer, replayed) = match replayer {
                Some(mut replayer) => {
                    let replayed = replayer.round(end).await;
                    (Some(replayer), replayed)
                }
                None => match Replayer::start(fs, &opts, end).await {
                    Ok((replayer, replayed)) => (Some(replayer), Ok(replayed)),
                    Err(error) => (None, Err(error)),
                },
            };
            let replayed = match replayed {
                Ok(replayed) if replayed.end < end => Err(format!(
                    "the replicated WAL ends at {}, before the end of the entries applied, {end}",
                    replayed.end
                )),
                Ok(replayed) => Ok(replayed),
                Err(error) => Err(format!("replaying the replicated WAL failed: {error}")),
            };
            // A failed round's replay is not resumed: the node reopens.
            (replayer.filter(|_| replayed.is_ok()), replayed)
        };
        if self.config.background_replay {
            self.replaying = Some(tokio::spawn(round));
            return Ok(());
        }
        let (replayer, replayed) = round.await;
        self.replayer = replayer;
        self.replayed_to(&replayed?);
        Ok(())
    }

    fn replayed_to(&mut self, replayed: &Replayed) {
        if replayed.restartpoint > self.floor {
            probe::hit(Probe::ReplicaReplayed);
        }
        self.replayed = replayed.end;
    }

    /// Waits for the replay round running in the background, if any.
    async fn finish_replay(&mut self) -> Result<(), String> {
        if let Some(task) = self.replaying.take() {
            let (replayer, replayed) = task.await.map_err(|e| format!("the replay task failed: {e}"))?;
            self.replayer = replayer;
            self.replayed_to(&replayed?);
        }
        Ok(())
    }

    /// Stops the node: waits for a replay round running in the background,
    /// which must not run on beside the next node opened on these files.
    pub async fn close(mut self) {
        let _ = self.finish_replay().await;
    }
}

impl Drop for ReplicaNode {
    /// A node that stops (its process ends) fails the commits still
    /// waiting for the group: the group may still commit them, but this
    /// node can no longer tell.
    fn drop(&mut self) {
        let cause = format!("node {} stopped", self.config.raft.node_id);
        if let Role::Opening { gate, .. } | Role::Leading { gate, .. } = &self.role {
            gate.close(&cause);
        }
        if let Role::Leading { db, .. } = &self.role {
            db.wal().halt(&cause);
        }
        self.publish(None);
    }
}
