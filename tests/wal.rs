//! WAL behaviour on the simulated and the real disk.

use std::sync::Arc;

use thunderdb::env::{FaultConfig, Fs, RealFs, SimDisk};
use thunderdb::wal::{Lsn, Record, Wal, WalError, WalOptions, WalReader};

fn opts() -> WalOptions {
    WalOptions::new("/db/wal").with_segment_size(1024)
}

fn record(i: u64) -> Record {
    // Sizes from tiny to larger than a segment, so records span segments.
    let len = [0, 7, 100, 500, 1500, 3000][(i % 6) as usize];
    Record::data(i, Lsn(i * 8), vec![i as u8; len])
}

fn open_wal(fs: Arc<dyn Fs>, opts: &WalOptions) -> Wal {
    let end = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
    Wal::open(fs, opts.clone(), end).unwrap()
}

fn read_all(fs: Arc<dyn Fs>, opts: &WalOptions) -> Result<Vec<(Lsn, Record)>, WalError> {
    let mut reader = WalReader::new(fs, opts.clone(), opts.first_lsn());
    let mut out = vec![];
    while let Some(entry) = reader.next_record()? {
        out.push(entry);
    }
    Ok(out)
}

async fn write_records(wal: &Wal, range: std::ops::Range<u64>) -> Vec<(Lsn, Record)> {
    let mut out = vec![];
    for i in range {
        let rec = record(i);
        let (lsn, end) = wal.append(&rec).await.unwrap();
        if i % 3 == 0 {
            wal.flush(end).await.unwrap();
        }
        out.push((lsn, rec));
    }
    let end = wal.end_lsn();
    wal.flush(end).await.unwrap();
    out
}

#[tokio::test]
async fn records_round_trip_across_segments_and_reopens() {
    let disk = SimDisk::new(1, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts());
    let mut written = write_records(&wal, 0..40).await;
    assert!(wal.stats().segments_created.load(std::sync::atomic::Ordering::Relaxed) > 10, "rotation happened");
    drop(wal);
    assert_eq!(read_all(fs.clone(), &opts()).unwrap(), written);

    // Reopen and append more: the log continues after the old end.
    let wal = open_wal(fs.clone(), &opts());
    written.extend(write_records(&wal, 40..60).await);
    assert_eq!(read_all(fs.clone(), &opts()).unwrap(), written);

    // Reading can start at any record boundary.
    let (start, _) = written[17];
    let mut reader = WalReader::new(fs, opts(), start);
    assert_eq!(reader.next_record().unwrap(), Some(written[17].clone()));
}

#[tokio::test]
async fn the_real_disk_round_trips_too() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::new(dir.path().join("wal")).with_segment_size(4096);
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    fs.create_dir_all(&opts.dir).unwrap();
    let wal = open_wal(fs.clone(), &opts);
    let written = write_records(&wal, 0..30).await;
    let commit = wal.commit(77, written[29].0, 1_768_473_045_000_000).await.unwrap();
    drop(wal);
    let read = read_all(fs.clone(), &opts).unwrap();
    assert_eq!(&read[..30], &written[..]);
    assert_eq!(read[30].0, commit);
    assert_eq!(read[30].1.commit_time_micros(), Some(1_768_473_045_000_000));
    let names = fs.list(&opts.dir).unwrap();
    assert!(names.iter().all(|n| n.len() == 24 && n.starts_with("00000001")), "{names:?}");
}

/// Cut the WAL at every byte offset: recovery yields exactly the records that
/// end at or before the cut, never more, never a damaged one.
#[tokio::test]
async fn cutting_the_log_at_every_byte_offset_yields_a_prefix() {
    let opts = opts();
    let disk = SimDisk::new(2, FaultConfig::none());
    let wal = open_wal(disk.fs(), &opts);
    let written = write_records(&wal, 0..14).await;
    let end = wal.durable_lsn();
    drop(wal);
    let segments: Vec<(u64, Vec<u8>)> = (opts.segno(opts.first_lsn())..=opts.segno(end))
        .filter_map(|segno| disk.durable_image(&opts.path(segno)).map(|image| (segno, image)))
        .collect();

    for cut in opts.first_lsn().0..=end.0 {
        let copy = SimDisk::new(3, FaultConfig::none());
        let fs = copy.fs();
        fs.create_dir_all(&opts.dir).unwrap();
        for (segno, image) in &segments {
            let start = segno * opts.segment_size;
            if start >= cut {
                continue;
            }
            let file = fs.create(&opts.path(*segno)).unwrap();
            let keep = (cut - start).min(image.len() as u64) as usize;
            file.write_all_at(&image[..keep], 0).unwrap();
        }
        let read = read_all(fs, &opts).unwrap_or_else(|e| panic!("cut at {}: {e}", Lsn(cut)));
        let expected: Vec<_> =
            written.iter().filter(|(lsn, rec)| lsn.0 + 40 + rec.payload.len() as u64 <= cut).cloned().collect();
        assert_eq!(read, expected, "cut at {}", Lsn(cut));
    }
}

