//! A server that is a node of a Raft group (`[cluster] peers`): the Raft
//! transport between nodes, the task that drives the node
//! ([`ReplicaNode`]), and what the node shows its clients: SQL sessions
//! only while it leads, read-only connections that name the leader
//! otherwise, and its status and metrics on the admin port.
//!
//! The transport is one TCP connection per peer and direction, carrying
//! raft-rs messages as protobuf, each framed by its length (u32, little
//! endian). Raft tolerates lost messages, so a message that finds its
//! peer's queue full, or its connection broken, is dropped; a broken
//! connection is made again at the next message.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protobuf::Message as _;
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::config::Config;
use super::http::{render_metrics, ClusterGauges};
use super::pg::Group;
use crate::backup::registry::Registry as Backups;
use crate::backup::{self, BackupRequest, Progress as BackupProgress, Sink};
use crate::cluster::raft::{Entry, ExportedLog, HardState, Message, RaftConfig};
use crate::cluster::replica::{
    install_snapshot, LogPins, MemberLag, RebuildDirs, RebuildTarget, ReplicaConfig, ReplicaNode, ReplicaRole,
    ReplicaStatus,
};
use crate::db::Database;
use crate::env::{Env, Fs};
use crate::wal::Lsn;

/// A Raft tick. An election starts after [`ELECTION_TICK`] ticks without
/// the leader's word (1 s, each tick ±20% from the seed), and the leader
/// heartbeats every [`HEARTBEAT_TICK`].
const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICK: usize = 10;
const HEARTBEAT_TICK: usize = 2;
/// The least time between two replay rounds on a follower.
const REPLAY_INTERVAL: Duration = Duration::from_millis(200);
/// How long a node that failed (an I/O error) waits before it reopens.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Messages queued for one peer, or from all peers, before more are
/// dropped.
const QUEUE: usize = 4096;
/// The largest message a node accepts (a chunk is one group-commit flush).
const MAX_FRAME: usize = 1 << 30;
/// How long a leader's clean stop may take before the node stops anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The leader's engine and its admin API, while it serves.
#[derive(Clone)]
pub struct Serving {
    /// The database, open for writes.
    pub db: Arc<Database>,
    /// Its backups.
    pub backups: Arc<Backups>,
    /// Its admin routes (checkpoints, backups, archiving, health).
    pub admin: Router,
}

/// What the node shows its clients and the admin API, updated by the
/// driver after every step.
pub struct ClusterView {
    node_id: u64,
    voters: Vec<(u64, String)>,
    state: Mutex<ViewState>,
}

#[derive(Default)]
struct ViewState {
    status: Option<ReplicaStatus>,
    leader: Option<u64>,
    candidate: bool,
    members: Vec<MemberLag>,
    serving: Option<Serving>,
    last_error: Option<String>,
}

