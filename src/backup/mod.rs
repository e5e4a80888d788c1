//! Online backups: a consistent copy of a running database, its manifest,
//! and the verifier that proves a copy restores.
//!
//! [`take`] is the engine's side of a backup. It knows nothing of HTTP: the
//! admin API ([`registry`]) and the simulator drive it the same way.
//!
//! 1. **Start.** A checkpoint; its redo point is the backup's start LSN.
//!    The WAL from there (or from the first record of a transaction open at
//!    it, which a restore's undo reads back) is held: no checkpoint retires
//!    it until the backup ends.
//! 2. **Copy** the data files while writers run, page by page through the
//!    file system, not the buffer pool. A page written during the copy may
//!    be copied torn or stale. That is sound because every checkpoint
//!    (the start's and any later one) makes each page's next change log the
//!    page's full image first: replay from the start LSN rebuilds every page
//!    changed after the start, whatever the copy caught. The backup's
//!    control file is not the live one (a later checkpoint may have moved
//!    that past pages the copy already took) but the start checkpoint's.
//! 3. **End.** The WAL is flushed; its durable end is the end LSN. With
//!    `include_wal` the segments from the held LSN to the end LSN are copied,
//!    the last one cut at the end LSN and zero-filled, so a restore replays
//!    exactly to the end LSN. Without it the manifest names the segments the
//!    archive must supply.
//! 4. **Manifest.** Every file goes to a temporary name, is synced and
//!    renamed; the directories are synced; `backup_manifest.json` is written
//!    the same way, last. A backup cut short by an error, a shutdown or a
//!    crash has no manifest, so it never verifies.
//!
//! With `compress` every file but `thunderdb.toml` (kept readable) is one
//! zstd frame, stored under its name plus `.zst`.

pub mod manifest;
pub mod pitr;
pub mod registry;
pub mod restore;
pub mod stream;
pub mod verify;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use crate::archive::cleanup::BackupHistory;
use crate::db::{Database, DbError};
use crate::env::{File, Fs};
use crate::planted::{active, PlantedBug};
use crate::probe::{self, Phase, Probe};
use crate::storage::{Op, StoreError, CONTROL_FILE_NAME, DATA_FILE_NAME, PAGE_SIZE};
use crate::wal::{Lsn, RecordKind, WalOptions, WalReader};
use manifest::{checksum_text, Compression, FileEntry, Manifest, SegmentEntry, FORMAT_VERSION, MANIFEST_NAME};

/// The config file's name in a backup.
pub const CONFIG_NAME: &str = "thunderdb.toml";

/// Files in the data directory that a backup does not copy: the live
/// control file (the backup writes its own), its temporary, and the backup
/// history.
const NOT_COPIED: [&str; 3] = [CONTROL_FILE_NAME, "control.tmp", registry::HISTORY_NAME];

/// Bytes copied per step by default.
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// How many bytes a backup writes to a file between writeback hints
/// ([`File::start_writeback`]).
const WRITEBACK_EVERY: usize = 8 << 20;

/// What to back up, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRequest {
    /// An absolute path that does not exist or is an empty directory.
    pub destination: PathBuf,
    /// Copy the WAL the backup needs (else the archive must supply it).
    pub include_wal: bool,
    /// Store files zstd-compressed.
    pub compress: bool,
    /// The text stored as `thunderdb.toml`, for reference during a restore.
    pub config_text: String,
    /// Bytes read per step ([`DEFAULT_CHUNK`]); writers run between steps.
    /// Not an API field: the simulator draws small chunks and a pause so
    /// that a backup of its small databases spans checkpoints.
    pub chunk_bytes: usize,
    /// A pause between steps (none by default).
    pub pause: Duration,
    /// Give way to commits: the start checkpoint's writes and the copy's
    /// steps rest while commits are flowing ([`crate::db::CommitYield`]).
    /// On by default; the simulator leaves it off, since it paces its
    /// backups with `pause`.
    pub yield_to_commits: bool,
}

impl BackupRequest {
    /// A request with the default pacing.
    pub fn new(destination: impl Into<PathBuf>, include_wal: bool, compress: bool, config_text: String) -> Self {
        BackupRequest {
            destination: destination.into(),
            include_wal,
            compress,
            config_text,
            chunk_bytes: DEFAULT_CHUNK,
            pause: Duration::ZERO,
            yield_to_commits: true,
        }
    }
}