#[tokio::test]
async fn after_a_failed_fsync_nothing_is_acknowledged_and_the_latch_holds() {
    let disk = SimDisk::new(4, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts());
    let acked = wal.commit(1, Lsn::ZERO, 10).await.unwrap();
    let (_, end) = wal.append(&record(2)).await.unwrap();
    disk.set_faults(FaultConfig { fsync_error_rate: 1.0, ..FaultConfig::none() });
    let err = wal.flush(end).await.unwrap_err();
    assert!(matches!(err, WalError::Io { op: "sync", .. }), "{err}");
    assert!(err.to_string().contains("/db/wal/0000000100000000000000"), "the error names the segment: {err}");
    assert!(wal.durable_lsn() < end, "nothing past the failed sync counts as durable");

    // The disk is healthy again and a retried fsync would "succeed": the WAL
    // must not retry, and must refuse everything from now on.
    disk.set_faults(FaultConfig::none());
    let syncs = disk.sync_count();
    for attempt in [wal.flush(end).await.unwrap_err(), wal.commit(3, Lsn::ZERO, 11).await.unwrap_err()] {
        assert!(matches!(attempt, WalError::Stopped { .. }), "{attempt}");
        assert!(attempt.to_string().contains("restart"), "{attempt}");
    }
    assert!(wal.append(&record(4)).await.is_err());
    assert_eq!(disk.sync_count(), syncs, "no fsync was retried");
    drop(wal);

    // After a crash the acknowledged commit is there and the failed one is not.
    disk.set_faults(FaultConfig::power_loss());
    disk.crash();
    let read = read_all(disk.fs(), &opts()).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, acked);
}

#[tokio::test]
async fn a_bad_record_followed_by_durable_records_is_corruption_not_a_torn_tail() {
    let opts = opts();
    let disk = SimDisk::new(5, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts);
    let written = write_records(&wal, 0..12).await;
    drop(wal);
    // Flip a byte inside the payload of the fifth record.
    let (victim, rec) = &written[4];
    assert!(!rec.payload.is_empty());
    let at = victim.0 + 40;
    let file = fs.open(&opts.path(opts.segno(Lsn(at)))).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, opts.offset(Lsn(at))).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], opts.offset(Lsn(at))).unwrap();

    let err = read_all(fs.clone(), &opts).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let message = err.to_string();
    assert!(message.contains(&victim.to_string()), "names the LSN: {message}");
    assert!(message.contains(&opts.file_name(opts.segno(*victim))), "names the segment: {message}");
    // Opening for writes is impossible without a LogEnd, so nothing was cut:
    // the later records are still on disk.
    let mut reader = WalReader::new(fs, opts.clone(), written[5].0);
    assert_eq!(reader.next_record().unwrap(), Some(written[5].clone()));
}

#[tokio::test]
async fn a_bad_record_below_the_known_durable_point_is_corruption() {
    let opts = opts();
    let disk = SimDisk::new(6, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts);
    let written = write_records(&wal, 0..3).await;
    drop(wal);
    // Zero the last record: that looks exactly like a torn tail...
    let (last, _) = written[2];
    let file = fs.open(&opts.path(opts.segno(last))).unwrap();
    file.write_all_at(&[0; 40], opts.offset(last)).unwrap();
    assert_eq!(read_all(fs.clone(), &opts).unwrap().len(), 2);
    // ...unless the caller knows it was durable (e.g. a checkpoint after it).
    let mut reader = WalReader::new(fs, opts.clone(), opts.first_lsn()).durable_through(last.plus(8));
    let err = reader.read_to_end().unwrap_err();
    assert!(err.is_corruption() && err.to_string().contains(&last.to_string()), "{err}");
}

#[tokio::test]
async fn concurrent_committers_share_syncs() {
    let disk = SimDisk::new(7, FaultConfig::none());
    let wal = Arc::new(open_wal(disk.fs(), &WalOptions::new("/db/wal").with_segment_size(1 << 20)));
    let syncs_before = disk.sync_count();
    let committers = 64u64;
    let rounds = 10u64;
    let mut tasks = vec![];
    for xid in 0..committers {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut lsns = vec![];
            for round in 0..rounds {
                lsns.push(wal.commit(xid * 1000 + round, Lsn::ZERO, round).await.unwrap());
                assert!(wal.durable_lsn() > *lsns.last().unwrap(), "acknowledged only once durable");
            }
            lsns
        }));
    }
    let mut acked = vec![];
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    let syncs = disk.sync_count() - syncs_before;
    let commits = committers * rounds;
    assert!(syncs * 4 < commits, "{commits} commits took {syncs} syncs: group commit must batch");
    let read: Vec<Lsn> = read_all(disk.fs(), wal.options()).unwrap().into_iter().map(|(lsn, _)| lsn).collect();
    acked.sort();
    assert_eq!(read, acked);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_durably_and_never_reappears() {
    // Write a batch, tear it with a crash, reopen: the torn records are gone.
    // Then append new, smaller records and crash losing them: the old torn
    // records must not come back as if they followed the new ones.
    for seed in 0..40 {
        let opts = opts();
        let disk = SimDisk::new(seed, FaultConfig::power_loss());
        let wal = open_wal(disk.fs(), &opts);
        let acked = write_records(&wal, 0..4).await;
        for i in 100..110 {
            wal.append(&record(i)).await.unwrap();
        }
        // Written but not synced: the next flush would have synced them.
        drop(wal);
        disk.crash();
        let survivors = read_all(disk.fs(), &opts).unwrap();
        assert_eq!(&survivors[..4], &acked[..], "seed {seed}");
        let wal = open_wal(disk.fs(), &opts);
        let appended = wal.append(&Record::data(999, Lsn::ZERO, vec![])).await.unwrap();
        wal.flush(appended.1).await.unwrap();
        drop(wal);
        disk.crash();
        let read = read_all(disk.fs(), &opts).unwrap();
        assert_eq!(read.last().map(|(lsn, _)| *lsn), Some(appended.0), "seed {seed}: nothing after the new record");
        assert_eq!(&read[..survivors.len()], &survivors[..], "seed {seed}: recovery is idempotent");
    }
}

