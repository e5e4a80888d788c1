//! B+trees over the buffer pool, with every change logged before it is made.
//!
//! A [`Store`] owns the buffer pool and a handle on the WAL, and allocates
//! pages. Each table is a [`Tree`] whose root page never moves: a root split
//! copies the root's cells into two new children and turns the root into an
//! internal node above them, so nothing has to learn a new root.
//!
//! Logging (see `op.rs` for the formats):
//!
//! - A page's first change after each checkpoint (before the first: since
//!   the store opened) logs its full image before the change itself, so redo
//!   can rebuild a torn page; it reads from disk only pages untouched since
//!   the checkpoint, which the checkpoint wrote and synced.
//! - A row change logs a physiological `Insert`, `Update` or `Delete` that
//!   carries the old value for undo.
//! - A split first makes sure the parent has room for a separator (splitting
//!   the parent first if not), then logs the after-images of the split node,
//!   its new right sibling and the parent in one record. Each split leaves a
//!   valid tree on its own, so a crash between splits or mid-split replays to
//!   a valid tree.
//!
//! Checkpoints ([`Store::checkpoint`]) flush the pool, move the redo point
//! in the control file and retire WAL segments.
//!
//! Not yet: transactions and undo (each change is its own atomic record),
//! fuzzy checkpoints, and merging underfull nodes (deletes leave nodes
//! sparse; they are reclaimed when the node refills).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::buffer::{BufferError, BufferPool};
use super::control::{ControlFile, ControlState};
use super::error::StorageError;
use super::node::{self, CellTooLarge, MAX_CELL_LEN};
use super::op::{Op, Redo};
use super::page::{Page, PageKind, PAGE_SIZE};
use crate::env::Fs;
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};
use crate::wal::{Lsn, Record, RecordKind, Wal, WalError, WalOptions, WalReader};

/// The longest key a tree accepts, so that separator cells always fit.
pub const MAX_KEY_LEN: usize = 512;

const SEPARATOR_ROOM: usize = 4 + MAX_KEY_LEN + 4 + 2;

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
    /// The data file or the control file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The key is longer than a tree accepts.
    #[error("a key of {len} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
}

/// One B+tree: a table's rows by primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    /// The table it stores.
    pub table: u32,
    /// Its root page, which never moves.
    pub root: u32,
}

/// Pages, the WAL, page allocation and checkpoints.
pub struct Store {
    fs: Arc<dyn Fs>,
    data_dir: PathBuf,
    pool: BufferPool,
    wal: Arc<Wal>,
    next_page: u32,
    /// Pages whose image has been logged since the last checkpoint (or,
    /// before the first, since the store opened).
    imaged: BTreeSet<u32>,
}

fn image(page: &Page) -> Box<[u8; PAGE_SIZE]> {
    Box::new(*page.clone().seal())
}

fn child_for(body: &[u8], key: &[u8]) -> u32 {
    let child = |i| u32::from_le_bytes(node::value(body, i).try_into().expect("child pointers are u32"));
    match node::search(body, key) {
        Ok(index) => child(index),
        Err(0) => node::link(body),
        Err(index) => child(index - 1),
    }
}

impl Store {
    fn new(fs: Arc<dyn Fs>, data_dir: &Path, pool: BufferPool, wal: Arc<Wal>) -> Result<Self, StoreError> {
        let next_page = pool.file_pages().map_err(BufferError::from)?;
        Ok(Store { fs, data_dir: data_dir.to_path_buf(), pool, wal, next_page, imaged: BTreeSet::new() })
    }

