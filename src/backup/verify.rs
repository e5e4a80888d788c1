//! `thunderdb --verify-backup`: proves a backup restores, not only that its
//! bytes are intact.
//!
//! 1. The manifest parses, has a known version and passes its own checksum.
//! 2. Every listed file exists, and no other file does.
//! 3. Every file's stored bytes and (decompressed) original bytes match
//!    their checksums; every data page passes its own checksum or is
//!    rebuilt by an image in the backup's WAL (a page the copy caught
//!    mid-write); every WAL segment matches its checksum.
//! 4. The files are restored into a scratch directory, and there the WAL
//!    runs without a gap from the manifest's WAL start to its end LSN, on
//!    its timeline. Uncompressed files are not copied: the scratch directory
//!    is an [`Overlay`] in which they read through to the backup's own
//!    files, and the replay's writes stay in memory. Compressed files are
//!    decompressed into it.
//! 5. Crash recovery replays it to the end LSN, and every tree (the catalog
//!    and each table) is structurally sound: key order, levels, sibling
//!    links.
//!
//! Steps 4 and 5 run in a task of their own, started once the compressed
//! files are decompressed, while step 3 reads the other files: on a
//! multi-threaded runtime the two run side by side (each is about half the
//! work). Their findings count only if every byte of step 3 is sound;
//! otherwise the task is aborted and only the damage is reported, as if
//! the replay had never run.
//!
//! Every problem is collected (file, expected, found); the verifier never
//! panics on any input, whatever the bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{checksum_text, in_ranges, Compression, FileEntry, Manifest, MANIFEST_NAME};
use super::{segments_between, FileReader};
use crate::db::CATALOG;
use crate::env::{Clock, Fs, Overlay};
use crate::probe::{self, Probe};
use crate::recovery::{self, StoreOptions};
use crate::storage::{ControlFile, Op, Page, PageCheck, DATA_FILE_NAME, PAGE_SIZE, UNDO_MEMORY_DEFAULT};
use crate::txn::Table;
use crate::wal::{Lsn, RecordKind, WalOptions, WalReader};

/// One thing wrong with a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `wal/`, or a table) the problem is in.
    pub file: String,
    /// What should have been there.
    pub expected: String,
    /// What was.
    pub found: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, found {}", self.file, self.expected, self.found)
    }
}

fn problem(file: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) -> Problem {
    Problem { file: file.into(), expected: expected.into(), found: found.into() }
}

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The manifest, if it was readable and sound.
    pub manifest: Option<Manifest>,
    /// Every problem found; empty means PASSED.
    pub problems: Vec<Problem>,
    /// Data pages checked.
    pub data_pages: u64,
    /// WAL segments checked.
    pub wal_segments: u64,
    /// Tables whose trees replay left sound (0 if replay did not run).
    pub tables: u64,
    /// Rows in them.
    pub rows: u64,
    /// Whether the WAL was replayed (only a backup that includes it can be).
    pub replayed: bool,
}

impl Report {
    /// Whether the backup passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.manifest.is_some()
    }

    /// The block `--verify-backup` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match (&self.manifest, self.passed()) {
            (Some(manifest), true) => {
                out.push_str("Backup verification: PASSED\n");
                out.push_str(&format!("Backup time: {}\n", manifest.start_time));
                out.push_str(&format!("LSN: {}\n", manifest.end_lsn));
                out.push_str(&format!("Data pages: {} (verified)\n", self.data_pages));
                if manifest.include_wal {
                    out.push_str(&format!("WAL segments: {} (verified)\n", self.wal_segments));
                } else {
                    let names = &manifest.wal_segments;
                    out.push_str(&format!(
                        "WAL segments: 0 (not included: the archive must supply {} to {}; replay not checked)\n",
                        names.first().map_or("-", |s| s.name.as_str()),
                        names.last().map_or("-", |s| s.name.as_str())
                    ));
                }
                out.push_str("Checksum: OK\n");
            }
            _ => {
                out.push_str("Backup verification: FAILED\n");
                for problem in &self.problems {
                    out.push_str(&format!("  {problem}\n"));
                }
            }
        }
        out
    }
}

/// Where the verifier may restore a scratch copy: a directory it owns, on a
/// file system (a temporary directory, or memory).
pub struct Scratch {
    /// The file system.
    pub fs: Arc<dyn Fs>,
    /// An empty directory; the caller removes it afterwards.
    pub dir: PathBuf,
}

