//! The checks behind the fuzz targets, as plain functions, so the committed
//! corpus replays as ordinary tests (`sim/tests/fuzz_corpus.rs`) in both
//! builds and the fuzz targets stay one line each.

use std::sync::Arc;

use thunderdb::env::{FaultConfig, Fs, SimDisk};
use thunderdb::storage::{ControlFile, Page, PAGE_SIZE};
use thunderdb::wal::{decode, Lsn, Record, Wal, WalError, WalOptions, WalReader, HEADER_LEN};
use thunderdb_workloads::wal_log::WalModel;

/// Decoding arbitrary bytes as a WAL record never panics, and whatever
/// decodes re-encodes to the same bytes.
pub fn wal_record(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let lsn = Lsn(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) & !7);
    let bytes = &data[8..];
    if let Ok(decoded) = decode(bytes, lsn) {
        let mut again = Vec::new();
        let len = decoded.record.encode_into(&mut again, lsn, decoded.timeline, decoded.durable_lsn);
        assert_eq!(len, decoded.encoded_len);
        let framed = HEADER_LEN + decoded.record.payload.len();
        assert_eq!(&again[..framed], &bytes[..framed], "a valid record re-encodes to its bytes");
    }
}

/// Checking arbitrary bytes as a page never panics, and an accepted page
/// reseals to the same bytes.
pub fn page(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let page_no = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
    let mut bytes = data[4..].to_vec();
    // Most inputs are the wrong length; pad some to a page to reach the checks.
    if bytes.len() < PAGE_SIZE && page_no % 2 == 0 {
        bytes.resize(PAGE_SIZE, 0);
    }
    if let Ok(mut page) = Page::from_bytes(&bytes, page_no) {
        assert_eq!(&page.seal()[..], &bytes[..]);
    }
}

/// Decoding arbitrary bytes as a control file never panics, and whatever
/// decodes re-encodes to the same fields.
pub fn control_file(data: &[u8]) {
    if let Ok(control) = ControlFile::decode(data) {
        assert_eq!(ControlFile::decode(&control.encode()), Ok(control));
    }
}

/// Runs a crash schedule chosen by the input on the simulated disk and
/// checks the WAL against its model after every crash. Panics on a
/// violation, so the fuzzer reports it. (Fuzzing runs the normal build;
/// under madsim, call [`run_crash_schedule`] from a test.)
#[cfg(not(madsim))]
pub fn crash_schedule(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    if let Err(violation) = runtime.block_on(run_crash_schedule(data)) {
        panic!("crash schedule {data:?}: {violation}");
    }
}

