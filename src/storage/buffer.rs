//! The buffer pool: a bounded cache of pages over one data file, with the
//! dirty page table and the WAL rule.
//!
//! Invariants:
//!
//! - **Bounded memory:** at most `frames_max` pages are resident, where
//!   `frames_max = buffer_pool_size / PAGE_SIZE` (at least 4).
//! - **WAL rule:** a dirty page is written only after the WAL is durable up to
//!   its page LSN. A page's LSN is the *end* LSN of the last record applied
//!   to it (as in PostgreSQL), so flushing the WAL to the page LSN covers the
//!   whole record.
//! - **Dirty page table:** every dirty page has a recovery LSN, the end LSN
//!   of the first record that dirtied it since it was last written. A
//!   checkpoint's redo point is the smallest of them.
//! - **Verified reads:** every page read is checked (checksum, page number);
//!   a failure is an error naming the file and page, never a silent use.
//!
//! Writes go to the operating system without a sync; [`BufferPool::flush_all`]
//! (a checkpoint) writes every dirty page and then syncs the file. A torn
//! page write is repaired by redo from the page's full-page image, which the
//! engine logs on a page's first change after each checkpoint.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::StorageError;
use super::op::Redo;
use super::page::{Page, PageCheck, PageKind, PAGE_SIZE};
use crate::env::{File, Fs};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Probe};
use crate::wal::{Lsn, Wal, WalError};

/// The fewest frames a pool may have: enough for a B+tree split's pages.
const FRAMES_MIN: usize = 4;

/// Counters since the pool was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufferStats {
    /// Fetches served from memory.
    pub hits: u64,
    /// Fetches that read the page from disk.
    pub misses: u64,
    /// Pages evicted to make room.
    pub evictions: u64,
    /// Pages written to the data file.
    pub writes: u64,
}

struct Frame {
    page: Page,
    /// Used since the clock hand last passed (second chance).
    referenced: bool,
}

/// Why a buffer-pool call failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The data file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The WAL could not be made durable before a page write.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Stops the engine after a failed data-file write or sync and returns the
/// error. After a failed sync the kernel may have dropped the pages while
/// the pool thinks them clean: a later read would bring back an old version
/// (PostgreSQL's "fsyncgate"). Only restart and redo make the pages right.
fn halt(wal: &Wal, error: StorageError) -> StorageError {
    wal.halt(&error.to_string());
    error
}

/// Syncs the data file; see [`BufferPool::data_file_sync`].
#[derive(Clone)]
pub struct DataFileSync {
    file: Arc<dyn File>,
    path: PathBuf,
}

impl std::fmt::Debug for DataFileSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFileSync").field("path", &self.path).finish()
    }
}

impl DataFileSync {
    /// Asks the OS to start writing back what was written so far, without
    /// waiting (a hint; see [`File::start_writeback`]). A failure is only
    /// logged: the sync that follows reports any real one.
    pub fn start_writeback(&self) {
        if let Err(e) = self.file.start_writeback() {
            tracing::debug!(error = %e, path = %self.path.display(), "starting writeback failed");
        }
    }

    /// `fdatasync` on the data file: every page written before the call is
    /// durable. A failure stops the engine (as a failed write does).
    pub fn sync(&self, wal: &Wal) -> Result<(), BufferError> {
        if let Err(e) = self.file.sync_data() {
            if active(PlantedBug::SwallowCheckpointSyncError) {
                tracing::warn!(error = %e, "planted bug: ignoring a failed data-file sync");
                return Ok(());
            }
            return Err(halt(wal, StorageError::io("sync", &self.path, e)).into());
        }
        Ok(())
    }
}

/// A bounded page cache over one data file.
pub struct BufferPool {
    path: PathBuf,
    file: Arc<dyn File>,
    frames_max: usize,
    frames: BTreeMap<u32, Frame>,
    /// The dirty page table: each dirty resident page's recovery LSN (the
    /// end LSN of the first record that dirtied it). Kept apart from the
    /// frames so that a checkpoint reads it in microseconds under the
    /// store, not by walking every frame.
    dirty: BTreeMap<u32, Lsn>,
    /// Resident pages in clock order: eviction takes the first one not
    /// referenced since the hand last passed it (CLOCK, an LRU
    /// approximation with O(1) bookkeeping per access).
    clock: VecDeque<u32>,
    /// A frame's memory freed by the last eviction, for the next page to
    /// come in. Resident pages keep their memory for as long as the pool
    /// lives (changes are copied into it): a pool that churned through page
    /// allocations would scatter them over the allocator's per-thread
    /// arenas and hold far more memory than `frames_max` pages.
    spare: Option<Page>,
    stats: BufferStats,
}