/// A reader that hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// What the data file's pages held.
#[derive(Debug, Default)]
pub(crate) struct PageScan {
    /// Pages that fail their own checks, with why.
    pub(crate) bad: BTreeMap<u32, String>,
    /// Every sound page's LSN, by page number.
    pub(crate) lsns: BTreeMap<u32, Lsn>,
    /// The bytes of the page being assembled.
    page: Vec<u8>,
    /// Pages the backup left as zeroes because no table used them
    /// ([`Manifest::free_pages`]): all zeroes is sound for them.
    free: Vec<[u32; 2]>,
}

impl PageScan {
    /// A scan of a data file whose `free` pages may be all zeroes.
    pub(crate) fn with_free(free: Vec<[u32; 2]>) -> PageScan {
        PageScan { free, ..PageScan::default() }
    }

    /// Checks the data file's bytes as they stream past, page by page.
    /// Whole pages are checked where they lie in `chunk`; only a page split
    /// between two chunks is assembled.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        if !self.page.is_empty() {
            let take = (PAGE_SIZE - self.page.len()).min(chunk.len());
            self.page.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.page.len() < PAGE_SIZE {
                return;
            }
            let page = std::mem::take(&mut self.page);
            self.check(&page);
            self.page = page;
            self.page.clear();
        }
        let mut pages = chunk.chunks_exact(PAGE_SIZE);
        for page in &mut pages {
            self.check(page);
        }
        self.page.extend_from_slice(pages.remainder());
    }

    /// Checks one whole page, the next in the file.
    fn check(&mut self, page: &[u8]) {
        let page_no = (self.lsns.len() + self.bad.len()) as u32;
        match Page::check(page, page_no) {
            Ok(()) => {
                self.lsns.insert(page_no, Page::lsn_of(page));
            }
            Err(PageCheck::Zeroed) if in_ranges(&self.free, page_no) => {
                self.lsns.insert(page_no, Lsn::ZERO);
            }
            Err(PageCheck::Zeroed) => {
                self.bad.insert(page_no, "all zeroes".into());
            }
            Err(PageCheck::Damaged(why)) => {
                self.bad.insert(page_no, why);
            }
        }
    }

    /// Ends the stream: a partial page left over is bad.
    pub(crate) fn finish(&mut self) {
        if !self.page.is_empty() {
            let page_no = (self.lsns.len() + self.bad.len()) as u32;
            self.bad.insert(page_no, format!("a partial page of {} bytes", self.page.len()));
            self.page.clear();
        }
    }
}

/// What reading one stored file gave.
struct Read1 {
    stored: (String, u64),
    original: (String, u64),
}

