//! Coverage probes: proof that the simulator reaches what it claims to test.
//!
//! Two kinds:
//!
//! - **Fault × phase.** Engine code marks the phase it is in (see [`enter`])
//!   around its synchronous I/O sections (no await inside, so a thread-local
//!   is exact). The simulated disk attributes every fault it injects to the
//!   current phase.
//! - **Path probes** ([`Probe`]): rare paths the oracle relies on, counted
//!   where they happen.
//!
//! [`missing`] lists the expected probes never hit; the simulator's CI run
//! fails on any. Counters are process-wide relaxed atomics, cheap enough to
//! leave on in production.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::env::FaultKind;

/// An engine phase that does I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Not in any marked phase (e.g. the harness).
    Other,
    /// Writing buffered WAL records to segment files.
    WalWrite,
    /// Syncing segments at the end of a group commit.
    WalSync,
    /// Creating a new segment (segment rotation).
    WalRotate,
    /// Reading the WAL during recovery.
    WalRecoveryRead,
    /// Cutting the torn tail when the WAL opens.
    WalTailCut,
    /// The tail cut removing later segments, up to its directory sync.
    WalTailCutRemove,
    /// Retiring segments behind the redo point.
    WalRetire,
    /// A checkpoint writing and syncing dirty pages.
    CheckpointFlush,
    /// A checkpoint replacing the control file.
    CheckpointControl,
    /// Storage recovery replaying records into pages.
    StorageRedo,
    /// A B+tree split.
    TreeSplit,
    /// A B+tree leaf merge.
    TreeMerge,
    /// Recovery's analysis pass.
    RecoveryAnalysis,
    /// Recovery's undo pass (rolling back losers, logging CLRs).
    RecoveryUndo,
    /// A backup copying data files (reads of the live disk, writes of the
    /// backup's).
    BackupCopy,
    /// A backup copying WAL segments.
    BackupWal,
    /// A backup syncing its directories and writing its manifest.
    BackupManifest,
    /// The archiver copying a segment into the archive and recording it.
    Archive,
    /// A Raft node appending entries and its hard state to its log.
    RaftAppend,
    /// A Raft node opening its log (and cutting a torn tail).
    RaftOpen,
    /// A Raft node writing a snapshot and rewriting its log after it.
    RaftSnapshot,
}

/// Which part of the system a probe covers; a workload requires the probes
/// of the layer it exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The write-ahead log.
    Wal,
    /// Pages, trees, checkpoints and storage recovery.
    Storage,
    /// The Raft group: consensus, its durable log, elections.
    Cluster,
    /// The WAL replicated through the Raft group: shipping, following,
    /// failover.
    Replication,
}

impl Phase {
    const ALL: [Phase; 22] = [
        Phase::Other,
        Phase::WalWrite,
        Phase::WalSync,
        Phase::WalRotate,
        Phase::WalRecoveryRead,
        Phase::WalTailCut,
        Phase::WalTailCutRemove,
        Phase::WalRetire,
        Phase::CheckpointFlush,
        Phase::CheckpointControl,
        Phase::StorageRedo,
        Phase::TreeSplit,
        Phase::TreeMerge,
        Phase::RecoveryAnalysis,
        Phase::RecoveryUndo,
        Phase::BackupCopy,
        Phase::BackupWal,
        Phase::BackupManifest,
        Phase::Archive,
        Phase::RaftAppend,
        Phase::RaftOpen,
        Phase::RaftSnapshot,
    ];