#[tokio::test]
async fn retired_segments_are_recycled_held_for_the_archiver_or_removed() {
    let opts = opts();
    let disk = SimDisk::new(8, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts);
    let written = write_records(&wal, 0..30).await;
    let (redo_point, _) = written[20];
    let first_needed = opts.segno(redo_point);
    let not_archived = opts.file_name(opts.segno(opts.first_lsn()) + 1);
    let report = wal.retire_segments(redo_point, 3, &|name| name != not_archived).await.unwrap();
    assert_eq!(report.held, vec![not_archived.clone()], "the archiver's hook holds a segment back");
    assert_eq!(report.recycled.len(), 3);
    let retired = first_needed - opts.segno(opts.first_lsn()) - 1;
    assert_eq!(report.removed.len() as u64, retired - 3);
    let names = fs.list(&opts.dir).unwrap();
    assert!(names.contains(&not_archived));
    assert!(!names.contains(&opts.file_name(opts.segno(opts.first_lsn()))), "{names:?}");

    // Writing on reuses the recycled files instead of creating new ones...
    let created = wal.stats().segments_created.load(std::sync::atomic::Ordering::Relaxed);
    let more = write_records(&wal, 30..33).await;
    assert_eq!(wal.stats().segments_created.load(std::sync::atomic::Ordering::Relaxed), created);
    drop(wal);
    // ...and their stale contents never read as records: the log from the
    // redo point is exactly what was written, before and after a reopen.
    let from_redo = |fs: Arc<dyn Fs>| {
        let mut reader = WalReader::new(fs, opts.clone(), redo_point);
        std::iter::from_fn(move || reader.next_record().unwrap()).collect::<Vec<_>>()
    };
    let expected: Vec<_> = written[20..].iter().chain(&more).cloned().collect();
    assert_eq!(from_redo(fs.clone()), expected);
    let end = WalReader::new(fs.clone(), opts.clone(), redo_point).read_to_end().unwrap();
    let wal = Wal::open(fs.clone(), opts.clone(), end).unwrap();
    let last = wal.commit(5, Lsn::ZERO, 1).await.unwrap();
    drop(wal);
    let read = from_redo(fs);
    assert_eq!(&read[..expected.len()], &expected[..]);
    assert_eq!(read.last().unwrap().0, last);
}

/// A scripted workload: commits and larger records across tiny segments, with
/// a retirement in the middle. Returns the model of what the WAL accepted and
/// acknowledged, stopping at the first error (the crash).
async fn scripted(fs: Arc<dyn Fs>, opts: &WalOptions, model: &mut thunderdb_workloads::wal_log::WalModel) {
    let Ok(end) = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end() else { return };
    let Ok(wal) = Wal::open(fs, opts.clone(), end) else { return };
    for i in 0..12u64 {
        let rec = record(i);
        let hint = wal.durable_lsn();
        let Ok((lsn, end)) = wal.append(&rec).await else { return };
        model.accepted(lsn, rec, hint);
        if i % 2 == 1 {
            let Ok(durable) = wal.flush(end).await else { return };
            model.acknowledged(durable);
        }
    }
}

