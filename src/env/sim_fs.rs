//! An in-memory disk with a crash and fault model, for deterministic
//! simulation.
//!
//! [`SimDisk`] is the hardware: it outlives crashes. [`SimFs`] is one boot's
//! mounted view of it. After [`SimDisk::crash`], every handle from the old
//! boot fails, as a dead process's would, and [`SimDisk::fs`] mounts the
//! survivors.
//!
//! Each file (inode) keeps two images:
//!
//! - the *live* image, which reads see (the page cache), and
//! - the *durable* image, which is on the media,
//!
//! plus the list of writes and truncations made since its last sync. A sync
//! applies that list to the durable image. A crash applies a fault-model
//! subset of it and throws the live image away. Each directory likewise keeps
//! live and durable entries plus its pending namespace operations, which
//! `sync_dir` makes durable.
//!
//! The model (DESIGN.md, "The simulated disk"):
//!
//! - A crash keeps any subset of unsynced writes (`lose_unsynced`).
//! - A surviving unsynced write may be torn: each 512-byte sector it touches
//!   is old, new or garbage; a file may keep its new size without the data
//!   (`torn_writes`).
//! - Creates, renames and removes survive a crash only if the directory was
//!   synced; without a sync, a crash keeps a prefix of them (`lose_metadata`).
//! - A failed sync drops the dirty data from the durable image, reports EIO
//!   once, and the next sync succeeds: Linux's semantics since 4.13.
//! - EIO on read and write, ENOSPC on growth, short writes, misdirected writes
//!   and bit rot at rest.
//! - A countdown of I/O operations triggers a crash at any boundary; from then
//!   on every operation fails until the disk is rebooted.
//!
//! Every random choice comes from one ChaCha generator seeded by the run's
//! seed, every fault is recorded in the ledger, and every operation is folded
//! into a rolling trace hash, so two runs of a seed can be compared.
//!
//! Simplifications, documented in `docs/simulation.md`: directories are
//! durable once created, and renames stay within one directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::faults::{FaultConfig, FaultKind, LedgerEntry};
use super::seam::{File, Fs};
use crate::probe::Phase;

/// The sector size the disk tears at.
pub const SECTOR_SIZE: u64 = 512;

type InodeId = u64;

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Each sector's durable contents before the last sync that changed it
    /// (what a device that loses an acknowledged write returns).
    previous: BTreeMap<u64, Vec<u8>>,
}

impl Inode {
    /// Remembers the durable contents of every sector `pending` touches,
    /// before a sync applies it.
    fn remember_previous(&mut self, pending: &[Pending]) {
        let mut touched = std::collections::BTreeSet::new();
        for op in pending {
            if let Pending::Write { offset, data } = op {
                let end = offset + data.len() as u64;
                touched.extend(offset / SECTOR_SIZE..end.div_ceil(SECTOR_SIZE));
            }
        }
        for sector in touched {
            let start = (sector * SECTOR_SIZE) as usize;
            let mut old = vec![0; SECTOR_SIZE as usize];
            if let Some(bytes) = self.durable.get(start..) {
                let take = bytes.len().min(old.len());
                old[..take].copy_from_slice(&bytes[..take]);
            }
            self.previous.insert(sector, old);
        }
    }
}

/// How durable data is lost at rest (see [`SimDisk::lose_at_rest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtRestLoss {
    /// The sectors read back as zeroes (firmware returning blank sectors).
    Zeroed,
    /// The sectors read back as they were before the last sync that wrote
    /// them (a lost acknowledged write).
    Stale,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, InodeId),
    Unlink(String),
    Rename { from: String, to: String },
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<String, InodeId>,
    durable: BTreeMap<String, InodeId>,
    pending: Vec<DirOp>,
}

fn apply_dir_op(entries: &mut BTreeMap<String, InodeId>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            entries.remove(name);
        }
        DirOp::Rename { from, to } => {
            if let Some(ino) = entries.remove(from) {
                entries.insert(to.clone(), ino);
            }
        }
    }
}

fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = usize::try_from(offset).expect("offset fits in memory");
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn set_image_len(image: &mut Vec<u8>, len: u64) {
    image.resize(usize::try_from(len).expect("length fits in memory"), 0);
}

struct DiskState {
    rng: ChaCha8Rng,
    faults: FaultConfig,
    boot: u64,
    /// Set when the countdown expires; cleared by a reboot.
    crashed: bool,
    countdown: Option<u64>,
    /// An aimed crash: after this many more operations inside this engine
    /// phase, the machine loses power.
    phase_countdown: Option<(Phase, u64)>,
    /// Aimed sync failures: syncs inside this phase fail at this rate.
    phase_fsync_error: Option<(Phase, f64)>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    dirs: BTreeMap<PathBuf, Dir>,
    ledger: Vec<LedgerEntry>,
    trace_hash: u64,
    trace: DiskTrace,
    ops: u64,
    syncs: u64,
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// Event tags in the trace. Operation events carry `OP_BASE + code`; the
// words after an operation event are its arguments.
const OP_BASE: u64 = 0x0900;
const FAULT_EVENT: u64 = 0xFA17;
const CRASH_EVENT: u64 = 0xC8A5;
const OP_NAMES: [&str; 15] = [
    "?",
    "open",
    "create",
    "rename",
    "remove",
    "list",
    "sync_dir",
    "create_dir_all",
    "exists",
    "?",
    "read",
    "write",
    "set_len",
    "len",
    "sync",
];

/// Every event the disk saw, in order: operations, their arguments, faults
/// and crashes. Two runs of a seed must produce the same trace; when they do
/// not, [`DiskTrace::first_divergence`] says where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskTrace {
    events: Vec<[u64; 4]>,
    names: BTreeMap<u64, PathBuf>,
}