    fn layer(self) -> Layer {
        match self {
            Phase::CheckpointFlush
            | Phase::CheckpointControl
            | Phase::StorageRedo
            | Phase::TreeSplit
            | Phase::TreeMerge
            | Phase::RecoveryAnalysis
            | Phase::RecoveryUndo
            | Phase::BackupCopy
            | Phase::BackupWal
            | Phase::BackupManifest
            | Phase::Archive => Layer::Storage,
            Phase::RaftAppend | Phase::RaftOpen | Phase::RaftSnapshot => Layer::Cluster,
            _ => Layer::Wal,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Other => "other",
            Phase::WalWrite => "wal_write",
            Phase::WalSync => "wal_sync",
            Phase::WalRotate => "wal_rotate",
            Phase::WalRecoveryRead => "wal_recovery_read",
            Phase::WalTailCut => "wal_tail_cut",
            Phase::WalTailCutRemove => "wal_tail_cut_remove",
            Phase::WalRetire => "wal_retire",
            Phase::CheckpointFlush => "checkpoint_flush",
            Phase::CheckpointControl => "checkpoint_control",
            Phase::StorageRedo => "storage_redo",
            Phase::TreeSplit => "tree_split",
            Phase::TreeMerge => "tree_merge",
            Phase::RecoveryAnalysis => "recovery_analysis",
            Phase::RecoveryUndo => "recovery_undo",
            Phase::BackupCopy => "backup_copy",
            Phase::BackupWal => "backup_wal",
            Phase::BackupManifest => "backup_manifest",
            Phase::Archive => "archive",
            Phase::RaftAppend => "raft_append",
            Phase::RaftOpen => "raft_open",
            Phase::RaftSnapshot => "raft_snapshot",
        }
    }

    /// The fault kinds the simulator must have injected in this phase: the
    /// ones its operations can meet at run time. (Crash-time faults such as
    /// lost writes are applied at the reboot; they are counted by kind.)
    fn expected_faults(self) -> &'static [FaultKind] {
        use FaultKind::*;
        match self {
            Phase::Other => &[],
            Phase::WalWrite => &[Crash, WriteError, ShortWrite, OpenError],
            Phase::WalSync => &[Crash, FsyncError],
            Phase::WalRotate => &[Crash, WriteError, ShortWrite, FsyncError],
            Phase::WalRecoveryRead => &[Crash, ReadError],
            Phase::WalTailCut => &[Crash, ReadError, FsyncError],
            Phase::WalTailCutRemove => &[Crash],
            Phase::WalRetire => &[Crash],
            Phase::CheckpointFlush => &[Crash, WriteError, FsyncError],
            Phase::CheckpointControl => &[Crash, FsyncError],
            Phase::StorageRedo => &[Crash, ReadError],
            Phase::TreeSplit | Phase::TreeMerge => &[Crash],
            Phase::RecoveryAnalysis => &[Crash, ReadError],
            Phase::RecoveryUndo => &[Crash],
            Phase::BackupCopy | Phase::BackupWal | Phase::BackupManifest => &[Crash],
            Phase::Archive => &[Crash, ReadError],
            Phase::RaftAppend => &[Crash, WriteError, FsyncError],
            Phase::RaftOpen => &[Crash, ReadError],
            Phase::RaftSnapshot => &[Crash],
        }
    }
}