impl ClusterView {
    fn new(node_id: u64, voters: Vec<(u64, String)>) -> Arc<Self> {
        Arc::new(Self { node_id, voters, state: Mutex::new(ViewState::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().expect("cluster view poisoned")
    }

    /// The leader's engine and admin API, if this node serves.
    pub fn serving(&self) -> Option<Serving> {
        self.lock().serving.clone()
    }

    fn addr(&self, node: u64) -> Option<&str> {
        self.voters.iter().find(|(id, _)| *id == node).map(|(_, addr)| addr.as_str())
    }

    fn role(state: &ViewState) -> &'static str {
        match state.status.map(|s| s.role) {
            Some(ReplicaRole::Starting | ReplicaRole::Opening | ReplicaRole::Leading) => "leader",
            _ if state.candidate => "candidate",
            _ => "follower",
        }
    }

    /// `GET /admin/cluster/status`.
    pub fn status_json(&self) -> serde_json::Value {
        let state = self.lock();
        let status = state.status;
        let role = Self::role(&state);
        let members: Vec<serde_json::Value> = self
            .voters
            .iter()
            .map(|(id, addr)| {
                let lag = state.members.iter().find(|m| m.node_id == *id);
                let member_role = if state.leader == Some(*id) { "leader" } else { "follower" };
                json!({
                    "node_id": id,
                    "addr": addr,
                    "role": member_role,
                    "match_lsn": lag.and_then(|l| l.match_lsn).map(|l| l.to_string()),
                    "lag_bytes": lag.map(|l| l.lag_bytes),
                    "lag_seconds": lag.map(|l| l.lag_seconds),
                })
            })
            .collect();
        json!({
            "node_id": self.node_id,
            "role": role,
            "term": status.map_or(0, |s| s.term),
            "leader_id": state.leader,
            "commit_lsn": status.map(|s| s.committed.to_string()),
            "serving": state.serving.is_some(),
            "wal_end": status.map(|s| s.wal_end.to_string()),
            "replay_lsn": status.map(|s| s.replayed.to_string()),
            "raft_log": status.map(|s| json!({"first_index": s.raft_log.0, "last_index": s.raft_log.1})),
            "members": members,
            "last_error": state.last_error,
        })
    }

    fn gauges(&self) -> ClusterGauges {
        let state = self.lock();
        ClusterGauges {
            leader: state.serving.is_some(),
            term: state.status.map_or(0, |s| s.term),
            members: state.members.iter().map(|m| (m.node_id, m.lag_bytes, m.lag_seconds)).collect(),
            raft_log_entries: state.status.map_or(0, |s| (s.raft_log.1 + 1).saturating_sub(s.raft_log.0)),
        }
    }

    fn update(&self, node: &ReplicaNode, serving: Option<Serving>) {
        let mut state = self.lock();
        state.status = Some(node.status());
        state.leader = node.leader();
        state.candidate = node.is_candidate();
        state.members = node.members();
        state.serving = serving;
        state.last_error = None;
    }

    fn failed(&self, error: String) {
        let mut state = self.lock();
        state.serving = None;
        state.members.clear();
        state.leader = None;
        state.last_error = Some(error);
    }
}

impl Group for ClusterView {
    fn serves(&self, db: &Arc<Database>) -> bool {
        self.lock().serving.as_ref().is_some_and(|s| Arc::ptr_eq(&s.db, db))
    }

    fn hint(&self) -> String {
        let leader = self.lock().leader.filter(|leader| *leader != self.node_id);
        let leader = match leader {
            Some(id) => format!("the leader is node {id} (Raft address {})", self.addr(id).unwrap_or("unknown")),
            None => "no leader is serving yet".to_string(),
        };
        format!(
            "node {} does not serve writes: {leader}; connect with a multi-host string and \
             target_session_attrs=read-write to reach the leader",
            self.node_id
        )
    }
}

/// A request for the leader's Raft log (for the node being rebuilt, from a
/// backup that starts at the LSN), answered by the driver.
type ExportRequest = (u64, Lsn, tokio::sync::oneshot::Sender<Result<ExportedLog, String>>);

/// Builds the leader's engine-side services once its database opens.
pub type ServeFn = Box<dyn Fn(Arc<Database>) -> Result<Serving, String> + Send>;

/// Starts the node: binds the Raft port, and spawns the transport and the
/// driver. The driver stops, the leader's database shut down cleanly, once
/// `stop` turns true; the returned handle ends then.
pub async fn start(
    env: Env,
    config: &Config,
    serve: ServeFn,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<ClusterView>, tokio::task::JoinHandle<()>), String> {
    let cluster = &config.cluster;
    let voters = cluster.voters()?;
    let listen = cluster.listen_addr()?;
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("listening on {listen} (cluster.raft_addr) failed: {e}"))?;
    let (inbox_send, inbox) = mpsc::channel(QUEUE);
    let ids: Vec<u64> = voters.iter().map(|(id, _)| *id).collect();
    let mut outboxes = Vec::new();
    for (id, addr) in voters.iter().filter(|(id, _)| *id != cluster.node_id) {
        let (send, queue) = mpsc::channel(QUEUE);
        tokio::spawn(send_to_peer(addr.clone(), queue));
        outboxes.push((*id, send));
    }
    let view = ClusterView::new(cluster.node_id, voters);
    let (export_send, exports) = mpsc::channel(4);
    let log_pins = LogPins::default();
    let snapshots = Snapshots { view: view.clone(), exports: export_send, log_pins: log_pins.clone() };
    tokio::spawn(listen_for_peers(listener, cluster.node_id, ids.clone(), inbox_send, snapshots));
    let replica = ReplicaConfig {
        raft: RaftConfig {
            node_id: cluster.node_id,
            voters: ids,
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
        },
        raft_dir: config.data_dir.join("raft"),
        engine: config.engine(),
        replay_interval: REPLAY_INTERVAL,
        background_replay: true,
        compact_every: cluster.raft_log_compact_entries,
        log_pins,
    };
    let driver = Driver { env, replica, view: view.clone(), inbox, outboxes, serve, stop, exports };
    Ok((view, tokio::spawn(driver.run())))
}

/// One tick, ±20% from the seeded generator.
fn tick_length(rng: &mut impl Rng) -> Duration {
    let ms = TICK.as_millis() as u64;
    Duration::from_millis(rng.random_range(ms * 4 / 5..=ms * 6 / 5))
}

struct Driver {
    env: Env,
    replica: ReplicaConfig,
    view: Arc<ClusterView>,
    inbox: mpsc::Receiver<Message>,
    outboxes: Vec<(u64, mpsc::Sender<Message>)>,
    serve: ServeFn,
    stop: watch::Receiver<bool>,
    exports: mpsc::Receiver<ExportRequest>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            match ReplicaNode::open(self.env.clone(), self.replica.clone()) {
                Ok(mut node) => match self.drive(&mut node).await {
                    Ok(()) => {
                        node.close().await;
                        return;
                    }
                    Err(error) => {
                        node.close().await;
                        let error = if error.contains("checksum") {
                            format!(
                                "{error}; this node's copy is damaged: rebuild it from its peers with `thunderdb \
                                 --rebuild-from-peers --config FILE` (its files are moved aside, not deleted)"
                            )
                        } else {
                            error
                        };
                        tracing::error!(%error, "the cluster node failed; reopening it from its disk");
                        self.view.failed(error);
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "opening the cluster node failed; retrying");
                    self.view.failed(error);
                }
            }
            if *self.stop.borrow() {
                return;
            }
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    }