impl DiskTrace {
    /// Events recorded.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The index of the first event where the two traces differ, with both
    /// events described; `None` if they are the same.
    pub fn first_divergence(&self, other: &DiskTrace) -> Option<(usize, String, String)> {
        let index =
            (0..self.events.len().max(other.events.len())).find(|&i| self.events.get(i) != other.events.get(i))?;
        Some((index, self.describe(index), other.describe(index)))
    }

    /// Event `index` in words.
    pub fn describe(&self, index: usize) -> String {
        let Some(event) = self.events.get(index) else { return "end of trace".into() };
        let [tag, a, b, c] = *event;
        match tag {
            FAULT_EVENT => {
                let kind = FaultKind::ALL.iter().find(|k| **k as u64 == a).map_or("?", |k| k.name());
                format!("fault {kind} at offset {b}, {c} bytes")
            }
            CRASH_EVENT => format!("power loss ending boot {a}"),
            tag if (OP_BASE..OP_BASE + OP_NAMES.len() as u64).contains(&tag) => {
                let path = self.names.get(&a).map_or_else(|| format!("path#{a:x}"), |p| p.display().to_string());
                format!("{} {path}", OP_NAMES[(tag - OP_BASE) as usize])
            }
            _ => format!("arguments {tag}, {a}, {b}, {c}"),
        }
    }
}

impl DiskState {
    fn trace(&mut self, words: &[u64]) {
        let mut event = [0u64; 4];
        for (slot, word) in event.iter_mut().zip(words) {
            *slot = *word;
        }
        assert!(words.len() <= event.len(), "trace events have at most 4 words");
        for word in words {
            self.trace_hash = (self.trace_hash ^ word).wrapping_mul(FNV_PRIME);
        }
        self.trace.events.push(event);
    }

    fn record(&mut self, kind: FaultKind, path: &Path, offset: u64, len: u64) {
        crate::probe::fault(kind);
        self.trace(&[FAULT_EVENT, kind as u64, offset, len]);
        self.ledger.push(LedgerEntry { kind, path: path.to_path_buf(), offset, len, boot: self.boot });
    }

    fn chance(&mut self, rate_of: fn(&FaultConfig) -> f64) -> bool {
        let rate = rate_of(&self.faults);
        rate > 0.0 && self.rng.random_bool(rate.min(1.0))
    }

    /// Counts one I/O operation against the crash countdown. Returns an error
    /// if the machine is down, or goes down now.
    fn begin_op(&mut self, code: u64, path: &Path) -> io::Result<()> {
        self.ops += 1;
        let path_hash = hash_path(path);
        self.trace.names.entry(path_hash).or_insert_with(|| path.to_path_buf());
        self.trace(&[OP_BASE + code, path_hash]);
        if self.crashed {
            return Err(crashed_error());
        }
        let mut crash = false;
        if let Some(left) = self.countdown.as_mut() {
            crash = *left == 0;
            *left = left.saturating_sub(1);
        }
        if let Some((phase, left)) = self.phase_countdown.as_mut() {
            if *phase == crate::probe::current_phase() {
                crash |= *left == 0;
                *left = left.saturating_sub(1);
            }
        }
        if crash {
            self.crashed = true;
            self.countdown = None;
            self.phase_countdown = None;
            self.record(FaultKind::Crash, path, 0, 0);
            return Err(crashed_error());
        }
        Ok(())
    }

