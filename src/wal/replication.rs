//! The WAL as a replicated byte stream: what a cluster's leader ships and
//! what its followers write.
//!
//! The leader's log is shipped as it is on disk: each group commit's flush
//! is a run of whole sectors, `[start, end)`, which the leader reads back
//! ([`read_wal`]) and proposes to the Raft group. A follower writes each
//! committed run at the same LSNs in its own segments ([`WalCopy`]), so
//! every node holds the same log, in the same format, and backup, archiving
//! and point-in-time recovery work on any of them.
//!
//! [`ReplicationGate`] ties the leader's WAL to the group: a flush returns
//! only once the group has committed what it flushed
//! ([`super::Wal::with_replication`]).
//!
//! A flush's run is shipped as soon as it is written, before or while the
//! leader syncs it: its bytes never change after (the next run starts on
//! the next sector). A commit is acknowledged once the group has committed
//! it, without the leader's own sync: a majority's Raft logs hold the same
//! bytes durably. The gate keeps two points for the group: where it
//! *committed* (a majority's logs hold it, which is all an acknowledgement
//! needs), and where this node has *recorded* that durably (its Raft
//! commit index synced), which pages, checkpoints and the archiver wait
//! for, with the leader's own sync, since a restarted node cuts its WAL
//! back to what it recorded.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::error::WalError;
use super::lsn::Lsn;
use super::segment::WalOptions;
use super::writer::{create_segment, cut_tail};
use crate::env::{File, Fs};

/// Where a leader's WAL is durable locally and on a majority (see the
/// module docs). Shared by the WAL, which publishes its local flushes, and
/// the node's Raft driver, which ships them and publishes what the group
/// committed.
///
/// Waiters are woken through a [`Notify`], not a `watch` channel: tokio's
/// `watch` spreads its waiters over several lists chosen by a generator
/// seeded from a process-wide counter, so the order in which they wake, and
/// with it the simulator's schedule, would differ between two runs of a
/// seed in one process.
#[derive(Debug)]
pub struct ReplicationGate {
    state: Mutex<GateState>,
    changed: Notify,
    /// Woken when the local flush point moves: there is WAL to ship.
    flushed: Notify,
}

#[derive(Debug)]
struct GateState {
    local: Lsn,
    written: Lsn,
    committed: Lsn,
    replicated: Lsn,
    /// The furthest a flush waits to be recorded (pages, checkpoints).
    wanted: Lsn,
    closed: Option<String>,
}

impl ReplicationGate {
    /// A gate for a log whose every byte before `end` the group holds.
    pub fn new(end: Lsn) -> Self {
        let state = GateState { local: end, written: end, committed: end, replicated: end, wanted: end, closed: None };
        Self { state: Mutex::new(state), changed: Notify::new(), flushed: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().expect("gate lock poisoned")
    }

    /// Every byte before this is durable on the leader's disk.
    pub fn local(&self) -> Lsn {
        self.lock().local
    }

    /// Every byte before this is written to the leader's segments in whole
    /// flushes, synced or being synced: what may be shipped.
    pub fn written(&self) -> Lsn {
        self.lock().written
    }

    /// Every byte before this is durable on a majority: a commit before it
    /// may be acknowledged.
    pub fn committed(&self) -> Lsn {
        self.lock().committed
    }

    /// Every byte before this is durable on a majority, and this node has
    /// recorded so durably: what pages and checkpoints may depend on.
    pub fn replicated(&self) -> Lsn {
        self.lock().replicated
    }

    pub(super) fn set_local(&self, lsn: Lsn) {
        let mut state = self.lock();
        if lsn > state.local {
            state.local = lsn;
            if lsn > state.written {
                state.written = lsn;
                self.flushed.notify_one();
            }
        }
    }

    /// A flush's run, ending on a sector boundary at `lsn`, is written; its
    /// sync follows.
    pub(super) fn set_written(&self, lsn: Lsn) {
        let mut state = self.lock();
        if lsn > state.written {
            state.written = lsn;
            self.flushed.notify_one();
        }
    }

    /// Whether a flush waits for this node to record a commit the group
    /// made: the driver then records it at once, instead of with its next
    /// append.
    pub fn recording_wanted(&self) -> bool {
        let state = self.lock();
        state.wanted > state.replicated && state.committed > state.replicated
    }

    /// Resolves once the written point has moved since the last call
    /// resolved (at once if it moved meanwhile), or a flush began to wait
    /// for a commit to be recorded. One task, the one that ships the WAL,
    /// may wait on it.
    pub async fn local_advanced(&self) {
        self.flushed.notified().await;
    }

    /// The group has committed every byte before `lsn` (a majority's logs
    /// hold it), which this node may not have recorded durably yet.
    pub fn set_committed(&self, lsn: Lsn) {
        let mut state = self.lock();
        if lsn > state.committed {
            state.committed = lsn;
            self.changed.notify_waiters();
        }
    }

    /// The group has committed every byte before `lsn`, and this node has
    /// recorded so durably.
    pub fn set_replicated(&self, lsn: Lsn) {
        let mut state = self.lock();
        if lsn > state.replicated {
            state.replicated = lsn;
            state.committed = state.committed.max(lsn);
            self.changed.notify_waiters();
        }
    }

    /// The node no longer leads: every flush waiting for the group, and
    /// every later one, fails with `cause`.
    pub fn close(&self, cause: &str) {
        self.lock().closed.get_or_insert_with(|| cause.to_string());
        self.wake();
    }

    /// Waits until the group holds every byte before `upto` (`recorded`:
    /// and this node has recorded so durably), and returns where it holds
    /// them to. `check` runs first and at every wake-up (the WAL's own
    /// latch).
    pub(super) async fn wait(
        &self,
        upto: Lsn,
        recorded: bool,
        check: impl Fn() -> Result<(), WalError>,
    ) -> Result<Lsn, WalError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so no wake-up is missed.
            notified.as_mut().enable();
            check()?;
            {
                let mut state = self.lock();
                if let Some(cause) = &state.closed {
                    return Err(WalError::Stopped { cause: cause.clone() });
                }
                let held = if recorded { state.replicated } else { state.committed };
                if held >= upto {
                    return Ok(held);
                }
                if recorded && upto > state.wanted {
                    state.wanted = upto;
                    self.flushed.notify_one();
                }
            }
            notified.await;
        }
    }

    /// Wakes the flushes waiting for the group, to look at the WAL's latch.
    pub(super) fn wake(&self) {
        self.changed.notify_waiters();
    }
}