/// The interpreter behind [`crash_schedule`]. The first byte picks the
/// segment size and the crash-time faults; then each byte is an operation:
///
/// | byte % 8 | operation |
/// |---|---|
/// | 0..=2 | append a data record whose payload length is the next byte × 8 |
/// | 3 | append a commit record |
/// | 4 | flush everything appended |
/// | 5 | arm a crash after (next byte % 32) I/O operations |
/// | 6 | make the next sync fail (Linux fsync semantics) |
/// | 7 | lose power now, recover, check, reopen |
pub async fn run_crash_schedule(data: &[u8]) -> Result<(), String> {
    let Some((&setup, program)) = data.split_first() else { return Ok(()) };
    let opts = WalOptions::new("/fuzz/wal").with_segment_size([1024, 4096][usize::from(setup & 1)]);
    let faults = FaultConfig {
        lose_unsynced: setup & 2 != 0,
        torn_writes: setup & 4 != 0,
        lose_metadata: setup & 8 != 0,
        ..FaultConfig::none()
    };
    let disk = SimDisk::new(u64::from(setup), faults.clone());
    disk.fs().create_dir_all(&opts.dir).map_err(|e| e.to_string())?;
    let mut model = WalModel::default();
    let mut wal = recover(&disk, &opts, &mut model)?;
    let mut bytes = program.iter().copied();
    let mut xid = 0u64;
    while let Some(op) = bytes.next() {
        xid += 1;
        match op % 8 {
            0..=3 => {
                let Some(w) = wal.as_ref() else { continue };
                let record = if op % 8 == 3 {
                    Record::commit(xid, Lsn::ZERO, xid)
                } else {
                    Record::data(xid, Lsn::ZERO, vec![op; usize::from(bytes.next().unwrap_or(0)) * 8])
                };
                let hint = w.durable_lsn();
                match w.append(&record).await {
                    Ok((lsn, _)) => model.accepted(lsn, record, hint),
                    Err(_) => wal = None,
                }
            }
            4 => {
                let Some(w) = wal.as_ref() else { continue };
                match w.flush(w.end_lsn()).await {
                    Ok(durable) => model.acknowledged(durable),
                    Err(_) => wal = None,
                }
            }
            5 => disk.set_crash_countdown(Some(u64::from(bytes.next().unwrap_or(0) % 32))),
            6 => disk.set_faults(FaultConfig { fsync_error_rate: 1.0, ..faults.clone() }),
            _ => {
                drop(wal.take());
                disk.crash();
                disk.set_faults(faults.clone());
                wal = recover(&disk, &opts, &mut model)?;
            }
        }
        if op % 8 == 4 {
            // A planned fsync failure strikes one sync only.
            disk.set_faults(faults.clone());
        }
    }
    drop(wal);
    disk.set_crash_countdown(None);
    disk.set_faults(faults.clone());
    disk.crash();
    recover(&disk, &opts, &mut model).map(|_| ())
}

/// Reads the log, checks it against the model, and reopens the WAL. An I/O
/// error (the crash countdown) leaves the WAL closed until the next crash.
fn recover(disk: &SimDisk, opts: &WalOptions, model: &mut WalModel) -> Result<Option<Wal>, String> {
    let fs: Arc<dyn Fs> = disk.fs();
    let mut reader = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn());
    let mut recovered = Vec::new();
    loop {
        match reader.next_record() {
            Ok(Some(entry)) => recovered.push(entry),
            Ok(None) => break,
            Err(e @ WalError::Corrupt { .. }) => return Err(e.to_string()),
            Err(_) => return Ok(None),
        }
    }
    model.check(&recovered)?;
    let end = reader.end().expect("the reader reached the end");
    let wal = Wal::open(fs, opts.clone(), end).ok();
    if wal.is_some() {
        // A crash while opening leaves the previous truth in force.
        model.reset_to(&recovered);
    }
    Ok(wal)
}

/// A sound backup's files (path in the backup, bytes), taken on the
/// simulated disk from a small database: a table of a few hundred rows, a
/// checkpoint, more changes, and one transaction left open.
pub async fn pristine_backup(compress: bool) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    use thunderdb::backup::{take, BackupRequest, Progress};
    use thunderdb::db::{Database, EngineConfig};
    use thunderdb::env::{Env, SimClock};
    let disk = SimDisk::new(3, FaultConfig::none());
    let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_700_000_000_000_000)), 3);
    let mut config = EngineConfig::new("/db");
    config.wal_segment_size = 1 << 14;
    config.buffer_pool_size = 8 * PAGE_SIZE as u64;
    let db = Database::open(env, config).await.expect("open");
    let mut txn = db.begin().await.expect("begin");
    let table = txn.create_table("t", b"").await.expect("create");
    for n in 0u32..300 {
        txn.put(&table, &n.to_be_bytes(), &[n as u8; 40]).await.expect("put");
    }
    txn.commit().await.expect("commit");
    db.checkpoint().await.expect("checkpoint");
    let mut open = db.begin().await.expect("begin");
    open.put(&table, b"open", b"never committed").await.expect("put");
    let request = BackupRequest::new("/backup", true, compress, "# config\n".into());
    take(&db, disk.fs().as_ref(), "bk-fuzz", &request, &Progress::default()).await.expect("backup");
    let fs = disk.fs();
    let mut files = Vec::new();
    for sub in ["", "data", "wal"] {
        let dir = std::path::Path::new("/backup").join(sub);
        for name in fs.list(&dir).expect("list") {
            let path = dir.join(&name);
            let Ok(file) = fs.open(&path) else { continue };
            let mut bytes = vec![0; file.len().expect("len") as usize];
            file.read_exact_at(&mut bytes, 0).expect("read");
            files.push((path.strip_prefix("/backup").expect("inside").to_path_buf(), bytes));
        }
    }
    files
}