/// A rare path the oracle relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Probe {
    /// A flush found its record already made durable by another leader.
    GroupCommitFollower,
    /// A flush's group wrote across a segment boundary.
    GroupCommitSpansSegments,
    /// An append passed the write-behind threshold and wrote the buffer
    /// out without syncing it.
    WriteBehind,
    /// A flush found WAL written (by a write-behind) but not yet durable.
    FlushFoundWrittenNotDurable,
    /// A new segment was zero-filled in more than one write.
    SegmentZeroFilledInChunks,
    /// A recycled segment was reused instead of creating a new one.
    SegmentReused,
    /// A segment was created ahead of the writer, in the background (the
    /// database's task; the bare WAL workload creates them inline).
    SegmentPrepared,
    /// The reader cut a torn tail (a bad record with nothing durable after).
    TornTailCut,
    /// The reader followed a Resume record past a torn sector.
    ResumeLinkFollowed,
    /// The reader reported a bad record as corruption.
    CorruptionReported,
    /// Opening the WAL zeroed a non-empty tail.
    TailZeroed,
    /// A B+tree root split (the tree grew a level).
    TreeRootSplit,
    /// A B+tree internal node split.
    TreeInternalSplit,
    /// A key past the end of the rightmost leaf started a new, empty leaf.
    TreeAppendSplit,
    /// A page no tree reached any more was allocated again.
    PageReused,
    /// A row was replaced in place by a shorter one, leaving garbage inside
    /// its leaf's content area (in normal operation or in redo).
    RowShrunkInPlace,
    /// A page read from the data file failed its checks (zeroed or
    /// damaged) and was reported as corruption.
    DamagedPageReported,
    /// A checkpoint completed and moved the redo point.
    CheckpointCompleted,
    /// Redo applied a record to a page read from disk (untouched since the
    /// checkpoint), not one rebuilt from an image.
    RedoOnDiskPage,
    /// A B+tree leaf was merged into its sibling.
    TreeLeafMerge,
    /// A checkpoint kept WAL before its redo point for an active
    /// transaction's undo.
    CheckpointHeldForUndo,
    /// A compensation record was a page's first change after a checkpoint,
    /// so it logged the page's image first.
    ClrFirstChangeAfterCheckpoint,
    /// A logged full-page image stored zstd-compressed was rebuilt.
    ImageDecodedCompressed,
    /// A logged full-page image stored uncompressed, less its hole, was
    /// rebuilt (`wal_compression = "off"`).
    ImageDecodedRaw,
    /// An undo resumed inside a batch of inserted rows: an earlier undo of
    /// the batch was cut off after some of its compensation records.
    BatchUndoResumed,
    /// A split or merge logged a page it changed as a byte delta.
    StructureDeltaLogged,
    /// Redo applied a row change logged as an edit (the bytes that changed).
    EditRedone,
    /// Undo reversed a row change logged as an edit.
    EditUndone,
    /// A background checkpoint paused between its page writes while
    /// transactions ran (a spread checkpoint).
    CheckpointSpread,
    /// A crash recovery opened the database without waiting for its
    /// checkpoint, which runs in the background.
    RecoveryCheckpointDeferred,
    /// A checkpoint found a page whose recovery LSN is its begin record's
    /// LSN (dirtied by the record just before it) and wrote it.
    CheckpointPageDirtiedAtBegin,
    /// Recovery rolled back a transaction that had no end record.
    LoserRolledBack,
    /// Recovery's undo met a compensation record: an earlier undo was cut
    /// off by a crash and resumed where it stopped.
    UndoResumed,
    /// Undo read a record back from the WAL (older than recovery's scan).
    UndoReadFromLog,
    /// A transaction waited for a lock.
    LockWaited,
    /// A deadlock was found and a victim aborted.
    DeadlockVictim,
    /// A checkpoint kept a segment that a running backup still needs.
    BackupHeldSegment,
    /// A backup completed (its manifest is durable).
    BackupCompleted,
    /// A backup's copy of a page was older than a change logged before the
    /// backup's end: replay from the backup's WAL brings it up to date.
    BackupPageBehindLog,
    /// A checkpoint ended a segment early (a `Switch` record) so that it
    /// can be archived.
    SegmentSwitched,
    /// The archiver archived a segment and recorded it durably.
    ArchiveSegmentArchived,
    /// The archive already held the segment with the same bytes (a
    /// retry after a crash between the copy and its record): success.
    ArchiveExistsIdentical,
    /// The archive held a different file under the segment's name: an
    /// error, never overwritten.
    ArchiveExistsDifferent,
    /// An archive attempt failed (the command's exit, an I/O error, no
    /// space) and will be retried with backoff.
    ArchiveAttemptFailed,
    /// An archive command hung past its timeout and was killed.
    ArchiveCommandTimedOut,
    /// A checkpoint kept a segment because it is not archived yet.
    ArchiveHeldSegment,
    /// The archiver started with segments left from before a restart
    /// or crash, and archived them first.
    ArchiveResumed,
    /// A point-in-time recovery to a time stopped before a commit stamped after it.
    PitrTimeTargetReached,
    /// A point-in-time recovery to an LSN stopped after the last record that begins at or before it.
    PitrLsnTargetReached,
    /// A point-in-time recovery replayed everything the archive holds.
    PitrLatestReached,
    /// A point-in-time recovery refused a target it could not reach (before the backup's end, past the WAL, a gap, damage).
    PitrRefused,
    /// A point-in-time recovery found an unfinished one's marker, cleared what it left and started over.
    PitrRestartedAfterCrash,
    /// A point-in-time recovery followed a newer timeline's history from the archive.
    PitrFollowedNewerTimeline,
    /// A point-in-time recovery rolled back transactions open at its stop point.
    PitrRolledBackOpen,
    /// A standby's replay round moved its redo point to a checkpoint it replayed (a restartpoint).
    StandbyRestartpoint,
    /// A standby fetched a segment from the archive that continued a record begun in the segment before.
    StandbyResumedSpanningRecord,
    /// A standby was promoted: it branched onto a new timeline and opened for writes.
    StandbyPromoted,
    /// A standby's restart found a promotion cut short, and finished it.
    StandbyPromotionFinished,
    /// A Raft node opened its log and cut a torn, unsynced tail.
    RaftTornTailCut,
    /// A Raft node reopened a log that held entries.
    RaftReopenedWithEntries,
    /// A Raft node's append replaced a conflicting suffix of its log.
    RaftConflictOverwritten,
    /// A Raft node became leader.
    RaftLeaderElected,
    /// A Raft leader's read was confirmed by a majority (ReadIndex).
    RaftReadConfirmed,
    /// A Raft node compacted its log behind a snapshot of its own.
    RaftCompacted,
    /// A Raft follower installed a snapshot its leader sent.
    RaftSnapshotInstalled,
    /// A Raft log reopened after a snapshot dropped entries that did not
    /// continue it.
    RaftStaleLogDropped,
    /// A Raft leader recorded a commit index durably with its next append, not with a sync of its own.
    RaftCommitRecordedWithAppend,
    /// A cluster leader's flush, written on its own disk, waited for the group to commit it.
    FlushWaitsForMajority,
    /// A leader learned a commit from a follower's answer, before it recorded it durably: commits up to it may be acknowledged, pages may not depend on it yet.
    ReplicaCommittedBeforeRecorded,
    /// A leader synced the WAL its commits wrote (they waited for the group, not for this sync).
    ReplicaLeaderWalSynced,
    /// A leader recorded the group's commit index at once because a page, a checkpoint or the archiver waited for it.
    ReplicaCommitRecordedOnDemand,
    /// A node that won an election applied every earlier entry and opened the database as the leader.
    ReplicaLeaderOpened,
    /// A leader (or a node opening as one) lost its leadership: its waiting commits failed and it went back to following.
    ReplicaDemoted,
    /// A node cut WAL from its log that the group had not committed (it wrote it as a leader).
    ReplicaCutUncommitted,
    /// A restarted (or deposed) node wrote committed entries again while catching up with what it knew committed.
    ReplicaReapplied,
    /// A follower's replay of the shipped WAL moved its restartpoint.
    ReplicaReplayed,
    /// A node that lost its disk adopted the leader's Raft log, its
    /// database restored from the leader's online backup.
    ReplicaRebuilt,
    /// A rebuilt node's Raft log starts after entries the backup made
    /// unneeded (a snapshot at the last one left out).
    ReplicaRebuiltAfterBase,
    /// A node dropped entries every voter holds, and whose chunks its WAL
    /// holds durably, from its Raft log.
    ReplicaLogCompacted,
    /// A node opened on a Raft log it had compacted, and continued from
    /// the WAL end its snapshot records.
    ReplicaReopenedCompacted,
    /// A leader dropped a follower's rejection that would have sent it back
    /// before entries the follower is known to hold (a late message).
    RaftStaleRejectionDropped,
}