    /// Drives `node` until the server stops (`Ok`) or the node fails.
    async fn drive(&mut self, node: &mut ReplicaNode) -> Result<(), String> {
        let mut rng = self.env.rng(0x7261_6674);
        let tick = tokio::time::sleep(tick_length(&mut rng));
        tokio::pin!(tick);
        // The leader's engine, and the services built on it.
        let mut serving: Option<Serving> = None;
        let mut stopping: Option<tokio::task::JoinHandle<()>> = None;
        let deadline = tokio::time::sleep(STOP_DEADLINE);
        tokio::pin!(deadline);
        loop {
            let gate = node.gate();
            tokio::select! {
                changed = self.stop.changed(), if stopping.is_none() => {
                    if changed.is_err() || *self.stop.borrow() {
                        // No new sessions; a leader's engine shuts down
                        // cleanly, its last WAL shipped meanwhile.
                        self.view.lock().serving = None;
                        let Some(db) = node.database() else { return Ok(()) };
                        deadline.as_mut().set(tokio::time::sleep(STOP_DEADLINE));
                        stopping = Some(tokio::spawn(async move {
                            match db.shutdown().await {
                                Ok(()) => tracing::info!("the leader's database shut down cleanly"),
                                Err(error) => tracing::warn!(%error, "the leader's clean shutdown failed"),
                            }
                        }));
                    }
                }
                () = &mut deadline, if stopping.is_some() => {
                    tracing::warn!("the leader's clean shutdown did not finish in time; stopping anyway");
                    return Ok(());
                }
                () = &mut tick => {
                    node.tick();
                    let next = tick_length(&mut rng);
                    tick.as_mut().set(tokio::time::sleep(next));
                }
                Some(message) = self.inbox.recv() => {
                    node.step(message);
                    while let Ok(message) = self.inbox.try_recv() {
                        node.step(message);
                    }
                }
                () = async { if let Some(gate) = &gate { gate.local_advanced().await } }, if gate.is_some() => {}
                Some((rebuilding, start, answer)) = self.exports.recv() => {
                    let _ = answer.send(node.export_log(rebuilding, start));
                }
            }
            let outboxes = &self.outboxes;
            node.advance(&mut |message| {
                if let Some((_, outbox)) = outboxes.iter().find(|(id, _)| *id == message.to) {
                    // A full queue drops it, as the network may.
                    let _ = outbox.try_send(message);
                }
            })
            .await?;
            if stopping.as_ref().is_some_and(|task| task.is_finished()) {
                return Ok(());
            }
            if stopping.is_none() {
                serving = match (node.database(), serving.take()) {
                    (Some(db), Some(current)) if Arc::ptr_eq(&db, &current.db) => Some(current),
                    (Some(db), _) => match (self.serve)(db) {
                        Ok(services) => Some(services),
                        Err(error) => return Err(format!("starting the leader's services failed: {error}")),
                    },
                    (None, _) => None,
                };
            }
            self.view.update(node, serving.clone());
        }
    }
}

