//! The Raft log's durable store: `raft.log` in the node's Raft directory.
//!
//! raft-rs is sans-IO. It reads entries from a [`Storage`], and each `Ready`
//! hands back the entries and the hard state (term, vote, commit) that must
//! be durable before the messages that depend on them go out. [`RaftLog`] is
//! that storage: raft-rs reads an in-memory [`MemStorage`], and
//! [`RaftLog::persist`] makes every change durable in one append-only file,
//! written through the env seam, before the in-memory copy takes it.
//!
//! # Format
//!
//! A header sector: `TDBRAFT1`, the node id, the voters, and a CRC-32C of
//! those bytes. Then frames:
//!
//! ```text
//! len u32 | crc32 u32 | kind u8 | body (len - 1 bytes)
//! ```
//!
//! The CRC covers the kind and the body. An entry frame holds one entry
//! (index, term, type, data, context); a hard-state frame the term, vote and
//! commit; a padding frame nothing. Each [`RaftLog::persist`] ends on a
//! sector boundary (with a padding frame), so the next one never rewrites a
//! sector that holds synced frames, and a torn write cannot reach them.
//!
//! An entry frame for index `i` replaces the entries from `i` on: Raft only
//! ever appends one contiguous run, which may overwrite a conflicting
//! suffix. The last hard-state frame wins.
//!
//! Opening reads the frames up to the first that is incomplete or fails its
//! checksum, which is the unsynced tail a power failure can tear, and cuts
//! the file there durably before anything is appended. Nothing past that
//! point was ever synced, so no message depended on it. The simulator's
//! cluster workload runs power loss and I/O errors, not bit rot at rest:
//! telling a torn tail from a damaged synced frame, and rebuilding from
//! peers, comes with re-replication.
//!
//! A snapshot (`raft.snap`: `TDBSNAP1`, index, term, data length, data,
//! CRC-32) replaces the entries up to its index. It is made durable before
//! the log is rewritten without them ([`RaftLog::compact`],
//! [`RaftLog::apply_snapshot`]); an opening that finds a rewrite cut off
//! finishes it (docs/design.md, "The Raft layer").

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{RaftState, Storage};

use crate::env::{self, write_atomically, AtomicWriteError, File, Fs, SECTOR_SIZE};
use crate::planted::{self, PlantedBug};
use crate::probe::{self, Phase, Probe};

/// The log's file name in the node's Raft directory.
pub const LOG_FILE: &str = "raft.log";
/// The snapshot's file name in the node's Raft directory.
pub const SNAPSHOT_FILE: &str = "raft.snap";

const MAGIC: &[u8; 8] = b"TDBRAFT1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"TDBSNAP1";
const FRAME_HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_PADDING: u8 = 3;

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    /// An I/O step failed. After a failed write or sync the node must stop:
    /// what reached the disk is unknown.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The step.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Creating the log failed part way.
    #[error(transparent)]
    Create(#[from] AtomicWriteError),
    /// The header is not a Raft log's, or fails its checksum.
    #[error("{}: not a ThunderDB Raft log (bad header)", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
    },
    /// The log belongs to another node or another set of voters.
    #[error("{}: written by node {found_node} with voters {found_voters:?}, but this is node {node} with voters {voters:?}", path.display())]
    WrongMembers {
        /// The file.
        path: PathBuf,
        /// The node id in the header.
        found_node: u64,
        /// The voters in the header.
        found_voters: Vec<u64>,
        /// This node's id.
        node: u64,
        /// The configured voters.
        voters: Vec<u64>,
    },
    /// The snapshot file is not one, or fails its checksum. It was written
    /// whole or not at all, so this is damage, not a torn write.
    #[error("{}: not a ThunderDB Raft snapshot, or damaged (bad checksum)", path.display())]
    BadSnapshot {
        /// The file.
        path: PathBuf,
    },
    /// An entry frame leaves a gap after the entries before it.
    #[error("{}: entry {index} at byte {offset} follows entry {last}", path.display())]
    Gap {
        /// The file.
        path: PathBuf,
        /// The entry's index.
        index: u64,
        /// The frame's offset.
        offset: u64,
        /// The last entry before it.
        last: u64,
    },
}