impl Probe {
    const ALL: [Probe; 81] = [
        Probe::GroupCommitFollower,
        Probe::GroupCommitSpansSegments,
        Probe::WriteBehind,
        Probe::FlushFoundWrittenNotDurable,
        Probe::SegmentZeroFilledInChunks,
        Probe::SegmentReused,
        Probe::SegmentPrepared,
        Probe::TornTailCut,
        Probe::ResumeLinkFollowed,
        Probe::CorruptionReported,
        Probe::TailZeroed,
        Probe::TreeRootSplit,
        Probe::TreeInternalSplit,
        Probe::TreeAppendSplit,
        Probe::RowShrunkInPlace,
        Probe::PageReused,
        Probe::DamagedPageReported,
        Probe::CheckpointCompleted,
        Probe::RedoOnDiskPage,
        Probe::TreeLeafMerge,
        Probe::CheckpointHeldForUndo,
        Probe::ClrFirstChangeAfterCheckpoint,
        Probe::ImageDecodedCompressed,
        Probe::ImageDecodedRaw,
        Probe::BatchUndoResumed,
        Probe::StructureDeltaLogged,
        Probe::EditRedone,
        Probe::EditUndone,
        Probe::CheckpointSpread,
        Probe::RecoveryCheckpointDeferred,
        Probe::CheckpointPageDirtiedAtBegin,
        Probe::LoserRolledBack,
        Probe::UndoResumed,
        Probe::UndoReadFromLog,
        Probe::LockWaited,
        Probe::DeadlockVictim,
        Probe::BackupHeldSegment,
        Probe::BackupCompleted,
        Probe::BackupPageBehindLog,
        Probe::SegmentSwitched,
        Probe::ArchiveSegmentArchived,
        Probe::ArchiveExistsIdentical,
        Probe::ArchiveExistsDifferent,
        Probe::ArchiveAttemptFailed,
        Probe::ArchiveCommandTimedOut,
        Probe::ArchiveHeldSegment,
        Probe::ArchiveResumed,
        Probe::PitrTimeTargetReached,
        Probe::PitrLsnTargetReached,
        Probe::PitrLatestReached,
        Probe::PitrRefused,
        Probe::PitrRestartedAfterCrash,
        Probe::PitrFollowedNewerTimeline,
        Probe::PitrRolledBackOpen,
        Probe::StandbyRestartpoint,
        Probe::StandbyResumedSpanningRecord,
        Probe::StandbyPromoted,
        Probe::StandbyPromotionFinished,
        Probe::RaftTornTailCut,
        Probe::RaftReopenedWithEntries,
        Probe::RaftConflictOverwritten,
        Probe::RaftLeaderElected,
        Probe::RaftReadConfirmed,
        Probe::RaftCompacted,
        Probe::RaftSnapshotInstalled,
        Probe::RaftStaleLogDropped,
        Probe::RaftCommitRecordedWithAppend,
        Probe::FlushWaitsForMajority,
        Probe::ReplicaCommittedBeforeRecorded,
        Probe::ReplicaLeaderWalSynced,
        Probe::ReplicaCommitRecordedOnDemand,
        Probe::ReplicaLeaderOpened,
        Probe::ReplicaDemoted,
        Probe::ReplicaCutUncommitted,
        Probe::ReplicaReapplied,
        Probe::ReplicaReplayed,
        Probe::ReplicaRebuilt,
        Probe::ReplicaRebuiltAfterBase,
        Probe::ReplicaLogCompacted,
        Probe::ReplicaReopenedCompacted,
        Probe::RaftStaleRejectionDropped,
    ];