/// Accepts the peers' connections, and queues the messages they carry
/// for the driver. Messages not for this node, or from a node outside the
/// group, are dropped. A connection that opens with [`SNAPSHOT_REQUEST`]
/// asks for a snapshot instead.
async fn listen_for_peers(
    listener: TcpListener,
    node_id: u64,
    voters: Vec<u64>,
    inbox: mpsc::Sender<Message>,
    snapshots: Snapshots,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (inbox, voters, snapshots) = (inbox.clone(), voters.clone(), snapshots.clone());
        tokio::spawn(async move {
            if let Err(error) = receive(stream, node_id, &voters, inbox, snapshots).await {
                tracing::debug!(%peer, %error, "a Raft peer's connection ended");
            }
        });
    }
}

async fn receive(
    stream: TcpStream,
    node_id: u64,
    voters: &[u64],
    inbox: mpsc::Sender<Message>,
    snapshots: Snapshots,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut first = true;
    loop {
        let len = stream.read_u32_le().await?;
        if std::mem::take(&mut first) && len == SNAPSHOT_REQUEST {
            let rebuilding = stream.read_u64_le().await?;
            return serve_snapshot(stream.into_inner(), rebuilding, &snapshots).await;
        }
        let len = len as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
        }
        let mut frame = vec![0; len];
        stream.read_exact(&mut frame).await?;
        let message = Message::parse_from_bytes(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if message.to == node_id && voters.contains(&message.from) {
            // A full queue drops it, as the network may.
            let _ = inbox.try_send(message);
        }
    }
}

/// Sends the messages queued for one peer, connecting as needed.
async fn send_to_peer(addr: String, mut queue: mpsc::Receiver<Message>) {
    while let Some(first) = queue.recv().await {
        let connected = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&addr)).await;
        let Ok(Ok(stream)) = connected else {
            // The message is lost; the next one tries again, a little later.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut out = BufWriter::new(stream);
        let mut next = Some(first);
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => match queue.try_recv() {
                    Ok(message) => message,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if out.flush().await.is_err() {
                            break;
                        }
                        match queue.recv().await {
                            Some(message) => message,
                            None => return,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                },
            };
            let frame = match message.write_to_bytes() {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::warn!(%error, "a Raft message could not be encoded; dropped");
                    continue;
                }
            };
            if out.write_u32_le(frame.len() as u32).await.is_err() || out.write_all(&frame).await.is_err() {
                break;
            }
        }
    }
}