    /// Whether a sync fails now: at the configured rate, or at the aimed
    /// rate inside the aimed phase.
    fn sync_fails(&mut self) -> bool {
        let aimed = match self.phase_fsync_error {
            Some((phase, rate)) if phase == crate::probe::current_phase() => rate,
            _ => 0.0,
        };
        self.chance(|f| f.fsync_error_rate) || (aimed > 0.0 && self.rng.random_bool(aimed.min(1.0)))
    }

    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: no file name", path.display())))?;
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((parent, name.to_string_lossy().into_owned()))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no such directory", dir.display())))
    }

    fn lookup(&self, path: &Path) -> io::Result<InodeId> {
        let (dir, name) = Self::split(path)?;
        self.dirs
            .get(&dir)
            .and_then(|d| d.live.get(&name).copied())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display())))
    }

    fn path_of(&self, ino: InodeId) -> PathBuf {
        for (dir, entries) in &self.dirs {
            if let Some((name, _)) = entries.live.iter().find(|(_, i)| **i == ino) {
                return dir.join(name);
            }
        }
        PathBuf::from(format!("<unlinked inode {ino}>"))
    }

    /// Applies a crash to one inode's pending operations; returns its new
    /// durable (and live) image.
    fn crash_inode(&mut self, ino: InodeId) {
        let path = self.path_of(ino);
        let inode = self.inodes.get_mut(&ino).expect("inode exists");
        let pending = std::mem::take(&mut inode.pending);
        inode.remember_previous(&pending);
        let mut image = std::mem::take(&mut inode.durable);
        for op in pending {
            let keep = !self.faults.lose_unsynced || self.rng.random_bool(0.5);
            match op {
                Pending::SetLen(len) => {
                    if keep {
                        set_image_len(&mut image, len);
                    } else {
                        self.record(FaultKind::LostWrite, &path, len, 0);
                    }
                }
                Pending::Write { offset, data } if keep => {
                    if self.faults.torn_writes {
                        self.tear_write(&path, &mut image, offset, &data);
                    } else {
                        apply_write(&mut image, offset, &data);
                    }
                }
                Pending::Write { offset, data } => {
                    self.record(FaultKind::LostWrite, &path, offset, data.len() as u64);
                    let end = offset + data.len() as u64;
                    if self.faults.torn_writes && end > image.len() as u64 && self.rng.random_bool(0.3) {
                        self.record(FaultKind::SizeWithoutData, &path, image.len() as u64, end - image.len() as u64);
                        set_image_len(&mut image, end);
                    }
                }
            }
        }
        let inode = self.inodes.get_mut(&ino).expect("inode exists");
        inode.live = image.clone();
        inode.durable = image;
    }

    /// Lands a surviving unsynced write sector by sector: mostly new, some
    /// old, a few garbage.
    fn tear_write(&mut self, path: &Path, image: &mut Vec<u8>, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let mut sector_start = offset - offset % SECTOR_SIZE;
        let old_len = image.len() as u64;
        if image.len() < end as usize {
            image.resize(end as usize, 0);
        }
        while sector_start < end {
            let lo = sector_start.max(offset);
            let hi = (sector_start + SECTOR_SIZE).min(end);
            let roll = self.rng.random_range(0..100u32);
            // New, old and garbage in the proportions 80 : 13 : 7 unless the
            // garbage share is raised.
            let garbage_from = 100 - self.faults.torn_garbage_percent.min(100);
            let old_from = 80 * garbage_from / 93;
            let range = lo as usize..hi as usize;
            let src = &data[(lo - offset) as usize..(hi - offset) as usize];
            if roll < old_from {
                image[range].copy_from_slice(src);
            } else if roll < garbage_from {
                // Old data: what was there before, or zeroes past the old end.
                self.record(FaultKind::TornSectorOld, path, lo, hi - lo);
                if hi > old_len {
                    image[(lo.max(old_len)) as usize..hi as usize].fill(0);
                }
            } else {
                // The whole sector is rewritten by the device, so garbage
                // covers all of it, including bytes the write did not touch.
                let whole = sector_start as usize..((sector_start + SECTOR_SIZE) as usize).min(image.len());
                self.record(FaultKind::TornSectorGarbage, path, whole.start as u64, (whole.end - whole.start) as u64);
                self.rng.fill_bytes(&mut image[whole]);
            }
            sector_start += SECTOR_SIZE;
        }
    }
}

fn hash_path(path: &Path) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// What an operation cut by the simulated power loss fails with.
pub const CRASH_MESSAGE: &str = "simulated crash: the machine lost power";

fn crashed_error() -> io::Error {
    io::Error::other(CRASH_MESSAGE)
}

fn injected(kind: FaultKind, path: &Path) -> io::Error {
    let (error_kind, what) = match kind {
        FaultKind::NoSpace => (io::ErrorKind::StorageFull, "no space left on device (ENOSPC)"),
        _ => (io::ErrorKind::Other, "input/output error (EIO)"),
    };
    io::Error::new(error_kind, format!("{}: {what} [injected {kind}]", path.display()))
}