    /// The buffer pool.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The WAL.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// Recovers a store, redo only: reads the WAL from the redo point of the
    /// last checkpoint (the control file beside the data file; the start of
    /// the log without one), opens it for appending (cutting the torn tail),
    /// and replays every storage record into a fresh pool over the data file
    /// at `data_path`. Pages untouched since the checkpoint are read from
    /// disk; every page touched since first appears in the log as an image.
    pub async fn recover(
        fs: Arc<dyn Fs>,
        wal_opts: WalOptions,
        data_path: &Path,
        pool_bytes: u64,
    ) -> Result<Store, StoreError> {
        let data_dir = data_path.parent().unwrap_or(Path::new("."));
        let control = ControlFile::load(fs.as_ref(), data_dir)?;
        let mut reader = match control {
            Some(control) => WalReader::new(fs.clone(), wal_opts.clone(), control.redo_lsn)
                .durable_through(control.checkpoint_lsn.plus(1)),
            None => WalReader::new(fs.clone(), wal_opts.clone(), wal_opts.first_lsn()),
        };
        let mut records = Vec::new();
        while let Some((lsn, record)) = reader.next_record()? {
            if record.kind == RecordKind::Data {
                let op =
                    Op::decode(&record.payload).map_err(|e| StoreError::BadRecord { lsn, detail: e.to_string() })?;
                records.push((lsn.plus(record.encoded_len()), op));
            }
        }
        let end = reader.end().expect("the reader reached the end");
        let wal = Arc::new(Wal::open(fs.clone(), wal_opts, end)?);
        let pool = BufferPool::open(fs.clone(), data_path, pool_bytes).map_err(BufferError::from)?;
        let mut store = Store::new(fs, data_dir, pool, wal)?;
        for (end, op) in records {
            let _phase = probe::enter(Phase::StorageRedo);
            store.redo(end, &op).await?;
        }
        Ok(store)
    }

    /// Whether any page was ever allocated (a tree exists).
    pub fn is_empty(&self) -> bool {
        self.next_page == 0
    }

    /// Replays one storage record (ending at `end`) during recovery.
    pub async fn redo(&mut self, end: Lsn, op: &Op) -> Result<Redo, StoreError> {
        let mut result = Redo::AlreadyApplied;
        for page_no in op.pages() {
            self.next_page = self.next_page.max(page_no + 1);
            if matches!(op, Op::PageImages { .. }) {
                // An image is the truth: install it without reading the disk.
                let mut page = Page::new(page_no, PageKind::Free);
                op.redo(&mut page, end).expect("an image always applies to a blank page");
                self.pool.install(page, &self.wal).await?;
                result = Redo::Applied;
                continue;
            }
            let on_disk = !self.pool.is_resident(page_no);
            let mut page = self.pool.fetch(page_no, &self.wal).await?.clone();
            if op.redo(&mut page, end).expect("redo replays what once fitted") == Redo::Applied {
                if on_disk {
                    probe::hit(Probe::RedoOnDiskPage);
                }
                self.pool.modify(page_no, end, |resident| *resident = page);
                result = Redo::Applied;
            }
        }
        Ok(result)
    }

    /// Creates an empty tree for `table`.
    pub async fn create_tree(&mut self, table: u32) -> Result<Tree, StoreError> {
        let root = self.allocate();
        let mut page = Page::new(root, PageKind::Leaf);
        node::init(page.body_mut(), 0);
        let (_, end) = self.log(&Op::PageImages { images: vec![(root, image(&page))] }).await?;
        self.install_logged(vec![page], end).await?;
        Ok(Tree { table, root })
    }

    /// The value stored under `key`.
    pub async fn get(&mut self, tree: &Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let leaf = *self.descend(tree, key).await?.last().expect("a path ends at a leaf");
        let body = self.pool.fetch(leaf, &self.wal).await?.body();
        Ok(node::search(body, key).ok().map(|index| node::value(body, index).to_vec()))
    }