/// Opens a connection on the Raft port that asks for a snapshot (instead
/// of a frame's length); the id of the node asking (u64) follows.
const SNAPSHOT_REQUEST: u32 = u32::MAX;
/// The snapshot's answer: follows, or refused with a message.
const SNAPSHOT_FOLLOWS: u8 = 0;
const SNAPSHOT_REFUSED: u8 = 1;

/// What a node needs to answer snapshot requests.
#[derive(Clone)]
struct Snapshots {
    view: Arc<ClusterView>,
    exports: mpsc::Sender<ExportRequest>,
    /// The node's Raft log is not compacted while a snapshot is streamed.
    log_pins: LogPins,
}

impl Snapshots {
    /// Asks the driver for the leader's Raft log, for node `rebuilding` and
    /// a backup that starts at `start`.
    async fn export(&self, rebuilding: u64, start: Lsn) -> Result<ExportedLog, String> {
        let (send, answer) = tokio::sync::oneshot::channel();
        self.exports.send((rebuilding, start, send)).await.map_err(|_| "the node stopped".to_string())?;
        answer.await.map_err(|_| "the node stopped".to_string())?
    }
}

/// Answers a snapshot request: on the leader, an online backup (with its
/// WAL, uncompressed) streamed as it is taken ([`backup::stream`]: each
/// file read once here and written once on the node), then the leader's
/// Raft log, taken after the backup ended and left out before it (its
/// hard state, the index and term of the last entry left out (u64 each,
/// zeroes if none), then the number of entries (u64) and each entry, every
/// one as its length (u32) and protobuf). Any other node refuses, naming
/// the leader.
async fn serve_snapshot(mut stream: TcpStream, rebuilding: u64, snapshots: &Snapshots) -> io::Result<()> {
    let view = &snapshots.view;
    let Some(serving) = view.serving() else {
        let message = view.hint();
        tracing::warn!(%message, "a peer's snapshot request refused");
        let mut out = vec![SNAPSHOT_REFUSED];
        out.extend_from_slice(message.as_bytes());
        return stream.write_all(&out).await;
    };
    tracing::info!(node = rebuilding, "a peer asked for a snapshot: streaming an online backup");
    let _pin = snapshots.log_pins.pin();
    let mut out = BufWriter::with_capacity(1 << 16, stream);
    out.write_u8(SNAPSHOT_FOLLOWS).await?;
    let db = &serving.db;
    let id = backup::backup_id(db.env().clock.wall_micros());
    let request = BackupRequest::new(PathBuf::new(), true, false, String::new());
    let progress = BackupProgress::default();
    // A failure cuts the stream short, which the node reports and retries.
    let manifest = match backup::take_into(db, Sink::Stream(&mut out), &id, &request, &progress).await {
        Ok(manifest) => manifest,
        Err(error) => {
            tracing::warn!(node = rebuilding, %error, "streaming a snapshot to a peer failed");
            return Err(io::Error::other(error.to_string()));
        }
    };
    // Taken after the backup ended: the log commits at least the WAL the
    // backup holds (see docs/cluster.md, "Rebuilding a node").
    let ExportedLog { base, entries, hard_state } =
        snapshots.export(rebuilding, manifest.start_lsn).await.map_err(io::Error::other)?;
    let encode = |m: &dyn protobuf::Message| m.write_to_bytes().map_err(io::Error::other);
    let state = encode(&hard_state)?;
    out.write_u32_le(state.len() as u32).await?;
    out.write_all(&state).await?;
    let (base_index, base_term) = base.unwrap_or((0, 0));
    out.write_u64_le(base_index).await?;
    out.write_u64_le(base_term).await?;
    out.write_u64_le(entries.len() as u64).await?;
    for entry in &entries {
        let bytes = encode(entry)?;
        out.write_u32_le(bytes.len() as u32).await?;
        out.write_all(&bytes).await?;
    }
    out.flush().await?;
    tracing::info!(
        backup = %manifest.backup_id,
        bytes = progress.bytes_done.load(std::sync::atomic::Ordering::Relaxed),
        entries = entries.len(),
        "sent a snapshot to a peer"
    );
    Ok(())
}