#[tokio::test]
async fn a_crash_at_every_io_boundary_keeps_every_acknowledged_record() {
    use thunderdb_workloads::wal_log::WalModel;
    let opts = opts();
    let total_ops = {
        let disk = SimDisk::new(0, FaultConfig::none());
        disk.fs().create_dir_all(&opts.dir).unwrap();
        let before = disk.op_count();
        scripted(disk.fs(), &opts, &mut WalModel::default()).await;
        disk.op_count() - before
    };
    assert!(total_ops > 50, "the script does real I/O: {total_ops} operations");
    for crash_at in 0..=total_ops {
        for seed in 0..3 {
            let disk = SimDisk::new(crash_at * 3 + seed, FaultConfig::power_loss());
            disk.fs().create_dir_all(&opts.dir).unwrap();
            disk.set_crash_countdown(Some(crash_at));
            let mut model = WalModel::default();
            scripted(disk.fs(), &opts, &mut model).await;
            disk.crash();
            // Recover twice, crashing in between, to check idempotence too.
            for round in 0..2 {
                let read = read_all(disk.fs(), &opts)
                    .unwrap_or_else(|e| panic!("crash at op {crash_at}, seed {seed}, round {round}: {e}"));
                model
                    .check(&read)
                    .unwrap_or_else(|e| panic!("crash at op {crash_at}, seed {seed}, round {round}: {e}"));
                model.reset_to(&read);
                let end = WalReader::new(disk.fs(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
                drop(Wal::open(disk.fs(), opts.clone(), end).unwrap());
                disk.crash();
            }
        }
    }
}

/// Past the write-behind threshold an append writes the buffer out without
/// syncing it: the bytes are written, not durable, and a crash may lose
/// them. A flush that finds them so must still sync before it returns.
#[tokio::test]
async fn write_behind_output_is_not_durable_until_a_flush_syncs_it() {
    let opts = opts().with_write_behind_bytes(256).with_zero_fill_chunk(512);
    let disk = SimDisk::new(3, FaultConfig { lose_unsynced: true, ..FaultConfig::none() });
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts);
    let durable_before = wal.durable_lsn();
    let mut last_end = Lsn::ZERO;
    for i in 0..6 {
        last_end = wal.append(&Record::data(i, Lsn::ZERO, vec![i as u8; 200])).await.unwrap().1;
    }
    let written = wal.stats().bytes_written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(written >= 1024, "the appends wrote behind: {written} bytes");
    assert_eq!(wal.durable_lsn(), durable_before, "written behind is not durable");
    let syncs = disk.sync_count();
    let durable = wal.flush(last_end).await.unwrap();
    assert!(durable >= last_end);
    assert!(disk.sync_count() > syncs, "the flush synced what the write-behind had written");
    drop(wal);
    disk.crash();
    assert_eq!(read_all(disk.fs(), &opts).unwrap().len(), 6, "every flushed record survives the crash");
}

/// Durable log lost at rest, with durable records after it, is corruption
/// that names the segment and the LSN: never the end of the log, whether
/// the sectors read back as zeroes or as their contents before their sync.
#[tokio::test]
async fn durable_log_lost_at_rest_is_reported_never_taken_for_the_end() {
    use thunderdb::env::{AtRestLoss, SECTOR_SIZE};
    for loss in [AtRestLoss::Zeroed, AtRestLoss::Stale] {
        let opts = WalOptions::new("/db/wal").with_segment_size(4096);
        let disk = SimDisk::new(5, FaultConfig::none());
        let wal = open_wal(disk.fs(), &opts);
        let mut lsns = Vec::new();
        for i in 0..40 {
            let (lsn, end) = wal.append(&Record::data(i, Lsn::ZERO, vec![i as u8; 100])).await.unwrap();
            wal.flush(end).await.unwrap();
            lsns.push(lsn);
        }
        drop(wal);
        disk.crash();
        // A sector in the middle of the durable log, well before its end.
        let at = lsns[10];
        let sector_start = Lsn(at.0 - at.0 % SECTOR_SIZE);
        assert!(disk.lose_at_rest(&opts.path(opts.segno(at)), opts.offset(at), 1, loss));
        let err = read_all(disk.fs(), &opts).expect_err("damage with durable records after it is reported");
        let message = err.to_string();
        assert!(err.is_corruption(), "{loss:?}: {message}");
        assert!(message.contains(&opts.file_name(opts.segno(at))), "{loss:?}: names the segment: {message}");
        let lsn = match &err {
            WalError::Corrupt { lsn, .. } => *lsn,
            other => panic!("{other}"),
        };
        assert!(
            lsn >= sector_start && lsn < sector_start.plus(SECTOR_SIZE),
            "{loss:?}: the LSN {lsn} is in the lost sector"
        );
        assert!(message.contains(&lsn.to_string()), "{loss:?}: names the LSN: {message}");
    }
}

/// The scan for durable records after a bad one steps over a segment file
/// shorter than a segment (an archive's partial copy, say) and finds the
/// evidence in the segments after it.
#[tokio::test]
async fn the_scan_for_evidence_steps_over_a_short_segment_file() {
    let opts = opts();
    let disk = SimDisk::new(8, FaultConfig::none());
    let fs: Arc<dyn Fs> = disk.fs();
    let wal = open_wal(fs.clone(), &opts);
    let append = |i: u64| Record::data(i, Lsn::ZERO, vec![i as u8; 300]);
    // One group of records over four segments, flushed once: none of them
    // proves another durable. Then records that do, after the group.
    let mut group = Vec::new();
    for i in 0..12 {
        group.push(wal.append(&append(i)).await.unwrap());
    }
    wal.flush(group[11].1).await.unwrap();
    for i in 12..18 {
        let (_, end) = wal.append(&append(i)).await.unwrap();
        wal.flush(end).await.unwrap();
    }
    drop(wal);
    let victim = group[0].0;
    let short = opts.segno(victim) + 2;
    assert!(opts.segno(group[11].0) >= short, "the group runs past the short segment");
    fs.open(&opts.path(opts.segno(victim))).unwrap().write_all_at(&[0; 40], opts.offset(victim)).unwrap();
    fs.open(&opts.path(short)).unwrap().set_len(opts.segment_size / 2).unwrap();
    let err = read_all(fs, &opts).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains(&victim.to_string()), "names the first bad record: {err}");
}

