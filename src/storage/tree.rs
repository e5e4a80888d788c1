//! B+trees over the buffer pool, with every change logged before it is made.
//!
//! A [`Store`] owns the buffer pool, a handle on the WAL, page allocation and
//! the table of active transactions. Each table is a [`Tree`] named by its
//! root page, which never moves: a root split copies the root's cells into
//! two new children and turns the root into an internal node above them. The
//! root is therefore also the table's id in log records, and undo finds a
//! row by (root, key) however the tree has changed since.
//!
//! Logging (see `op.rs` for the formats):
//!
//! - A page's first change after each checkpoint (before the first: since
//!   the store opened) logs its full image before the change itself, so redo
//!   can rebuild a torn page; it reads from disk only pages untouched since
//!   the checkpoint, which the checkpoint wrote and synced.
//! - A row change logs a physiological `Insert`, `Update` or `Delete` under
//!   its transaction's id, linked to the transaction's previous record, and
//!   carrying the old value for undo.
//! - Undo is logical: it finds the row by key from the root (a split since
//!   may have moved it) and logs a compensation record (CLR) whose undo-next
//!   LSN is the undone record's predecessor, so a crash during undo resumes
//!   where it stopped and never undoes a change twice.
//! - A split first makes sure the parent has room for a separator (splitting
//!   the parent first if not), then logs the after-images of the split node,
//!   its new right sibling and the parent in one redo-only record. Each
//!   split leaves a valid tree on its own, so a crash between splits or
//!   mid-split replays to a valid tree, and a transaction that rolls back
//!   leaves the split in place (the tree is valid either way).
//! - A leaf left less than a quarter full by a delete is merged into its
//!   left or right sibling under the same parent when their rows fit in one
//!   page; the merge logs the after-images of the survivor and the parent in
//!   one redo-only record. The emptied page is not reused (there is no free
//!   page map yet).
//!
//! Checkpoints ([`Store::checkpoint`]) log the active transactions, flush
//! the pool, move the redo point in the control file and retire WAL
//! segments recovery no longer needs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::buffer::{BufferError, BufferPool, DataFileSync};
use super::control::{ControlFile, ControlState};
use super::error::StorageError;
use super::node::{self, CellTooLarge, MAX_CELL_LEN};
use super::op::{ActiveTxnEntry, Op, PageDelta, Redo, RedoRefused};
use super::page::{Page, PageKind, PAGE_SIZE};
use crate::env::Fs;
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};
use crate::wal::{Lsn, Record, Wal, WalError, WalReader};

/// The longest key a tree accepts, so that separator cells always fit.
pub const MAX_KEY_LEN: usize = 512;

/// The data file's name in the data directory.
pub const DATA_FILE_NAME: &str = "main.tdb";

/// Deeper than any real tree: splits give each new internal node two
/// children and only leaves merge, so trees stay a few levels deep. A
/// descent past this is a cycle among pages, reported as corruption before
/// it loops forever.
const TREE_HEIGHT_MAX: usize = 32;

const SEPARATOR_ROOM: usize = 4 + MAX_KEY_LEN + 4 + 2;

/// A leaf with less live data than this after a delete is merged if it can be.
const MERGE_BELOW: usize = (PAGE_SIZE - super::page::PAGE_HEADER_LEN) / 4;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The buffer pool or the data file failed.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The row does not fit in a cell.
    #[error(transparent)]
    TooLarge(#[from] CellTooLarge),
    /// A storage record in the log does not decode.
    #[error("WAL record at {lsn} is not a storage record: {detail}")]
    BadRecord {
        /// Where the record starts.
        lsn: Lsn,
        /// What was wrong.
        detail: String,
    },
    /// A row change in the log does not apply to the page (or row) it
    /// names: the log and the data file disagree.
    #[error("{record} does not apply: {detail}")]
    Inapplicable {
        /// The record and whether redo or undo applied it, with its LSN.
        record: String,
        /// The page, key and what was wrong.
        detail: String,
    },
    /// The data file or the control file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The timeline history file the control file's timeline needs does
    /// not parse.
    #[error("timeline history: {detail}")]
    BadHistory {
        /// The file and what is wrong with it.
        detail: String,
    },
    /// The key is longer than a tree accepts.
    #[error("a key of {len} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
}

impl StoreError {
    /// Whether the error reports damaged data on disk (a page, the control
    /// file, the log).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Buffer(BufferError::Storage(e)) | StoreError::Storage(e) => e.is_corruption(),
            StoreError::Buffer(BufferError::Wal(e)) | StoreError::Wal(e) => e.is_corruption(),
            StoreError::BadRecord { .. } | StoreError::Inapplicable { .. } | StoreError::BadHistory { .. } => true,
            StoreError::TooLarge(_) | StoreError::KeyTooLong { .. } => false,
        }
    }
}

/// One B+tree: a table's rows by primary key, named by its root page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tree {
    /// The root page, which never moves; also the table's id in log records.
    pub root: u32,
}

/// A transaction that has begun and not yet ended, as the store tracks it.
#[derive(Debug, Default)]
struct ActiveTxn {
    /// Its first record (`Lsn::ZERO` until it writes): the WAL must keep
    /// everything from here while it may still roll back.
    first_lsn: Lsn,
    /// Its last record: the next one's `prev_lsn`.
    last_lsn: Lsn,
    /// Its newest record not yet undone.
    undo_next: Lsn,
    /// Its first undoable records by LSN, each with its `prev_lsn`, so a
    /// small transaction's rollback reads no log. Bounded by the store's
    /// `undo_memory`: undo reads the records beyond it, and those of a
    /// transaction recovered from the log, back from the WAL.
    records: BTreeMap<Lsn, (Lsn, Op)>,
    /// The encoded size of `records`.
    records_bytes: usize,
    /// Trees whose pages become free if it commits: tables it dropped or
    /// replaced (the catalog row that reached them is gone).
    free_on_commit: Vec<Tree>,
    /// Trees whose pages become free if it rolls back: tables it created.
    free_on_rollback: Vec<Tree>,
}

/// The default bound on one transaction's in-memory undo records (256 KiB):
/// thousands of small changes. A bulk load of millions of rows keeps only
/// this much, so its memory stays flat.
pub const UNDO_MEMORY_DEFAULT: usize = 256 << 10;

/// Pages, the WAL, page allocation, active transactions and checkpoints.
pub struct Store {
    fs: Arc<dyn Fs>,
    data_dir: PathBuf,
    pool: BufferPool,
    wal: Arc<Wal>,
    next_page: u32,
    /// Pages no tree reaches, reused before the file grows: the ones found at
    /// open, leaves emptied by merges, and the trees of dropped, replaced or
    /// rolled-back tables once that is decided. Kept in memory only: the
    /// next open finds them again.
    free: BTreeSet<u32>,
    /// Pages whose image has been logged since the last checkpoint (or,
    /// before the first, since the store opened).
    imaged: BTreeSet<u32>,
    active: BTreeMap<u64, ActiveTxn>,
    next_xid: u64,
    /// The bound on each transaction's `records_bytes`.
    undo_memory: usize,
    /// The newest commit time logged: later commits are stamped no earlier,
    /// so commit times never go backwards in log order.
    last_commit_micros: u64,
    /// The database's identity, written into every control file.
    system_id: u64,
}

/// What [`Store::check_tree`] found in a sound tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeShape {
    /// Pages in the tree.
    pub pages: u64,
    /// Rows in its leaves.
    pub rows: u64,
    /// Levels from the root to the leaves.
    pub height: usize,
}

/// A commit record appended to the log, not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitAppended {
    /// The commit record's LSN.
    pub lsn: Lsn,
    /// The LSN just past it: the caller flushes to here before acknowledging.
    pub end: Lsn,
    /// Whether that time was clamped up to the previous commit's.
    pub clamped: bool,
}

/// A checkpoint whose end record is logged: what is left needs no store.
#[must_use = "the checkpoint is in force only once finished"]
pub struct CheckpointTail {
    control: ControlFile,
    end_record: Lsn,
    end: Lsn,
    needed_from: Lsn,
    wal: Arc<Wal>,
    fs: Arc<dyn Fs>,
    data_dir: PathBuf,
}