/// Feeds a damaged backup to the verifier: it must never panic, and must
/// pass exactly when no byte changed. The first byte picks compression and
/// whether the rest replaces the manifest outright; otherwise the input is
/// a list of edits, five bytes each: file, offset (two bytes, scaled to the
/// file), an XOR mask, and an op (xor a byte, or truncate the file there).
pub async fn run_backup_verify(data: &[u8], pristine: &[(std::path::PathBuf, Vec<u8>)]) -> Result<(), String> {
    use thunderdb::backup::manifest::MANIFEST_NAME;
    use thunderdb::backup::verify::{verify, Scratch};
    use thunderdb::env::SimClock;
    let Some((&mode, edits)) = data.split_first() else { return Ok(()) };
    let mut files = pristine.to_vec();
    if mode & 2 != 0 {
        let manifest = files.iter_mut().find(|(p, _)| p.as_os_str() == MANIFEST_NAME).expect("a manifest");
        manifest.1 = edits.to_vec();
    } else {
        for edit in edits.chunks_exact(5) {
            let (bytes, len) = {
                let file = &mut files[usize::from(edit[0]) % pristine.len()].1;
                let len = file.len();
                (file, len)
            };
            if len == 0 {
                continue;
            }
            let at = usize::from(u16::from_le_bytes([edit[1], edit[2]])) * len / 65536;
            if edit[4] % 4 == 0 {
                bytes.truncate(at);
            } else {
                bytes[at] ^= edit[3];
            }
        }
    }
    // Edits may cancel out (the same byte flipped twice).
    let changed = files != pristine;
    let disk = SimDisk::new(0, FaultConfig::none());
    let fs = disk.fs();
    for (path, bytes) in &files {
        let path = std::path::Path::new("/backup").join(path);
        fs.create_dir_all(path.parent().expect("a parent")).map_err(|e| e.to_string())?;
        fs.create(&path).and_then(|f| f.write_all_at(bytes, 0)).map_err(|e| e.to_string())?;
    }
    let scratch_disk = SimDisk::new(1, FaultConfig::none());
    let scratch = Scratch { fs: scratch_disk.fs(), dir: "/scratch".into() };
    let clock = std::sync::Arc::new(SimClock::new(1_700_000_000_000_000));
    let report = verify(fs.as_ref(), std::path::Path::new("/backup"), &scratch, clock, &mut |_, _| {}).await;
    match (changed, report.passed()) {
        (true, true) => Err(format!("a damaged backup passed verification (edits {edits:?})")),
        (false, false) => Err(format!("an intact backup failed verification:\n{}", report.render())),
        _ => Ok(()),
    }
}

/// The fuzz target's entry: [`run_backup_verify`] on a backup built once.
#[cfg(not(madsim))]
pub fn backup_verify(data: &[u8]) {
    use std::sync::OnceLock;
    type Files = Vec<(std::path::PathBuf, Vec<u8>)>;
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static PRISTINE: OnceLock<[Files; 2]> = OnceLock::new();
    let runtime =
        RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"));
    let pristine =
        PRISTINE.get_or_init(|| [runtime.block_on(pristine_backup(false)), runtime.block_on(pristine_backup(true))]);
    let files = &pristine[usize::from(data.first().copied().unwrap_or(0) & 1)];
    if let Err(violation) = runtime.block_on(run_backup_verify(data, files)) {
        panic!("{violation}");
    }
}