    fn layer(self) -> Layer {
        match self {
            Probe::GroupCommitFollower
            | Probe::GroupCommitSpansSegments
            | Probe::WriteBehind
            | Probe::FlushFoundWrittenNotDurable
            | Probe::SegmentZeroFilledInChunks
            | Probe::SegmentReused
            | Probe::TornTailCut
            | Probe::ResumeLinkFollowed
            | Probe::CorruptionReported
            | Probe::TailZeroed => Layer::Wal,
            Probe::RaftTornTailCut
            | Probe::RaftReopenedWithEntries
            | Probe::RaftConflictOverwritten
            | Probe::RaftLeaderElected
            | Probe::RaftReadConfirmed
            | Probe::RaftCompacted
            | Probe::RaftSnapshotInstalled
            | Probe::RaftStaleLogDropped
            | Probe::RaftCommitRecordedWithAppend => Layer::Cluster,
            Probe::FlushWaitsForMajority
            | Probe::ReplicaCommittedBeforeRecorded
            | Probe::ReplicaLeaderWalSynced
            | Probe::ReplicaCommitRecordedOnDemand
            | Probe::ReplicaLeaderOpened
            | Probe::ReplicaDemoted
            | Probe::ReplicaCutUncommitted
            | Probe::ReplicaReapplied
            | Probe::ReplicaReplayed
            | Probe::ReplicaRebuilt
            | Probe::ReplicaRebuiltAfterBase
            | Probe::ReplicaLogCompacted
            | Probe::ReplicaReopenedCompacted
            | Probe::RaftStaleRejectionDropped => Layer::Replication,
            _ => Layer::Storage,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Probe::GroupCommitFollower => "group_commit_follower",
            Probe::GroupCommitSpansSegments => "group_commit_spans_segments",
            Probe::WriteBehind => "write_behind",
            Probe::FlushFoundWrittenNotDurable => "flush_found_written_not_durable",
            Probe::SegmentZeroFilledInChunks => "segment_zero_filled_in_chunks",
            Probe::SegmentReused => "segment_reused",
            Probe::SegmentPrepared => "segment_prepared",
            Probe::TornTailCut => "torn_tail_cut",
            Probe::ResumeLinkFollowed => "resume_link_followed",
            Probe::CorruptionReported => "corruption_reported",
            Probe::TailZeroed => "tail_zeroed",
            Probe::TreeRootSplit => "tree_root_split",
            Probe::TreeInternalSplit => "tree_internal_split",
            Probe::TreeAppendSplit => "tree_append_split",
            Probe::RowShrunkInPlace => "row_shrunk_in_place",
            Probe::PageReused => "page_reused",
            Probe::DamagedPageReported => "damaged_page_reported",
            Probe::CheckpointCompleted => "checkpoint_completed",
            Probe::RedoOnDiskPage => "redo_on_disk_page",
            Probe::TreeLeafMerge => "tree_leaf_merge",
            Probe::CheckpointHeldForUndo => "checkpoint_held_for_undo",
            Probe::ClrFirstChangeAfterCheckpoint => "clr_first_change_after_checkpoint",
            Probe::ImageDecodedCompressed => "image_decoded_compressed",
            Probe::ImageDecodedRaw => "image_decoded_raw",
            Probe::BatchUndoResumed => "batch_undo_resumed",
            Probe::EditRedone => "edit_redone",
            Probe::EditUndone => "edit_undone",
            Probe::StructureDeltaLogged => "structure_delta_logged",
            Probe::CheckpointSpread => "checkpoint_spread",
            Probe::RecoveryCheckpointDeferred => "recovery_checkpoint_deferred",
            Probe::CheckpointPageDirtiedAtBegin => "checkpoint_page_dirtied_at_begin",
            Probe::LoserRolledBack => "loser_rolled_back",
            Probe::UndoResumed => "undo_resumed",
            Probe::UndoReadFromLog => "undo_read_from_log",
            Probe::LockWaited => "lock_waited",
            Probe::DeadlockVictim => "deadlock_victim",
            Probe::BackupHeldSegment => "backup_held_segment",
            Probe::BackupCompleted => "backup_completed",
            Probe::BackupPageBehindLog => "backup_page_behind_log",
            Probe::SegmentSwitched => "segment_switched",
            Probe::ArchiveSegmentArchived => "archive_segment_archived",
            Probe::ArchiveExistsIdentical => "archive_exists_identical",
            Probe::ArchiveExistsDifferent => "archive_exists_different",
            Probe::ArchiveAttemptFailed => "archive_attempt_failed",
            Probe::ArchiveCommandTimedOut => "archive_command_timed_out",
            Probe::ArchiveHeldSegment => "archive_held_segment",
            Probe::ArchiveResumed => "archive_resumed",
            Probe::PitrTimeTargetReached => "pitr_time_target_reached",
            Probe::PitrLsnTargetReached => "pitr_lsn_target_reached",
            Probe::PitrLatestReached => "pitr_latest_reached",
            Probe::PitrRefused => "pitr_refused",
            Probe::PitrRestartedAfterCrash => "pitr_restarted_after_crash",
            Probe::PitrFollowedNewerTimeline => "pitr_followed_newer_timeline",
            Probe::PitrRolledBackOpen => "pitr_rolled_back_open",
            Probe::StandbyRestartpoint => "standby_restartpoint",
            Probe::StandbyResumedSpanningRecord => "standby_resumed_spanning_record",
            Probe::StandbyPromoted => "standby_promoted",
            Probe::StandbyPromotionFinished => "standby_promotion_finished",
            Probe::RaftTornTailCut => "raft_torn_tail_cut",
            Probe::RaftReopenedWithEntries => "raft_reopened_with_entries",
            Probe::RaftConflictOverwritten => "raft_conflict_overwritten",
            Probe::RaftLeaderElected => "raft_leader_elected",
            Probe::RaftCommitRecordedWithAppend => "raft_commit_recorded_with_append",
            Probe::ReplicaCommitRecordedOnDemand => "replica_commit_recorded_on_demand",
            Probe::RaftReadConfirmed => "raft_read_confirmed",
            Probe::RaftCompacted => "raft_compacted",
            Probe::RaftSnapshotInstalled => "raft_snapshot_installed",
            Probe::RaftStaleLogDropped => "raft_stale_log_dropped",
            Probe::FlushWaitsForMajority => "flush_waits_for_majority",
            Probe::ReplicaCommittedBeforeRecorded => "replica_committed_before_recorded",
            Probe::ReplicaLeaderWalSynced => "replica_leader_wal_synced",
            Probe::ReplicaLeaderOpened => "replica_leader_opened",
            Probe::ReplicaDemoted => "replica_demoted",
            Probe::ReplicaCutUncommitted => "replica_cut_uncommitted",
            Probe::ReplicaReapplied => "replica_reapplied",
            Probe::ReplicaReplayed => "replica_replayed",
            Probe::ReplicaRebuilt => "replica_rebuilt",
            Probe::ReplicaRebuiltAfterBase => "replica_rebuilt_after_base",
            Probe::ReplicaLogCompacted => "replica_log_compacted",
            Probe::ReplicaReopenedCompacted => "replica_reopened_compacted",
            Probe::RaftStaleRejectionDropped => "raft_stale_rejection_dropped",
        }
    }
}