impl CheckpointTail {
    /// Steps 2 to 4 of [`Store::checkpoint_end`] after the end record is
    /// logged: makes it durable, replaces the control file and retires the
    /// WAL no longer needed; returns the checkpoint's LSN (its begin).
    pub async fn finish(self, may_retire: &(dyn Fn(&str) -> bool + Sync)) -> Result<Lsn, StoreError> {
        let mut control = self.control;
        let begin = control.checkpoint_lsn;
        self.wal.flush(self.end).await?;
        if active(PlantedBug::RedoPointAtCheckpointEnd) {
            (control.checkpoint_lsn, control.redo_lsn) = (self.end_record, self.end_record);
        }
        {
            let _phase = probe::enter(Phase::CheckpointControl);
            control.store(self.fs.as_ref(), &self.data_dir)?;
        }
        let keep_ready = self.wal.options().recycled_segments_max;
        self.wal.retire_segments(self.needed_from, keep_ready, may_retire).await?;
        probe::hit(Probe::CheckpointCompleted);
        Ok(begin)
    }
}

/// A checkpoint between its begin and end: its redo point, the pages
/// dirty at the begin that are still to write, and whether the data file
/// was synced since the last of them was written.
#[derive(Debug)]
pub struct CheckpointRun {
    begin: Lsn,
    due: Vec<u32>,
    data_file: DataFileSync,
    synced: bool,
}

impl CheckpointRun {
    /// Pages still to write.
    pub fn pages_due(&self) -> usize {
        self.due.len()
    }

    /// Starts the writeback of the pages written so far, without waiting
    /// and without the store: the dirty data trickles to disk during the
    /// checkpoint instead of piling into its final sync, which writers'
    /// commits would queue behind.
    pub fn start_writeback(&self) {
        self.data_file.start_writeback();
    }

    /// Syncs the data file once every page is written, without the store
    /// (the caller lets it go first: writers do not wait for the sync),
    /// so that [`Store::checkpoint_end`] need not sync under it.
    pub fn sync_written(&mut self, wal: &Wal) -> Result<(), StoreError> {
        assert!(self.due.is_empty(), "sync_written() before every page is written");
        crate::env::blocking(|| {
            let _phase = probe::enter(Phase::CheckpointFlush);
            self.data_file.sync(wal)
        })?;
        self.synced = true;
        Ok(())
    }
}

/// A leaf [`Store::insert_batch`] is filling: its changed copy, and the rows
/// put in it, not yet logged.
type PendingBatch = (Page, Vec<(Vec<u8>, Vec<u8>)>);

fn image(page: &Page) -> Box<[u8; PAGE_SIZE]> {
    Box::new(*page.clone().seal())
}

fn child_at(body: &[u8], index: usize) -> u32 {
    u32::from_le_bytes(node::value(body, index).try_into().expect("child pointers are u32"))
}

/// The child of an internal node covering `key`, and its position: `None`
/// for the leftmost child (the link), else its cell's index.
fn child_for(body: &[u8], key: &[u8]) -> (u32, Option<usize>) {
    match node::search(body, key) {
        Ok(index) => (child_at(body, index), Some(index)),
        Err(0) => (node::link(body), None),
        Err(index) => (child_at(body, index - 1), Some(index - 1)),
    }
}

fn rows_in(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    (0..node::count(body)).map(move |i| (node::key(body, i), node::value(body, i)))
}

impl Store {
    /// Opens a store over a pool and an open WAL, after redo. `next_xid` is
    /// the lowest transaction id not yet used in the log.
    pub(crate) fn new(
        fs: Arc<dyn Fs>,
        data_dir: &Path,
        pool: BufferPool,
        wal: Arc<Wal>,
        next_xid: u64,
        undo_memory: usize,
        system_id: u64,
    ) -> Result<Self, StoreError> {
        let next_page = pool.file_pages().map_err(BufferError::from)?;
        Ok(Store {
            fs,
            data_dir: data_dir.to_path_buf(),
            pool,
            wal,
            next_page,
            free: BTreeSet::new(),
            imaged: BTreeSet::new(),
            active: BTreeMap::new(),
            next_xid: next_xid.max(1),
            undo_memory,
            last_commit_micros: 0,
            system_id,
        })
    }

    /// The lowest transaction id not yet handed out.
    pub fn next_xid(&self) -> u64 {
        self.next_xid
    }

    /// The database's identity (see [`ControlFile::system_id`]).
    pub fn system_id(&self) -> u64 {
        self.system_id
    }

    /// The buffer pool.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The WAL.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// Writes every dirty page and syncs the data file (a standby's
    /// restartpoint).
    pub async fn write_all_pages(&mut self) -> Result<(), StoreError> {
        self.pool.flush_all(&self.wal).await?;
        Ok(())
    }

    /// Whether any page was ever allocated (a tree exists).
    pub fn is_empty(&self) -> bool {
        self.next_page == 0
    }

    /// Pages allocated so far.
    pub fn page_count(&self) -> u32 {
        self.next_page
    }

    /// Whether transaction `xid` has begun and not ended.
    pub fn is_active(&self, xid: u64) -> bool {
        self.active.contains_key(&xid)
    }

    /// The transactions that have begun and not ended, by id.
    pub fn active_xids(&self) -> Vec<u64> {
        self.active.keys().copied().collect()
    }

    /// Replays one storage record (ending at `end`) during recovery.
    pub async fn redo(&mut self, end: Lsn, op: Op) -> Result<Redo, StoreError> {
        let (images, deltas) = match op {
            Op::PageImages { images } => (images, Vec::new()),
            Op::PageChanges { images, deltas } => (images, deltas),
            op => return self.redo_row(end, op).await,
        };
        // An image is the truth: install it without reading the disk.
        for (page_no, image) in images {
            self.next_page = self.next_page.max(page_no + 1);
            self.pool.install(Page::from_logged_image(page_no, image, end), &self.wal).await?;
        }
        for delta in deltas {
            self.next_page = self.next_page.max(delta.page_no + 1);
            let redo = |page: &mut Page| Ok::<_, RedoRefused>(delta.redo(page, end));
            self.pool.apply(delta.page_no, end, &self.wal, redo).await?.expect("a delta always applies");
        }
        Ok(Redo::Applied)
    }

    /// Replays a row change (or its compensation) into its leaf.
    async fn redo_row(&mut self, end: Lsn, op: Op) -> Result<Redo, StoreError> {
        let page_no = op.row_page().expect("redo is given records that change pages");
        self.next_page = self.next_page.max(page_no + 1);
        let misses = self.pool.stats().misses;
        let applied =
            self.pool.apply(page_no, end, &self.wal, |page| op.redo(page, end)).await?.map_err(|refused| {
                StoreError::Inapplicable { record: format!("the WAL record ending at {end}"), detail: refused.0 }
            })?;
        if applied == Redo::Applied && self.pool.stats().misses > misses {
            probe::hit(Probe::RedoOnDiskPage);
        }
        if applied == Redo::Applied && op.is_edit() {
            probe::hit(Probe::EditRedone);
        }
        Ok(applied)
    }

    /// Begins a transaction and returns its id.
    pub fn begin(&mut self) -> u64 {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.active.insert(xid, ActiveTxn::default());
        xid
    }

    /// Re-creates a transaction that recovery found without an end record,
    /// so that [`rollback`](Self::rollback) can undo it, reading its records
    /// back from the WAL along its chain.
    pub(crate) fn adopt_loser(&mut self, entry: ActiveTxnEntry) {
        self.next_xid = self.next_xid.max(entry.xid + 1);
        let (last_lsn, undo_next) = (entry.last_lsn, entry.undo_next);
        let txn = ActiveTxn { first_lsn: Lsn::ZERO, last_lsn, undo_next, ..ActiveTxn::default() };
        self.active.insert(entry.xid, txn);
    }

    /// Ends transaction `xid` with a commit record stamped with the wall
    /// clock's `now_micros`, read by the caller while it holds the store (so
    /// that time order is log order), and returns the appended record; the
    /// caller must make its end durable ([`Wal::flush`]) before
    /// acknowledging. A transaction that wrote nothing logs nothing and
    /// returns `None`.
    ///
    /// Commit times never go backwards in log order: a clock stepped back
    /// stamps the previous commit's time instead (counted as a clamp), so a
    /// point-in-time recovery that stops at the first commit after a time
    /// stops at the right place.
    pub async fn commit(&mut self, xid: u64, now_micros: u64) -> Result<Option<CommitAppended>, StoreError> {
        let txn = self.active.get(&xid).unwrap_or_else(|| panic!("transaction {xid} is not active"));
        if txn.first_lsn == Lsn::ZERO {
            self.active.remove(&xid);
            return Ok(None);
        }
        let clamped = now_micros < self.last_commit_micros && !active(PlantedBug::NoCommitTimeClamp);
        let time_micros = if clamped { self.last_commit_micros } else { now_micros };
        let (lsn, end) = self.wal.append(&Record::commit(xid, txn.last_lsn, time_micros)).await?;
        self.last_commit_micros = time_micros;
        let txn = self.active.remove(&xid).expect("active");
        // Later records, a reused page's image among them, follow the commit
        // record in the log: no crash can keep the reuse and lose the commit.
        let freed = if active(PlantedBug::FreeBeforeCommit) { Vec::new() } else { txn.free_on_commit };
        self.free_trees(freed).await;
        Ok(Some(CommitAppended { lsn, end, clamped }))
    }