/// `thunderdb --rebuild-from-peers`: gives this node a fresh copy of the
/// group's database. Its directories, if they hold anything, are moved
/// aside (`<dir>.before-rebuild-<unix time>`, its Raft log with them); the
/// leader's snapshot is received (its data and WAL files in place) and
/// every file checked against the backup's manifest, the leader's Raft log
/// becomes the node's, and the control file is written last. The node then
/// starts as a follower that applies that log (as after a restart) and
/// catches up.
pub async fn rebuild(env: &Env, config: &Config) -> Result<(), String> {
    if !config.cluster.is_raft() {
        return Err("--rebuild-from-peers needs `[cluster] peers`: only a node of a Raft group has peers".into());
    }
    let fs = env.fs.clone();
    let (data_dir, wal_dir) = (&config.data_dir, &config.wal_dir);
    let stamp = env.clock.wall_micros() / 1_000_000;
    let aside = |dir: &Path| PathBuf::from(format!("{}.before-rebuild-{stamp}", dir.display()));
    for dir in [data_dir, wal_dir] {
        let held = fs.exists(dir).map_err(|e| format!("{}: {e}", dir.display()))?
            && !fs.list(dir).map_err(|e| format!("{}: {e}", dir.display()))?.is_empty();
        if held {
            fs.rename(dir, &aside(dir)).map_err(|e| format!("moving {} aside: {e}", dir.display()))?;
            tracing::warn!(from = %dir.display(), to = %aside(dir).display(), "moved the node's old files aside");
        }
    }
    let staging = PathBuf::from(format!("{}.rebuild", data_dir.display()));
    let dirs = RebuildDirs { staging: staging.clone(), data: data_dir.clone(), wal: wal_dir.clone() };
    let mut refusals = Vec::new();
    let voters = config.cluster.voters()?;
    let mut received = None;
    for _round in 0..60 {
        for (id, addr) in voters.iter().filter(|(id, _)| *id != config.cluster.node_id) {
            // What an attempt cut short left (the directories are this
            // rebuild's own: the node's were moved aside).
            dirs.clear(fs.as_ref())?;
            match fetch_snapshot(fs.as_ref(), addr, config.cluster.node_id, &dirs).await {
                Ok(snapshot) => {
                    received = Some((*id, snapshot));
                    break;
                }
                Err(error) => refusals.push(format!("node {id} ({addr}): {error}")),
            }
        }
        if received.is_some() {
            break;
        }
        // No leader yet (an election, or the group is still starting).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some((from, (bytes, exported))) = received else {
        return Err(format!("no peer sent a snapshot within a minute: {}", refusals.join("; ")));
    };
    tracing::info!(from, bytes, "received the leader's snapshot; checking it and restoring the control file");
    let ids: Vec<u64> = voters.iter().map(|(id, _)| *id).collect();
    let raft_dir = data_dir.join("raft");
    let target =
        RebuildTarget { data_dir, wal_dir, raft_dir: &raft_dir, node_id: config.cluster.node_id, voters: &ids };
    let (manifest, written) = install_snapshot(fs.clone(), &staging, &target, &exported)
        .map_err(|e| format!("installing node {from}'s snapshot: {e}"))?;
    dirs.clear_staging(fs.as_ref())?;
    tracing::info!(
        backup = %manifest.backup_id,
        end_lsn = %manifest.end_lsn,
        files = written,
        "rebuilt from the leader's snapshot: catching up from the Raft log"
    );
    Ok(())
}