const KINDS: usize = FaultKind::ALL.len();
static FAULTS: [[AtomicU64; KINDS]; Phase::ALL.len()] =
    [const { [const { AtomicU64::new(0) }; KINDS] }; Phase::ALL.len()];
static PATHS: [AtomicU64; Probe::ALL.len()] = [const { AtomicU64::new(0) }; Probe::ALL.len()];

thread_local! {
    static CURRENT: Cell<Phase> = const { Cell::new(Phase::Other) };
}

/// The phase the current thread is in.
pub fn current_phase() -> Phase {
    CURRENT.with(Cell::get)
}

/// Marks the current thread as in `phase` until the guard drops.
pub fn enter(phase: Phase) -> PhaseGuard {
    PhaseGuard { previous: CURRENT.with(|current| current.replace(phase)) }
}

/// Marks the current thread as in `phase` unless a caller already marked a
/// phase (e.g. recovery's analysis reading the WAL keeps its own phase).
pub fn enter_unless_marked(phase: Phase) -> PhaseGuard {
    let previous = CURRENT.with(|current| {
        let previous = current.get();
        if previous == Phase::Other {
            current.set(phase);
        }
        previous
    });
    PhaseGuard { previous }
}

/// Restores the previous phase when dropped.
pub struct PhaseGuard {
    previous: Phase,
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.previous));
    }
}