/// The durable Raft log of one node, and raft-rs's [`Storage`] over it.
pub struct RaftLog {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    path: PathBuf,
    file: Box<dyn File>,
    /// Where the next frame goes: always a sector boundary.
    end: u64,
    mem: MemStorage,
    node: u64,
    voters: Vec<u64>,
    /// The last snapshot, durable in [`SNAPSHOT_FILE`]; index 0 if none.
    snapshot: Snapshot,
    /// Whether a sync hands the worker thread's other tasks to another
    /// thread meanwhile ([`RaftLog::sync_off_worker`]).
    sync_off_worker: bool,
}

/// Maps an I/O error of step `op` on `path` to [`RaftLogError::Io`].
fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RaftLogError {
    let path = path.to_path_buf();
    move |source| RaftLogError::Io { op, path, source }
}

/// The whole log file: the header, `entries`, the hard state, padded to a
/// sector (what a compaction or a snapshot's install writes).
fn log_image(node: u64, voters: &[u64], entries: &[Entry], hard_state: &HardState) -> Vec<u8> {
    let mut bytes = header(node, voters);
    for entry in entries {
        push_frame(&mut bytes, KIND_ENTRY, &encode_entry(entry));
    }
    push_frame(&mut bytes, KIND_HARD_STATE, &encode_hard_state(hard_state));
    pad_to_sector(&mut bytes);
    bytes
}