/// Reads the log's bytes in `[from, to)` from its segments, as they are on
/// disk (records, padding, and after a segment switch the unused rest of
/// the segment).
pub fn read_wal(fs: &dyn Fs, opts: &WalOptions, from: Lsn, to: Lsn) -> Result<Vec<u8>, WalError> {
    let mut out = vec![0; to.0.saturating_sub(from.0) as usize];
    let mut pos = from;
    let mut filled = 0;
    while filled < out.len() {
        let (segno, offset) = (opts.segno(pos), opts.offset(pos));
        let take = (out.len() - filled).min((opts.segment_size - offset) as usize);
        let path = opts.path(segno);
        let file = fs.open(&path).map_err(|e| WalError::io("open", &path, e))?;
        file.read_exact_at(&mut out[filled..filled + take], offset).map_err(|e| WalError::io("read", &path, e))?;
        filled += take;
        pos = pos.plus(take as u64);
    }
    Ok(out)
}

/// A follower's writer: puts the leader's bytes at their LSNs in its own
/// segments, creating segments crash-safely as the leader's writer does.
pub struct WalCopy {
    fs: std::sync::Arc<dyn Fs>,
    opts: WalOptions,
    open: BTreeMap<u64, Box<dyn File>>,
}

impl WalCopy {
    /// A writer over the log in `opts`.
    pub fn new(fs: std::sync::Arc<dyn Fs>, opts: WalOptions) -> Self {
        Self { fs, opts, open: BTreeMap::new() }
    }

    /// Writes `bytes` at `start`; not durable until [`sync`](Self::sync).
    pub fn write(&mut self, start: Lsn, bytes: &[u8]) -> Result<(), WalError> {
        let mut pos = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (segno, offset) = (self.opts.segno(pos), self.opts.offset(pos));
            let take = rest.len().min((self.opts.segment_size - offset) as usize);
            let path = self.opts.path(segno);
            let file = match self.open.entry(segno) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let file = match self.fs.open(&path) {
                        Ok(file) => file,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            let dir = &self.opts.dir;
                            self.fs.create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
                            create_segment(self.fs.as_ref(), &self.opts, segno)?
                        }
                        Err(e) => return Err(WalError::io("open", &path, e)),
                    };
                    entry.insert(file)
                }
            };
            file.write_all_at(&rest[..take], offset).map_err(|e| WalError::io("write", &path, e))?;
            rest = &rest[take..];
            pos = pos.plus(take as u64);
        }
        Ok(())
    }

    /// Makes everything written durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        for (segno, file) in std::mem::take(&mut self.open) {
            file.sync_data().map_err(|e| WalError::io("sync", self.opts.path(segno), e))?;
        }
        Ok(())
    }

    /// Durably removes everything from `end` on: the rest of its segment
    /// is zeroed and later segments are deleted. A node that led wrote WAL
    /// the group may never have committed; this drops it before the node
    /// replays or leads again. Returns whether anything was there to cut.
    pub fn cut(&mut self, end: Lsn) -> Result<bool, WalError> {
        self.sync()?;
        cut_tail(self.fs.as_ref(), &self.opts, end, end)
    }
}