/// A backup's progress, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read and stored so far.
    pub bytes_done: AtomicU64,
    /// The bytes the backup will read, as far as known (it grows with the
    /// WAL written during the backup).
    pub bytes_total: AtomicU64,
    /// The start LSN, once the start checkpoint is done (0 before).
    pub start_lsn: AtomicU64,
    /// The end LSN, once known (0 before).
    pub end_lsn: AtomicU64,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The destination is unusable.
    #[error("destination {path}: {reason}")]
    Destination {
        /// The destination.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The engine failed (the start checkpoint, the end flush).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The server began shutting down.
    #[error("the server shut down during the backup")]
    ShutDown,
    /// A page of the live data file is damaged (it fails its checksum)
    /// and the WAL since the backup's start holds no image to rebuild it:
    /// the backup would not restore.
    #[error(
        "page {page_no} of {path} is damaged ({why}) and the WAL since the backup's start holds no image of it: \
         the backup would not restore; the live data file needs repair (restore it from an earlier backup)"
    )]
    DamagedPage {
        /// The live data file.
        path: PathBuf,
        /// The page.
        page_no: u32,
        /// What is wrong with it.
        why: String,
    },
    /// A page of the live data file is damaged and only an image in the WAL
    /// rebuilds it, but the backup does not include its WAL: on its own it
    /// would not verify, so it is refused.
    #[error(
        "page {page_no} of {path} is damaged ({why}); an image in the WAL since the backup's start rebuilds it, \
         but a backup without include_wal does not carry that WAL: take it with include_wal"
    )]
    DamagedPageWithoutWal {
        /// The live data file.
        path: PathBuf,
        /// The page.
        page_no: u32,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads a data file with the pages in `free` (ranges, as
/// [`manifest::page_ranges`] gives them) as zeroes.
struct FreeZeroed<'a, R> {
    inner: R,
    free: &'a [[u32; 2]],
    offset: u64,
}

impl<R: Read> Read for FreeZeroed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        let (start, end) = (self.offset, self.offset + read as u64);
        let page = PAGE_SIZE as u64;
        for page_no in start / page..end.div_ceil(page) {
            let free = u32::try_from(page_no).is_ok_and(|page_no| manifest::in_ranges(self.free, page_no));
            if free {
                let from = (page_no * page).max(start) - start;
                let to = ((page_no + 1) * page).min(end) - start;
                buf[from as usize..to as usize].fill(0);
            }
        }
        self.offset = end;
        Ok(read)
    }
}

/// Passes a data file's bytes through, checking each page on the way (a
/// page damaged at rest is copied as it is; the backup then fails unless
/// its WAL holds an image of the page).
struct PageChecking<R> {
    inner: R,
    pages: verify::PageScan,
}

impl<R: Read> Read for PageChecking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.pages.feed(&buf[..read]);
        Ok(read)
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { op, path, source }
}

/// A `bk-YYYYMMDD-HHMMSS` id for a backup started at `micros`.
pub fn backup_id(micros: u64) -> String {
    let time = chrono::DateTime::from_timestamp_micros(micros as i64).unwrap_or_default();
    time.format("bk-%Y%m%d-%H%M%S").to_string()
}

/// RFC 3339 UTC, to the second.
pub fn rfc3339(micros: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

/// Checks a destination before a backup starts: absolute, and missing or an
/// empty directory.
pub fn check_destination(fs: &dyn Fs, path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("destination {:?} must be an absolute path", path.display().to_string()));
    }
    match fs.exists(path) {
        Ok(false) => Ok(()),
        Ok(true) => match fs.list(path) {
            Ok(names) if names.is_empty() => Ok(()),
            Ok(names) => Err(format!(
                "destination {} is not empty (it holds {}): a backup never overwrites anything",
                path.display(),
                names.first().map(String::as_str).unwrap_or_default()
            )),
            Err(e) => Err(format!("destination {} exists and is not a readable directory: {e}", path.display())),
        },
        Err(e) => Err(format!("destination {}: {e}", path.display())),
    }
}