impl RaftLog {
    /// Opens the log in `dir`, creating it for `node` and `voters` if it
    /// does not exist, and cuts any torn tail.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, node: u64, voters: &[u64]) -> Result<Self, RaftLogError> {
        let _phase = probe::enter(Phase::RaftOpen);
        let path = dir.join(LOG_FILE);
        if !fs.exists(&path).map_err(io("stat", &path))? {
            fs.create_dir_all(dir).map_err(io("create directory", dir))?;
            write_atomically(fs.as_ref(), dir, LOG_FILE, &header(node, voters))?;
        }
        let mut file = fs.open(&path).map_err(io("open", &path))?;
        let len = file.len().map_err(io("stat", &path))?;
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0).map_err(io("read", &path))?;
        let (found_node, found_voters) =
            parse_header(&bytes).ok_or_else(|| RaftLogError::BadHeader { path: path.clone() })?;
        if found_node != node || found_voters != voters {
            return Err(RaftLogError::WrongMembers { path, found_node, found_voters, node, voters: voters.to_vec() });
        }
        let mut snapshot = read_snapshot(fs.as_ref(), dir)?;
        let (base, base_term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if base > 0 {
            snapshot.mut_metadata().set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        }
        // The file's entries: a contiguous run from the first frame's
        // index (1, or just past a snapshot once compacted).
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        let mut offset = SECTOR_SIZE as usize;
        while let Some((kind, body)) = frame_at(&bytes, offset) {
            match kind {
                KIND_ENTRY => {
                    let Some(entry) = decode_entry(body) else { break };
                    let (first, last) = match (entries.first(), entries.last()) {
                        (Some(first), Some(last)) => (first.index, last.index),
                        // The first entry starts the run: at 1, or anywhere
                        // up to just past the snapshot.
                        _ if entry.index >= 1 && entry.index <= base + 1 => (entry.index, entry.index - 1),
                        _ => (1, 0),
                    };
                    if entry.index < first || entry.index > last + 1 {
                        return Err(RaftLogError::Gap { path, index: entry.index, offset: offset as u64, last });
                    }
                    // An overwrite: the entries from this index on are replaced.
                    if !planted::active(PlantedBug::RaftReplayKeepsOverwritten) || entry.index > last {
                        entries.truncate((entry.index - first) as usize);
                        entries.push(entry);
                    }
                }
                KIND_HARD_STATE => {
                    let Some(state) = decode_hard_state(body) else { break };
                    hard_state = state;
                }
                KIND_PADDING => {}
                _ => break,
            }
            offset += FRAME_HEADER - 1 + body.len() + 1;
        }
        let mut end = offset as u64;
        if end < len {
            probe::hit(Probe::RaftTornTailCut);
            file.set_len(end).map_err(io("cut the torn tail of", &path))?;
            file.sync_all().map_err(io("sync", &path))?;
        }
        if !entries.is_empty() {
            probe::hit(Probe::RaftReopenedWithEntries);
        }
        // The snapshot covers the entries up to its index. The ones after
        // it continue it only if the log holds the snapshot's own entry
        // (same index, same term: Raft's log matching). Otherwise the
        // snapshot came from a leader and replaced the whole log, and a
        // crash came before the log file was rewritten: the old entries
        // are not ours to keep.
        if base > 0 {
            let first = entries.first().map_or(base + 1, |e| e.index);
            let holds_base = first <= base && entries.get((base - first) as usize).is_some_and(|e| e.term == base_term);
            let continues = first == base + 1 || holds_base;
            entries.retain(|e| e.index > base);
            if !continues {
                entries.clear();
            }
            if !continues && first <= base {
                // Finish the interrupted install: the file must not keep
                // the stale entries, or appends after the snapshot would
                // follow them with a gap.
                probe::hit(Probe::RaftStaleLogDropped);
                let bytes = log_image(node, voters, &[], &hard_state);
                write_atomically(fs.as_ref(), dir, LOG_FILE, &bytes)?;
                file = fs.open(&path).map_err(io("open", &path))?;
                end = bytes.len() as u64;
            }
        }
        let mem = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        {
            let mut core = mem.wl();
            if base > 0 {
                core.apply_snapshot(snapshot.clone()).expect("a snapshot over an empty log");
            }
            core.append(&entries).expect("entries replayed in order after the snapshot");
            // The commit index lies between the snapshot and the last entry
            // that survived (frames past it were torn).
            let last = entries.last().map_or(base, |e| e.index);
            hard_state.commit = hard_state.commit.clamp(base, last);
            hard_state.term = hard_state.term.max(base_term);
            core.set_hardstate(hard_state);
        }
        Ok(Self {
            fs,
            dir: dir.to_path_buf(),
            path,
            file,
            end,
            mem,
            node,
            voters: voters.to_vec(),
            snapshot,
            sync_off_worker: true,
        })
    }

    /// Replaces the entries up to `index` (applied by the caller, whose
    /// state there is `data`) with a snapshot: the snapshot file written
    /// and synced, then the log rewritten without them.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftLogError> {
        if index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        let term = self.mem.term(index).expect("compacting entries the log holds");
        let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
        *snapshot.mut_metadata() = SnapshotMetadata {
            conf_state: Some(ConfState::from((self.voters.clone(), vec![]))).into(),
            index,
            term,
            ..Default::default()
        };
        let last = self.last_index();
        let kept = self
            .mem
            .entries(index + 1, last + 1, None, raft::GetEntriesContext::empty(false))
            .expect("the entries after the snapshot are in the log");
        self.install(snapshot, &kept)?;
        probe::hit(Probe::RaftCompacted);
        Ok(())
    }

    /// Installs a snapshot a leader sent, which replaces the whole log.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), RaftLogError> {
        self.install(snapshot.clone(), &[])?;
        probe::hit(Probe::RaftSnapshotInstalled);
        Ok(())
    }

    /// Makes `snapshot` durable, then rewrites the log as `kept` (the
    /// entries after it) and the hard state, then takes both in memory.
    fn install(&mut self, snapshot: Snapshot, kept: &[Entry]) -> Result<(), RaftLogError> {
        let _phase = probe::enter(Phase::RaftSnapshot);
        let meta = snapshot.get_metadata();
        let mut hard_state = self.mem.rl().hard_state().clone();
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        let log_bytes = log_image(self.node, &self.voters, kept, &hard_state);
        let snapshot_bytes = encode_snapshot(&snapshot);
        let fs = &self.fs;
        if planted::active(PlantedBug::RaftLogCutBeforeSnapshot) {
            write_atomically(fs.as_ref(), &self.dir, LOG_FILE, &log_bytes)?;
            write_atomically(fs.as_ref(), &self.dir, SNAPSHOT_FILE, &snapshot_bytes)?;
        } else {
            write_atomically(fs.as_ref(), &self.dir, SNAPSHOT_FILE, &snapshot_bytes)?;
            write_atomically(fs.as_ref(), &self.dir, LOG_FILE, &log_bytes)?;
        }
        self.file = fs.open(&self.path).map_err(io("open", &self.path))?;
        self.end = log_bytes.len() as u64;
        let mut core = self.mem.wl();
        core.apply_snapshot(snapshot.clone()).expect("a snapshot past the first index");
        core.append(kept).expect("the entries after the snapshot");
        core.set_hardstate(hard_state);
        drop(core);
        self.snapshot = snapshot;
        Ok(())
    }

    /// The last snapshot: its index (0 if there is none) and its data.
    pub fn snapshot(&self) -> (u64, &[u8]) {
        (self.snapshot.get_metadata().index, &self.snapshot.data)
    }

    /// Makes `entries` (one contiguous run, possibly replacing a suffix) and
    /// `hard_state` durable, then visible to raft-rs.
    pub fn persist(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), RaftLogError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let _phase = probe::enter(Phase::RaftAppend);
        let mut buf = Vec::new();
        for entry in entries {
            push_frame(&mut buf, KIND_ENTRY, &encode_entry(entry));
        }
        if let Some(state) = hard_state {
            push_frame(&mut buf, KIND_HARD_STATE, &encode_hard_state(state));
        }
        // `end` is on a sector boundary, so padding `buf` pads the file.
        pad_to_sector(&mut buf);
        self.file.write_all_at(&buf, self.end).map_err(io("write", &self.path))?;
        if !planted::active(PlantedBug::RaftAppendWithoutSync) {
            let synced = match self.sync_off_worker {
                true => env::blocking(|| self.file.sync_data()),
                false => self.file.sync_data(),
            };
            synced.map_err(io("sync", &self.path))?;
        }
        self.end += buf.len() as u64;
        let last = self.last_index();
        let mut core = self.mem.wl();
        if let Some(first) = entries.first() {
            if first.index <= last {
                probe::hit(Probe::RaftConflictOverwritten);
            }
            core.append(entries).expect("raft-rs appends after its committed entries");
        }
        if let Some(state) = hard_state {
            core.set_hardstate(state.clone());
        }
        Ok(())
    }

    /// Whether [`RaftLog::persist`] syncs off the worker thread's queue
    /// (`env::blocking`), as a leader does: the messages it handed its
    /// peers' senders just before run meanwhile. A follower answers only
    /// after its sync, so handing the thread over, two context switches a
    /// write, would buy it nothing.
    pub fn sync_off_worker(&mut self, off: bool) {
        self.sync_off_worker = off;
    }

    /// Gives an empty log a leader's entries and hard state
    /// ([`super::RaftNode::export`]): the node then starts as a follower
    /// that holds what the leader held. Entries left out before them
    /// (`exported.base`) become a snapshot the log starts after. A log
    /// that holds anything refuses.
    pub fn adopt(&mut self, exported: &super::ExportedLog) -> Result<(), RaftLogError> {
        let super::ExportedLog { base, entries, hard_state } = exported;
        if self.last_index() > 0 || self.mem.initial_state().map(|s| s.hard_state.term).unwrap_or(0) > 0 {
            return Err(RaftLogError::Io {
                op: "install a leader's log into",
                path: self.path.clone(),
                source: io::Error::other("the log is not empty"),
            });
        }
        match base {
            Some((index, term)) => {
                let mut snapshot = Snapshot::default();
                *snapshot.mut_metadata() = SnapshotMetadata {
                    conf_state: Some(ConfState::from((self.voters.clone(), vec![]))).into(),
                    index: *index,
                    term: *term,
                    ..Default::default()
                };
                self.install(snapshot, entries)?;
                self.persist(&[], Some(hard_state))?;
                probe::hit(Probe::ReplicaRebuiltAfterBase);
            }
            None => self.persist(entries, Some(hard_state))?,
        }
        probe::hit(Probe::ReplicaRebuilt);
        Ok(())
    }

    /// The commit index of the durable hard state.
    pub fn commit(&self) -> u64 {
        self.mem.rl().hard_state().commit
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    /// The index of the last entry.
    pub fn last_index(&self) -> u64 {
        Storage::last_index(&self.mem).expect("an in-memory log always has a last index")
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The last snapshot, data included. raft-rs asks for it only when a
    /// follower needs entries before the first one the log holds, so one
    /// exists.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }
}

fn header(node: u64, voters: &[u64]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&node.to_le_bytes());
    bytes.extend_from_slice(&(voters.len() as u32).to_le_bytes());
    for voter in voters {
        bytes.extend_from_slice(&voter.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.resize(SECTOR_SIZE as usize, 0);
    bytes
}

fn parse_header(bytes: &[u8]) -> Option<(u64, Vec<u64>)> {
    let sector = bytes.get(..SECTOR_SIZE as usize)?;
    if &sector[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(sector[16..20].try_into().expect("4 bytes")) as usize;
    let end = 20 + count.checked_mul(8)?;
    if end + 4 > sector.len() {
        return None;
    }
    let crc = u32::from_le_bytes(sector[end..end + 4].try_into().expect("4 bytes"));
    (crc32fast::hash(&sector[..end]) == crc).then(|| (word(8), (0..count).map(|i| word(20 + 8 * i)).collect()))
}

/// Pads `buf` with a padding frame to a whole number of sectors.
fn pad_to_sector(buf: &mut Vec<u8>) {
    let used = buf.len() % SECTOR_SIZE as usize;
    if used != 0 {
        let mut pad = SECTOR_SIZE as usize - used;
        if pad < FRAME_HEADER {
            pad += SECTOR_SIZE as usize;
        }
        push_frame(buf, KIND_PADDING, &vec![0; pad - FRAME_HEADER]);
    }
}

fn encode_hard_state(state: &HardState) -> Vec<u8> {
    [state.term, state.vote, state.commit].iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// `TDBSNAP1 | index u64 | term u64 | data_len u64 | data | crc32 u32`.
fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let meta = snapshot.get_metadata();
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    for word in [meta.index, meta.term, snapshot.data.len() as u64] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.extend_from_slice(&snapshot.data);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The node's snapshot, or an empty one (index 0) if it has none.
fn read_snapshot(fs: &dyn Fs, dir: &Path) -> Result<Snapshot, RaftLogError> {
    let path = dir.join(SNAPSHOT_FILE);
    if !fs.exists(&path).map_err(io("stat", &path))? {
        return Ok(Snapshot::default());
    }
    let file = fs.open(&path).map_err(io("open", &path))?;
    let mut bytes = vec![0; file.len().map_err(io("stat", &path))? as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io("read", &path))?;
    let bad = || RaftLogError::BadSnapshot { path: path.clone() };
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4).ok_or_else(bad)?).ok_or_else(bad)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes"))
        || !body.starts_with(SNAPSHOT_MAGIC)
    {
        return Err(bad());
    }
    let mut reader = Reader(&body[8..]);
    let (index, term, len) = (reader.u64(), reader.u64(), reader.u64());
    let (Some(index), Some(term), Some(len)) = (index, term, len) else { return Err(bad()) };
    let data = reader.take(len as usize).filter(|_| reader.0.is_empty()).ok_or_else(bad)?;
    let mut snapshot = Snapshot { data: data.to_vec().into(), ..Default::default() };
    *snapshot.mut_metadata() = SnapshotMetadata { index, term, ..Default::default() };
    Ok(snapshot)
}

fn push_frame(buf: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(body);
    buf.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
}

/// The frame at `offset`: its kind and body, or `None` if it is incomplete
/// or fails its checksum.
fn frame_at(bytes: &[u8], offset: usize) -> Option<(u8, &[u8])> {
    let header = bytes.get(offset..offset + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        return None;
    }
    let framed = bytes.get(offset + 8..offset + 8 + len)?;
    (crc32fast::hash(framed) == crc).then(|| (framed[0], &framed[1..]))
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let kind = match entry.entry_type {
        EntryType::EntryNormal => 0u8,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    };
    let mut body = Vec::with_capacity(25 + entry.data.len() + entry.context.len());
    body.extend_from_slice(&entry.index.to_le_bytes());
    body.extend_from_slice(&entry.term.to_le_bytes());
    body.push(kind);
    body.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
    body.extend_from_slice(&entry.data);
    body.extend_from_slice(&(entry.context.len() as u32).to_le_bytes());
    body.extend_from_slice(&entry.context);
    body
}

fn decode_entry(body: &[u8]) -> Option<Entry> {
    let mut reader = Reader(body);
    let index = reader.u64()?;
    let term = reader.u64()?;
    let entry_type = match reader.take(1)?[0] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    };
    let len = reader.u32()? as usize;
    let data = reader.take(len)?.to_vec().into();
    let len = reader.u32()? as usize;
    let context = reader.take(len)?.to_vec().into();
    let entry = Entry { index, term, entry_type, data, context, ..Default::default() };
    reader.0.is_empty().then_some(entry)
}

fn decode_hard_state(body: &[u8]) -> Option<HardState> {
    let mut reader = Reader(body);
    let state = HardState { term: reader.u64()?, vote: reader.u64()?, commit: reader.u64()?, ..Default::default() };
    reader.0.is_empty().then_some(state)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{FaultConfig, SimDisk};

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/raft")
    }

    fn logged(log: &RaftLog) -> Vec<(u64, u64, Vec<u8>)> {
        logged_from(log, 1)
    }

    fn logged_from(log: &RaftLog, first: u64) -> Vec<(u64, u64, Vec<u8>)> {
        let last = log.last_index();
        log.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap()
            .into_iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect()
    }

    #[test]
    fn persisted_entries_and_hard_state_survive_a_power_loss_and_an_overwrite_replaces_the_suffix() {
        let disk = SimDisk::new(7, FaultConfig::power_loss());
        let fs = disk.fs();
        let mut log = RaftLog::open(fs.clone(), &dir(), 1, &[1, 2, 3]).unwrap();
        log.persist(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")], Some(&hard_state(1, 1, 1))).unwrap();
        log.persist(&[entry(2, 2, b"B")], Some(&hard_state(2, 2, 2))).unwrap();
        assert_eq!(log.end % SECTOR_SIZE, 0, "every persist ends on a sector boundary");
        disk.crash();
        let log = RaftLog::open(disk.fs(), &dir(), 1, &[1, 2, 3]).unwrap();
        assert_eq!(logged(&log), vec![(1, 1, b"a".to_vec()), (2, 2, b"B".to_vec())]);
        let state = log.initial_state().unwrap().hard_state;
        assert_eq!((state.term, state.vote, state.commit), (2, 2, 2));
    }

    #[test]
    fn an_unsynced_tail_is_cut_and_appends_go_on_after_the_cut() {
        for seed in 0..40 {
            let disk = SimDisk::new(seed, FaultConfig::power_loss());
            let fs = disk.fs();
            let mut log = RaftLog::open(fs.clone(), &dir(), 2, &[1, 2, 3]).unwrap();
            log.persist(&[entry(1, 1, b"durable")], Some(&hard_state(1, 2, 0))).unwrap();
            // A write that never reaches its sync.
            log.file.write_all_at(&vec![0xAB; 3000], log.end).unwrap();
            disk.crash();
            let mut log = RaftLog::open(disk.fs(), &dir(), 2, &[1, 2, 3]).unwrap();
            assert_eq!(logged(&log), vec![(1, 1, b"durable".to_vec())], "seed {seed}");
            log.persist(&[entry(2, 1, b"next")], None).unwrap();
            disk.crash();
            let log = RaftLog::open(disk.fs(), &dir(), 2, &[1, 2, 3]).unwrap();
            assert_eq!(logged(&log).len(), 2, "seed {seed}");
        }
    }

    fn snapshot(index: u64, term: u64, data: &[u8]) -> Snapshot {
        let mut snapshot = Snapshot { data: data.to_vec().into(), ..Default::default() };
        *snapshot.mut_metadata() = SnapshotMetadata { index, term, ..Default::default() };
        snapshot
    }

    #[test]
    fn a_compacted_log_reopens_from_its_snapshot_and_goes_on_after_it() {
        let disk = SimDisk::new(3, FaultConfig::power_loss());
        let mut log = RaftLog::open(disk.fs(), &dir(), 1, &[1, 2, 3]).unwrap();
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, &[i as u8])).collect();
        log.persist(&entries, Some(&hard_state(1, 1, 6))).unwrap();
        log.compact(4, b"state at 4".to_vec()).unwrap();
        log.persist(&[entry(7, 1, b"g")], None).unwrap();
        disk.crash();
        let log = RaftLog::open(disk.fs(), &dir(), 1, &[1, 2, 3]).unwrap();
        assert_eq!(log.snapshot(), (4, &b"state at 4"[..]));
        assert_eq!(log.first_index().unwrap(), 5);
        assert_eq!(log.term(4).unwrap(), 1, "the snapshot's own term is known");
        assert_eq!(logged_from(&log, 5), vec![(5, 1, vec![5]), (6, 1, vec![6]), (7, 1, b"g".to_vec())]);
    }

    #[test]
    fn a_leaders_snapshot_cut_off_before_the_log_rewrite_drops_the_stale_log_on_reopening() {
        let disk = SimDisk::new(4, FaultConfig::power_loss());
        let mut log = RaftLog::open(disk.fs(), &dir(), 2, &[1, 2, 3]).unwrap();
        let stale: Vec<Entry> = (1..=12).map(|i| entry(i, 1, b"old")).collect();
        log.persist(&stale, Some(&hard_state(1, 1, 3))).unwrap();
        // The snapshot file is durable; the power fails before the log's
        // rewrite. The log does not hold the snapshot's entry (index 10,
        // term 2), so nothing in it continues the snapshot.
        write_atomically(disk.fs().as_ref(), &dir(), SNAPSHOT_FILE, &encode_snapshot(&snapshot(10, 2, b"s"))).unwrap();
        disk.crash();
        let mut log = RaftLog::open(disk.fs(), &dir(), 2, &[1, 2, 3]).unwrap();
        assert_eq!((log.first_index().unwrap(), log.last_index()), (11, 10));
        // Appends after the snapshot must not follow the stale frames.
        log.persist(&[entry(11, 2, b"new")], Some(&hard_state(2, 1, 11))).unwrap();
        disk.crash();
        let log = RaftLog::open(disk.fs(), &dir(), 2, &[1, 2, 3]).unwrap();
        assert_eq!(logged_from(&log, 11), vec![(11, 2, b"new".to_vec())]);
    }

    #[test]
    fn a_log_of_another_node_or_membership_is_refused_by_name() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let fs = disk.fs();
        RaftLog::open(fs.clone(), &dir(), 1, &[1, 2, 3]).unwrap();
        let error = RaftLog::open(fs.clone(), &dir(), 2, &[1, 2, 3]).err().unwrap().to_string();
        assert!(error.contains("/raft/raft.log") && error.contains("node 1") && error.contains("node 2"), "{error}");
        let error = RaftLog::open(fs.clone(), &dir(), 1, &[1, 2]).err().unwrap().to_string();
        assert!(error.contains("[1, 2, 3]"), "{error}");
    }
}