    /// Crash recovery, after redo, gives the store what its pass over the
    /// log found: the WAL opened for appends where the log ends (in place
    /// of the read-only one redo ran over), the lowest transaction id not
    /// used in the log, and the newest commit time (the floor for the next
    /// commit's).
    pub(crate) fn recovered(&mut self, wal: Arc<Wal>, next_xid: u64, last_commit_micros: u64) {
        debug_assert!(wal.end_lsn() >= self.wal.end_lsn(), "the log opened for appends holds what redo read");
        self.wal = wal;
        self.next_xid = self.next_xid.max(next_xid);
        self.last_commit_micros = self.last_commit_micros.max(last_commit_micros);
    }

    /// Frees `tree`'s pages when transaction `xid` commits (a table it
    /// dropped, or the old tree of one it replaced).
    pub async fn free_on_commit(&mut self, xid: u64, tree: Tree) {
        if active(PlantedBug::FreeBeforeCommit) {
            return self.free_trees(vec![tree]).await;
        }
        self.active.get_mut(&xid).expect("active").free_on_commit.push(tree);
    }

    /// Frees `tree`'s pages if transaction `xid` rolls back (a table it
    /// created, which nothing else can have seen).
    pub fn free_on_rollback(&mut self, xid: u64, tree: Tree) {
        self.active.get_mut(&xid).expect("active").free_on_rollback.push(tree);
    }

    /// Makes every page below the end of the file that none of `trees`
    /// reaches free, and returns how many are. The database calls it at open
    /// with every tree its catalog names, so pages freed before a restart
    /// (or leaked by a crash between a drop's commit and its freeing) are
    /// found again. On an error nothing is free.
    pub async fn reclaim_unreachable(&mut self, trees: &[Tree]) -> Result<usize, StoreError> {
        self.free.clear();
        let mut reached = BTreeSet::new();
        for tree in trees {
            reached.extend(self.tree_pages(*tree).await?);
        }
        self.free = (0..self.next_page).filter(|page_no| !reached.contains(page_no)).collect();
        Ok(self.free.len())
    }