/// A rough size for the `202` answer: the data files plus, with WAL, one
/// segment (the WAL since the start checkpoint is not known yet).
pub fn estimate_bytes(db: &Database, include_wal: bool) -> u64 {
    let fs = &db.env().fs;
    let dir = &db.config().data_dir;
    let data: u64 = fs
        .list(dir)
        .unwrap_or_default()
        .iter()
        .filter(|name| !NOT_COPIED.contains(&name.as_str()))
        .filter_map(|name| fs.open(&dir.join(name)).and_then(|f| f.len()).ok())
        .sum();
    let wal = if include_wal { db.wal().options().segment_size } else { 0 };
    data + wal
}

/// A [`File`] as a [`Read`] from `offset` on.
pub(crate) struct FileReader<'a> {
    pub(crate) file: &'a dyn File,
    pub(crate) offset: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// Where a backup's files go.
pub enum Sink<'a> {
    /// The request's destination directory on this file system (the live
    /// files are read through the engine's): each file written under a
    /// temporary name, synced and renamed, the manifest last, and the
    /// backup recorded in the history.
    Dir(&'a dyn Fs),
    /// A peer that writes the files as they arrive ([`stream`]): a Raft
    /// group rebuilding a node. Nothing is written here, the destination is
    /// not used, files are never compressed, and no history is recorded
    /// (the copy is not a backup an operator can restore from here).
    Stream(&'a mut (dyn tokio::io::AsyncWrite + Unpin + Send)),
}

/// Where one file of a backup is being written.
enum Target {
    /// Under its temporary name in the destination directory.
    File { file: Box<dyn File>, temp: PathBuf },
    /// On the stream, after its path.
    Stream,
}

/// Writes a backup's files, paced as the request says.
struct Writer<'a, 's> {
    chunk_bytes: usize,
    pause: Duration,
    yield_to_commits: bool,
    sink: Sink<'s>,
    root: &'a Path,
    phase: Phase,
    compress: bool,
    progress: &'a Progress,
    db: &'a Database,
}

impl Writer<'_, '_> {
    /// Writes one file crash-safely: to `<name>.tmp`, synced, renamed (the
    /// caller syncs the directory); or onto the stream. Reads `source` to
    /// its end, stores it compressed (if both `compress` and the request
    /// say so) or not, and returns its manifest entry.
    async fn write(
        &mut self,
        restore_path: &str,
        compress: bool,
        mut source: impl Read,
    ) -> Result<FileEntry, BackupError> {
        let streamed = matches!(self.sink, Sink::Stream(_));
        let compress = compress && self.compress && !streamed;
        let stored_name = if compress { format!("{restore_path}.zst") } else { restore_path.to_string() };
        let path = self.root.join(&stored_name);
        let temp = self.root.join(format!("{stored_name}.tmp"));
        let target = {
            let _phase = probe::enter(self.phase);
            match &mut self.sink {
                Sink::Dir(fs) => Target::File { file: fs.create(&temp).map_err(io_error("create", &temp))?, temp },
                Sink::Stream(out) => {
                    stream::send_path(*out, &stored_name).await.map_err(io_error("send", &path))?;
                    Target::Stream
                }
            }
        };
        let mut encoder = if compress {
            Some(zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(io_error("compress", &path))?)
        } else {
            None
        };
        let (mut original, mut stored) = (crc32fast::Hasher::new(), crc32fast::Hasher::new());
        let (mut size, mut stored_size) = (0u64, 0u64);
        let mut buf = vec![0u8; self.chunk_bytes.max(1)];
        let mut unflushed = 0;
        let mut pacing = self.db.commit_yield();
        loop {
            if self.db.is_shutting_down() {
                return Err(BackupError::ShutDown);
            }
            pacing.step();
            let _phase = probe::enter(self.phase);
            let read = read_full(&mut source, &mut buf).map_err(io_error("read for", &path))?;
            let chunk = &buf[..read];
            original.update(chunk);
            size += read as u64;
            // Uncompressed, the stored bytes are the original ones: one
            // checksum serves both, and the chunk is written as read.
            let compressed;
            let out: &[u8] = match encoder.as_mut() {
                Some(encoder) => {
                    io::Write::write_all(encoder, chunk).map_err(io_error("compress", &path))?;
                    if read == 0 {
                        break;
                    }
                    compressed = std::mem::take(encoder.get_mut());
                    stored.update(&compressed);
                    &compressed
                }
                None => chunk,
            };
            // Stored as they are, zero blocks (free pages, a segment's
            // unused tail) are left as holes, and the length set at the end.
            unflushed += match (&target, &mut self.sink) {
                (Target::File { file, temp }, _) if compress => {
                    file.write_all_at(out, stored_size).map_err(io_error("write", temp))?;
                    out.len()
                }
                (Target::File { file, temp }, _) => {
                    file.write_all_skipping_zeroes_at(out, stored_size).map_err(io_error("write", temp))?
                }
                (Target::Stream, Sink::Stream(stream)) => {
                    stream::send_runs(*stream, out, stored_size).await.map_err(io_error("send", &path))?;
                    0
                }
                (Target::Stream, Sink::Dir(_)) => unreachable!("a stream's file goes to the stream"),
            };
            stored_size += out.len() as u64;
            if let (Target::File { file, temp }, true) = (&target, unflushed >= WRITEBACK_EVERY) {
                // A hint: the copy's bytes trickle to disk as it goes,
                // instead of piling into the file's final sync, which
                // commits' WAL syncs would queue behind. The sync reports
                // any real failure.
                if let Err(e) = file.start_writeback() {
                    tracing::debug!(error = %e, path = %temp.display(), "starting writeback failed");
                }
                unflushed = 0;
            }
            self.progress.bytes_done.fetch_add(read as u64, Ordering::Relaxed);
            if read == 0 {
                break;
            }
            drop(_phase);
            // Writers and readers run between chunks: after a rest if
            // commits are flowing, else after the request's pause.
            let rested = self.yield_to_commits && pacing.rest().await;
            if !rested {
                if self.pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(self.pause).await;
                }
            }
        }
        let _phase = probe::enter(self.phase);
        match (target, &mut self.sink) {
            (Target::File { file, temp }, Sink::Dir(fs)) => {
                if let Some(encoder) = encoder {
                    let tail = encoder.finish().map_err(io_error("compress", &path))?;
                    stored.update(&tail);
                    file.write_all_at(&tail, stored_size).map_err(io_error("write", &temp))?;
                    stored_size += tail.len() as u64;
                } else {
                    file.set_len(stored_size).map_err(io_error("write", &temp))?;
                }
                if !active(PlantedBug::BackupSkipsFileSync) {
                    file.sync_all().map_err(io_error("sync", &temp))?;
                }
                drop(file);
                fs.rename(&temp, &path).map_err(io_error("rename", &temp))?;
            }
            (Target::Stream, Sink::Stream(out)) => {
                stream::send_end(*out, stored_size).await.map_err(io_error("send", &path))?;
            }
            _ => unreachable!("a file goes where its backup's sink is"),
        }
        let checksum = checksum_text(original.finalize());
        let stored_checksum = if compress { checksum_text(stored.finalize()) } else { checksum.clone() };
        Ok(FileEntry {
            path: stored_name,
            restore_path: restore_path.to_string(),
            size,
            checksum,
            compression: if compress { Compression::Zstd } else { Compression::None },
            stored_size,
            stored_checksum,
        })
    }
}

