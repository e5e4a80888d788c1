//! The `thunderdb` binary, run for real.
// The test runs the real binary as a child process.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::sync::Arc;

use thunderdb::env::{Fs, RealFs};
use thunderdb::wal::{Lsn, Record, Wal, WalOptions, WalReader};

fn thunderdb(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_thunderdb")).args(args).output().expect("run thunderdb");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

async fn sample_wal(opts: &WalOptions) -> Lsn {
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    fs.create_dir_all(&opts.dir).unwrap();
    let end = WalReader::new(fs.clone(), opts.clone(), opts.first_lsn()).read_to_end().unwrap();
    let wal = Wal::open(fs, opts.clone(), end).unwrap();
    let (first, end) = wal.append(&Record::data(7, Lsn::ZERO, vec![1; 3000])).await.unwrap();
    // Its own flush, so the commit's group proves this one was durable.
    wal.flush(end).await.unwrap();
    // 2026-01-15T10:30:45Z
    wal.commit(7, first, 1_768_473_045_000_000).await.unwrap();
    first
}

#[tokio::test]
async fn wal_dump_prints_every_record_with_commit_times() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::new(dir.path().join("wal")).with_segment_size(4096);
    let first = sample_wal(&opts).await;
    let (code, stdout, stderr) = thunderdb(&["wal-dump", opts.dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("timeline 1 segment size 4096 bytes"), "{stdout}");
    assert!(stdout.contains(&format!("{first:>12} DATA   xid 7")), "{stdout}");
    assert!(stdout.contains("COMMIT xid 7"), "{stdout}");
    assert!(stdout.contains("time 2026-01-15T10:30:45.000000Z"), "{stdout}");
    assert!(stdout.contains("(2 records)"), "{stdout}");
}

#[tokio::test]
async fn wal_dump_reports_corruption_naming_the_segment_and_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::new(dir.path().join("wal")).with_segment_size(4096);
    let first = sample_wal(&opts).await;
    // Damage the first record's payload; the commit after it proves it was durable.
    let file = RealFs.open(&opts.path(opts.segno(first))).unwrap();
    file.write_all_at(&[0xEE], opts.offset(first) + 100).unwrap();
    let (code, _, stderr) = thunderdb(&["wal-dump", opts.dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("WAL corruption in segment 000000010000000000000001 at LSN 0/1000"), "{stderr}");
}

#[test]
fn wal_dump_refuses_a_directory_without_segments_and_a_bad_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = thunderdb(&["wal-dump", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no WAL segment files in"), "{stderr}");
    let (code, _, stderr) = thunderdb(&["wal-dump", dir.path().to_str().unwrap(), "--from", "12/xyz"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid LSN \"12/xyz\""), "{stderr}");
}

#[tokio::test]
async fn wal_dump_decodes_storage_records() {
    use thunderdb::db::{Database, EngineConfig};
    use thunderdb::env::{Env, RealClock};
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(Arc::new(RealFs), Arc::new(RealClock::new()), 1);
    let db = Database::open(env, EngineConfig::new(dir.path())).await.unwrap();
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    txn.insert(&table, b"ab", b"value").await.unwrap();
    txn.commit().await.unwrap();
    db.checkpoint().await.unwrap();
    db.shutdown().await.unwrap();
    let (code, stdout, stderr) = thunderdb(&["wal-dump", dir.path().join("wal").to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "PAGE IMAGES 0",
        "PAGE IMAGES 1",
        "INSERT table 0 page 0 key 74 value 4 bytes",
        "INSERT table 1 page 1 key 6162 value 5 bytes",
        "COMMIT",
        "CHECKPOINT BEGIN",
        "CHECKPOINT END 0 active, 0 dirty",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