    /// Every row, in key order.
    pub async fn scan(&mut self, tree: &Tree) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut leaf = *self.descend(tree, &[]).await?.last().expect("a path ends at a leaf");
        let mut rows = Vec::new();
        loop {
            let body = self.pool.fetch(leaf, &self.wal).await?.body();
            rows.extend((0..node::count(body)).map(|i| (node::key(body, i).to_vec(), node::value(body, i).to_vec())));
            match node::link(body) {
                0 => return Ok(rows),
                next => leaf = next,
            }
        }
    }

    /// Inserts or replaces a row; returns the end LSN of its record (not yet
    /// durable: flush the WAL to it before acknowledging).
    pub async fn put(&mut self, tree: &Tree, key: &[u8], value: &[u8]) -> Result<Lsn, StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong { len: key.len() });
        }
        node::check_cell(key, value)?;
        loop {
            let path = self.descend(tree, key).await?;
            let leaf = *path.last().expect("a path ends at a leaf");
            let page = self.pool.fetch(leaf, &self.wal).await?.clone();
            let mut changed = page.clone();
            let body = changed.body_mut();
            let old = node::search(body, key).ok().map(|index| {
                let old = node::value(body, index).to_vec();
                node::remove(body, index);
                old
            });
            let index = node::search(body, key).expect_err("just removed");
            if node::insert(body, index, key, value).is_err() {
                self.split(tree, &path).await?;
                continue;
            }
            let (table, page_no, key) = (tree.table, leaf, key.to_vec());
            let op = match old {
                Some(old_value) => Op::Update { table, page_no, key, old_value, new_value: value.to_vec() },
                None => Op::Insert { table, page_no, key, value: value.to_vec() },
            };
            return self.change(leaf, &page, op, changed).await;
        }
    }

    /// Deletes a row; returns the end LSN of its record, or `None` if there
    /// was no such row.
    pub async fn delete(&mut self, tree: &Tree, key: &[u8]) -> Result<Option<Lsn>, StoreError> {
        let leaf = *self.descend(tree, key).await?.last().expect("a path ends at a leaf");
        let page = self.pool.fetch(leaf, &self.wal).await?.clone();
        let Ok(index) = node::search(page.body(), key) else { return Ok(None) };
        let old_value = node::value(page.body(), index).to_vec();
        let mut changed = page.clone();
        node::remove(changed.body_mut(), index);
        let op = Op::Delete { table: tree.table, page_no: leaf, key: key.to_vec(), old_value };
        Ok(Some(self.change(leaf, &page, op, changed).await?))
    }

    /// Takes a checkpoint and returns its LSN:
    ///
    /// 1. log `CheckpointBegin`; from here a page's next change logs its full
    ///    image again;
    /// 2. write every dirty page and sync the data file (WAL first);
    /// 3. log `CheckpointEnd` and make it durable;
    /// 4. replace the control file atomically, pointing at the begin record,
    ///    which is also the redo point: every change before it is on disk;
    /// 5. retire the WAL segments recovery no longer needs (`may_retire` is
    ///    the archiver's say).
    ///
    /// A crash before step 4 leaves the previous checkpoint in force, and
    /// the log it needs is still there.
    pub async fn checkpoint(&mut self, may_retire: &(dyn Fn(&str) -> bool + Sync)) -> Result<Lsn, StoreError> {
        let (begin, _) = self.log(&Op::CheckpointBegin).await?;
        self.imaged.clear();
        let control = ControlFile {
            state: ControlState::InProduction,
            checkpoint_lsn: begin,
            redo_lsn: begin,
            next_xid: 0,
            timeline: self.wal.options().timeline,
            wal_segment_size: self.wal.options().segment_size,
        };
        if active(PlantedBug::CheckpointBeforeFlush) {
            self.wal.flush(self.wal.end_lsn()).await?;
            control.store(self.fs.as_ref(), &self.data_dir)?;
        }
        {
            let _phase = probe::enter(Phase::CheckpointFlush);
            self.pool.flush_all(&self.wal).await?;
        }
        let dirty = self.pool.dirty_pages().into_iter().collect();
        let (_, end) = self.log(&Op::CheckpointEnd { active: Vec::new(), dirty }).await?;
        self.wal.flush(end).await?;
        {
            let _phase = probe::enter(Phase::CheckpointControl);
            control.store(self.fs.as_ref(), &self.data_dir)?;
        }
        self.wal.retire_segments(begin, 2, may_retire).await?;
        probe::hit(Probe::CheckpointCompleted);
        Ok(begin)
    }

    /// Logs a row change (after the page's image, on its first change) and
    /// makes it in the pool.
    async fn change(&mut self, page_no: u32, before: &Page, op: Op, after: Page) -> Result<Lsn, StoreError> {
        if !self.imaged.contains(&page_no) && !active(PlantedBug::SkipFullPageImage) {
            let (_, end) = self.log(&Op::PageImages { images: vec![(page_no, image(before))] }).await?;
            self.pool.modify(page_no, end, |_| {});
            self.imaged.insert(page_no);
        }
        let (_, end) = self.log(&op).await?;
        self.pool.modify(page_no, end, |resident| *resident = after);
        Ok(end)
    }

    fn allocate(&mut self) -> u32 {
        let page_no = self.next_page;
        self.next_page += 1;
        page_no
    }

    /// Appends a storage record; returns its LSN and end LSN.
    async fn log(&self, op: &Op) -> Result<(Lsn, Lsn), StoreError> {
        Ok(self.wal.append(&Record::data(0, Lsn::ZERO, op.encode())).await?)
    }

    async fn descend(&mut self, tree: &Tree, key: &[u8]) -> Result<Vec<u32>, StoreError> {
        let mut path = vec![tree.root];
        loop {
            let page = self.pool.fetch(*path.last().expect("non-empty"), &self.wal).await?;
            if page.kind() == PageKind::Leaf {
                return Ok(path);
            }
            assert_eq!(page.kind(), PageKind::Internal, "a tree holds only leaves and internal nodes");
            path.push(child_for(page.body(), key));
        }
    }

    /// Splits the last node of `path`, or an ancestor first if the parent
    /// has no room for a separator. The caller descends again afterwards.
    async fn split(&mut self, tree: &Tree, path: &[u32]) -> Result<(), StoreError> {
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
        let page = self.pool.fetch(page_no, &self.wal).await?.clone();
        let kind = page.kind();
        probe::hit(if level == 0 { Probe::TreeRootSplit } else { Probe::TreeInternalSplit });
        let right_no = self.allocate();
        let mut left = page.clone();
        let mut right = Page::new(right_no, kind);
        node::init(right.body_mut(), 0);
        let separator = node::split_into(left.body_mut(), right.body_mut());
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
        let images = pages.iter().map(|page| (page.page_no(), image(page))).collect();
        let (_, end) = self.log(&Op::PageImages { images }).await?;
        self.install_logged(pages, end).await
    }

    /// Puts pages whose images a record ending at `end` just logged into the
    /// pool, replacing any resident copies.
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
    use crate::env::{FaultConfig, Fs, SimDisk};

    const DATA: &str = "/db/data/main.tdb";

    fn wal_opts() -> WalOptions {
        WalOptions::new("/db/wal").with_segment_size(1 << 14)
    }

    async fn recover(disk: &SimDisk, pool_pages: u64) -> Result<Store, String> {
        let fs: Arc<dyn Fs> = disk.fs();
        fs.create_dir_all(Path::new("/db/data")).map_err(|e| e.to_string())?;
        let pool_bytes = pool_pages * PAGE_SIZE as u64;
        Store::recover(fs, wal_opts(), Path::new(DATA), pool_bytes).await.map_err(|e| e.to_string())
    }

    fn key(rng: &mut ChaCha8Rng, long: bool) -> Vec<u8> {
        let id: u16 = rng.random_range(0..400);
        let mut key = id.to_be_bytes().to_vec();
        if long {
            key.resize(300, b'k');
        }
        key
    }

    #[tokio::test]
    async fn a_tree_matches_an_ordered_map_through_many_splits() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = recover(&disk, 6).await.unwrap();
        let tree = store.create_tree(1).await.unwrap();
        let mut model = BTreeMap::new();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for step in 0..3000 {
            let key = key(&mut rng, true);
            if rng.random_bool(0.2) {
                let deleted = store.delete(&tree, &key).await.unwrap();
                assert_eq!(deleted.is_some(), model.remove(&key).is_some(), "step {step}");
            } else {
                let value = vec![step as u8; rng.random_range(0..200)];
                store.put(&tree, &key, &value).await.unwrap();
                model.insert(key, value);
            }
        }
        assert!(store.pool().stats().evictions > 100, "the pool stayed bounded");
        let root = store.pool.fetch(tree.root, &store.wal.clone()).await.unwrap().clone();
        assert_eq!(root.kind(), PageKind::Internal);
        let child = store.pool.fetch(node::link(root.body()), &store.wal.clone()).await.unwrap();
        assert_eq!(child.kind(), PageKind::Internal, "internal nodes split too: the tree has three levels");
        assert_eq!(store.scan(&tree).await.unwrap(), model.clone().into_iter().collect::<Vec<_>>());
        for (key, value) in model.iter().take(50) {
            assert_eq!(store.get(&tree, key).await.unwrap().as_ref(), Some(value));
        }
        assert_eq!(store.get(&tree, b"absent").await.unwrap(), None);

        // The whole log replays to the same tree on a fresh store.
        let wal = store.wal().clone();
        wal.flush(wal.end_lsn()).await.unwrap();
        drop((store, wal));
        let mut again = recover(&disk, 6).await.unwrap();
        assert_eq!(again.scan(&tree).await.unwrap(), model.into_iter().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn oversized_rows_and_keys_are_refused() {
        let disk = SimDisk::new(1, FaultConfig::none());
        let mut store = recover(&disk, 8).await.unwrap();
        let tree = store.create_tree(1).await.unwrap();
        let err = store.put(&tree, b"k", &[0; 3000]).await.unwrap_err();
        assert!(err.to_string().contains("3001 bytes"), "{err}");
        let err = store.put(&tree, &[1; 600], b"v").await.unwrap_err();
        assert!(err.to_string().contains("600 bytes exceeds the 512-byte limit"), "{err}");
    }

    /// The scripted workload: puts and deletes with a flush every few ops.
    /// Returns each op and whether it was acknowledged, stopping at the first
    /// error (the crash).
    async fn script(disk: &SimDisk) -> (Vec<(Vec<u8>, Option<Vec<u8>>)>, usize) {
        let (mut ops, mut acked) = (Vec::new(), 0);
        let Ok(mut store) = recover(disk, 4).await else { return (ops, acked) };
        let Ok(tree) = store.create_tree(1).await else { return (ops, acked) };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for step in 0..120u32 {
            let key = key(&mut rng, step % 2 == 0);
            let (result, value) = if step % 5 == 4 {
                (store.delete(&tree, &key).await.map(|_| ()), None)
            } else {
                let value = vec![step as u8; rng.random_range(0..300)];
                (store.put(&tree, &key, &value).await.map(|_| ()), Some(value))
            };
            if result.is_err() {
                break;
            }
            ops.push((key, value));
            if step % 30 == 29 {
                // A checkpoint makes everything before it durable too.
                if store.checkpoint(&|_| true).await.is_err() {
                    break;
                }
                acked = ops.len();
            } else if step % 4 == 3 {
                let wal = store.wal().clone();
                if wal.flush(wal.end_lsn()).await.is_err() {
                    break;
                }
                acked = ops.len();
            }
        }
        (ops, acked)
    }

    #[tokio::test]
    async fn a_crash_at_every_io_boundary_recovers_a_prefix_holding_every_acknowledged_change() {
        let total = {
            let disk = SimDisk::new(0, FaultConfig::none());
            script(&disk).await;
            disk.op_count()
        };
        assert!(total > 250, "the script does real I/O, checkpoints included: {total} operations");
        for crash_at in 0..=total {
            let disk = SimDisk::new(crash_at, FaultConfig::power_loss());
            disk.set_crash_countdown(Some(crash_at));
            let (ops, acked) = script(&disk).await;
            disk.crash();
            let mut store = recover(&disk, 4).await.unwrap_or_else(|e| panic!("crash at {crash_at}: {e}"));
            let tree = Tree { table: 1, root: 0 };
            let found = if store.is_empty() {
                Vec::new()
            } else {
                store.scan(&tree).await.unwrap_or_else(|e| panic!("crash at {crash_at}: {e}"))
            };
            // Some prefix of the ops, at least the acknowledged ones, explains the tree.
            let mut model = BTreeMap::new();
            let mut matched = acked == 0 && found.is_empty();
            for (index, (key, value)) in ops.iter().enumerate() {
                match value {
                    Some(value) => model.insert(key.clone(), value.clone()),
                    None => model.remove(key),
                };
                if index + 1 >= acked && found == model.clone().into_iter().collect::<Vec<_>>() {
                    matched = true;
                    break;
                }
            }
            assert!(
                matched,
                "crash at {crash_at}: {} rows recovered match no prefix of {} ops with {acked} acknowledged",
                found.len(),
                ops.len()
            );
        }
    }
}