/// Counts a fault injected now (called by the simulated disk).
pub fn fault(kind: FaultKind) {
    let phase = CURRENT.with(Cell::get);
    let column = FaultKind::ALL.iter().position(|k| *k == kind).expect("every kind is listed");
    FAULTS[phase as usize][column].fetch_add(1, Ordering::Relaxed);
}

/// Counts a path probe.
pub fn hit(probe: Probe) {
    PATHS[probe as usize].fetch_add(1, Ordering::Relaxed);
}

/// Every expected probe of `layer` with its count so far, by name
/// (`fault.<kind>@<phase>` or `path.<probe>`).
pub fn counts(layer: Layer) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for phase in Phase::ALL.into_iter().filter(|phase| phase.layer() == layer) {
        for kind in phase.expected_faults() {
            let column = FaultKind::ALL.iter().position(|k| k == kind).expect("listed");
            let count = FAULTS[phase as usize][column].load(Ordering::Relaxed);
            out.push((format!("fault.{kind}@{}", phase.name()), count));
        }
    }
    for probe in Probe::ALL.into_iter().filter(|probe| probe.layer() == layer) {
        out.push((format!("path.{}", probe.name()), PATHS[probe as usize].load(Ordering::Relaxed)));
    }
    out
}

/// The expected probes of `layer` never hit so far.
pub fn missing(layer: Layer) -> Vec<String> {
    counts(layer).into_iter().filter(|(_, count)| *count == 0).map(|(name, _)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_attributed_to_the_phase_in_force() {
        let before = counts(Layer::Wal);
        {
            let _guard = enter(Phase::WalRetire);
            fault(FaultKind::Crash);
        }
        fault(FaultKind::Crash);
        let after = counts(Layer::Wal);
        let get = |list: &[(String, u64)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, c)| *c).unwrap();
        assert_eq!(get(&after, "fault.crash@wal_retire"), get(&before, "fault.crash@wal_retire") + 1);
        assert_eq!(CURRENT.with(Cell::get), Phase::Other, "the guard restored the phase");
    }
}