/// Reads a stored file, decompressing it, and hands each chunk of the
/// original bytes to `each`.
fn read_entry(
    fs: &dyn Fs,
    path: &Path,
    compression: Compression,
    each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Read1> {
    let file = fs.open(path)?;
    let mut stored =
        Hashing { inner: FileReader { file: file.as_ref(), offset: 0 }, crc: crc32fast::Hasher::new(), len: 0 };
    let (mut crc, mut len) = (crc32fast::Hasher::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    let mut pump = |source: &mut dyn Read| -> io::Result<()> {
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc.update(&buf[..n]);
            len += n as u64;
            each(&buf[..n])?;
        }
    };
    match compression {
        // Stored bytes are the original ones: one checksum serves both.
        Compression::None => {
            pump(&mut stored.inner)?;
            let original = (checksum_text(crc.finalize()), len);
            return Ok(Read1 { stored: original.clone(), original });
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(&mut stored)?.single_frame();
            pump(&mut decoder)?;
            // Whatever follows the frame is part of the stored bytes too.
            io::copy(&mut decoder.finish(), &mut io::sink())?;
        }
    }
    Ok(Read1 {
        stored: (checksum_text(stored.crc.finalize()), stored.len),
        original: (checksum_text(crc.finalize()), len),
    })
}

/// Reads the manifest in `dir`.
pub fn read_manifest(fs: &dyn Fs, dir: &Path) -> Result<Manifest, Problem> {
    let path = dir.join(MANIFEST_NAME);
    let text = (|| {
        let file = fs.open(&path)?;
        let len = file.len()?;
        if len > 1 << 30 {
            return Err(io::Error::other(format!("{len} bytes is not a manifest")));
        }
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        String::from_utf8(bytes).map_err(|e| io::Error::other(format!("not UTF-8 text: {e}")))
    })()
    .map_err(|e| problem(MANIFEST_NAME, "a readable manifest (the backup ends by writing it)", e.to_string()))?;
    Manifest::decode(&text).map_err(|e| problem(MANIFEST_NAME, "a sound manifest", e.to_string()))
}

/// Checks that the backup holds exactly the manifest's files.
fn check_listing(fs: &dyn Fs, dir: &Path, manifest: &Manifest, problems: &mut Vec<Problem>) {
    let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut present = BTreeSet::new();
    for sub in ["", "data", "wal"] {
        let Ok(names) = fs.list(&dir.join(sub)) else { continue };
        for name in names {
            let path = if sub.is_empty() { name } else { format!("{sub}/{name}") };
            if path == MANIFEST_NAME || path == "data" || path == "wal" {
                continue;
            }
            present.insert(path);
        }
    }
    for path in &listed {
        if !present.contains(*path) {
            problems.push(problem(*path, "the file the manifest lists", "no such file"));
        }
    }
    for path in present.iter().filter(|p| !listed.contains(p.as_str())) {
        problems.push(problem(path, "no file the manifest does not list", "an extra file"));
    }
}

/// Restores one file's original bytes to `target` (not synced: a scratch
/// copy needs no durability, and a restore syncs before it renames),
/// checking both checksums on the way; for the data file, checks every page
/// and returns what they hold.
pub(crate) fn restore_entry(
    fs: &dyn Fs,
    dir: &Path,
    entry: &FileEntry,
    target: Option<(&dyn Fs, PathBuf)>,
    free: &[[u32; 2]],
    problems: &mut Vec<Problem>,
) -> PageScan {
    let mut pages = PageScan::with_free(free.to_vec());
    let is_data_file = entry.restore_path == format!("data/{DATA_FILE_NAME}");
    let out = match target {
        Some((fs, path)) => match fs.create(&path) {
            Ok(file) => Some(file),
            Err(e) => {
                problems.push(problem(&entry.path, "a scratch copy", format!("{}: {e}", path.display())));
                return pages;
            }
        },
        None => None,
    };
    let mut offset = 0u64;
    let mut each = |chunk: &[u8]| -> io::Result<()> {
        if let Some(file) = &out {
            file.write_all_at(chunk, offset)?;
        }
        offset += chunk.len() as u64;
        if is_data_file {
            pages.feed(chunk);
        }
        Ok(())
    };
    let path = dir.join(&entry.path);
    match read_entry(fs, &path, entry.compression, &mut each) {
        Ok(read) => {
            if read.stored != (entry.stored_checksum.clone(), entry.stored_size) {
                problems.push(problem(
                    &entry.path,
                    format!("{} bytes with checksum {}", entry.stored_size, entry.stored_checksum),
                    format!("{} bytes with checksum {}", read.stored.1, read.stored.0),
                ));
            } else if read.original != (entry.checksum.clone(), entry.size) {
                problems.push(problem(
                    &entry.path,
                    format!("{} original bytes with checksum {}", entry.size, entry.checksum),
                    format!("{} bytes with checksum {}", read.original.1, read.original.0),
                ));
            }
        }
        Err(e) => problems.push(problem(&entry.path, "a readable file", e.to_string())),
    }
    if is_data_file {
        pages.finish();
    }
    pages
}

/// Verifies the backup in `dir` (read through `fs`), restoring a scratch
/// copy under `scratch` to replay it. `progress` hears the stored bytes
/// read so far and the total.
pub async fn verify(
    fs: &dyn Fs,
    dir: &Path,
    scratch: &Scratch,
    clock: Arc<dyn Clock>,
    progress: &mut dyn FnMut(u64, u64),
) -> Report {
    let mut report = Report::default();
    let manifest = match read_manifest(fs, dir) {
        Ok(manifest) => manifest,
        Err(p) => {
            report.problems.push(p);
            return report;
        }
    };
    let problems = &mut report.problems;
    check_listing(fs, dir, &manifest, problems);
    let opts = manifest.wal_options(scratch.dir.join("wal"));
    if let Err(e) = opts.validate() {
        problems.push(problem(MANIFEST_NAME, "a valid WAL segment size", e.to_string()));
        report.manifest = Some(manifest);
        return report;
    }
    let expected: Vec<String> = segments_between(&opts, manifest.wal_start_lsn, manifest.end_lsn)
        .into_iter()
        .map(|(segno, _)| opts.file_name(segno))
        .collect();
    let named: Vec<String> = manifest.wal_segments.iter().map(|s| s.name.clone()).collect();
    if named != expected || manifest.start_lsn > manifest.end_lsn || manifest.wal_start_lsn > manifest.start_lsn {
        problems.push(problem(
            MANIFEST_NAME,
            format!("segments {expected:?} for WAL {}..{}", manifest.wal_start_lsn, manifest.end_lsn),
            format!("{named:?}"),
        ));
    }

    let scratch_ok = [scratch.dir.join("data"), scratch.dir.join("wal")]
        .iter()
        .map(|d| {
            scratch
                .fs
                .create_dir_all(d)
                .map_err(|e| problem(d.display().to_string(), "a scratch directory", e.to_string()))
        })
        .collect::<Result<Vec<()>, Problem>>();
    if let Err(p) = scratch_ok {
        problems.push(p);
    }
    let overlay = Arc::new(Overlay::new(scratch.fs.clone()));
    let total: u64 = manifest.files.iter().map(|f| f.stored_size).sum();
    let mut done = 0;
    let mut pages = PageScan::default();
    let before = problems.len();
    // First the files the replay reads: compressed ones are decompressed
    // into the scratch directory (checked on the way), the others linked.
    let mut unchecked = Vec::new();
    for entry in &manifest.files {
        let restorable = entry.restore_path.starts_with("data/") || entry.restore_path.starts_with("wal/");
        let safe = !entry.restore_path.contains("..") && !entry.path.contains("..");
        if !safe {
            problems.push(problem(&entry.path, "a path inside the backup", "a path that leaves it"));
            continue;
        }
        let replayed = restorable && manifest.include_wal;
        if replayed && entry.compression != Compression::None {
            let target = Some((scratch.fs.as_ref(), scratch.dir.join(&entry.restore_path)));
            let scan = restore_entry(fs, dir, entry, target, &manifest.free_pages, problems);
            check_entry(entry, scan, &manifest, &mut pages, &mut report.data_pages, &mut report.wal_segments, problems);
            done += entry.stored_size;
            progress(done, total);
            continue;
        }
        if replayed {
            let linked = fs
                .open(&dir.join(&entry.path))
                .and_then(|file| overlay.link(&scratch.dir.join(&entry.restore_path), file));
            if let Err(e) = linked {
                problems.push(problem(&entry.path, "a file the scratch copy can read", e.to_string()));
            }
        }
        unchecked.push(entry);
    }
    // The replay runs on the overlay while the other files' bytes are
    // checked (on another thread when the runtime has one): its findings
    // count only if every byte is sound.
    let replaying = manifest.include_wal.then(|| {
        let scratch = Scratch { fs: overlay.clone(), dir: scratch.dir.clone() };
        let (manifest, opts) = (manifest.clone(), opts.clone());
        tokio::spawn(async move { replay(&manifest, &scratch, &opts, clock.as_ref()).await })
    });
    for entry in unchecked {
        let scan = restore_entry(fs, dir, entry, None, &manifest.free_pages, problems);
        check_entry(entry, scan, &manifest, &mut pages, &mut report.data_pages, &mut report.wal_segments, problems);
        done += entry.stored_size;
        progress(done, total);
    }
    if report.data_pages != manifest.data_pages {
        problems.push(problem(
            format!("data/{DATA_FILE_NAME}"),
            format!("{} pages", manifest.data_pages),
            format!("{} pages", report.data_pages),
        ));
    }
    // WAL before data: a page reaches the disk only after the log covers its
    // LSN, and the end LSN is the durable end after the copy.
    for (page_no, lsn) in pages.lsns.iter().filter(|(_, lsn)| **lsn > manifest.end_lsn) {
        problems.push(problem(
            format!("data/{DATA_FILE_NAME} page {page_no}"),
            format!("a page LSN at or below the end LSN {}", manifest.end_lsn),
            format!("page LSN {lsn}"),
        ));
    }
    let bytes_sound = problems.len() == before;
    match replaying {
        None => {
            for (page_no, why) in pages.bad {
                problems.push(problem(
                    format!("data/{DATA_FILE_NAME} page {page_no}"),
                    "a page that passes its checksum",
                    why,
                ));
            }
        }
        Some(replaying) if !bytes_sound => replaying.abort(),
        Some(replaying) => match replaying.await {
            Ok(replayed) => replayed.report(pages, &mut report),
            Err(e) => report.problems.push(problem("replay", "a replay that finishes", e.to_string())),
        },
    }
    report.manifest = Some(manifest);
    report
}

/// Checks what reading one file gave against the manifest: keeps the data
/// file's page scan and counts its pages, and checks a WAL segment is the
/// one the manifest lists.
fn check_entry(
    entry: &FileEntry,
    scan: PageScan,
    manifest: &Manifest,
    pages: &mut PageScan,
    data_pages: &mut u64,
    wal_segments: &mut u64,
    problems: &mut Vec<Problem>,
) {
    if entry.restore_path == format!("data/{DATA_FILE_NAME}") {
        *data_pages = entry.size / PAGE_SIZE as u64;
        *pages = scan;
    }
    if entry.restore_path.starts_with("wal/") {
        let name = entry.restore_path.trim_start_matches("wal/");
        let listed = manifest.wal_segments.iter().find(|s| s.name == name);
        if listed.and_then(|s| s.checksum.as_ref()) != Some(&entry.checksum) {
            problems.push(problem(&entry.path, "a segment the manifest lists with this checksum", "another"));
        }
        *wal_segments += 1;
    }
}

/// What the replay found, to be judged with the page scan.
#[derive(Debug, Default)]
struct Replayed {
    /// Problems with the log itself (a gap, its end, the control file):
    /// with any, nothing else is judged.
    log: Vec<Problem>,
    /// Pages the backup's WAL holds an image of, with the newest image's LSN.
    imaged: BTreeMap<u32, Lsn>,
    /// Problems crash recovery and the tree checks found (judged only if
    /// every page passes its checksum or has an image).
    replay: Vec<Problem>,
    replayed: bool,
    tables: u64,
    rows: u64,
}

impl Replayed {
    fn report(self, pages: PageScan, report: &mut Report) {
        let problems = &mut report.problems;
        if !self.log.is_empty() {
            problems.extend(self.log);
            return;
        }
        let PageScan { bad, lsns, .. } = pages;
        for (page_no, lsn) in &self.imaged {
            if lsns.get(page_no).is_some_and(|copied| copied < lsn) {
                probe::hit(Probe::BackupPageBehindLog);
            }
        }
        for (page_no, why) in bad.into_iter().filter(|(page_no, _)| !self.imaged.contains_key(page_no)) {
            problems.push(problem(
                format!("data/{DATA_FILE_NAME} page {page_no}"),
                "a page that passes its checksum, or its image in the backup's WAL",
                why,
            ));
        }
        if !problems.is_empty() {
            return;
        }
        problems.extend(self.replay);
        report.replayed = self.replayed;
        report.tables = self.tables;
        report.rows = self.rows;
    }
}

/// Steps 4 and 5 of the module docs, on the scratch copy.
async fn replay(manifest: &Manifest, scratch: &Scratch, opts: &WalOptions, clock: &dyn Clock) -> Replayed {
    let mut out = Replayed::default();
    let mut reader = WalReader::new(scratch.fs.clone(), opts.clone(), manifest.wal_start_lsn);
    loop {
        match reader.next_record() {
            Ok(Some((lsn, record))) => {
                if record.kind == RecordKind::Data && lsn >= manifest.start_lsn {
                    for page_no in Op::image_pages(&record.payload).unwrap_or_default() {
                        out.imaged.insert(page_no, lsn);
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                out.log.push(problem("wal/", "records without a gap to the end LSN", e.to_string()));
                return out;
            }
        }
    }
    let end = reader.end().map_or(Lsn::ZERO, |end| end.lsn());
    if end != manifest.end_lsn {
        out.log.push(problem(
            "wal/",
            format!(
                "records from {} to {} on timeline {}",
                manifest.wal_start_lsn, manifest.end_lsn, manifest.timeline
            ),
            format!("the log ends at {end}"),
        ));
        return out;
    }
    let data_dir = scratch.dir.join("data");
    match ControlFile::load(scratch.fs.as_ref(), &data_dir) {
        Ok(Some(control)) if format!("{:016x}", control.system_id) != manifest.system_identifier => {
            out.log.push(problem(
                "data/control",
                format!("database {}", manifest.system_identifier),
                format!("database {:016x}", control.system_id),
            ))
        }
        // Replay must start at the backup's own start checkpoint: a later
        // one's redo point lies past changes the copy may have missed.
        Ok(Some(control)) if control.redo_lsn != manifest.start_lsn || control.checkpoint_lsn != manifest.start_lsn => {
            out.log.push(problem(
                "data/control",
                format!("the start checkpoint at {}", manifest.start_lsn),
                format!("checkpoint {} with redo point {}", control.checkpoint_lsn, control.redo_lsn),
            ))
        }
        Ok(Some(_)) => {}
        Ok(None) => out.log.push(problem("data/control", "a control file", "none")),
        Err(e) => out.log.push(problem("data/control", "a sound control file", e.to_string())),
    }
    if !out.log.is_empty() {
        return out;
    }
    let store_opts = StoreOptions {
        data_dir,
        wal: opts.clone(),
        pool_bytes: 64 << 20,
        undo_memory: UNDO_MEMORY_DEFAULT,
        new_system_id: 0,
        replication: None,
    };
    let mut store = match recovery::recover(scratch.fs.clone(), clock, &store_opts).await {
        Ok((store, recovered)) if recovered.end_lsn == manifest.end_lsn => store,
        Ok((_, recovered)) => {
            out.replay.push(problem(
                "wal/",
                format!("replay to {}", manifest.end_lsn),
                format!("replay to {}", recovered.end_lsn),
            ));
            return out;
        }
        Err(e) => {
            out.replay.push(problem("replay", "crash recovery to the end LSN", e.to_string()));
            return out;
        }
    };
    out.replayed = true;
    let catalog = match store.check_tree(CATALOG).await {
        Ok(_) => store.scan(CATALOG).await,
        Err(e) => Err(e),
    };
    let catalog = match catalog {
        Ok(rows) => rows,
        Err(e) => {
            out.replay.push(problem("catalog", "a sound B+tree", e.to_string()));
            return out;
        }
    };
    for (name, row) in catalog {
        if row.len() < 4 {
            let found = format!("a {}-byte row for {:?}", row.len(), String::from_utf8_lossy(&name));
            out.replay.push(problem("catalog", "rows that start with a root page", found));
            continue;
        }
        let table = Table::decode(&name, &row);
        match store.check_tree(table.tree).await {
            Ok(shape) => {
                out.tables += 1;
                out.rows += shape.rows;
            }
            Err(e) => out.replay.push(problem(format!("table {}", table.name), "a sound B+tree", e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PageKind;
    use proptest::prelude::*;

    /// A data file of `count` sealed pages with LSN `10 * page number`,
    /// except page 2, damaged, and page 4, all zeroes.
    fn data_file(count: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for page_no in 0..count {
            let mut page = Page::new(page_no, PageKind::Leaf);
            page.set_page_lsn(Lsn(10 * u64::from(page_no)));
            let mut sealed = page.seal().to_vec();
            match page_no {
                2 => sealed[100] ^= 0xff,
                4 => sealed.fill(0),
                _ => {}
            }
            bytes.extend_from_slice(&sealed);
        }
        bytes
    }

    proptest! {
        /// However the stream is cut, the scan sees the same pages: a page
        /// split between chunks is assembled, whole ones are checked in
        /// place.
        #[test]
        fn the_page_scan_does_not_depend_on_where_chunks_end(
            cuts in proptest::collection::vec(1usize..3 * PAGE_SIZE, 1..12),
            tail in 0usize..PAGE_SIZE,
        ) {
            let mut file = data_file(6);
            file.extend(std::iter::repeat_n(7, tail));
            let mut scan = PageScan::default();
            let mut rest = &file[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*cut).min(rest.len()));
                scan.feed(chunk);
                rest = after;
            }
            scan.finish();
            let lsns: Vec<(u32, u64)> = scan.lsns.iter().map(|(p, l)| (*p, l.0)).collect();
            prop_assert_eq!(lsns, vec![(0, 0), (1, 10), (3, 30), (5, 50)]);
            let bad: Vec<u32> = scan.bad.keys().copied().collect();
            let mut expected = vec![2, 4];
            if tail > 0 {
                expected.push(6);
            }
            prop_assert_eq!(bad, expected);
            prop_assert!(scan.bad[&2].contains("checksum mismatch"));
            prop_assert_eq!(scan.bad[&4].as_str(), "all zeroes");
        }
    }
}