/// The simulated machine's disk. Cloning shares the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    /// A blank disk whose every fault is drawn from `seed`.
    pub fn new(seed: u64, faults: FaultConfig) -> Self {
        let state = DiskState {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            boot: 0,
            crashed: false,
            countdown: None,
            phase_countdown: None,
            phase_fsync_error: None,
            inodes: BTreeMap::new(),
            next_inode: 1,
            dirs: BTreeMap::from([(PathBuf::from("/"), Dir::default()), (PathBuf::new(), Dir::default())]),
            ledger: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: DiskTrace::default(),
            ops: 0,
            syncs: 0,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().expect("sim disk lock poisoned")
    }

    /// The file system of the current boot.
    pub fn fs(&self) -> Arc<SimFs> {
        let boot = self.lock().boot;
        Arc::new(SimFs { disk: self.clone(), boot })
    }

    /// Replaces the fault configuration (e.g. to stop faults for a final
    /// liveness phase).
    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    /// Crash after `ops` more I/O operations (`None` disarms).
    pub fn set_crash_countdown(&self, ops: Option<u64>) {
        self.lock().countdown = ops;
    }

    /// Crash after `ops` more I/O operations performed inside engine phase
    /// `phase` (an aimed crash, e.g. between a tail cut's removals and its
    /// directory sync); disarmed by any crash.
    pub fn set_crash_in_phase(&self, phase: Phase, ops: u64) {
        self.lock().phase_countdown = Some((phase, ops));
    }

    /// Syncs inside engine phase `phase` fail at `rate` (aimed sync errors,
    /// e.g. a data-file sync during a checkpoint's flush); `None` disarms.
    pub fn set_phase_fsync_error(&self, aimed: Option<(Phase, f64)>) {
        self.lock().phase_fsync_error = aimed;
    }

    /// The names in `dir` as the media holds them: what a crash now would
    /// leave (no I/O; for checkers).
    pub fn durable_names(&self, dir: &Path) -> Vec<String> {
        self.lock().dirs.get(dir).map(|d| d.durable.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether the countdown has expired and the machine is down.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Loses power and reboots: applies the crash faults to everything not
    /// yet durable, invalidates every handle of the old boot, and returns the
    /// number of the new boot.
    pub fn crash(&self) -> u64 {
        let mut state = self.lock();
        let state = &mut *state;
        state.trace(&[CRASH_EVENT, state.boot]);
        // Namespace first: decide which entries survive.
        let dir_paths: Vec<PathBuf> = state.dirs.keys().cloned().collect();
        for dir_path in dir_paths {
            let lose = state.faults.lose_metadata;
            let dir = state.dirs.get_mut(&dir_path).expect("dir exists");
            let pending = std::mem::take(&mut dir.pending);
            let keep =
                if lose && !pending.is_empty() { state.rng.random_range(0..=pending.len()) } else { pending.len() };
            let dir = state.dirs.get_mut(&dir_path).expect("dir exists");
            for op in &pending[..keep] {
                apply_dir_op(&mut dir.durable, op);
            }
            dir.live = dir.durable.clone();
            for _ in keep..pending.len() {
                state.record(FaultKind::LostMetadata, &dir_path, 0, 0);
            }
        }
        // Then data: unreachable inodes are gone, the rest crash.
        let reachable: std::collections::BTreeSet<InodeId> =
            state.dirs.values().flat_map(|d| d.durable.values().copied()).collect();
        state.inodes.retain(|ino, _| reachable.contains(ino));
        let inodes: Vec<InodeId> = state.inodes.keys().copied().collect();
        for ino in inodes {
            state.crash_inode(ino);
        }
        state.crashed = false;
        state.countdown = None;
        state.phase_countdown = None;
        state.boot += 1;
        state.boot
    }

    /// Flips `count` random bits in the durable data of randomly chosen
    /// non-empty files whose names satisfy `filter`, as bit rot at rest.
    pub fn rot(&self, count: usize, filter: impl Fn(&Path) -> bool) -> usize {
        let mut state = self.lock();
        let state = &mut *state;
        let candidates: Vec<(PathBuf, InodeId)> = state
            .dirs
            .iter()
            .flat_map(|(dir, d)| d.live.iter().map(move |(name, ino)| (dir.join(name), *ino)))
            .filter(|(path, ino)| filter(path) && !state.inodes[ino].durable.is_empty())
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        for _ in 0..count {
            let (path, ino) = candidates[state.rng.random_range(0..candidates.len())].clone();
            let inode = state.inodes.get_mut(&ino).expect("inode exists");
            let len = inode.durable.len();
            let at = state.rng.random_range(0..len);
            let bit = 1u8 << state.rng.random_range(0..8);
            let inode = state.inodes.get_mut(&ino).expect("inode exists");
            inode.durable[at] ^= bit;
            if inode.live.len() > at {
                inode.live[at] ^= bit;
            }
            state.record(FaultKind::BitRot, &path, at as u64, 1);
        }
        count
    }

    /// Flips one random bit of the byte at `offset` in the durable data of
    /// `path`, as bit rot at rest. Returns false if there is no such byte.
    pub fn rot_at(&self, path: &Path, offset: u64) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        let Ok((dir, name)) = DiskState::split(path) else { return false };
        let Some(ino) = state.dirs.get(&dir).and_then(|d| d.durable.get(&name)).copied() else { return false };
        let at = offset as usize;
        if state.inodes[&ino].durable.len() <= at {
            return false;
        }
        let bit = 1u8 << state.rng.random_range(0..8);
        let inode = state.inodes.get_mut(&ino).expect("inode exists");
        inode.durable[at] ^= bit;
        if inode.live.len() > at {
            inode.live[at] ^= bit;
        }
        state.record(FaultKind::BitRot, path, offset, 1);
        true
    }

    /// Loses `sectors` whole sectors of the durable data of `path`, from the
    /// one holding `offset`, as a device can after acknowledging a sync:
    /// they read back as zeroes, or as their contents before the last sync
    /// that changed them. Only sectors inside the file are touched. Recorded
    /// in the ledger as `zeroed_at_rest` or `stale_at_rest`. Returns false if
    /// there is no such file or byte.
    pub fn lose_at_rest(&self, path: &Path, offset: u64, sectors: u64, loss: AtRestLoss) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        let Ok((dir, name)) = DiskState::split(path) else { return false };
        let Some(ino) = state.dirs.get(&dir).and_then(|d| d.durable.get(&name)).copied() else { return false };
        let len = state.inodes[&ino].durable.len() as u64;
        if offset >= len {
            return false;
        }
        let first = offset / SECTOR_SIZE;
        let last = (first + sectors).min(len.div_ceil(SECTOR_SIZE));
        let inode = state.inodes.get_mut(&ino).expect("inode exists");
        for sector in first..last {
            let start = (sector * SECTOR_SIZE) as usize;
            let end = (start + SECTOR_SIZE as usize).min(inode.durable.len());
            let zeroes = vec![0; SECTOR_SIZE as usize];
            let old = match loss {
                AtRestLoss::Zeroed => &zeroes,
                AtRestLoss::Stale => inode.previous.get(&sector).unwrap_or(&zeroes),
            };
            inode.durable[start..end].copy_from_slice(&old[..end - start]);
            if inode.live.len() >= end {
                inode.live[start..end].copy_from_slice(&old[..end - start]);
            }
        }
        let kind = match loss {
            AtRestLoss::Zeroed => FaultKind::ZeroedAtRest,
            AtRestLoss::Stale => FaultKind::StaleAtRest,
        };
        let start = first * SECTOR_SIZE;
        state.record(kind, path, start, (last * SECTOR_SIZE).min(len) - start);
        true
    }

    /// Faults injected so far, counted by kind.
    pub fn fault_counts(&self) -> BTreeMap<FaultKind, u64> {
        self.lock().ledger.iter().fold(BTreeMap::new(), |mut counts, entry| {
            *counts.entry(entry.kind).or_insert(0) += 1;
            counts
        })
    }

    /// Every fault injected so far, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.lock().ledger.clone()
    }

    /// Every event so far (see [`DiskTrace`]).
    pub fn trace(&self) -> DiskTrace {
        self.lock().trace.clone()
    }

    /// A rolling hash of every operation and fault so far.
    pub fn trace_hash(&self) -> u64 {
        self.lock().trace_hash
    }

    /// I/O operations performed so far (the crash countdown's unit).
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Successful file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// The durable bytes of a file, as a crash now would find them before
    /// crash faults (for tests and checkers).
    pub fn durable_image(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let (dir, name) = DiskState::split(path).ok()?;
        let ino = state.dirs.get(&dir)?.durable.get(&name)?;
        Some(state.inodes[ino].durable.clone())
    }
}

