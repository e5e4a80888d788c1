//! Planted bugs: deliberate, realistic defects the simulator must catch.
//!
//! They exist only with the `planted-bugs` cargo feature, which normal builds
//! never enable; without it [`active`] is a constant `false` and every
//! planted branch compiles away. The simulator switches one on by name
//! (`thunderdb-sim --plant NAME`) and measures how many seeds it takes to
//! catch it (`--planted-report`). A planted bug that goes uncaught means the
//! simulator needs work.

use std::fmt;

use crate::probe::Layer;

/// One planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum PlantedBug {
    /// Publish the durable LSN before the sync, so a commit can be
    /// acknowledged before its record is durable.
    AckBeforeSync,
    /// A flush that finds its records written (by a write-behind) but not
    /// yet synced returns at once: the commit is acknowledged on the written
    /// position instead of the durable one.
    AckOnWritten,
    /// Skip the directory sync after renaming a new segment into place.
    SkipSegmentDirSync,
    /// After a failed fsync, retry it instead of stopping.
    RetryFsync,
    /// Treat a failed fsync as success.
    IgnoreFsyncError,
    /// The reader truncates at the first bad record, even mid-log.
    TruncateAtFirstBadCrc,
    /// The reader takes a zeroed record header for the clean end of the log,
    /// without looking for durable records after it.
    ZeroedHeaderIsEndOfLog,
    /// Retire the segment that holds the redo point.
    RecycleNeededSegment,
    /// Flushes end mid-sector, so later torn writes can hit acknowledged bytes.
    NoSectorPadding,
    /// Open the WAL without cutting off the torn tail durably.
    SkipTailCut,
    /// The tail cut removes later segments without syncing the directory,
    /// so a crash brings them back.
    SkipTailCutDirSync,
    /// Record checksums leave out the record's LSN.
    CrcWithoutLsn,
    /// After a torn sector, resume writing inside it instead of at the next
    /// sector.
    RewriteTornSector,
    /// Change a page for the first time after a checkpoint without logging
    /// its full image.
    SkipFullPageImage,
    /// A compensation record that is its page's first change after a
    /// checkpoint logs no image of the page.
    ClrWithoutPageImage,
    /// A full-page image's hole starts one slot early, so the node's last
    /// slot is left out of the log and redo rebuilds it as zero.
    ImageHoleTooWide,
    /// Redo and undo apply a row edit without the bytes after the ones it
    /// replaces, so the row loses its tail.
    EditDropsTail,
    /// Undoing a batch of inserted rows, every compensation record points
    /// past the batch, so an undo cut off by a crash leaves the batch's
    /// remaining rows in place.
    BatchUndoSkipsRest,
    /// A split or merge logs a page it changed as a byte delta against the
    /// page's live bytes alone, leaving out the bytes that were in its hole
    /// (which redo rebuilt as zeroes) and did not change.
    DeltaIgnoresHole,
    /// A failed data-file sync during a checkpoint's flush is logged and
    /// ignored, and the checkpoint completes.
    SwallowCheckpointSyncError,
    /// Write the checkpoint pointer (the new redo point) right after the
    /// begin record, before the dirty pages are written.
    CheckpointBeforeFlush,
    /// A checkpoint leaves out a page whose recovery LSN is its begin
    /// record's LSN: the page dirtied by the record just before it, whose
    /// change redo from the new redo point never replays.
    CheckpointSkipsPageDirtiedAtBegin,
    /// The control file's redo point is the checkpoint's end record, not
    /// its begin: changes logged while a spread checkpoint wrote its pages
    /// are skipped by redo.
    RedoPointAtCheckpointEnd,
    /// A crash recovery that opens before its checkpoint points the control
    /// file's redo point at the end of the log, as if the pages it redid
    /// were written: a crash before the background checkpoint writes them
    /// loses their changes, which redo never replays again.
    RecoveryMovesRedoPoint,
    /// Undo a change in the page without logging a compensation record (the
    /// page LSN stays put), so redo after a crash cannot repeat the undo.
    UndoWithoutClr,
    /// Write a page out of the buffer pool without first making the WAL
    /// durable up to its page LSN (break the WAL rule).
    PageBeforeWal,
    /// Leave the active transactions out of the checkpoint's end record, so
    /// analysis misses a transaction whose records all precede the
    /// checkpoint and never rolls it back.
    ForgetActiveTransactions,
    /// A point read takes no row lock, so it can see another transaction's
    /// uncommitted write (a dirty read) and a read-modify-write can lose an
    /// update.
    ReadWithoutLock,
    /// A page that reads back as all zeroes is taken for a new, empty leaf
    /// instead of being reported as damaged.
    ZeroedPageReadAsEmpty,
    /// Stamp a commit with the time its transaction began, not the time it
    /// committed.
    CommitStampedAtBegin,
    /// Stamp each commit with the clock as read, even when the clock was
    /// stepped back behind the previous commit's time.
    NoCommitTimeClamp,
    /// Free a dropped or replaced table's pages when it is dropped, not when
    /// the transaction commits, so a rollback (or a crash before the commit)
    /// brings back a table whose pages another tree may have taken.
    FreeBeforeCommit,
    /// A backup copies the live control file, which a checkpoint during the
    /// backup may have moved past pages the copy already took, instead of
    /// the start checkpoint's.
    BackupLiveControlFile,
    /// A backup takes its end LSN before copying the data files, so pages
    /// may hold changes the backup's WAL does not reach.
    BackupEndBeforeCopy,
    /// A backup reports completion without syncing its files: a crash
    /// afterwards leaves a manifest over missing bytes.
    BackupSkipsFileSync,
    /// A backup's free-page ranges are read with exclusive bounds as
    /// inclusive ones: each takes the page before and after it too, so the
    /// copy zeroes pages a table may use.
    BackupWidensFreeRanges,
    /// The archiver's retire hook lets the segment being archived go too:
    /// a checkpoint can recycle a segment one ahead of the archive.
    ArchiveRecycleUnarchived,
    /// Directory-mode archiving takes a file already under the segment's
    /// name for success without comparing its bytes.
    ArchiveExistsWithoutCompare,
    /// Directory-mode archiving writes the segment straight to its final
    /// name without syncing (a naive `cp`), then records it archived.
    ArchiveWithoutSync,
    /// A point-in-time recovery to a time keeps the first commit stamped
    /// after the target too.
    PitrIncludesFirstCommitAfter,
    /// A point-in-time recovery continues on the timeline it replayed, so
    /// the restored server's WAL reuses names the old timeline archived.
    PitrReusesTimeline,
    /// A point-in-time recovery ends the transactions open at its stop
    /// point with abort records instead of rolling them back, so their
    /// changes stay.
    PitrAbortsWithoutUndo,
    /// An `UPDATE` that changes an indexed column adds the row's new index
    /// entry but leaves the old one: the index names a row twice.
    IndexUpdateKeepsOldEntry,
    /// A standby's restartpoint moves its redo point without writing the
    /// pages its replay changed, so the next round starts past changes
    /// that are on no page.
    RestartpointSkipsPages,
    /// A standby replays fetched archive segments without syncing them,
    /// so a power failure takes WAL its pages and restartpoint rely on.
    StandbyFetchWithoutSync,
    /// A normal open ignores `standby.signal`, so a standby's directories
    /// open as a primary writing the primary's timeline a second time.
    StandbySignalIgnored,
    /// A Raft leader reports its entries committed once its own append is
    /// durable, without waiting for a majority.
    RaftAckBeforeMajority,
    /// A Raft node sends its votes and append acknowledgements without
    /// syncing its log first.
    RaftAppendWithoutSync,
    /// Reopening a Raft log keeps an entry that a later frame overwrote.
    RaftReplayKeepsOverwritten,
    /// A Raft leader answers reads from its own state without confirming
    /// that a majority still follows it, so a deposed leader that has not
    /// heard of its successor serves stale data.
    RaftReadWithoutQuorum,
    /// Compaction rewrites the Raft log without the entries a snapshot
    /// covers before the snapshot is durable.
    RaftLogCutBeforeSnapshot,
    /// A cluster leader takes its own disk's flush for durability: it
    /// acknowledges commits, and writes pages, before the group holds them,
    /// so a failover loses acknowledged commits.
    ReplicaAckOnLocalFlush,
    /// A restarted node does not write again the committed chunks it
    /// catches up on, taking its own WAL to hold them: a leader's commits
    /// never synced its WAL, so a power failure loses them from it.
    ReplicaRestartTrustsOwnWal,
    /// A deposed leader keeps the WAL it wrote past what the group
    /// committed, and follows on from its end.
    ReplicaKeepsUncommittedWal,
    /// The log a leader gives a node it rebuilds claims every entry it
    /// holds committed, its uncommitted tail too.
    ReplicaRebuildCommitsWholeLog,
    /// A node compacts its Raft log up to its commit index, entries some
    /// voter lacks included: a leader must then send that voter a
    /// snapshot, which no node can take.
    ReplicaCompactsPastPeers,
    /// A node compacts its Raft log past the chunks its WAL holds
    /// durably: a power failure loses WAL that no restart writes again.
    ReplicaCompactsUnsyncedWal,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 57] = [
        PlantedBug::AckBeforeSync,
        PlantedBug::AckOnWritten,
        PlantedBug::SkipSegmentDirSync,
        PlantedBug::RetryFsync,
        PlantedBug::IgnoreFsyncError,
        PlantedBug::TruncateAtFirstBadCrc,
        PlantedBug::ZeroedHeaderIsEndOfLog,
        PlantedBug::RecycleNeededSegment,
        PlantedBug::NoSectorPadding,
        PlantedBug::SkipTailCut,
        PlantedBug::SkipTailCutDirSync,
        PlantedBug::CrcWithoutLsn,
        PlantedBug::RewriteTornSector,
        PlantedBug::SkipFullPageImage,
        PlantedBug::ClrWithoutPageImage,
        PlantedBug::ImageHoleTooWide,
        PlantedBug::EditDropsTail,
        PlantedBug::BatchUndoSkipsRest,
        PlantedBug::DeltaIgnoresHole,
        PlantedBug::SwallowCheckpointSyncError,
        PlantedBug::CheckpointBeforeFlush,
        PlantedBug::CheckpointSkipsPageDirtiedAtBegin,
        PlantedBug::RedoPointAtCheckpointEnd,
        PlantedBug::RecoveryMovesRedoPoint,
        PlantedBug::UndoWithoutClr,
        PlantedBug::PageBeforeWal,
        PlantedBug::ForgetActiveTransactions,
        PlantedBug::ReadWithoutLock,
        PlantedBug::FreeBeforeCommit,
        PlantedBug::CommitStampedAtBegin,
        PlantedBug::NoCommitTimeClamp,
        PlantedBug::ZeroedPageReadAsEmpty,
        PlantedBug::BackupLiveControlFile,
        PlantedBug::BackupEndBeforeCopy,
        PlantedBug::BackupSkipsFileSync,
        PlantedBug::BackupWidensFreeRanges,
        PlantedBug::ArchiveRecycleUnarchived,
        PlantedBug::ArchiveExistsWithoutCompare,
        PlantedBug::ArchiveWithoutSync,
        PlantedBug::PitrIncludesFirstCommitAfter,
        PlantedBug::PitrReusesTimeline,
        PlantedBug::PitrAbortsWithoutUndo,
        PlantedBug::IndexUpdateKeepsOldEntry,
        PlantedBug::RestartpointSkipsPages,
        PlantedBug::StandbyFetchWithoutSync,
        PlantedBug::StandbySignalIgnored,
        PlantedBug::RaftAckBeforeMajority,
        PlantedBug::RaftAppendWithoutSync,
        PlantedBug::RaftReplayKeepsOverwritten,
        PlantedBug::RaftReadWithoutQuorum,
        PlantedBug::RaftLogCutBeforeSnapshot,
        PlantedBug::ReplicaAckOnLocalFlush,
        PlantedBug::ReplicaRestartTrustsOwnWal,
        PlantedBug::ReplicaKeepsUncommittedWal,
        PlantedBug::ReplicaRebuildCommitsWholeLog,
        PlantedBug::ReplicaCompactsPastPeers,
        PlantedBug::ReplicaCompactsUnsyncedWal,
    ];

    /// The bug's name, as `--plant` takes it.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeSync => "ack_before_sync",
            PlantedBug::AckOnWritten => "ack_on_written",
            PlantedBug::SkipSegmentDirSync => "skip_segment_dir_sync",
            PlantedBug::RetryFsync => "retry_fsync",
            PlantedBug::IgnoreFsyncError => "ignore_fsync_error",
            PlantedBug::TruncateAtFirstBadCrc => "truncate_at_first_bad_crc",
            PlantedBug::ZeroedHeaderIsEndOfLog => "zeroed_header_is_end_of_log",
            PlantedBug::RecycleNeededSegment => "recycle_needed_segment",
            PlantedBug::NoSectorPadding => "no_sector_padding",
            PlantedBug::SkipTailCut => "skip_tail_cut",
            PlantedBug::SkipTailCutDirSync => "skip_tail_cut_dir_sync",
            PlantedBug::CrcWithoutLsn => "crc_without_lsn",
            PlantedBug::RewriteTornSector => "rewrite_torn_sector",
            PlantedBug::SkipFullPageImage => "skip_full_page_image",
            PlantedBug::ClrWithoutPageImage => "clr_without_page_image",
            PlantedBug::ImageHoleTooWide => "image_hole_too_wide",
            PlantedBug::EditDropsTail => "edit_drops_tail",
            PlantedBug::BatchUndoSkipsRest => "batch_undo_skips_rest",
            PlantedBug::DeltaIgnoresHole => "delta_ignores_hole",
            PlantedBug::SwallowCheckpointSyncError => "swallow_checkpoint_sync_error",
            PlantedBug::CheckpointBeforeFlush => "checkpoint_before_flush",
            PlantedBug::CheckpointSkipsPageDirtiedAtBegin => "checkpoint_skips_page_dirtied_at_begin",
            PlantedBug::RedoPointAtCheckpointEnd => "redo_point_at_checkpoint_end",
            PlantedBug::RecoveryMovesRedoPoint => "recovery_moves_redo_point",
            PlantedBug::UndoWithoutClr => "undo_without_clr",
            PlantedBug::PageBeforeWal => "page_before_wal",
            PlantedBug::ForgetActiveTransactions => "forget_active_transactions",
            PlantedBug::ReadWithoutLock => "read_without_lock",
            PlantedBug::FreeBeforeCommit => "free_before_commit",
            PlantedBug::CommitStampedAtBegin => "commit_stamped_at_begin",
            PlantedBug::NoCommitTimeClamp => "no_commit_time_clamp",
            PlantedBug::ZeroedPageReadAsEmpty => "zeroed_page_read_as_empty",
            PlantedBug::BackupLiveControlFile => "backup_live_control_file",
            PlantedBug::BackupEndBeforeCopy => "backup_end_before_copy",
            PlantedBug::BackupSkipsFileSync => "backup_skips_file_sync",
            PlantedBug::BackupWidensFreeRanges => "backup_widens_free_ranges",
            PlantedBug::ArchiveRecycleUnarchived => "archive_recycle_unarchived",
            PlantedBug::ArchiveExistsWithoutCompare => "archive_exists_without_compare",
            PlantedBug::ArchiveWithoutSync => "archive_without_sync",
            PlantedBug::PitrIncludesFirstCommitAfter => "pitr_includes_first_commit_after",
            PlantedBug::PitrReusesTimeline => "pitr_reuses_timeline",
            PlantedBug::PitrAbortsWithoutUndo => "pitr_aborts_without_undo",
            PlantedBug::IndexUpdateKeepsOldEntry => "index_update_keeps_old_entry",
            PlantedBug::RestartpointSkipsPages => "restartpoint_skips_pages",
            PlantedBug::StandbyFetchWithoutSync => "standby_fetch_without_sync",
            PlantedBug::StandbySignalIgnored => "standby_signal_ignored",
            PlantedBug::RaftAckBeforeMajority => "raft_ack_before_majority",
            PlantedBug::RaftAppendWithoutSync => "raft_append_without_sync",
            PlantedBug::RaftReplayKeepsOverwritten => "raft_replay_keeps_overwritten",
            PlantedBug::RaftReadWithoutQuorum => "raft_read_without_quorum",
            PlantedBug::RaftLogCutBeforeSnapshot => "raft_log_cut_before_snapshot",
            PlantedBug::ReplicaAckOnLocalFlush => "replica_ack_on_local_flush",
            PlantedBug::ReplicaRestartTrustsOwnWal => "replica_restart_trusts_own_wal",
            PlantedBug::ReplicaKeepsUncommittedWal => "replica_keeps_uncommitted_wal",
            PlantedBug::ReplicaRebuildCommitsWholeLog => "replica_rebuild_commits_whole_log",
            PlantedBug::ReplicaCompactsPastPeers => "replica_compacts_past_peers",
            PlantedBug::ReplicaCompactsUnsyncedWal => "replica_compacts_unsynced_wal",
        }
    }

    /// The bug with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

