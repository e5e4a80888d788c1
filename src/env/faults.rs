//! What the simulated disk may do wrong, and the ledger of what it did.
//!
//! Each seed switches every fault kind on or off independently (swarm
//! testing: a run with only a few kinds on reaches states a run with all of
//! them on would mask). Every injected fault is appended to the ledger, so a
//! checker can tell a corruption that was detected or repaired from one that
//! slipped through.

use std::fmt;
use std::path::PathBuf;

use rand::Rng;

/// One kind of fault the simulated disk can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// An unsynced write was dropped by a crash.
    LostWrite,
    /// A 512-byte sector of an unsynced write reached the media as old data.
    TornSectorOld,
    /// A 512-byte sector of an unsynced write reached the media as garbage.
    TornSectorGarbage,
    /// A file's size grew on the media but its data did not arrive (zeroes).
    SizeWithoutData,
    /// A create, rename or remove was lost because its directory was not synced.
    LostMetadata,
    /// A sync failed with EIO and dropped the dirty data (Linux semantics).
    FsyncError,
    /// A read failed with EIO.
    ReadError,
    /// A write failed with EIO.
    WriteError,
    /// Opening an existing file failed with EIO.
    OpenError,
    /// A write that grew a file failed with ENOSPC.
    NoSpace,
    /// A write wrote fewer bytes than asked.
    ShortWrite,
    /// A bit flipped at rest.
    BitRot,
    /// A write reached the media at the wrong offset.
    MisdirectedWrite,
    /// Durable sectors read back as zeroes.
    ZeroedAtRest,
    /// Durable sectors read back as their contents before the last sync
    /// that wrote them (an acknowledged write lost).
    StaleAtRest,
    /// The crash countdown expired: the machine lost power mid-operation.
    Crash,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::LostWrite,
        FaultKind::TornSectorOld,
        FaultKind::TornSectorGarbage,
        FaultKind::SizeWithoutData,
        FaultKind::LostMetadata,
        FaultKind::FsyncError,
        FaultKind::ReadError,
        FaultKind::WriteError,
        FaultKind::OpenError,
        FaultKind::NoSpace,
        FaultKind::ShortWrite,
        FaultKind::BitRot,
        FaultKind::MisdirectedWrite,
        FaultKind::ZeroedAtRest,
        FaultKind::StaleAtRest,
        FaultKind::Crash,
    ];

    /// A stable snake_case name, used in summaries and probe names.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LostWrite => "lost_write",
            FaultKind::TornSectorOld => "torn_sector_old",
            FaultKind::TornSectorGarbage => "torn_sector_garbage",
            FaultKind::SizeWithoutData => "size_without_data",
            FaultKind::LostMetadata => "lost_metadata",
            FaultKind::FsyncError => "fsync_error",
            FaultKind::ReadError => "read_error",
            FaultKind::WriteError => "write_error",
            FaultKind::OpenError => "open_error",
            FaultKind::NoSpace => "no_space",
            FaultKind::ShortWrite => "short_write",
            FaultKind::BitRot => "bit_rot",
            FaultKind::MisdirectedWrite => "misdirected_write",
            FaultKind::ZeroedAtRest => "zeroed_at_rest",
            FaultKind::StaleAtRest => "stale_at_rest",
            FaultKind::Crash => "crash",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// What happened.
    pub kind: FaultKind,
    /// The file it happened to (empty for a crash).
    pub path: PathBuf,
    /// The byte offset it started at.
    pub offset: u64,
    /// How many bytes it covered.
    pub len: u64,
    /// Which boot of the disk it happened in (0 before the first crash).
    pub boot: u64,
}

/// Which faults are on, and how often they strike.
///
/// Crash-time faults (`lose_unsynced`, `torn_writes`, `lose_metadata`) apply
/// when [`SimDisk::crash`](super::SimDisk::crash) runs: with all three off a
/// crash behaves like a process kill, where the kernel keeps everything. The
/// rates are per operation, in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// A crash keeps any subset of the unsynced writes.
    pub lose_unsynced: bool,
    /// Unsynced writes that survive a crash may be torn per 512-byte sector
    /// into old, new or garbage data; a file may keep a new size without the
    /// data.
    pub torn_writes: bool,
    /// Of the sectors a torn write leaves, the percentage that land as
    /// garbage (the rest land new or old, 80 to 13); 7 by default.
    pub torn_garbage_percent: u32,
    /// A crash keeps only a prefix of the unsynced namespace operations of
    /// each directory (journaled file systems commit metadata in order).
    pub lose_metadata: bool,
    /// Chance that a sync fails with EIO, dropping the dirty data.
    pub fsync_error_rate: f64,
    /// Chance that a read fails with EIO.
    pub read_error_rate: f64,
    /// Chance that a write fails with EIO.
    pub write_error_rate: f64,
    /// Chance that opening an existing file fails with EIO.
    pub open_error_rate: f64,
    /// Chance that a write growing a file fails with ENOSPC.
    pub no_space_rate: f64,
    /// Chance that a write is short.
    pub short_write_rate: f64,
    /// Chance that a synced write lands at the wrong offset.
    pub misdirected_write_rate: f64,
}

impl FaultConfig {
    /// No faults at all: a crash is a process kill.
    pub fn none() -> Self {
        Self {
            lose_unsynced: false,
            torn_writes: false,
            torn_garbage_percent: 7,
            lose_metadata: false,
            fsync_error_rate: 0.0,
            read_error_rate: 0.0,
            write_error_rate: 0.0,
            open_error_rate: 0.0,
            no_space_rate: 0.0,
            short_write_rate: 0.0,
            misdirected_write_rate: 0.0,
        }
    }

    /// Power loss: unsynced writes lost in any subset, torn sectors, and
    /// unsynced metadata lost. No errors while running.
    pub fn power_loss() -> Self {
        Self { lose_unsynced: true, torn_writes: true, lose_metadata: true, ..Self::none() }
    }

    /// A swarm draw: each kind on or off by a coin, with a modest rate when on.
    pub fn swarm(rng: &mut impl Rng) -> Self {
        let mut rate = |max: f64| if rng.random_bool(0.5) { rng.random_range(0.0..max) } else { 0.0 };
        let fsync_error_rate = rate(0.02);
        let read_error_rate = rate(0.01);
        let write_error_rate = rate(0.01);
        let no_space_rate = rate(0.01);
        let short_write_rate = rate(0.2);
        Self {
            lose_unsynced: rng.random_bool(0.8),
            torn_writes: rng.random_bool(0.7),
            torn_garbage_percent: 7,
            lose_metadata: rng.random_bool(0.7),
            fsync_error_rate,
            read_error_rate,
            write_error_rate,
            // Drawn by the workloads on a stream of their own, so that
            // the draws above stay what they were for every seed.
            open_error_rate: 0.0,
            no_space_rate,
            short_write_rate,
            misdirected_write_rate: 0.0,
        }
    }
}