/// One boot's view of a [`SimDisk`].
pub struct SimFs {
    disk: SimDisk,
    boot: u64,
}

impl SimFs {
    /// The disk this file system lives on.
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }

    fn state(&self, code: u64, path: &Path) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.disk.lock();
        if state.boot != self.boot {
            return Err(io::Error::other(format!("{}: stale handle from before a crash", path.display())));
        }
        state.begin_op(code, path)?;
        Ok(state)
    }

    fn handle(&self, ino: InodeId, path: &Path) -> Box<dyn File> {
        Box::new(SimFile { disk: self.disk.clone(), boot: self.boot, ino, path: path.to_path_buf() })
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let mut state = self.state(1, path)?;
        let ino = state.lookup(path)?;
        if state.chance(|f| f.open_error_rate) {
            state.record(FaultKind::OpenError, path, 0, 0);
            return Err(injected(FaultKind::OpenError, path));
        }
        Ok(self.handle(ino, path))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let mut state = self.state(2, path)?;
        let (dir, name) = DiskState::split(path)?;
        if state.dir_mut(&dir)?.live.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: file exists", path.display())));
        }
        let ino = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(ino, Inode::default());
        let dir = state.dir_mut(&dir)?;
        dir.live.insert(name.clone(), ino);
        dir.pending.push(DirOp::Link(name, ino));
        Ok(self.handle(ino, path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state(3, from)?;
        let (from_dir, from_name) = DiskState::split(from)?;
        let (to_dir, to_name) = DiskState::split(to)?;
        if from_dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rename {} -> {}: not in the same directory", from.display(), to.display()),
            ));
        }
        state.lookup(from)?;
        let dir = state.dir_mut(&from_dir)?;
        let op = DirOp::Rename { from: from_name, to: to_name };
        apply_dir_op(&mut dir.live, &op);
        dir.pending.push(op);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state(4, path)?;
        state.lookup(path)?;
        let (dir, name) = DiskState::split(path)?;
        let dir = state.dir_mut(&dir)?;
        dir.live.remove(&name);
        dir.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.state(5, dir)?;
        Ok(state.dir_mut(dir)?.live.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state(6, dir)?;
        let entry = state.dir_mut(dir)?;
        entry.durable = entry.live.clone();
        entry.pending.clear();
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state(7, dir)?;
        for ancestor in dir.ancestors() {
            state.dirs.entry(ancestor.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.state(8, path)?;
        Ok(state.dirs.contains_key(path) || state.lookup(path).is_ok())
    }
}

struct SimFile {
    disk: SimDisk,
    boot: u64,
    ino: InodeId,
    path: PathBuf,
}

impl SimFile {
    fn state(&self, code: u64) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.disk.lock();
        if state.boot != self.boot {
            return Err(io::Error::other(format!("{}: stale handle from before a crash", self.path.display())));
        }
        state.begin_op(code, &self.path)?;
        if !state.inodes.contains_key(&self.ino) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: file was removed", self.path.display())));
        }
        Ok(state)
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state(14)?;
        if state.sync_fails() {
            // Linux: the dirty pages are marked clean and their data never
            // reaches the media; the error is reported once.
            let inode = state.inodes.get_mut(&self.ino).expect("inode exists");
            let dropped = std::mem::take(&mut inode.pending);
            let bytes =
                dropped.iter().map(|op| if let Pending::Write { data, .. } = op { data.len() as u64 } else { 0 }).sum();
            state.record(FaultKind::FsyncError, &self.path, 0, bytes);
            return Err(injected(FaultKind::FsyncError, &self.path));
        }
        let misdirect = state.chance(|f| f.misdirected_write_rate);
        let inode = state.inodes.get_mut(&self.ino).expect("inode exists");
        let pending = std::mem::take(&mut inode.pending);
        inode.remember_previous(&pending);
        let mut misdirected = None;
        for (index, op) in pending.into_iter().enumerate() {
            match op {
                Pending::SetLen(len) => set_image_len(&mut inode.durable, len),
                Pending::Write { offset, data } if misdirect && index == 0 => {
                    // The device writes the first block somewhere else.
                    let wrong = offset + SECTOR_SIZE * 8;
                    apply_write(&mut inode.durable, wrong, &data);
                    misdirected = Some((offset, data.len() as u64));
                }
                Pending::Write { offset, data } => apply_write(&mut inode.durable, offset, &data),
            }
        }
        if let Some((offset, len)) = misdirected {
            state.record(FaultKind::MisdirectedWrite, &self.path, offset, len);
        }
        state.syncs += 1;
        Ok(())
    }
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.state(10)?;
        state.trace(&[offset, buf.len() as u64]);
        if state.chance(|f| f.read_error_rate) {
            state.record(FaultKind::ReadError, &self.path, offset, buf.len() as u64);
            return Err(injected(FaultKind::ReadError, &self.path));
        }
        let live = &state.inodes[&self.ino].live;
        let Ok(start) = usize::try_from(offset) else { return Ok(0) };
        if start >= live.len() {
            return Ok(0);
        }
        let count = buf.len().min(live.len() - start);
        buf[..count].copy_from_slice(&live[start..start + count]);
        Ok(count)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut state = self.state(11)?;
        state.trace(&[offset, buf.len() as u64, u64::from(crc32fast::hash(buf))]);
        if state.chance(|f| f.write_error_rate) {
            state.record(FaultKind::WriteError, &self.path, offset, buf.len() as u64);
            return Err(injected(FaultKind::WriteError, &self.path));
        }
        let grows = offset + buf.len() as u64 > state.inodes[&self.ino].live.len() as u64;
        if grows && state.chance(|f| f.no_space_rate) {
            state.record(FaultKind::NoSpace, &self.path, offset, buf.len() as u64);
            return Err(injected(FaultKind::NoSpace, &self.path));
        }
        let mut count = buf.len();
        if count > 1 && state.chance(|f| f.short_write_rate) {
            count = state.rng.random_range(1..count);
            state.record(FaultKind::ShortWrite, &self.path, offset, count as u64);
        }
        let inode = state.inodes.get_mut(&self.ino).expect("inode exists");
        apply_write(&mut inode.live, offset, &buf[..count]);
        inode.pending.push(Pending::Write { offset, data: buf[..count].to_vec() });
        Ok(count)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state(12)?;
        state.trace(&[len]);
        let inode = state.inodes.get_mut(&self.ino).expect("inode exists");
        set_image_len(&mut inode.live, len);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.state(13)?;
        Ok(state.inodes[&self.ino].live.len() as u64)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/db")
    }

    fn disk(faults: FaultConfig) -> (SimDisk, Arc<SimFs>) {
        let disk = SimDisk::new(7, faults);
        let fs = disk.fs();
        fs.create_dir_all(&dir()).unwrap();
        (disk, fs)
    }

    fn read_all(fs: &SimFs, path: &Path) -> Vec<u8> {
        let file = fs.open(path).unwrap();
        let mut buf = vec![0; file.len().unwrap() as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    fn count(disk: &SimDisk, kind: FaultKind) -> usize {
        disk.ledger().iter().filter(|e| e.kind == kind).count()
    }

    #[test]
    fn synced_data_and_synced_names_survive_a_crash() {
        let (disk, fs) = disk(FaultConfig::power_loss());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        file.write_all_at(b"durable", 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        disk.crash();
        assert_eq!(read_all(&disk.fs(), &path), b"durable");
    }

    #[test]
    fn a_created_file_is_gone_after_a_crash_unless_its_directory_was_synced() {
        let (disk, fs) = disk(FaultConfig::power_loss());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        file.write_all_at(b"data", 0).unwrap();
        file.sync_data().unwrap();
        // The metadata op may survive as a prefix; with one op the prefix is
        // all or nothing, so try seeds until it is lost at least once.
        let mut lost = false;
        for seed in 0..32 {
            let disk = SimDisk::new(seed, FaultConfig::power_loss());
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let file = fs.create(&path).unwrap();
            file.write_all_at(b"data", 0).unwrap();
            file.sync_data().unwrap();
            disk.crash();
            lost |= !disk.fs().exists(&path).unwrap();
        }
        assert!(lost, "an unsynced create must be losable");
        drop(file);
        fs.sync_dir(&dir()).unwrap();
        disk.crash();
        assert!(disk.fs().exists(&path).unwrap(), "a synced create survives");
    }

    #[test]
    fn a_renamed_file_keeps_its_old_name_after_a_crash_unless_the_directory_was_synced() {
        for seed in 0..32 {
            let disk = SimDisk::new(seed, FaultConfig::power_loss());
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let (tmp, fin) = (dir().join("tmp"), dir().join("final"));
            let file = fs.create(&tmp).unwrap();
            file.write_all_at(b"x", 0).unwrap();
            file.sync_data().unwrap();
            fs.sync_dir(&dir()).unwrap();
            fs.rename(&tmp, &fin).unwrap();
            disk.crash();
            let fs = disk.fs();
            let renamed = fs.exists(&fin).unwrap();
            assert_ne!(renamed, fs.exists(&tmp).unwrap(), "a rename is atomic: exactly one name survives");
            if !renamed {
                return;
            }
        }
        panic!("an unsynced rename was never lost in 32 seeds");
    }

    #[test]
    fn a_crash_keeps_any_subset_of_unsynced_writes() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new(seed, FaultConfig { lose_unsynced: true, ..FaultConfig::none() });
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let path = dir().join("f");
            let file = fs.create(&path).unwrap();
            file.set_len(3 * SECTOR_SIZE).unwrap();
            file.sync_data().unwrap();
            fs.sync_dir(&dir()).unwrap();
            for block in 0..3u64 {
                file.write_all_at(&[block as u8 + 1; SECTOR_SIZE as usize], block * SECTOR_SIZE).unwrap();
            }
            disk.crash();
            let image = read_all(&disk.fs(), &path);
            let kept: Vec<bool> = (0..3).map(|b| image[b * SECTOR_SIZE as usize] != 0).collect();
            outcomes.insert(kept);
        }
        // Not just prefixes: e.g. the third write kept while the first was lost.
        assert!(outcomes.contains(&vec![false, false, true]), "saw only {outcomes:?}");
        assert!(outcomes.contains(&vec![true, false, true]), "saw only {outcomes:?}");
        assert_eq!(outcomes.len(), 8, "every subset is possible: {outcomes:?}");
    }

    #[test]
    fn a_process_kill_keeps_every_write() {
        let (disk, fs) = disk(FaultConfig::none());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        file.write_all_at(b"kept by the kernel", 0).unwrap();
        disk.crash();
        assert_eq!(read_all(&disk.fs(), &path), b"kept by the kernel");
    }

    #[test]
    fn torn_writes_leave_each_sector_old_new_or_garbage() {
        let mut seen_old = false;
        let mut seen_garbage = false;
        for seed in 0..16 {
            let disk = SimDisk::new(seed, FaultConfig { torn_writes: true, ..FaultConfig::none() });
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let path = dir().join("f");
            let file = fs.create(&path).unwrap();
            let sectors = 16u64;
            file.write_all_at(&vec![0xAA; (sectors * SECTOR_SIZE) as usize], 0).unwrap();
            file.sync_data().unwrap();
            fs.sync_dir(&dir()).unwrap();
            file.write_all_at(&vec![0xBB; (sectors * SECTOR_SIZE) as usize], 0).unwrap();
            disk.crash();
            let image = read_all(&disk.fs(), &path);
            for sector in image.chunks(SECTOR_SIZE as usize) {
                let old = sector.iter().all(|b| *b == 0xAA);
                let new = sector.iter().all(|b| *b == 0xBB);
                seen_old |= old;
                seen_garbage |= !old && !new;
            }
            let torn = count(&disk, FaultKind::TornSectorOld) + count(&disk, FaultKind::TornSectorGarbage);
            let changed = image.chunks(SECTOR_SIZE as usize).filter(|s| !s.iter().all(|b| *b == 0xBB)).count();
            assert_eq!(torn, changed, "every torn sector is in the ledger");
        }
        assert!(seen_old && seen_garbage);
    }

    #[test]
    fn a_file_can_keep_its_new_size_without_its_data() {
        for seed in 0..64 {
            let disk = SimDisk::new(seed, FaultConfig::power_loss());
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let path = dir().join("f");
            let file = fs.create(&path).unwrap();
            fs.sync_dir(&dir()).unwrap();
            file.write_all_at(&[0x55; 1024], 0).unwrap();
            disk.crash();
            if count(&disk, FaultKind::SizeWithoutData) > 0 {
                assert_eq!(read_all(&disk.fs(), &path), vec![0; 1024]);
                return;
            }
        }
        panic!("size-without-data never happened in 64 seeds");
    }

    #[test]
    fn a_failed_fsync_drops_the_data_reports_once_and_the_retry_lies() {
        let (disk, fs) = disk(FaultConfig { lose_unsynced: true, ..FaultConfig::none() });
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        fs.sync_dir(&dir()).unwrap();
        file.write_all_at(b"lost", 0).unwrap();
        disk.set_faults(FaultConfig { fsync_error_rate: 1.0, ..FaultConfig::none() });
        let err = file.sync_data().unwrap_err();
        assert!(err.to_string().contains("/db/f"), "the error names the file: {err}");
        disk.set_faults(FaultConfig { lose_unsynced: true, ..FaultConfig::none() });
        file.sync_data().expect("the next fsync reports success, as Linux does");
        // The page cache still shows the data, but the media never got it.
        assert_eq!(read_all(&fs, &path), b"lost");
        disk.crash();
        assert!(read_all(&disk.fs(), &path).is_empty(), "the data is gone after the crash");
        assert_eq!(count(&disk, FaultKind::FsyncError), 1);
    }

    #[test]
    fn io_errors_short_writes_and_no_space_are_reported() {
        let (disk, fs) = disk(FaultConfig::none());
        let file = fs.create(&dir().join("f")).unwrap();
        disk.set_faults(FaultConfig { short_write_rate: 1.0, ..FaultConfig::none() });
        let written = file.write_at(&[1; 100], 0).unwrap();
        assert!(written < 100, "a short write");
        file.write_all_at(&[1; 100], 0).expect("write_all_at loops over short writes");
        disk.set_faults(FaultConfig { no_space_rate: 1.0, ..FaultConfig::none() });
        assert_eq!(file.write_at(&[1; 10], 1000).unwrap_err().kind(), io::ErrorKind::StorageFull);
        file.write_all_at(&[2; 10], 0).expect("overwriting in place needs no space");
        disk.set_faults(FaultConfig { read_error_rate: 1.0, write_error_rate: 1.0, ..FaultConfig::none() });
        assert!(file.read_at(&mut [0; 4], 0).is_err());
        assert!(file.write_at(&[0; 4], 0).is_err());
        for kind in [FaultKind::ShortWrite, FaultKind::NoSpace, FaultKind::ReadError, FaultKind::WriteError] {
            assert!(count(&disk, kind) >= 1, "{kind} is in the ledger");
        }
    }

    #[test]
    fn bit_rot_and_misdirected_writes_change_the_media_and_are_recorded() {
        let (disk, fs) = disk(FaultConfig::none());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        fs.sync_dir(&dir()).unwrap();
        file.write_all_at(&[0; 8192], 0).unwrap();
        file.sync_data().unwrap();
        assert_eq!(disk.rot(1, |_| true), 1);
        let rotten = disk.ledger().last().cloned().unwrap();
        assert_eq!(rotten.kind, FaultKind::BitRot);
        assert_ne!(disk.durable_image(&path).unwrap()[rotten.offset as usize], 0);

        disk.set_faults(FaultConfig { misdirected_write_rate: 1.0, ..FaultConfig::none() });
        file.write_all_at(&[9; 512], 0).unwrap();
        file.sync_data().unwrap();
        let image = disk.durable_image(&path).unwrap();
        assert_ne!(image[0], 9, "the intended place was not written");
        assert_eq!(image[8 * SECTOR_SIZE as usize], 9, "another place was");
        assert_eq!(count(&disk, FaultKind::MisdirectedWrite), 1);
    }

    #[test]
    fn the_countdown_crashes_at_an_io_boundary_and_stales_old_handles() {
        let (disk, fs) = disk(FaultConfig::none());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        fs.sync_dir(&dir()).unwrap();
        disk.set_crash_countdown(Some(2));
        file.write_all_at(b"a", 0).unwrap();
        file.write_all_at(b"b", 1).unwrap();
        assert!(file.write_all_at(b"c", 2).is_err(), "the third operation hits the crash");
        assert!(disk.is_crashed());
        assert!(file.sync_data().is_err(), "nothing works until the reboot");
        disk.crash();
        assert!(file.len().is_err(), "handles from before the crash are stale");
        assert_eq!(read_all(&disk.fs(), &path), b"ab");
    }

    #[test]
    fn the_first_diverging_event_is_named() {
        let run = |sync_first: bool| {
            let disk = SimDisk::new(3, FaultConfig::none());
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let file = fs.create(&dir().join("f")).unwrap();
            if sync_first {
                file.sync_data().unwrap();
            }
            file.write_all_at(b"x", 0).unwrap();
            disk.trace()
        };
        let (one, two) = (run(false), run(true));
        assert_eq!(one.first_divergence(&one.clone()), None);
        let (index, left, right) = one.first_divergence(&two).expect("the runs differ");
        assert_eq!((left.as_str(), right.as_str()), ("write /db/f", "sync /db/f"), "at event {index}");
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let run = |seed| {
            let disk = SimDisk::new(seed, FaultConfig::power_loss());
            let fs = disk.fs();
            fs.create_dir_all(&dir()).unwrap();
            let file = fs.create(&dir().join("f")).unwrap();
            for i in 0..20u64 {
                file.write_all_at(&[i as u8; 700], i * 300).unwrap();
            }
            disk.crash();
            (disk.trace_hash(), disk.ledger())
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1).0, run(2).0);
    }

    #[test]
    fn synced_sectors_can_read_back_as_zeroes_or_as_before_their_last_sync() {
        let (disk, fs) = disk(FaultConfig::none());
        let path = dir().join("f");
        let file = fs.create(&path).unwrap();
        file.write_all_at(&[1; 1536], 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(&[2; 1024], 512).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        disk.crash();

        // Sector 1 goes back to its contents before the second sync; sector
        // 2 to its first write's; sector 0, never rewritten, to zeroes (what
        // it held before its first sync).
        assert!(disk.lose_at_rest(&path, 600, 2, AtRestLoss::Stale));
        let fs = disk.fs();
        let bytes = read_all(&fs, &path);
        assert_eq!(&bytes[..512], &[1; 512][..], "untouched");
        assert_eq!(&bytes[512..1536], &[1; 1024][..], "as before the last sync");
        assert!(disk.lose_at_rest(&path, 0, 1, AtRestLoss::Stale));
        assert_eq!(&read_all(&disk.fs(), &path)[..512], &[0; 512][..], "before its first sync: nothing");

        assert!(disk.lose_at_rest(&path, 1535, 8, AtRestLoss::Zeroed), "clipped to the file");
        let bytes = read_all(&disk.fs(), &path);
        assert_eq!(bytes.len(), 1536, "the size is kept");
        assert_eq!(&bytes[1024..], &[0; 512][..]);
        assert!(!disk.lose_at_rest(&path, 1536, 1, AtRestLoss::Zeroed), "past the end");

        let kinds: Vec<(FaultKind, u64, u64)> = disk.ledger().iter().map(|e| (e.kind, e.offset, e.len)).collect();
        assert_eq!(
            kinds,
            [
                (FaultKind::StaleAtRest, 512, 1024),
                (FaultKind::StaleAtRest, 0, 512),
                (FaultKind::ZeroedAtRest, 1024, 512)
            ]
        );
    }
}