/// What a snapshot brings besides its files: the bytes received, and the
/// leader's Raft log.
type Received = (u64, ExportedLog);

/// Asks the node at `addr` for a snapshot for node `me` and writes its
/// files where `dirs` says.
async fn fetch_snapshot(fs: &dyn Fs, addr: &str, me: u64, dirs: &RebuildDirs) -> Result<Received, String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let mut request = SNAPSHOT_REQUEST.to_le_bytes().to_vec();
    request.extend_from_slice(&me.to_le_bytes());
    stream.get_mut().write_all(&request).await.map_err(|e| e.to_string())?;
    match stream.read_u8().await.map_err(|e| e.to_string())? {
        SNAPSHOT_FOLLOWS => {}
        _ => {
            let mut message = String::new();
            stream.read_to_string(&mut message).await.map_err(|e| e.to_string())?;
            return Err(message);
        }
    }
    let mut total = backup::stream::receive(&mut stream, fs, &mut |name| dirs.place(fs, name)).await?;
    async fn frame(stream: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
        let len = stream.read_u32_le().await.map_err(|e| format!("the snapshot was cut short: {e}"))? as usize;
        if len > MAX_FRAME {
            return Err(format!("a Raft log frame of {len} bytes"));
        }
        let mut bytes = vec![0; len];
        stream.read_exact(&mut bytes).await.map_err(|e| format!("the snapshot was cut short: {e}"))?;
        Ok(bytes)
    }
    let hard_state = HardState::parse_from_bytes(&frame(&mut stream).await?).map_err(|e| e.to_string())?;
    let mut read_u64 = async || stream.read_u64_le().await.map_err(|e| format!("the snapshot was cut short: {e}"));
    let base = match (read_u64().await?, read_u64().await?) {
        (0, _) => None,
        (index, term) => Some((index, term)),
    };
    let count = read_u64().await?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let bytes = frame(&mut stream).await?;
        total += bytes.len() as u64;
        entries.push(Entry::parse_from_bytes(&bytes).map_err(|e| e.to_string())?);
    }
    Ok((total, ExportedLog { base, entries, hard_state }))
}

/// The admin API of a node of a Raft group: its status, health and
/// metrics always; every other route while it serves (the leader's), and
/// otherwise 503 naming the leader.
pub fn cluster_router(view: Arc<ClusterView>, token: Option<String>) -> Router {
    Router::new()
        .route(
            "/admin/cluster/status",
            get(|State(view): State<Arc<ClusterView>>| async move { Json(view.status_json()) }),
        )
        .route("/metrics", get(metrics))
        .route("/admin/health", get(health))
        .fallback(forward)
        .layer(axum::middleware::from_fn_with_state(token, super::http::require_token))
        .with_state(view)
}

async fn metrics(State(view): State<Arc<ClusterView>>) -> Response {
    let serving = view.serving();
    let engine = serving.as_ref().map(|s| (s.db.as_ref(), s.backups.as_ref()));
    super::http::metrics_response(render_metrics(engine, &view.gauges()).await)
}

/// The leader's health is its engine's; a follower is healthy while its
/// node runs.
async fn health(State(view): State<Arc<ClusterView>>, request: Request) -> Response {
    if view.serving().is_some() {
        return forward(State(view), request).await;
    }
    let status = view.status_json();
    match &status["last_error"] {
        serde_json::Value::Null => (
            StatusCode::OK,
            Json(json!({"status": "healthy", "role": status["role"], "leader_id": status["leader_id"]})),
        )
            .into_response(),
        error => {
            let body =
                json!({"status": "unhealthy", "role": status["role"], "failing": ["node"], "checks": {"node": error}});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn forward(State(view): State<Arc<ClusterView>>, request: Request) -> Response {
    match view.serving() {
        Some(serving) => match serving.admin.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => {
            let error = format!("this node is not serving: {}", view.hint());
            let status = view.status_json();
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": error, "cluster": status}))).into_response()
        }
    }
}