    /// Pages free for reuse.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// The numbers of the pages free for reuse, ascending.
    pub fn free_page_numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied()
    }

    async fn free_trees(&mut self, trees: Vec<Tree>) {
        for tree in trees {
            match self.tree_pages(tree).await {
                Ok(pages) => self.free.extend(pages),
                // Best effort: the transaction is decided either way, and
                // the next open finds the pages.
                Err(error) => {
                    tracing::warn!(root = tree.root, %error, "a freed tree's pages stay unused until restart")
                }
            }
        }
    }

    /// Every page of `tree`. Internal nodes are read; leaves are not: the
    /// tree's height, down its leftmost path, says which children are
    /// leaves.
    async fn tree_pages(&mut self, tree: Tree) -> Result<Vec<u32>, StoreError> {
        let mut height = 0;
        let mut page_no = tree.root;
        loop {
            let page = self.pool.fetch(page_no, &self.wal).await?;
            if page.kind() == PageKind::Leaf {
                break;
            }
            page_no = node::link(page.body());
            height += 1;
            self.check_height(tree, page_no, height)?;
        }
        let mut pages = Vec::new();
        let mut level = vec![tree.root];
        for _ in 0..height {
            let mut below = Vec::new();
            for &page_no in &level {
                let page = self.pool.fetch(page_no, &self.wal).await?;
                if page.kind() != PageKind::Internal {
                    let path = self.data_dir.join(DATA_FILE_NAME);
                    let detail = format!("a leaf above the leaf level of the tree rooted at page {}", tree.root);
                    return Err(StorageError::CorruptPage { path, page_no, detail }.into());
                }
                let body = page.body();
                below.push(node::link(body));
                below.extend((0..node::count(body)).map(|index| child_at(body, index)));
            }
            pages.append(&mut level);
            level = below;
        }
        pages.append(&mut level);
        Ok(pages)
    }

    /// Rolls transaction `xid` back: undoes each of its changes newest first,
    /// logging a compensation record for each, then logs its abort record.
    /// Used by an explicit rollback, a transaction chosen as a deadlock
    /// victim, and recovery's undo phase alike. Returns how many changes were
    /// undone. If it fails (an I/O error reading a page, say), the engine
    /// stops, since the transaction's remaining changes cannot be hidden;
    /// recovery completes the rollback on restart.
    pub async fn rollback(&mut self, xid: u64) -> Result<u64, StoreError> {
        let result = self.undo_all(xid).await;
        if let Err(error) = &result {
            // Half undone, the transaction's changes would be visible to
            // others: stop, and let recovery finish the rollback.
            self.wal.halt(&format!("rolling back transaction {xid} failed: {error}"));
        }
        result
    }

    async fn undo_all(&mut self, xid: u64) -> Result<u64, StoreError> {
        let mut reader: Option<WalReader> = None;
        let mut undone = 0;
        // Where an earlier undo, cut off by a crash, resumes: its last
        // compensation record (the transaction's last record) points here.
        let txn = self.active.get(&xid).unwrap_or_else(|| panic!("transaction {xid} is not active"));
        let resumed_at = (txn.last_lsn != txn.undo_next).then_some(txn.undo_next);
        loop {
            let txn = self.active.get(&xid).unwrap_or_else(|| panic!("transaction {xid} is not active"));
            let next = txn.undo_next;
            if next == Lsn::ZERO {
                break;
            }
            let (prev, op) = match txn.records.get(&next) {
                Some((prev, op)) => (*prev, op.clone()),
                None => {
                    if reader.is_none() {
                        // The record may still be only in the log buffer.
                        self.wal.flush(self.wal.end_lsn()).await?;
                        let opts = self.wal.options();
                        reader = Some(WalReader::new(self.fs.clone(), opts.clone(), opts.first_lsn()));
                    }
                    let reader = reader.as_mut().expect("just opened");
                    probe::hit(Probe::UndoReadFromLog);
                    let record = reader.record_at(next)?;
                    let op = Op::decode(&record.payload)
                        .map_err(|e| StoreError::BadRecord { lsn: next, detail: e.to_string() })?;
                    (record.prev_lsn, op)
                }
            };
            match op {
                Op::Compensation { undo_next, .. } => {
                    self.active.get_mut(&xid).expect("active").undo_next = undo_next;
                }
                op => {
                    let inverses = op.undo();
                    if inverses.is_empty() {
                        return Err(StoreError::BadRecord {
                            lsn: next,
                            detail: format!("transaction {xid}'s undo chain reaches a redo-only record"),
                        });
                    }
                    // A batch's rows are undone one by one: each compensation
                    // but the last points back at the batch, so an undo cut
                    // off by a crash undoes the whole batch again (deleting a
                    // row already deleted changes nothing).
                    let last = inverses.len() - 1;
                    if last > 0 && resumed_at == Some(next) {
                        probe::hit(Probe::BatchUndoResumed);
                    }
                    for (n, inverse) in inverses.into_iter().enumerate() {
                        let rest_undone = n == last || active(PlantedBug::BatchUndoSkipsRest);
                        self.undo_one(xid, next, inverse, if rest_undone { prev } else { next }).await?;
                    }
                    self.active.get_mut(&xid).expect("active").undo_next = prev;
                    undone += 1;
                }
            }
        }
        let txn = self.active.get(&xid).expect("active");
        if txn.last_lsn != Lsn::ZERO {
            self.wal.append(&Record::abort(xid, txn.last_lsn)).await?;
        }
        let txn = self.active.remove(&xid).expect("active");
        self.free_trees(txn.free_on_rollback).await;
        Ok(undone)
    }

    /// Applies the inverse of one change (the record at `lsn`) by key,
    /// logged as a compensation record pointing at `undo_next`.
    async fn undo_one(&mut self, xid: u64, lsn: Lsn, inverse: Op, undo_next: Lsn) -> Result<(), StoreError> {
        let undo_next = Some(undo_next);
        match inverse {
            Op::Delete { table, key, .. } => {
                self.write(xid, Tree { root: table }, &key, None, undo_next).await?;
            }
            Op::Insert { table, key, value, .. } | Op::Update { table, key, new_value: value, .. } => {
                self.write(xid, Tree { root: table }, &key, Some(&value), undo_next).await?;
            }
            Op::Edit { table, ref key, .. } => {
                let current = self.get(Tree { root: table }, key).await?;
                let value = inverse.edit(current.as_deref()).map_err(|detail| StoreError::Inapplicable {
                    record: format!("the undo of transaction {xid}'s WAL record at {lsn}"),
                    detail,
                })?;
                probe::hit(Probe::EditUndone);
                self.write(xid, Tree { root: table }, key, Some(&value), undo_next).await?;
            }
            other => unreachable!("undo of a row change is a row change, not {other:?}"),
        }
        Ok(())
    }

    /// Creates an empty tree. Its page is logged redo-only: a transaction
    /// that creates a table and rolls back leaves an unreachable page.
    pub async fn create_tree(&mut self) -> Result<Tree, StoreError> {
        self.wal.check_running()?;
        let root = self.allocate();
        let mut page = Page::new(root, PageKind::Leaf);
        node::init(page.body_mut(), 0);
        let (_, end) = self.log_redo_only(&Op::PageImages { images: vec![(root, image(&page))] }).await?;
        self.install_logged(vec![page], end).await?;
        Ok(Tree { root })
    }

    /// The value stored under `key`.
    pub async fn get(&mut self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let leaf = *self.descend(tree, key).await?.last().expect("a path ends at a leaf");
        let body = self.pool.fetch(leaf, &self.wal).await?.body();
        Ok(node::search(body, key).ok().map(|index| node::value(body, index).to_vec()))
    }

    /// Every row, in key order.
    pub async fn scan(&mut self, tree: Tree) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.scan_range(tree, Bound::Unbounded, Bound::Unbounded).await
    }

    /// The rows with keys in the range, in key order.
    pub async fn scan_range(
        &mut self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.scan_limit(tree, start, end, usize::MAX).await
    }

    /// At most `limit` rows with keys in the range, in key order: a batch of
    /// a long scan, resumed from just after the last key returned.
    pub async fn scan_limit(
        &mut self,
        tree: Tree,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let first: &[u8] = match start {
            Bound::Included(key) | Bound::Excluded(key) => key,
            Bound::Unbounded => &[],
        };
        let mut leaf = *self.descend(tree, first).await?.last().expect("a path ends at a leaf");
        let mut rows = Vec::new();
        // The previous leaf's last key: keys rise along the leaf chain, and
        // a sibling link that goes back (a page two trees share, say) would
        // loop forever.
        let mut last_key: Option<Vec<u8>> = None;
        loop {
            let body = self.pool.fetch(leaf, &self.wal).await?.body();
            if node::count(body) > 0 && last_key.as_deref().is_some_and(|last| node::key(body, 0) <= last) {
                let path = self.data_dir.join(DATA_FILE_NAME);
                let detail =
                    format!("the leaf chain of the tree rooted at page {} goes back in key order here", tree.root);
                return Err(StorageError::CorruptPage { path, page_no: leaf, detail }.into());
            }
            for (key, value) in rows_in(body) {
                let after_start = match start {
                    Bound::Included(s) => key >= s,
                    Bound::Excluded(s) => key > s,
                    Bound::Unbounded => true,
                };
                let before_end = match end {
                    Bound::Included(e) => key <= e,
                    Bound::Excluded(e) => key < e,
                    Bound::Unbounded => true,
                };
                if !before_end || rows.len() == limit {
                    return Ok(rows);
                }
                if after_start {
                    rows.push((key.to_vec(), value.to_vec()));
                }
            }
            if let Some(last) = node::count(body).checked_sub(1) {
                last_key = Some(node::key(body, last).to_vec());
            }
            match node::link(body) {
                0 => return Ok(rows),
                next => leaf = next,
            }
        }
    }

    /// Checks the structure of `tree` from its root, as a backup's verifier
    /// does after replay: every page is a valid node of the right kind, keys
    /// rise within each node and stay within the range its parent gives it,
    /// every leaf is at the same depth, no page is reached twice, and the
    /// leaf chain links the leaves in key order. Returns the tree's shape; a
    /// violation is a [`StorageError::CorruptPage`] naming the page.
    pub async fn check_tree(&mut self, tree: Tree) -> Result<TreeShape, StoreError> {
        let path = self.data_dir.join(DATA_FILE_NAME);
        let corrupt = |page_no: u32, detail: String| -> StoreError {
            let detail = format!("tree rooted at page {}: {detail}", tree.root);
            StorageError::CorruptPage { path: path.clone(), page_no, detail }.into()
        };
        let mut shape = TreeShape::default();
        let mut leaves: Vec<(u32, u32)> = Vec::new();
        let mut leaf_depth = None;
        let mut seen = BTreeSet::new();
        // A page to check, its depth, the lowest key it may hold and the key
        // it must stay below.
        type Visit = (u32, usize, Option<Vec<u8>>, Option<Vec<u8>>);
        let mut stack: Vec<Visit> = vec![(tree.root, 0, None, None)];
        while let Some((page_no, depth, low, high)) = stack.pop() {
            if !seen.insert(page_no) {
                return Err(corrupt(page_no, "the page is reached twice".into()));
            }
            self.check_height(tree, page_no, depth)?;
            let page = self.pool.fetch(page_no, &self.wal).await?;
            let kind = page.kind();
            let body = page.body();
            node::check(body).map_err(|detail| corrupt(page_no, detail))?;
            let count = node::count(body);
            if count > 0 {
                if low.as_deref().is_some_and(|low| node::key(body, 0) < low) {
                    return Err(corrupt(page_no, "its first key is below its parent's separator".into()));
                }
                if high.as_deref().is_some_and(|high| node::key(body, count - 1) >= high) {
                    return Err(corrupt(page_no, "its last key is not below the next separator".into()));
                }
            }
            shape.pages += 1;
            match kind {
                PageKind::Leaf => {
                    if *leaf_depth.get_or_insert(depth) != depth {
                        return Err(corrupt(page_no, format!("a leaf at depth {depth}, others at {leaf_depth:?}")));
                    }
                    shape.rows += count as u64;
                    shape.height = depth + 1;
                    leaves.push((page_no, node::link(body)));
                }
                PageKind::Internal => {
                    let body = body.to_vec();
                    // Pushed right to left, so the leftmost child is checked
                    // first and leaves are met in key order.
                    for index in (0..count).rev() {
                        let next = (index + 1 < count).then(|| node::key(&body, index + 1).to_vec()).or(high.clone());
                        stack.push((child_at(&body, index), depth + 1, Some(node::key(&body, index).to_vec()), next));
                    }
                    let first = if count > 0 { Some(node::key(&body, 0).to_vec()) } else { high.clone() };
                    stack.push((node::link(&body), depth + 1, low.clone(), first));
                }
                other => return Err(corrupt(page_no, format!("a {other:?} page inside a tree"))),
            }
        }
        for pair in leaves.windows(2) {
            if pair[0].1 != pair[1].0 {
                let detail = format!("the leaf links to page {}, but the next leaf is page {}", pair[0].1, pair[1].0);
                return Err(corrupt(pair[0].0, detail));
            }
        }
        if let Some(&(last, link)) = leaves.last() {
            if link != 0 {
                return Err(corrupt(last, format!("the last leaf links on to page {link}")));
            }
        }
        Ok(shape)
    }

    /// The first record of the oldest transaction still open, whose undo
    /// may need the log from there.
    pub fn oldest_active_lsn(&self) -> Option<Lsn> {
        self.active.values().map(|txn| txn.first_lsn).filter(|lsn| *lsn != Lsn::ZERO).min()
    }

    /// See [`TREE_HEIGHT_MAX`].
    fn check_height(&self, tree: Tree, page_no: u32, depth: usize) -> Result<(), StoreError> {
        if depth <= TREE_HEIGHT_MAX {
            return Ok(());
        }
        let path = self.data_dir.join(DATA_FILE_NAME);
        let detail =
            format!("reached {depth} levels below the root, page {}: a cycle among the tree's pages", tree.root);
        Err(StorageError::CorruptPage { path, page_no, detail }.into())
    }

    /// Inserts or replaces a row on behalf of transaction `xid`.
    pub async fn put(&mut self, xid: u64, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong { len: key.len() });
        }
        node::check_cell(key, value)?;
        self.write(xid, tree, key, Some(value), None).await.map(|_| ())
    }

    /// Inserts new rows on behalf of transaction `xid`, in order, until one
    /// whose key exists; returns how many it inserted (`rows.len()` when
    /// none exists). Consecutive rows that land in the same leaf are logged
    /// as one `InsertBatch` record, so a load in key order logs about one
    /// record per leaf instead of one per row; a row that needs a split goes
    /// the one-row way.
    pub async fn insert_batch(
        &mut self,
        xid: u64,
        tree: Tree,
        rows: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<usize, StoreError> {
        for (key, value) in rows {
            if key.len() > MAX_KEY_LEN {
                return Err(StoreError::KeyTooLong { len: key.len() });
            }
            node::check_cell(key, value)?;
        }
        // The leaf being filled: its changed copy and the rows put in it.
        let mut pending: Option<PendingBatch> = None;
        for (inserted, (key, value)) in rows.iter().enumerate() {
            let path = self.descend(tree, key).await?;
            let leaf = *path.last().expect("a path ends at a leaf");
            if pending.as_ref().is_some_and(|(page, _)| page.page_no() != leaf) {
                self.log_batch(xid, tree, pending.take()).await?;
            }
            let (changed, batch) = match &mut pending {
                Some(pending) => pending,
                None => pending.insert((self.pool.fetch(leaf, &self.wal).await?.clone(), Vec::new())),
            };
            if node::search(changed.body(), key).is_ok() {
                self.log_batch(xid, tree, pending).await?;
                return Ok(inserted);
            }
            if node::put(changed.body_mut(), key, value).is_ok() {
                batch.push((key.clone(), value.clone()));
                continue;
            }
            self.log_batch(xid, tree, pending.take()).await?;
            self.write(xid, tree, key, Some(value), None).await?;
        }
        self.log_batch(xid, tree, pending).await?;
        Ok(rows.len())
    }

    /// Logs and makes the rows [`Store::insert_batch`] put in one leaf: one
    /// `Insert` record for a single row, an `InsertBatch` for more.
    async fn log_batch(&mut self, xid: u64, tree: Tree, pending: Option<PendingBatch>) -> Result<(), StoreError> {
        let Some((changed, mut rows)) = pending else { return Ok(()) };
        let (table, page_no) = (tree.root, changed.page_no());
        let op = match rows.len() {
            0 => return Ok(()),
            1 => {
                let (key, value) = rows.pop().expect("one row");
                Op::Insert { table, page_no, key, value }
            }
            _ => Op::InsertBatch { table, page_no, rows },
        };
        // The leaf was fetched before the descents that followed; `change`
        // needs it resident, unchanged since (the caller holds the store).
        self.pool.fetch(page_no, &self.wal).await?;
        self.change(xid, page_no, op, changed).await
    }

    /// Deletes a row on behalf of transaction `xid`; `false` if there was no
    /// such row.
    pub async fn delete(&mut self, xid: u64, tree: Tree, key: &[u8]) -> Result<bool, StoreError> {
        self.write(xid, tree, key, None, None).await
    }

    /// Sets (`Some`) or removes (`None`) the row under `key`, logging the
    /// change under `xid`; as a compensation record when `compensates` names
    /// an undo-next LSN. Returns whether a record was logged: removing a
    /// missing row logs nothing, unless it compensates (the chain must move).
    async fn write(
        &mut self,
        xid: u64,
        tree: Tree,
        key: &[u8],
        value: Option<&[u8]>,
        compensates: Option<Lsn>,
    ) -> Result<bool, StoreError> {
        loop {
            let path = self.descend(tree, key).await?;
            let leaf = *path.last().expect("a path ends at a leaf");
            let mut changed = self.pool.fetch(leaf, &self.wal).await?.clone();
            let body = changed.body_mut();
            let found = node::search(body, key).ok();
            let old = found.map(|index| node::value(body, index).to_vec());
            let (table, page_no, key) = (tree.root, leaf, key.to_vec());
            let op = match (value, old) {
                (Some(value), old) => {
                    if node::put(body, &key, value).is_err() {
                        self.split(tree, &path, &key).await?;
                        continue;
                    }
                    match old {
                        Some(old_value) => Op::update(table, page_no, key, &old_value, value),
                        None => Op::Insert { table, page_no, key, value: value.to_vec() },
                    }
                }
                (None, Some(old_value)) => {
                    node::remove(body, found.expect("the row was found"));
                    Op::Delete { table, page_no, key, old_value }
                }
                (None, None) if compensates.is_some() => Op::Delete { table, page_no, key, old_value: Vec::new() },
                (None, None) => return Ok(false),
            };
            let underfull = value.is_none() && node::live_bytes(changed.body()) < MERGE_BELOW;
            let op = match compensates {
                Some(undo_next) => Op::Compensation { undo_next, redo: Box::new(op) },
                None => op,
            };
            self.change(xid, leaf, op, changed).await?;
            if underfull && path.len() > 1 {
                self.merge(&path).await?;
            }
            return Ok(true);
        }
    }

    /// Takes a checkpoint at once and returns its LSN: [`Store::checkpoint_begin`]
    /// then [`Store::checkpoint_end`], with every page written in between.
    pub async fn checkpoint(
        &mut self,
        state: ControlState,
        may_retire: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Lsn, StoreError> {
        let run = self.checkpoint_begin().await?;
        self.checkpoint_end(run, state, may_retire).await
    }

    /// Begins a checkpoint: logs `CheckpointBegin`, whose LSN becomes the
    /// redo point, and lists the pages dirty with changes from before it.
    /// From here a page's next change logs its full image again. The caller
    /// may then let the store go and write the pages a few at a time
    /// ([`Store::checkpoint_write`]) while transactions run, before
    /// [`Store::checkpoint_end`].
    pub async fn checkpoint_begin(&mut self) -> Result<CheckpointRun, StoreError> {
        let (begin, _) = self.log_redo_only(&Op::CheckpointBegin).await?;
        self.imaged.clear();
        if active(PlantedBug::CheckpointBeforeFlush) {
            self.wal.flush(self.wal.end_lsn()).await?;
            self.control_at(begin, ControlState::InProduction).store(self.fs.as_ref(), &self.data_dir)?;
        }
        // A recovery LSN is the end of the first record that dirtied the
        // page: a record ending exactly at the begin record (the one just
        // before it) started before the redo point, so redo will never
        // replay it, and its page is due too.
        let due = self
            .pool
            .dirty_pages()
            .iter()
            .filter(|(_, rec_lsn)| {
                if **rec_lsn == begin {
                    probe::hit(Probe::CheckpointPageDirtiedAtBegin);
                    return !active(PlantedBug::CheckpointSkipsPageDirtiedAtBegin);
                }
                **rec_lsn < begin
            })
            .map(|(no, _)| *no)
            .collect();
        Ok(CheckpointRun { begin, due, data_file: self.pool.data_file_sync(), synced: false })
    }

    /// Writes up to `pages` more of a checkpoint's pages (WAL first; those
    /// written or evicted since are skipped). Returns whether any remain.
    pub async fn checkpoint_write(&mut self, run: &mut CheckpointRun, pages: usize) -> Result<bool, StoreError> {
        let step: Vec<u32> = run.due.drain(..pages.min(run.due.len())).collect();
        run.synced &= step.is_empty();
        {
            let _phase = probe::enter(Phase::CheckpointFlush);
            self.pool.write_dirty_before(&step, run.begin, &self.wal).await?;
        }
        Ok(!run.due.is_empty())
    }

    /// Ends a checkpoint and returns its LSN:
    ///
    /// 1. write the pages still due and sync the data file (WAL first),
    ///    unless the caller synced it after the last was written
    ///    ([`CheckpointRun::sync_written`]): every change before the begin
    ///    record is now on disk;
    /// 2. log `CheckpointEnd` with the active transactions (each with its
    ///    last and undo-next LSNs) and the dirty page table, and make it
    ///    durable;
    /// 3. replace the control file atomically, pointing at the begin record,
    ///    which is the redo point, and recording `state`;
    /// 4. retire the WAL segments that neither redo nor the undo of an
    ///    active transaction still needs (`may_retire` is the archiver's say).
    ///
    /// A crash before step 3 leaves the previous checkpoint in force, and
    /// the log it needs is still there. Transactions may have run since the
    /// begin record: recovery's analysis starts there, so it sees their
    /// records before the end record's table, which fills in only the
    /// transactions it has not seen.
    pub async fn checkpoint_end(
        &mut self,
        run: CheckpointRun,
        state: ControlState,
        may_retire: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Lsn, StoreError> {
        self.checkpoint_log_end(run, state).await?.finish(may_retire).await
    }

    /// Steps 1 and 2 of [`Store::checkpoint_end`] up to logging the end
    /// record: what needs the store. The rest ([`CheckpointTail::finish`]:
    /// the end record made durable, the control file, the retired WAL) does
    /// not, so a caller may let writers in before it, and they never wait
    /// for its syncs.
    pub async fn checkpoint_log_end(
        &mut self,
        mut run: CheckpointRun,
        state: ControlState,
    ) -> Result<CheckpointTail, StoreError> {
        let begin = run.begin;
        self.checkpoint_write(&mut run, usize::MAX).await?;
        if !run.synced {
            let _phase = probe::enter(Phase::CheckpointFlush);
            self.pool.sync(&self.wal)?;
        }
        let dirty = self.pool.dirty_pages().iter().map(|(no, lsn)| (*no, *lsn)).collect();
        let att = self
            .active
            .iter()
            .filter(|(_, txn)| txn.first_lsn != Lsn::ZERO && !active(PlantedBug::ForgetActiveTransactions))
            .map(|(&xid, txn)| ActiveTxnEntry { xid, last_lsn: txn.last_lsn, undo_next: txn.undo_next })
            .collect();
        let last_commit_micros = self.last_commit_micros;
        let (end_record, end) =
            self.log_redo_only(&Op::CheckpointEnd { active: att, dirty, last_commit_micros }).await?;
        // Transactions that begin after this log after the end record, so
        // the WAL they need is never below the redo point.
        let oldest_undo = self.oldest_active_lsn();
        let needed_from = oldest_undo.map_or(begin, |oldest| oldest.min(begin));
        if needed_from < begin {
            probe::hit(Probe::CheckpointHeldForUndo);
        }
        Ok(CheckpointTail {
            control: self.control_at(begin, state),
            end_record,
            end,
            needed_from,
            wal: self.wal.clone(),
            fs: self.fs.clone(),
            data_dir: self.data_dir.clone(),
        })
    }

    /// The planted `recovery_moves_redo_point`: a checkpoint that writes
    /// none of the pages dirty at its begin, yet moves the redo point.
    pub async fn planted_move_redo_point(&mut self) -> Result<(), StoreError> {
        let mut run = self.checkpoint_begin().await?;
        run.due.clear();
        run.synced = true;
        self.checkpoint_log_end(run, ControlState::InProduction).await?.finish(&|_| false).await?;
        Ok(())
    }

    /// The control file of a checkpoint whose begin record is at `begin`.
    fn control_at(&self, begin: Lsn, state: ControlState) -> ControlFile {
        ControlFile {
            state,
            checkpoint_lsn: begin,
            redo_lsn: begin,
            next_xid: self.next_xid,
            timeline: self.wal.options().timeline,
            wal_segment_size: self.wal.options().segment_size,
            system_id: self.system_id,
        }
    }

    /// Logs a row change (after the page's image, on its first change) and
    /// makes it in the pool: `after` replaces resident page `page_no`, which
    /// is still as it was before the change.
    async fn change(&mut self, xid: u64, page_no: u32, op: Op, after: Page) -> Result<(), StoreError> {
        if matches!(op, Op::Compensation { .. }) && active(PlantedBug::UndoWithoutClr) {
            let lsn = self.pool.resident_page(page_no).page_lsn();
            self.pool.modify(page_no, lsn, |resident| resident.copy_from(&after));
            return Ok(());
        }
        let compensation = matches!(op, Op::Compensation { .. });
        let skip_image =
            active(PlantedBug::SkipFullPageImage) || (compensation && active(PlantedBug::ClrWithoutPageImage));
        if !self.imaged.contains(&page_no) && !skip_image {
            if compensation {
                probe::hit(Probe::ClrFirstChangeAfterCheckpoint);
            }
            let before = image(self.pool.resident_page(page_no));
            let (_, end) = self.log_redo_only(&Op::PageImages { images: vec![(page_no, before)] }).await?;
            self.pool.modify(page_no, end, |_| {});
            self.imaged.insert(page_no);
        }
        let end = self.log_for(xid, op).await?;
        self.pool.modify(page_no, end, |resident| resident.copy_from(&after));
        Ok(())
    }

    fn allocate(&mut self) -> u32 {
        if let Some(page_no) = self.free.pop_first() {
            probe::hit(Probe::PageReused);
            return page_no;
        }
        let page_no = self.next_page;
        self.next_page += 1;
        page_no
    }

    /// Appends a record that belongs to no transaction (structure changes,
    /// page images, checkpoints); returns its LSN and end LSN.
    async fn log_redo_only(&self, op: &Op) -> Result<(Lsn, Lsn), StoreError> {
        Ok(self.wal.append(&Record::data(0, Lsn::ZERO, op.encode(self.wal.options().compression))).await?)
    }

    /// Appends transaction `xid`'s next record, linked to its previous one;
    /// returns the record's end LSN.
    async fn log_for(&mut self, xid: u64, op: Op) -> Result<Lsn, StoreError> {
        let txn = self.active.get(&xid).unwrap_or_else(|| panic!("transaction {xid} is not active"));
        let payload = op.encode(self.wal.options().compression);
        let size = payload.len();
        let (lsn, end) = self.wal.append(&Record::data(xid, txn.last_lsn, payload)).await?;
        let txn = self.active.get_mut(&xid).expect("active");
        if txn.first_lsn == Lsn::ZERO {
            txn.first_lsn = lsn;
        }
        let prev = std::mem::replace(&mut txn.last_lsn, lsn);
        match op {
            Op::Compensation { undo_next, .. } => txn.undo_next = undo_next,
            op => {
                txn.undo_next = lsn;
                if txn.records_bytes + size <= self.undo_memory {
                    txn.records_bytes += size;
                    txn.records.insert(lsn, (prev, op));
                }
            }
        }
        Ok(end)
    }

    /// The pages from the root to the leaf for `key`. Every tree operation
    /// starts here, so here the engine refuses to serve once it has stopped:
    /// after a fail-stop the pool may hold a half-installed split or a
    /// half-undone transaction.
    async fn descend(&mut self, tree: Tree, key: &[u8]) -> Result<Vec<u32>, StoreError> {
        self.wal.check_running()?;
        let mut path = vec![tree.root];
        loop {
            let page_no = *path.last().expect("non-empty");
            self.check_height(tree, page_no, path.len() - 1)?;
            let page = self.pool.fetch(page_no, &self.wal).await?;
            if page.kind() == PageKind::Leaf {
                return Ok(path);
            }
            assert_eq!(page.kind(), PageKind::Internal, "a tree holds only leaves and internal nodes");
            path.push(child_for(page.body(), key).0);
        }
    }
    /// Splits the last node of `path`, or an ancestor first if the parent
    /// has no room for a separator. The caller descends again afterwards.
    async fn split(&mut self, tree: Tree, path: &[u32], key: &[u8]) -> Result<(), StoreError> {
        let _phase = probe::enter(Phase::TreeSplit);
        let mut level = path.len() - 1;
        while level > 0 {
            let parent = self.pool.fetch(path[level - 1], &self.wal).await?;
            if node::room(parent.body()) >= SEPARATOR_ROOM {
                break;
            }
            level -= 1;
        }
        let page_no = path[level];
        let mut left = self.pool.fetch(page_no, &self.wal).await?.clone();
        let kind = left.kind();
        probe::hit(if level == 0 { Probe::TreeRootSplit } else { Probe::TreeInternalSplit });
        let right_no = self.allocate();
        let mut right = Page::new(right_no, kind);
        node::init(right.body_mut(), 0);
        // A key past the end of the rightmost leaf (a load in key order, or
        // rows keyed by insertion order) starts an empty right sibling and
        // leaves the full leaf full, as PostgreSQL's B-tree does; halving
        // it would leave such a table's leaves half empty for good.
        let body = left.body();
        let append = kind == PageKind::Leaf
            && node::link(body) == 0
            && node::count(body) > 0
            && key > node::key(body, node::count(body) - 1);
        let separator = if append { key.to_vec() } else { node::split_into(left.body_mut(), right.body_mut()) };
        if append {
            probe::hit(Probe::TreeAppendSplit);
        }
        if kind == PageKind::Leaf {
            node::set_link(right.body_mut(), node::link(left.body()));
            node::set_link(left.body_mut(), right_no);
        } else {
            // The separator moves up; its child becomes the right node's leftmost.
            let child = u32::from_le_bytes(node::value(right.body(), 0).try_into().expect("u32 child"));
            node::set_link(right.body_mut(), child);
            node::remove(right.body_mut(), 0);
        }
        let pages = if level == 0 {
            // The root stays put: its cells move to a new left child.
            assert_eq!(page_no, tree.root);
            let left_no = self.allocate();
            let mut moved = Page::new(left_no, kind);
            moved.body_mut().copy_from_slice(left.body());
            let mut root = Page::new(page_no, PageKind::Internal);
            node::init(root.body_mut(), left_no);
            node::insert(root.body_mut(), 0, &separator, &right_no.to_le_bytes()).expect("an empty root has room");
            vec![root, moved, right]
        } else {
            let parent_no = path[level - 1];
            let mut parent = self.pool.fetch(parent_no, &self.wal).await?.clone();
            let index = node::search(parent.body(), &separator).expect_err("separators are unique");
            node::insert(parent.body_mut(), index, &separator, &right_no.to_le_bytes()).expect("room was checked");
            vec![left, right, parent]
        };
        let fresh = if level == 0 { vec![pages[1].page_no(), right_no] } else { vec![right_no] };
        self.log_structure(pages, &fresh).await
    }

    /// Merges the leaf at the end of `path` with a sibling under the same
    /// parent if their rows fit in one page: the right one's rows move into
    /// the left one, which takes over its sibling link, and the parent drops
    /// the right one's separator. One redo-only record logs the after-images
    /// of both survivors, so a crash leaves the merge whole or not begun.
    async fn merge(&mut self, path: &[u32]) -> Result<(), StoreError> {
        let _phase = probe::enter(Phase::TreeMerge);
        let (leaf, parent_no) = (path[path.len() - 1], path[path.len() - 2]);
        let parent = self.pool.fetch(parent_no, &self.wal).await?.clone();
        let body = parent.body();
        if node::count(body) == 0 {
            return Ok(());
        }
        // The pair (left, right) and the index of right's separator.
        let position = (0..node::count(body)).find(|&i| child_at(body, i) == leaf);
        let (left_no, right_no, separator) = match position {
            None => (leaf, child_at(body, 0), 0),
            Some(0) => (node::link(body), leaf, 0),
            Some(i) => (child_at(body, i - 1), leaf, i),
        };
        let mut left = self.pool.fetch(left_no, &self.wal).await?.clone();
        let right = self.pool.fetch(right_no, &self.wal).await?.clone();
        if !node::fits_together(left.body(), right.body()) {
            return Ok(());
        }
        if node::link(left.body()) != right_no {
            // Siblings under one parent are neighbours in the leaf chain,
            // unless the disk returned an older version of one of them.
            let path = self.data_dir.join(DATA_FILE_NAME);
            let detail = format!(
                "leaf {left_no} links to page {} but its parent {parent_no} says its right neighbour is {right_no}",
                node::link(left.body())
            );
            return Err(StorageError::CorruptPage { path, page_no: left_no, detail }.into());
        }
        probe::hit(Probe::TreeLeafMerge);
        for (key, value) in rows_in(right.body()) {
            let index = node::count(left.body());
            node::insert(left.body_mut(), index, key, value).expect("checked to fit");
        }
        node::set_link(left.body_mut(), node::link(right.body()));
        let mut parent = parent;
        node::remove(parent.body_mut(), separator);
        self.log_structure(vec![left, parent], &[]).await?;
        // Nothing reaches the right leaf now, in the log as on disk.
        self.free.insert(right_no);
        Ok(())
    }

    /// Logs the new versions of the pages a structure change (a split or
    /// merge) touched, in one redo-only record, and installs them. A page
    /// already imaged since the checkpoint is logged as a delta against its
    /// resident version when that is small; new pages (`fresh`) and the
    /// rest are logged whole.
    async fn log_structure(&mut self, pages: Vec<Page>, fresh: &[u32]) -> Result<(), StoreError> {
        let (mut images, mut deltas) = (Vec::new(), Vec::new());
        for page in &pages {
            let page_no = page.page_no();
            let delta = if self.imaged.contains(&page_no) && !fresh.contains(&page_no) {
                let before = self.pool.fetch(page_no, &self.wal).await?;
                PageDelta::between(page_no, before.bytes(), page.bytes())
            } else {
                None
            };
            match delta {
                Some(delta) => deltas.push(delta),
                None => images.push((page_no, image(page))),
            }
        }
        let op = if deltas.is_empty() {
            Op::PageImages { images }
        } else {
            probe::hit(Probe::StructureDeltaLogged);
            Op::PageChanges { images, deltas }
        };
        let (_, end) = self.log_redo_only(&op).await?;
        self.install_logged(pages, end).await
    }

    /// Puts pages that a record ending at `end` just logged into the pool,
    /// replacing any resident copies.
    async fn install_logged(&mut self, pages: Vec<Page>, end: Lsn) -> Result<(), StoreError> {
        for mut page in pages {
            page.reset_page_lsn(end);
            self.imaged.insert(page.page_no());
            self.pool.install(page, &self.wal).await?;
        }
        Ok(())
    }
}

const _: () = assert!(SEPARATOR_ROOM <= MAX_CELL_LEN, "a separator is a legal cell");

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::env::{FaultConfig, Fs, SimClock, SimDisk};
    use crate::recovery::{recover, StoreOptions};
    use crate::wal::WalOptions;

    async fn open(disk: &SimDisk, pool_pages: u64) -> Store {
        let fs: Arc<dyn Fs> = disk.fs();
        fs.create_dir_all(Path::new("/db/data")).unwrap();
        let opts = StoreOptions {
            data_dir: "/db/data".into(),
            wal: WalOptions::new("/db/wal").with_segment_size(1 << 14),
            pool_bytes: pool_pages * PAGE_SIZE as u64,
            undo_memory: UNDO_MEMORY_DEFAULT,
            new_system_id: 1,
            replication: None,
        };
        recover(fs, &SimClock::new(0), &opts).await.unwrap().0
    }

    /// Makes the log durable, drops the store and opens it again from the
    /// disk (redo from the log, no checkpoint taken).
    async fn reopen(store: Store, disk: &SimDisk, pool_pages: u64) -> Store {
        let wal = store.wal().clone();
        wal.flush(wal.end_lsn()).await.unwrap();
        drop((store, wal));
        open(disk, pool_pages).await
    }

    fn key(rng: &mut ChaCha8Rng) -> Vec<u8> {
        let id: u16 = rng.random_range(0..400);
        let mut key = id.to_be_bytes().to_vec();
        key.resize(300, b'k');
        key
    }

    #[tokio::test]
    async fn a_tree_matches_an_ordered_map_through_splits_and_merges() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 6).await;
        let tree = store.create_tree().await.unwrap();
        let xid = store.begin();
        let mut model = BTreeMap::new();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let merges_before = probe_count("path.tree_leaf_merge");
        for step in 0..4000 {
            let key = key(&mut rng);
            // Grow for 3,000 steps, then mostly delete, so leaves empty and merge.
            if rng.random_bool(if step < 3000 { 0.2 } else { 0.9 }) {
                let deleted = store.delete(xid, tree, &key).await.unwrap();
                assert_eq!(deleted, model.remove(&key).is_some(), "step {step}");
            } else {
                let value = vec![step as u8; rng.random_range(0..200)];
                store.put(xid, tree, &key, &value).await.unwrap();
                model.insert(key, value);
            }
            if step == 2999 {
                let root = store.pool.fetch(tree.root, &store.wal.clone()).await.unwrap().clone();
                assert_eq!(root.kind(), PageKind::Internal);
                let child = store.pool.fetch(node::link(root.body()), &store.wal.clone()).await.unwrap();
                assert_eq!(child.kind(), PageKind::Internal, "internal nodes split too: the tree has three levels");
            }
        }
        assert!(store.pool().stats().evictions > 100, "the pool stayed bounded");
        assert!(probe_count("path.tree_leaf_merge") > merges_before, "emptied leaves merged");
        assert!(store.free_pages() > 0, "a merged-away leaf is free for reuse");
        assert_eq!(store.scan(tree).await.unwrap(), model.clone().into_iter().collect::<Vec<_>>());
        for (key, value) in model.iter().take(50) {
            assert_eq!(store.get(tree, key).await.unwrap().as_ref(), Some(value));
        }
        assert_eq!(store.get(tree, b"absent").await.unwrap(), None);
        let (low, high) = (model.keys().nth(3).unwrap().clone(), model.keys().nth(9).unwrap().clone());
        let range = store.scan_range(tree, Bound::Excluded(&low), Bound::Included(&high)).await.unwrap();
        let expected: Vec<_> = model.range(low.clone()..=high).skip(1).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(range, expected);

        // The whole log replays to the same tree on a fresh store.
        store.commit(xid, 0).await.unwrap();
        let mut again = reopen(store, &disk, 6).await;
        assert_eq!(again.scan(tree).await.unwrap(), model.into_iter().collect::<Vec<_>>());
    }

    /// Rows loaded in key order fill their leaves: the rightmost leaf
    /// splits by starting a new one, so the tree takes about as many pages
    /// as the rows need, not twice as many; a key inside the range still
    /// finds its place, and the log replays to the same tree.
    #[tokio::test]
    async fn a_load_in_key_order_leaves_full_leaves() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 64).await;
        let tree = store.create_tree().await.unwrap();
        let xid = store.begin();
        let pages_before = store.page_count();
        let value = [7u8; 100];
        for n in 0u32..2000 {
            store.put(xid, tree, &n.to_be_bytes(), &value).await.unwrap();
        }
        // 2,000 cells of about 110 bytes: 28 pages of 8 KiB if full.
        let pages = store.page_count() - pages_before;
        assert!(pages <= 32, "{pages} pages for 2,000 rows loaded in key order");
        store.put(xid, tree, &1000u32.to_be_bytes(), b"again").await.unwrap();
        let rows = store.scan(tree).await.unwrap();
        assert_eq!(rows.len(), 2000);
        assert_eq!(rows[1000].1, b"again");
        store.commit(xid, 0).await.unwrap();
        assert_eq!(reopen(store, &disk, 64).await.scan(tree).await.unwrap(), rows);
    }

    /// A dropped tree's pages are reused once the drop commits, never
    /// before: a rolled-back drop leaves the tree whole. A tree created by a
    /// transaction that rolls back is freed at once. A store reopened from
    /// the log finds the same free pages again.
    #[tokio::test]
    async fn pages_no_tree_reaches_are_reused_only_once_that_is_decided() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 64).await;
        let catalog = store.create_tree().await.unwrap();
        let fill = |n: u32| (n.to_be_bytes(), [n as u8; 700]);
        let doomed = store.create_tree().await.unwrap();
        let xid = store.begin();
        for n in 0..100 {
            let (key, value) = fill(n);
            store.put(xid, doomed, &key, &value).await.unwrap();
        }
        store.commit(xid, 0).await.unwrap();
        let rows = store.scan(doomed).await.unwrap();
        let doomed_pages = store.tree_pages(doomed).await.unwrap();
        assert!(doomed_pages.len() > 8, "the tree has grown internal nodes: {doomed_pages:?}");

        // A drop that rolls back frees nothing.
        let xid = store.begin();
        store.delete(xid, catalog, b"doomed").await.unwrap();
        store.put(xid, catalog, b"dropping", b"doomed").await.unwrap();
        store.free_on_commit(xid, doomed).await;
        store.rollback(xid).await.unwrap();
        assert_eq!(store.free_pages(), 0);

        // A table created by a transaction that rolls back is freed at once.
        let xid = store.begin();
        let scratch = store.create_tree().await.unwrap();
        store.free_on_rollback(xid, scratch);
        for n in 0..30 {
            let (key, value) = fill(n);
            store.put(xid, scratch, &key, &value).await.unwrap();
        }
        let scratch_pages = store.tree_pages(scratch).await.unwrap().len();
        store.rollback(xid).await.unwrap();
        assert_eq!(store.free_pages(), scratch_pages);
        assert_eq!(store.scan(doomed).await.unwrap(), rows, "the rolled-back drop left the tree whole");

        // A drop that commits frees every page; a new tree takes them before the file grows.
        let xid = store.begin();
        store.put(xid, catalog, b"dropped", b"doomed").await.unwrap();
        store.free_on_commit(xid, doomed).await;
        store.commit(xid, 0).await.unwrap();
        assert_eq!(store.free_pages(), scratch_pages + doomed_pages.len());
        let (allocated, reused) = (store.page_count(), probe_count("path.page_reused"));
        let fresh = store.create_tree().await.unwrap();
        let xid = store.begin();
        for n in 0..100 {
            let (key, value) = fill(n + 1);
            store.put(xid, fresh, &key, &value).await.unwrap();
        }
        store.commit(xid, 0).await.unwrap();
        assert_eq!(store.page_count(), allocated, "the file did not grow");
        assert!(probe_count("path.page_reused") > reused);
        let free = store.free.clone();

        // Reopened from the log (no checkpoint since): the same pages are free.
        let fresh_rows = store.scan(fresh).await.unwrap();
        let mut store = reopen(store, &disk, 64).await;
        assert_eq!(store.reclaim_unreachable(&[catalog, fresh]).await.unwrap(), free.len());
        assert_eq!(store.free, free);
        assert_eq!(store.scan(fresh).await.unwrap(), fresh_rows);
    }

    fn probe_count(name: &str) -> u64 {
        let counts = probe::counts(probe::Layer::Storage);
        counts.into_iter().find(|(n, _)| n == name).map(|(_, count)| count).expect("a storage probe")
    }

    #[tokio::test]
    async fn rollback_restores_every_row_a_transaction_touched() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 8).await;
        let tree = store.create_tree().await.unwrap();
        let setup = store.begin();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200 {
            let value = vec![1; rng.random_range(0..300)];
            store.put(setup, tree, &key(&mut rng), &value).await.unwrap();
        }
        store.commit(setup, 0).await.unwrap();
        let before = store.scan(tree).await.unwrap();
        let xid = store.begin();
        for step in 0..600 {
            let key = key(&mut rng);
            if step % 3 == 0 {
                store.delete(xid, tree, &key).await.unwrap();
            } else {
                store.put(xid, tree, &key, &vec![2; rng.random_range(0..400)]).await.unwrap();
            }
        }
        assert_ne!(store.scan(tree).await.unwrap(), before);
        let undone = store.rollback(xid).await.unwrap();
        assert!(undone >= 400, "every change was undone: {undone}");
        assert_eq!(store.scan(tree).await.unwrap(), before, "splits and merges stay, the rows come back");
        assert!(!store.is_active(xid));
    }

    /// A batch insert puts every new row (in key order and not, across
    /// splits), stops at the first key that exists, is undone whole, and
    /// replays from the log after a reopen.
    #[tokio::test]
    async fn a_batch_insert_matches_one_row_at_a_time() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 4).await;
        let tree = store.create_tree().await.unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut expected = BTreeMap::new();
        let xid = store.begin();
        let in_order: Vec<(Vec<u8>, Vec<u8>)> =
            (0u32..400).map(|n| (n.to_be_bytes().to_vec(), vec![n as u8; rng.random_range(0..200)])).collect();
        let scattered: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
            .map(|_| (vec![9, rng.random(), rng.random()], vec![7; rng.random_range(0..100)]))
            .filter(|(key, _)| expected.insert(key.clone(), Vec::new()).is_none())
            .collect();
        expected.clear();
        for rows in [&in_order, &scattered] {
            assert_eq!(store.insert_batch(xid, tree, rows).await.unwrap(), rows.len());
            expected.extend(rows.iter().cloned());
        }
        let again = vec![(vec![9, 9, 9, 9], b"new".to_vec()), in_order[5].clone(), (vec![9, 9, 9, 8], b"x".to_vec())];
        assert_eq!(store.insert_batch(xid, tree, &again).await.unwrap(), 1, "stops at the key that exists");
        expected.insert(vec![9, 9, 9, 9], b"new".to_vec());
        store.commit(xid, 0).await.unwrap();
        assert_eq!(store.scan(tree).await.unwrap(), expected.clone().into_iter().collect::<Vec<_>>());
        store.check_tree(tree).await.unwrap();

        let xid = store.begin();
        let more: Vec<(Vec<u8>, Vec<u8>)> = (1000u32..1300).map(|n| (n.to_be_bytes().to_vec(), vec![1; 50])).collect();
        assert_eq!(store.insert_batch(xid, tree, &more).await.unwrap(), more.len());
        store.rollback(xid).await.unwrap();
        let mut store = reopen(store, &disk, 4).await;
        assert_eq!(store.scan(tree).await.unwrap(), expected.into_iter().collect::<Vec<_>>());
        store.check_tree(tree).await.unwrap();
    }

    #[tokio::test]
    async fn oversized_rows_and_keys_are_refused() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = open(&disk, 8).await;
        let tree = store.create_tree().await.unwrap();
        let xid = store.begin();
        let err = store.put(xid, tree, b"k", &[0; 3000]).await.unwrap_err();
        assert!(err.to_string().contains("3001 bytes"), "{err}");
        let err = store.put(xid, tree, &[1; 600], b"v").await.unwrap_err();
        assert!(err.to_string().contains("600 bytes exceeds the 512-byte limit"), "{err}");
    }
}