impl PlantedBug {
    /// The layer the bug lives in, which says the workload that hunts it:
    /// the WAL's, the db workload (storage and transactions), the
    /// cluster's, or the replicated databases'.
    pub fn layer(self) -> Layer {
        if matches!(
            self,
            PlantedBug::ReplicaAckOnLocalFlush
                | PlantedBug::ReplicaRestartTrustsOwnWal
                | PlantedBug::ReplicaKeepsUncommittedWal
                | PlantedBug::ReplicaRebuildCommitsWholeLog
                | PlantedBug::ReplicaCompactsPastPeers
                | PlantedBug::ReplicaCompactsUnsyncedWal
        ) {
            return Layer::Replication;
        }
        if matches!(
            self,
            PlantedBug::RaftAckBeforeMajority
                | PlantedBug::RaftAppendWithoutSync
                | PlantedBug::RaftReplayKeepsOverwritten
                | PlantedBug::RaftReadWithoutQuorum
                | PlantedBug::RaftLogCutBeforeSnapshot
        ) {
            return Layer::Cluster;
        }
        let storage = matches!(
            self,
            PlantedBug::SkipFullPageImage
                | PlantedBug::ClrWithoutPageImage
                | PlantedBug::ImageHoleTooWide
                | PlantedBug::EditDropsTail
                | PlantedBug::BatchUndoSkipsRest
                | PlantedBug::DeltaIgnoresHole
                | PlantedBug::SwallowCheckpointSyncError
                | PlantedBug::CheckpointBeforeFlush
                | PlantedBug::CheckpointSkipsPageDirtiedAtBegin
                | PlantedBug::RedoPointAtCheckpointEnd
                | PlantedBug::RecoveryMovesRedoPoint
                | PlantedBug::UndoWithoutClr
                | PlantedBug::PageBeforeWal
                | PlantedBug::ForgetActiveTransactions
                | PlantedBug::ReadWithoutLock
                | PlantedBug::FreeBeforeCommit
                | PlantedBug::CommitStampedAtBegin
                | PlantedBug::NoCommitTimeClamp
                | PlantedBug::ZeroedPageReadAsEmpty
                | PlantedBug::BackupLiveControlFile
                | PlantedBug::BackupEndBeforeCopy
                | PlantedBug::BackupSkipsFileSync
                | PlantedBug::BackupWidensFreeRanges
                | PlantedBug::ArchiveRecycleUnarchived
                | PlantedBug::ArchiveExistsWithoutCompare
                | PlantedBug::ArchiveWithoutSync
                | PlantedBug::PitrIncludesFirstCommitAfter
                | PlantedBug::PitrReusesTimeline
                | PlantedBug::PitrAbortsWithoutUndo
                | PlantedBug::IndexUpdateKeepsOldEntry
                | PlantedBug::RestartpointSkipsPages
                | PlantedBug::StandbyFetchWithoutSync
                | PlantedBug::StandbySignalIgnored
        );
        if storage {
            Layer::Storage
        } else {
            Layer::Wal
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether `bug` is switched on. Always `false` without `planted-bugs`.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: PlantedBug) -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed) & (1 << bug as u64) != 0
}

/// Whether `bug` is switched on. Always `false` without `planted-bugs`.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: PlantedBug) -> bool {
    false
}

/// Switches exactly the given bugs on, process-wide.
#[cfg(feature = "planted-bugs")]
pub fn set_active(bugs: &[PlantedBug]) {
    let mask = bugs.iter().fold(0u64, |mask, bug| mask | 1 << *bug as u64);
    ACTIVE.store(mask, std::sync::atomic::Ordering::Relaxed);
}