impl BufferPool {
    /// Opens (or creates, durably) the data file at `path` with a pool of
    /// `pool_bytes` bytes.
    pub fn open(fs: Arc<dyn Fs>, path: &Path, pool_bytes: u64) -> Result<Self, StorageError> {
        let file = match fs.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = fs.create(path).map_err(|e| StorageError::io("create", path, e))?;
                let dir = path.parent().unwrap_or(Path::new("."));
                fs.sync_dir(dir).map_err(|e| StorageError::io("sync directory", dir, e))?;
                file
            }
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let frames_max = usize::try_from(pool_bytes / PAGE_SIZE as u64).unwrap_or(usize::MAX).max(FRAMES_MIN);
        Ok(BufferPool {
            path: path.to_path_buf(),
            file: Arc::from(file),
            frames_max,
            frames: BTreeMap::new(),
            dirty: BTreeMap::new(),
            clock: VecDeque::new(),
            spare: None,
            stats: BufferStats::default(),
        })
    }

    /// The most pages the pool holds at once.
    pub fn frames_max(&self) -> usize {
        self.frames_max
    }

    /// Pages resident now.
    pub fn resident(&self) -> usize {
        self.frames.len()
    }

    /// Counters since open.
    pub fn stats(&self) -> BufferStats {
        self.stats
    }

    /// Pages in the data file (not counting pages still only in memory).
    pub fn file_pages(&self) -> Result<u32, StorageError> {
        let len = self.file.len().map_err(|e| StorageError::io("stat", &self.path, e))?;
        Ok(u32::try_from(len / PAGE_SIZE as u64).expect("data files stay under 32 TiB"))
    }

    /// The dirty page table: page number to recovery LSN.
    pub fn dirty_pages(&self) -> &BTreeMap<u32, Lsn> {
        &self.dirty
    }

    /// Brings page `page_no` into the pool (evicting under the WAL rule if
    /// full) and returns it. A page that fails its checks is an error.
    pub async fn fetch(&mut self, page_no: u32, wal: &Wal) -> Result<&Page, BufferError> {
        Ok(&self.frame(page_no, wal).await?.page)
    }

    async fn frame(&mut self, page_no: u32, wal: &Wal) -> Result<&mut Frame, BufferError> {
        if self.frames.contains_key(&page_no) {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
            self.make_room(wal).await?;
            let page = self.read(page_no)?;
            self.frames.insert(page_no, Frame { page, referenced: false });
            self.clock.push_back(page_no);
        }
        let frame = self.frames.get_mut(&page_no).expect("resident");
        frame.referenced = true;
        Ok(frame)
    }

    /// Installs a whole page whose image was logged (its page LSN is the
    /// record's end): a new page, a page rebuilt by a split, or one replayed
    /// during redo. Replaces the resident copy unless that is already as new.
    /// Never reads the page from disk: the image is the truth.
    pub async fn install(&mut self, page: Page, wal: &Wal) -> Result<(), BufferError> {
        let page_no = page.page_no();
        let lsn = page.page_lsn();
        if let Some(frame) = self.frames.get_mut(&page_no) {
            if frame.page.page_lsn() < lsn {
                frame.page.copy_from(&page);
                self.dirty.entry(page_no).or_insert(lsn);
            }
        } else {
            self.make_room(wal).await?;
            let page = match self.spare.take() {
                Some(mut frame) => {
                    frame.copy_from(&page);
                    frame
                }
                None => page,
            };
            self.frames.insert(page_no, Frame { page, referenced: false });
            self.dirty.insert(page_no, lsn);
            self.clock.push_back(page_no);
        }
        self.touch(page_no);
        Ok(())
    }

    /// Brings page `page_no` in and runs `apply` on it in place (redo);
    /// `apply` says whether it changed the page, whose LSN it sets. A
    /// changed page becomes dirty with `lsn` as its recovery LSN if clean.
    pub async fn apply<E>(
        &mut self,
        page_no: u32,
        lsn: Lsn,
        wal: &Wal,
        apply: impl FnOnce(&mut Page) -> Result<Redo, E>,
    ) -> Result<Result<Redo, E>, BufferError> {
        let frame = self.frame(page_no, wal).await?;
        let result = apply(&mut frame.page);
        if let Ok(Redo::Applied) = result {
            self.dirty.entry(page_no).or_insert(lsn);
        }
        Ok(result)
    }

    /// Page `page_no`, which must be resident (fetched since the pool last
    /// had to make room).
    pub fn resident_page(&self, page_no: u32) -> &Page {
        &self.frames.get(&page_no).unwrap_or_else(|| panic!("page {page_no} is not resident")).page
    }

    /// Applies a logged change to a resident page: `change` runs on the page
    /// (in place: copy a new version in with [`Page::copy_from`]), whose LSN
    /// becomes `lsn`, the end LSN of the change's record (already appended
    /// to the WAL).
    pub fn modify(&mut self, page_no: u32, lsn: Lsn, change: impl FnOnce(&mut Page)) {
        let frame = self.frames.get_mut(&page_no).unwrap_or_else(|| panic!("page {page_no} is not resident"));
        change(&mut frame.page);
        frame.page.set_page_lsn(lsn);
        self.dirty.entry(page_no).or_insert(lsn);
        self.touch(page_no);
    }

    /// Writes those of `pages` that still hold changes logged before
    /// `before` (WAL first): a checkpoint's writes, a step at a time, where
    /// `before` is its begin record. A page's recovery LSN is the end of the
    /// first record that dirtied it, so one at `before` holds the change
    /// logged just before the begin record. Pages written or evicted since,
    /// or dirtied only after `before`, are skipped.
    pub async fn write_dirty_before(&mut self, pages: &[u32], before: Lsn, wal: &Wal) -> Result<(), BufferError> {
        let due: Vec<u32> =
            pages.iter().copied().filter(|no| self.dirty.get(no).is_some_and(|lsn| *lsn <= before)).collect();
        let newest = due.iter().map(|no| self.frames[no].page.page_lsn()).max();
        if let Some(newest) = newest {
            wal.flush(newest).await?;
        }
        for page_no in due {
            self.write(page_no, wal)?;
        }
        Ok(())
    }

    /// Writes every dirty page (WAL first) and syncs the data file.
    pub async fn flush_all(&mut self, wal: &Wal) -> Result<(), BufferError> {
        let dirty: Vec<u32> = self.dirty.keys().copied().collect();
        self.write_dirty_before(&dirty, Lsn(u64::MAX), wal).await?;
        self.sync(wal)
    }

    /// Syncs the data file: what a checkpoint needs after its writes before
    /// it can move the redo point.
    pub fn sync(&mut self, wal: &Wal) -> Result<(), BufferError> {
        self.data_file_sync().sync(wal)
    }

    /// A handle that syncs the data file without the pool: a checkpoint
    /// syncs without holding the store, so writers never wait for it.
    pub fn data_file_sync(&self) -> DataFileSync {
        DataFileSync { file: self.file.clone(), path: self.path.clone() }
    }

    fn touch(&mut self, page_no: u32) {
        self.frames.get_mut(&page_no).expect("resident").referenced = true;
    }

    /// Evicts a page not used recently if the pool is full.
    async fn make_room(&mut self, wal: &Wal) -> Result<(), BufferError> {
        if self.frames.len() < self.frames_max {
            return Ok(());
        }
        let victim = loop {
            let candidate = self.clock.pop_front().expect("a full pool has pages");
            let frame = self.frames.get_mut(&candidate).expect("the clock holds resident pages");
            if !frame.referenced {
                break candidate;
            }
            frame.referenced = false;
            self.clock.push_back(candidate);
        };
        if let Err(error) = self.write_back(victim, wal).await {
            self.clock.push_front(victim);
            return Err(error);
        }
        let evicted = self.frames.remove(&victim).expect("resident");
        self.spare = Some(evicted.page);
        self.stats.evictions += 1;
        Ok(())
    }

    /// Writes a page if it is dirty, making the WAL durable through its LSN
    /// first.
    async fn write_back(&mut self, page_no: u32, wal: &Wal) -> Result<(), BufferError> {
        if self.dirty.contains_key(&page_no) {
            if !active(PlantedBug::PageBeforeWal) {
                wal.flush(self.frames[&page_no].page.page_lsn()).await?;
            }
            self.write(page_no, wal)?;
        }
        Ok(())
    }

    /// Writes a dirty page; the caller has made the WAL durable through its LSN.
    fn write(&mut self, page_no: u32, wal: &Wal) -> Result<(), StorageError> {
        // Nothing is written once the engine has stopped: a flush of WAL
        // already durable succeeds without looking, and a cluster node that
        // lost its leadership stops its engine before it replays into the
        // same data file as a follower.
        wal.check_not_halted().map_err(|e| StorageError::io("write", &self.path, std::io::Error::other(e)))?;
        let frame = self.frames.get_mut(&page_no).expect("resident");
        let lsn = frame.page.page_lsn();
        let rule_kept = wal.durable_lsn() >= lsn || active(PlantedBug::PageBeforeWal);
        assert!(rule_kept, "WAL rule: page {page_no} at {lsn}, WAL durable to {}", wal.durable_lsn());
        let offset = u64::from(page_no) * PAGE_SIZE as u64;
        self.file
            .write_all_at(frame.page.seal(), offset)
            .map_err(|e| halt(wal, StorageError::io("write", &self.path, e)))?;
        self.dirty.remove(&page_no);
        self.stats.writes += 1;
        Ok(())
    }

    /// Reads and checks page `page_no`, into the spare frame if there is one.
    fn read(&mut self, page_no: u32) -> Result<Page, StorageError> {
        let mut page = self.spare.take().unwrap_or_else(|| Page::new(page_no, PageKind::Leaf));
        let offset = u64::from(page_no) * PAGE_SIZE as u64;
        let corrupt = |detail: String| StorageError::CorruptPage { path: self.path.clone(), page_no, detail };
        let read = page.read_from(page_no, |bytes| self.file.read_exact_at(bytes, offset));
        let checked = match read {
            Ok(checked) => checked,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(format!("page is past the end of the file ({} pages)", self.file_pages()?)));
            }
            Err(e) => return Err(StorageError::io("read", &self.path, e)),
        };
        if checked == Err(PageCheck::Zeroed) && active(PlantedBug::ZeroedPageReadAsEmpty) {
            return Ok(Page::new(page_no, PageKind::Leaf));
        }
        checked.map_err(|check| {
            probe::hit(Probe::DamagedPageReported);
            match check {
                PageCheck::Zeroed => corrupt("the page was never written (all zeroes)".into()),
                PageCheck::Damaged(detail) => corrupt(detail),
            }
        })?;
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{FaultConfig, SimDisk};
    use crate::storage::PageKind;
    use crate::wal::{Record, WalOptions, WalReader};

    const DATA: &str = "/db/data/main.tdb";

    fn wal(disk: &SimDisk) -> Wal {
        let opts = WalOptions::new("/db/wal").with_segment_size(1 << 16);
        let fs: Arc<dyn Fs> = disk.fs();
        let end = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
        Wal::open(fs, opts, end).unwrap()
    }

    fn disk() -> SimDisk {
        let disk = SimDisk::new(1, FaultConfig::none());
        disk.fs().create_dir_all(Path::new("/db/data")).unwrap();
        disk
    }

    /// Adds a new, empty page dirty from `lsn`, as an allocation does.
    async fn create(pool: &mut BufferPool, page_no: u32, lsn: Lsn, wal: &Wal) {
        let mut page = Page::new(page_no, PageKind::Leaf);
        page.set_page_lsn(lsn);
        pool.install(page, wal).await.unwrap();
    }

    /// Logs a change (without flushing) and returns its end LSN.
    async fn log(wal: &Wal, page_no: u32) -> Lsn {
        wal.append(&Record::data(1, Lsn::ZERO, page_no.to_le_bytes().to_vec())).await.unwrap().1
    }

    async fn fill(pool: &mut BufferPool, wal: &Wal, pages: u32) {
        for page_no in 0..pages {
            let lsn = log(wal, page_no).await;
            create(pool, page_no, lsn, wal).await;
            pool.modify(page_no, lsn, |page| page.body_mut()[..4].copy_from_slice(&page_no.to_le_bytes()));
            assert!(pool.resident() <= pool.frames_max(), "memory stays bounded");
        }
    }

    #[tokio::test]
    async fn pages_round_trip_through_a_bounded_pool() {
        let disk = disk();
        let wal = wal(&disk);
        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 4 * PAGE_SIZE as u64).unwrap();
        fill(&mut pool, &wal, 10).await;
        assert_eq!(pool.stats().evictions, 6);
        pool.flush_all(&wal).await.unwrap();
        assert!(pool.dirty_pages().is_empty());

        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 4 * PAGE_SIZE as u64).unwrap();
        assert_eq!(pool.file_pages().unwrap(), 10);
        for page_no in (0..10).chain(0..2) {
            let page = pool.fetch(page_no, &wal).await.unwrap();
            assert_eq!(page.body()[..4], page_no.to_le_bytes());
        }
        assert_eq!(pool.stats().misses, 12, "0 and 1 were evicted again before the second pass");
        pool.fetch(1, &wal).await.unwrap();
        assert_eq!(pool.stats().hits, 1);
    }

    #[tokio::test]
    async fn eviction_makes_the_wal_durable_first_even_across_a_crash() {
        let disk = SimDisk::new(2, FaultConfig::power_loss());
        disk.fs().create_dir_all(Path::new("/db/data")).unwrap();
        let wal = wal(&disk);
        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 4 * PAGE_SIZE as u64).unwrap();
        assert_eq!(wal.durable_lsn(), WalOptions::new("/").with_segment_size(1 << 16).first_lsn());
        fill(&mut pool, &wal, 8).await;
        let last_evicted = pool.frames.keys().min().copied();
        assert_eq!(last_evicted, Some(4), "pages 0 to 3 were evicted");
        // Nothing flushed the WAL but the evictions, which had to.
        let written = pool.stats().writes;
        assert_eq!(written, 4);
        let first = WalOptions::new("/").with_segment_size(1 << 16).first_lsn();
        assert!(wal.durable_lsn() > first, "the evictions flushed the WAL");
        let file = disk.fs().open(Path::new(DATA)).unwrap();
        for page_no in 0..4u32 {
            let mut bytes = vec![0; PAGE_SIZE];
            file.read_exact_at(&mut bytes, u64::from(page_no) * PAGE_SIZE as u64).unwrap();
            let page = Page::from_bytes(&bytes, page_no).unwrap();
            assert!(page.page_lsn() <= wal.durable_lsn(), "page {page_no} is not ahead of the WAL");
        }
        // After power loss, no page on disk is ahead of the WAL that survived.
        drop((pool, wal));
        disk.crash();
        let opts = WalOptions::new("/db/wal").with_segment_size(1 << 16);
        let end = WalReader::new(disk.fs(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
        let file = disk.fs().open(Path::new(DATA)).unwrap();
        let pages = file.len().unwrap() / PAGE_SIZE as u64;
        for page_no in 0..pages as u32 {
            let mut bytes = vec![0; PAGE_SIZE];
            file.read_exact_at(&mut bytes, u64::from(page_no) * PAGE_SIZE as u64).unwrap();
            if let Ok(page) = Page::from_bytes(&bytes, page_no) {
                assert!(
                    page.page_lsn() <= end.lsn(),
                    "page {page_no} at {} survived past the WAL end {}",
                    page.page_lsn(),
                    end.lsn()
                );
            }
        }
    }

    #[tokio::test]
    async fn the_dirty_page_table_keeps_the_first_dirtying_lsn() {
        let disk = disk();
        let wal = wal(&disk);
        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 1 << 20).unwrap();
        let first = log(&wal, 0).await;
        create(&mut pool, 0, first, &wal).await;
        let second = log(&wal, 0).await;
        pool.modify(0, second, |_| {});
        assert_eq!(pool.dirty_pages(), &BTreeMap::from([(0, first)]));
        assert_eq!(pool.fetch(0, &wal).await.unwrap().page_lsn(), second);
        pool.flush_all(&wal).await.unwrap();
        assert!(pool.dirty_pages().is_empty());
        assert!(wal.durable_lsn() >= second, "the checkpoint flushed the WAL first");
    }

    #[tokio::test]
    async fn a_bad_page_is_an_error_naming_the_file_and_page() {
        let disk = disk();
        let wal = wal(&disk);
        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 1 << 20).unwrap();
        fill(&mut pool, &wal, 5).await;
        pool.flush_all(&wal).await.unwrap();
        drop(pool);
        let file = disk.fs().open(Path::new(DATA)).unwrap();
        file.write_all_at(&[0xFF; 3], 3 * PAGE_SIZE as u64 + 100).unwrap();

        let mut pool = BufferPool::open(disk.fs(), Path::new(DATA), 1 << 20).unwrap();
        let err = pool.fetch(3, &wal).await.unwrap_err().to_string();
        assert!(err.contains("corrupt page 3 in /db/data/main.tdb: checksum mismatch"), "{err}");
        let err = pool.fetch(9, &wal).await.unwrap_err().to_string();
        assert!(err.contains("corrupt page 9") && err.contains("past the end of the file (5 pages)"), "{err}");
        assert!(pool.fetch(2, &wal).await.is_ok(), "other pages are still usable");
    }
}