/// A file system whose opens fail with EIO while the WAL cuts its tail.
struct TailCutOpenFails(Arc<dyn Fs>);

impl Fs for TailCutOpenFails {
    fn open(&self, path: &std::path::Path) -> std::io::Result<Box<dyn thunderdb::env::File>> {
        if thunderdb::probe::current_phase() == thunderdb::probe::Phase::WalTailCut {
            return Err(std::io::Error::other(format!("{}: input/output error", path.display())));
        }
        self.0.open(path)
    }
    fn create(&self, path: &std::path::Path) -> std::io::Result<Box<dyn thunderdb::env::File>> {
        self.0.create(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.0.remove(path)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.0.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn exists(&self, path: &std::path::Path) -> std::io::Result<bool> {
        self.0.exists(path)
    }
}

/// Cutting the tail must zero what follows the valid log. If it cannot even
/// open the segment, opening the WAL fails, naming the segment: it never
/// goes on with a tail it could not check (whose stale records a later
/// crash could bring back).
#[tokio::test]
async fn a_tail_cut_that_cannot_open_its_segment_fails_naming_it() {
    let disk = SimDisk::new(9, FaultConfig::none());
    let fs = disk.fs();
    let opts = opts();
    {
        let wal = open_wal(fs.clone(), &opts);
        write_records(&wal, 0..20).await;
    }
    disk.crash();
    let fs = disk.fs();
    let failing: Arc<dyn Fs> = Arc::new(TailCutOpenFails(fs.clone()));
    let end = WalReader::new(failing.clone(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
    let error = Wal::open(failing, opts.clone(), end).err().expect("the tail cut cannot open its segment");
    let message = error.to_string();
    assert!(message.contains("open") && message.contains("/db/wal/0000000100000000"), "{message}");
    // On a disk that works, the same log opens and keeps every record.
    assert_eq!(read_all(fs.clone(), &opts).unwrap().len(), 20);
    open_wal(fs, &opts);
}

/// A torn tail that runs to the end of its segment with no zero byte in it
/// (records, not the zero-fill, up to the boundary) is zeroed like any
/// other when the WAL opens after it.
#[tokio::test]
async fn a_torn_tail_with_no_zero_byte_is_zeroed_too() {
    let disk = SimDisk::new(10, FaultConfig::none());
    let opts = opts();
    {
        let wal = open_wal(disk.fs(), &opts);
        write_records(&wal, 0..4).await;
    }
    disk.crash();
    let fs = disk.fs();
    let end = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end().unwrap().lsn();
    // Garbage without a zero byte from the end of the log to the end of
    // its segment, as a torn write of a record could leave.
    let path = opts.path(opts.segno(end));
    let from = opts.offset(end);
    let file = fs.open(&path).unwrap();
    let garbage = vec![0xA5; (opts.segment_size - from) as usize];
    file.write_all_at(&garbage, from).unwrap();
    file.sync_data().unwrap();
    drop(file);
    open_wal(fs.clone(), &opts);
    let file = fs.open(&path).unwrap();
    let resume_at = end.0.next_multiple_of(thunderdb::env::SECTOR_SIZE);
    assert_eq!(opts.segno(Lsn(resume_at)), opts.segno(end), "the log ends in the first half of its segment");
    let mut tail = vec![0; (opts.segment_size - opts.offset(Lsn(resume_at))) as usize];
    file.read_exact_at(&mut tail, opts.offset(Lsn(resume_at))).unwrap();
    assert!(tail.iter().all(|b| *b == 0), "the torn tail after {resume_at:#x} is zeroed");
    assert_eq!(read_all(fs, &opts).unwrap().len(), 4);
}

/// A segment switch appended less than a header's length before its
/// segment's end runs into the next segment; the writer goes on after that
/// one, and so must every reader, or it reads the switch's own tail as a torn
/// record and a restart writes the log over it (db seed 1072).
#[tokio::test]
async fn a_segment_switch_that_runs_into_the_next_segment_is_read_past() {
    let opts = opts();
    // Records take whole 8-byte words; a switch is a bare 40-byte header.
    for gap in [8u64, 16, 24, 32, 40, 48, 104] {
        let disk = SimDisk::new(gap, FaultConfig::none());
        let fs: Arc<dyn Fs> = disk.fs();
        let wal = open_wal(fs.clone(), &opts);
        assert_eq!(opts.offset(wal.end_lsn()), 0, "a new log starts at a segment's start");
        let filler = Record::data(1, Lsn(8), vec![7; (opts.segment_size - 40 - gap) as usize]);
        let (filler_lsn, filler_end) = wal.append(&filler).await.unwrap();
        assert_eq!(opts.segment_size - opts.offset(filler_end), gap, "the switch goes {gap} bytes before the end");
        let next = wal.switch_segment().await.unwrap().expect("mid-segment");
        let after = Record::data(2, Lsn(16), vec![9; 10]);
        let (after_lsn, after_end) = wal.append(&after).await.unwrap();
        assert_eq!(after_lsn, next, "gap {gap}: the log goes on where the switch said");
        wal.flush(after_end).await.unwrap();
        drop(wal);
        let mut expected = vec![(filler_lsn, filler), (after_lsn, after)];
        assert_eq!(read_all(fs.clone(), &opts).unwrap(), expected, "gap {gap}");
        // A restart finds the same end and continues after it.
        let wal = open_wal(fs.clone(), &opts);
        let more = Record::data(3, Lsn(24), vec![1; 10]);
        let (more_lsn, more_end) = wal.append(&more).await.unwrap();
        wal.flush(more_end).await.unwrap();
        drop(wal);
        expected.push((more_lsn, more));
        assert_eq!(read_all(fs.clone(), &opts).unwrap(), expected, "gap {gap}, after a restart");
    }
}

/// A segment prepared ahead of the writer (what the database's background
/// task does) is used as it stands, and a power failure at any point of its
/// preparation loses no acknowledged record and leaves nothing behind that
/// the next open does not clear away.
#[tokio::test]
async fn a_segment_prepared_ahead_is_used_and_a_crash_while_preparing_loses_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    use thunderdb::probe::Phase;
    let opts = opts();
    let created = |wal: &Wal| wal.stats().segments_created.load(Relaxed);

    let disk = SimDisk::new(3, FaultConfig::none());
    let wal = open_wal(disk.fs(), &opts);
    let written = write_records(&wal, 0..4).await;
    let next = opts.segno(wal.end_lsn()) + 1;
    assert!(wal.prepare_next_segment().unwrap(), "segment {next} did not exist yet");
    assert!(!wal.prepare_next_segment().unwrap(), "it exists now");
    assert_eq!(wal.stats().segments_prepared.load(Relaxed), 1);
    assert!(disk.durable_names(&opts.dir).contains(&opts.file_name(next)), "its directory entry is durable");
    let before = created(&wal);
    let mut i = 100;
    while opts.segno(wal.end_lsn()) < next {
        let (_, end) = wal.append(&Record::data(i, Lsn::ZERO, vec![1; 40])).await.unwrap();
        wal.flush(end).await.unwrap();
        i += 1;
    }
    assert_eq!(created(&wal), before, "the writer used the prepared segment");
    drop(wal);
    assert_eq!(read_all(disk.fs(), &opts).unwrap()[..written.len()], written[..]);

    // Power fails after each I/O operation of a preparation in turn.
    for ops in 0.. {
        let disk = SimDisk::new(ops, FaultConfig::power_loss());
        let wal = open_wal(disk.fs(), &opts);
        let written = write_records(&wal, 0..4).await;
        disk.set_crash_in_phase(Phase::WalRotate, ops);
        let prepared = wal.prepare_next_segment();
        drop(wal);
        if prepared.is_ok() {
            assert!(ops > 3, "a preparation takes several operations");
            break;
        }
        disk.crash();
        assert_eq!(read_all(disk.fs(), &opts).unwrap(), written, "crash after {ops} operations");
        let wal = open_wal(disk.fs(), &opts);
        let names = disk.fs().list(&opts.dir).unwrap();
        assert!(names.iter().all(|name| !name.starts_with("xlogtemp")), "open clears the leftovers: {names:?}");
        assert!(wal.prepare_next_segment().unwrap() || names.contains(&opts.file_name(opts.segno(wal.end_lsn()) + 1)));
        let more = write_records(&wal, 10..14).await;
        drop(wal);
        let read = read_all(disk.fs(), &opts).unwrap();
        assert_eq!(read, written.iter().chain(&more).cloned().collect::<Vec<_>>(), "crash after {ops} operations");
    }
}

/// A leader's WAL behind a replication gate: a flush is durable on the
/// leader's disk at once but returns only when the group holds it, and
/// fails once the node stops leading; what it ships, written by a
/// follower's copier at the same LSNs, reads back as the same log, and a
/// cut drops what the group never committed.
#[tokio::test]
async fn a_gated_flush_waits_for_the_group_and_a_copy_reads_back_as_the_same_log() {
    use thunderdb::wal::{read_wal, ReplicationGate, WalCopy};

    let leader = SimDisk::new(7, FaultConfig::none());
    let follower = SimDisk::new(8, FaultConfig::none());
    let opts = opts();
    let end = WalReader::new(leader.fs(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
    let gate = Arc::new(ReplicationGate::new(end.lsn()));
    let wal = Arc::new(Wal::open(leader.fs(), opts.clone(), end).unwrap().with_replication(Some(gate.clone())));
    let (_, first_end) = wal.append(&record(1)).await.unwrap();
    let flush = tokio::spawn({
        let wal = wal.clone();
        async move { wal.flush(first_end).await }
    });
    for _ in 0..100 {
        if wal.local_durable() >= first_end {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!flush.is_finished(), "the flush waits for the group");
    assert!(wal.local_durable() >= first_end, "the leader's own disk has it");
    assert!(wal.durable_lsn() < first_end, "pages and checkpoints may not count on it yet");

    // Ship what the leader flushed; the group commits it.
    let mut copy = WalCopy::new(follower.fs(), opts.clone());
    let committed = gate.local();
    let bytes = read_wal(leader.fs().as_ref(), &opts, opts.first_lsn(), committed).unwrap();
    copy.write(opts.first_lsn(), &bytes).unwrap();
    copy.sync().unwrap();
    gate.set_replicated(committed);
    assert!(flush.await.unwrap().unwrap() >= first_end);

    // More records, flushed locally but never committed; then the node
    // stops leading.
    let (_, second_end) = wal.append(&record(2)).await.unwrap();
    let pending = tokio::spawn({
        let wal = wal.clone();
        async move { wal.flush(second_end).await }
    });
    while wal.local_durable() < second_end {
        tokio::task::yield_now().await;
    }
    gate.close("node 1 is no longer the leader");
    let error = pending.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("no longer the leader"), "{error}");
    assert!(wal.flush(second_end).await.is_err(), "later flushes fail too");

    // The follower's copy is the committed log.
    let copied = read_all(follower.fs(), &opts).unwrap();
    assert_eq!(copied.iter().filter(|(_, r)| r.kind == record(1).kind).count(), 1);
    assert_eq!(copied.last().unwrap().1, record(1));

    // The deposed leader's own log runs past the commit; cutting it there
    // leaves the committed log only.
    assert!(read_all(leader.fs(), &opts).unwrap().iter().any(|(_, r)| *r == record(2)));
    let mut own = WalCopy::new(leader.fs(), opts.clone());
    assert!(own.cut(committed).unwrap(), "there was uncommitted WAL to cut");
    let left = read_all(leader.fs(), &opts).unwrap();
    assert!(left.iter().all(|(_, r)| *r != record(2)), "the uncommitted record is gone");
    assert_eq!(left.last().unwrap().1, record(1));
}

/// A leader's commit behind the gate: written and shipped without a sync
/// of the leader's own, it returns once the group has committed it, before
/// the leader records that; a flush for a page still waits for both the
/// leader's sync and the record, and the periodic sync makes the written
/// log durable.
#[tokio::test]
async fn a_gated_commit_waits_for_the_group_not_the_leaders_sync_and_pages_wait_for_both() {
    use thunderdb::wal::ReplicationGate;

    let leader = SimDisk::new(9, FaultConfig::none());
    let opts = opts();
    let end = WalReader::new(leader.fs(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
    let start = end.lsn();
    let gate = Arc::new(ReplicationGate::new(start));
    let wal = Arc::new(Wal::open(leader.fs(), opts.clone(), end).unwrap().with_replication(Some(gate.clone())));
    let (_, commit_end) = wal.append(&record(1)).await.unwrap();
    let commit = tokio::spawn({
        let wal = wal.clone();
        async move { wal.flush_commit(commit_end).await }
    });
    while gate.written() < commit_end {
        tokio::task::yield_now().await;
    }
    assert_eq!(wal.local_durable(), start, "the commit wrote its run for shipping without syncing it");
    let page = tokio::spawn({
        let wal = wal.clone();
        async move { wal.flush(commit_end).await }
    });
    while wal.local_durable() < commit_end {
        tokio::task::yield_now().await;
    }
    // A follower's answer tells the leader the group committed it.
    gate.set_committed(gate.written());
    assert!(commit.await.unwrap().unwrap() >= commit_end, "the commit is acknowledged");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!page.is_finished(), "a page waits until the leader has recorded the commit");
    assert!(wal.durable_lsn() < commit_end);
    assert!(gate.recording_wanted(), "the waiting page asks the driver to record the commit now");
    gate.set_replicated(gate.written());
    assert!(page.await.unwrap().unwrap() >= commit_end);
    assert!(wal.durable_lsn() >= commit_end);
    assert!(!gate.recording_wanted());

    // A second commit, acknowledged by the group; the periodic sync then
    // makes the leader's own copy durable.
    let (_, second_end) = wal.append(&record(2)).await.unwrap();
    let second = tokio::spawn({
        let wal = wal.clone();
        async move { wal.flush_commit(second_end).await }
    });
    while gate.written() < second_end {
        tokio::task::yield_now().await;
    }
    gate.set_replicated(gate.written());
    second.await.unwrap().unwrap();
    assert!(wal.local_durable() < second_end, "nothing synced the second commit's run yet");
    assert!(wal.sync_written().await.unwrap() >= second_end);
    assert!(wal.local_durable() >= second_end);
    drop(wal);
    leader.crash();
    let read = read_all(leader.fs(), &opts).unwrap();
    let kept: Vec<Record> = read.into_iter().map(|(_, r)| r).filter(|r| r.kind == record(1).kind).collect();
    assert_eq!(kept, vec![record(1), record(2)], "the synced log survives the power failure");
}

#[tokio::test]
async fn a_reader_stopped_at_a_limit_resumes_as_the_log_grows_and_reads_each_record_once() {
    for segment_size in [1024, 64 * 1024] {
        let opts = WalOptions::new("/db/wal").with_segment_size(segment_size);
        let disk = SimDisk::new(3, FaultConfig::none());
        let fs: Arc<dyn Fs> = disk.fs();
        let wal = open_wal(fs.clone(), &opts);
        let mut written = write_records(&wal, 0..10).await;
        let mut reader = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn());
        reader.stop_at(wal.end_lsn());
        let mut read = vec![];
        while let Some(entry) = reader.next_record().unwrap() {
            read.push(entry);
        }
        assert_eq!(reader.end(), None, "a limit is not the end of the log");
        for batch in 1..6 {
            // More of the log, into the segment the reader has cached and
            // past it; the reader goes on where it stopped.
            written.extend(write_records(&wal, batch * 10..batch * 10 + 10).await);
            reader.resume(wal.end_lsn()).unwrap();
            while let Some(entry) = reader.next_record().unwrap() {
                read.push(entry);
            }
            assert_eq!(read, written, "segment size {segment_size}, batch {batch}");
            assert!(reader.position() >= written.last().unwrap().0, "it stopped after the last record");
        }
    }
}

/// When the log ends in a torn record mid-sector, the writer goes on at the
/// next sector with a Resume record naming the end. If the torn record ran
/// into that sector, the Resume record's bytes may complete it by chance,
/// and it decodes again: the reader must follow the Resume record, not take
/// the revived record and then the Resume record's middle for damage before
/// durable records (wal seed 397, under another I/O schedule, reported
/// corruption there and the log could not be opened again).
#[tokio::test]
async fn a_torn_record_that_the_resume_record_completes_by_chance_stays_cut_off() {
    use thunderdb::env::SECTOR_SIZE;
    use thunderdb::wal::{RecordKind, HEADER_LEN};
    let disk = SimDisk::new(11, FaultConfig::none());
    let (fs, opts) = (disk.fs(), opts());
    let start = opts.first_lsn();
    // The log: one record up to `end`, mid-sector; then one that runs four
    // bytes into the next sector, torn there.
    let end = start.plus(0x1b0);
    let boundary = Lsn(end.0.next_multiple_of(SECTOR_SIZE));
    let first = Record::data(1, Lsn::ZERO, vec![1; 0x1b0 - HEADER_LEN]);
    let resume =
        Record { kind: RecordKind::Resume, xid: 0, prev_lsn: Lsn::ZERO, payload: end.0.to_le_bytes().to_vec() };
    let mut resume_bytes = Vec::new();
    resume.encode_into(&mut resume_bytes, boundary, opts.timeline, end);
    // Its last four bytes are what the Resume record will write there.
    let mut payload = vec![2; (boundary.0 + 4 - end.0) as usize - HEADER_LEN];
    let tail = payload.len() - 4;
    payload[tail..].copy_from_slice(&resume_bytes[..4]);
    let torn = Record::data(2, Lsn::ZERO, payload);
    let mut bytes = Vec::new();
    first.encode_into(&mut bytes, start, opts.timeline, start);
    torn.encode_into(&mut bytes, end, opts.timeline, end);
    let at = (boundary.0 - start.0) as usize;
    bytes[at..at + 4].copy_from_slice(&[0xA5; 4]);
    bytes.resize(opts.segment_size as usize, 0);
    fs.create_dir_all(&opts.dir).unwrap();
    let file = fs.create(&opts.path(opts.segno(start))).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    file.sync_data().unwrap();
    drop(file);
    fs.sync_dir(&opts.dir).unwrap();
    assert_eq!(read_all(fs.clone(), &opts).unwrap(), vec![(start, first.clone())], "the torn record is the end");

    // Recovery ends the log there; the Resume record completes the torn
    // one, and what is acknowledged after it must survive a crash.
    let wal = open_wal(fs.clone(), &opts);
    let file = fs.open(&opts.path(opts.segno(start))).unwrap();
    let mut revived = vec![0; 4];
    file.read_exact_at(&mut revived, opts.offset(boundary)).unwrap();
    assert_eq!(revived, resume_bytes[..4], "the torn record's bytes are whole again");
    let acknowledged = write_records(&wal, 10..13).await;
    drop(wal);
    disk.crash();
    let mut expected = vec![(start, first)];
    expected.extend(acknowledged);
    assert_eq!(read_all(disk.fs(), &opts).unwrap(), expected);
}
