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