/// Reads until `buf` is full or the source ends.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The segments a backup from `from` to `end` needs, in order, with the
/// bytes of each that lie below `end` (the last one's are cut there).
pub fn segments_between(opts: &WalOptions, from: Lsn, end: Lsn) -> Vec<(u64, u64)> {
    let last = opts.segno(Lsn(end.0.saturating_sub(1)).max(from));
    (opts.segno(from)..=last)
        .map(|segno| {
            let start = segno * opts.segment_size;
            (segno, end.0.saturating_sub(start).min(opts.segment_size))
        })
        .collect()
}

/// Takes a backup of `db` as `request` asks (see the module docs) into
/// `dest` (the backup's file system: the engine's own in production, a
/// second disk in simulation), naming it `id`, and returns its manifest
/// once `backup_manifest.json` is durable.
pub async fn take(
    db: &Database,
    dest: &dyn Fs,
    id: &str,
    request: &BackupRequest,
    progress: &Progress,
) -> Result<Manifest, BackupError> {
    take_into(db, Sink::Dir(dest), id, request, progress).await
}

/// [`take`] into any [`Sink`]: a directory, or a stream to a peer.
pub async fn take_into(
    db: &Database,
    mut sink: Sink<'_>,
    id: &str,
    request: &BackupRequest,
    progress: &Progress,
) -> Result<Manifest, BackupError> {
    let env = db.env();
    let live = env.fs.as_ref();
    let root = request.destination.as_path();
    let data_dir = root.join("data");
    let wal_dir = root.join("wal");
    if let Sink::Dir(dest) = &mut sink {
        check_destination(*dest, root)
            .map_err(|reason| BackupError::Destination { path: root.to_path_buf(), reason })?;
        dest.create_dir_all(&data_dir).map_err(io_error("create directory", &data_dir))?;
        if request.include_wal {
            dest.create_dir_all(&wal_dir).map_err(io_error("create directory", &wal_dir))?;
        }
    }
    let start_micros = env.clock.wall_micros();
    progress.bytes_total.store(estimate_bytes(db, request.include_wal), Ordering::Relaxed);

    let start = db.start_backup(request.yield_to_commits).await?;
    progress.start_lsn.store(start.control.redo_lsn.0, Ordering::Relaxed);
    let mut free_pages = start.free_pages.clone();
    if active(PlantedBug::BackupWidensFreeRanges) {
        // Bounds that exclude their page read as inclusive: each range
        // takes the page before it and the page after it too.
        free_pages.iter_mut().for_each(|range| *range = [range[0].saturating_sub(1), range[1].saturating_add(1)]);
    }
    let early_end = if active(PlantedBug::BackupEndBeforeCopy) { Some(db.end_backup().await?) } else { None };
    let mut writer = Writer {
        chunk_bytes: request.chunk_bytes,
        pause: request.pause,
        yield_to_commits: request.yield_to_commits,
        sink,
        root,
        phase: Phase::BackupCopy,
        compress: request.compress,
        progress,
        db,
    };
    let mut files = Vec::new();
    let mut data_pages = 0;
    let mut damaged = std::collections::BTreeMap::new();
    let live_data = &db.config().data_dir;
    let names = live.list(live_data).map_err(io_error("list", live_data))?;
    for name in names.iter().filter(|name| !NOT_COPIED.contains(&name.as_str())) {
        let path = live_data.join(name);
        let file = live.open(&path).map_err(io_error("open", &path))?;
        let len = file.len().map_err(io_error("stat", &path))?;
        // Only whole pages: the file may grow during the copy, and replay
        // rebuilds every page added after the start.
        let len = if name == DATA_FILE_NAME { len - len % PAGE_SIZE as u64 } else { len };
        let source = FileReader { file: file.as_ref(), offset: 0 }.take(len);
        let entry = if name == DATA_FILE_NAME {
            let source = FreeZeroed { inner: source, free: &free_pages, offset: 0 };
            let pages = verify::PageScan::with_free(free_pages.clone());
            let mut checking = PageChecking { inner: source, pages };
            let entry = writer.write(&format!("data/{name}"), true, &mut checking).await?;
            damaged = checking.pages.bad;
            data_pages = entry.size / PAGE_SIZE as u64;
            entry
        } else {
            writer.write(&format!("data/{name}"), true, source).await?
        };
        files.push(entry);
    }
    let mut control = start.control.encode();
    if active(PlantedBug::BackupLiveControlFile) {
        let path = live_data.join(CONTROL_FILE_NAME);
        let file = live.open(&path).map_err(io_error("open", &path))?;
        file.read_exact_at(&mut control, 0).map_err(io_error("read", &path))?;
    }
    files.push(writer.write(&format!("data/{CONTROL_FILE_NAME}"), true, &control[..]).await?);

    let end = match early_end {
        Some(end) => end,
        None => db.end_backup().await?,
    };
    progress.end_lsn.store(end.0, Ordering::Relaxed);
    let opts = db.wal().options();
    if !damaged.is_empty() {
        // Pages the copy found damaged must be rebuilt by an image logged
        // since the start checkpoint (a page torn by a concurrent write
        // is; one damaged at rest is not).
        let mut rebuilt = std::collections::BTreeMap::new();
        let mut reader = WalReader::new(env.fs.clone(), opts.clone(), start.wal_from);
        while let Some((lsn, record)) = reader.next_record().map_err(|e| BackupError::Db(StoreError::from(e).into()))? {
            if lsn >= end {
                break;
            }
            if record.kind == RecordKind::Data && lsn >= start.control.redo_lsn {
                for page_no in Op::image_pages(&record.payload).unwrap_or_default() {
                    if let Some(why) = damaged.remove(&page_no) {
                        rebuilt.insert(page_no, why);
                    }
                }
            }
        }
        if let Some((page_no, why)) = damaged.into_iter().next() {
            return Err(BackupError::DamagedPage { path: live_data.join(DATA_FILE_NAME), page_no, why });
        }
        // Rebuilt by an image, but the verifier of a backup without its WAL
        // holds every page to its checksum (found by seed 1403: a sector of
        // a page lost at rest, the page changed since the start).
        if let Some((page_no, why)) = rebuilt.into_iter().next().filter(|_| !request.include_wal) {
            return Err(BackupError::DamagedPageWithoutWal { path: live_data.join(DATA_FILE_NAME), page_no, why });
        }
    }
    let mut wal_segments = Vec::new();
    let segments = segments_between(opts, start.wal_from, end);
    if request.include_wal {
        let total = progress.bytes_done.load(Ordering::Relaxed) + segments.len() as u64 * opts.segment_size;
        progress.bytes_total.store(total, Ordering::Relaxed);
    }
    writer.phase = Phase::BackupWal;
    for (segno, below_end) in segments {
        let name = opts.file_name(segno);
        if !request.include_wal {
            wal_segments.push(SegmentEntry { name, checksum: None });
            continue;
        }
        let path = opts.path(segno);
        let file = live.open(&path).map_err(io_error("open", &path))?;
        let rest = opts.segment_size - below_end;
        let source = FileReader { file: file.as_ref(), offset: 0 }.take(below_end).chain(io::repeat(0).take(rest));
        let entry = writer.write(&format!("wal/{name}"), true, source).await?;
        wal_segments.push(SegmentEntry { name, checksum: Some(entry.checksum.clone()) });
        files.push(entry);
    }
    drop(start.hold);
    writer.phase = Phase::BackupManifest;
    files.push(writer.write(CONFIG_NAME, false, request.config_text.as_bytes()).await?);
    let _phase = probe::enter(Phase::BackupManifest);
    let streamed = matches!(writer.sink, Sink::Stream(_));
    if let Sink::Dir(dest) = &writer.sink {
        for dir in [&data_dir, &wal_dir, &root.to_path_buf()] {
            if dir != &wal_dir || request.include_wal {
                dest.sync_dir(dir).map_err(io_error("sync directory", dir))?;
            }
        }
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        backup_id: id.to_string(),
        system_identifier: format!("{:016x}", start.control.system_id),
        start_time: rfc3339(start_micros),
        end_time: rfc3339(env.clock.wall_micros()),
        start_lsn: start.control.redo_lsn,
        end_lsn: end,
        wal_start_lsn: start.wal_from,
        timeline: start.control.timeline,
        wal_segment_size: opts.segment_size,
        include_wal: request.include_wal,
        compress: request.compress && !streamed,
        data_pages,
        free_pages,
        files,
        wal_segments,
    };
    let encoded = manifest.encode();
    match &mut writer.sink {
        Sink::Dir(dest) => write_atomically(*dest, root, MANIFEST_NAME, encoded.as_bytes())?,
        Sink::Stream(out) => {
            let sent = async {
                stream::send_path(*out, MANIFEST_NAME).await?;
                stream::send_runs(*out, encoded.as_bytes(), 0).await?;
                stream::send_end(*out, encoded.len() as u64).await?;
                stream::send_finish(*out).await
            };
            sent.await.map_err(io_error("send", &root.join(MANIFEST_NAME)))?;
        }
    }
    probe::hit(Probe::BackupCompleted);
    if streamed {
        return Ok(manifest);
    }
    db.record_backup(&BackupHistory {
        backup_id: manifest.backup_id.clone(),
        destination: root.display().to_string(),
        wal_start_lsn: manifest.wal_start_lsn,
        start_lsn: manifest.start_lsn,
        end_lsn: manifest.end_lsn,
        timeline: manifest.timeline,
        wal_segment_size: manifest.wal_segment_size,
        start_time: manifest.start_time.clone(),
        end_time: manifest.end_time.clone(),
        end_micros: db.wall_micros(),
    })
    .await;
    Ok(manifest)
}

/// Writes `name` in `dir` whole or not at all (see
/// [`crate::env::write_atomically`]).
pub(crate) fn write_atomically(fs: &dyn Fs, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BackupError> {
    crate::env::write_atomically(fs, dir, name, bytes).map_err(|e| BackupError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}
