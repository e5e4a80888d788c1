//! Crash-recovery replay speed beside PostgreSQL's, and in-process point
//! reads and inserts, on the real disk.
//!
//! 1. Loads a table of 200,000 rows of 100 bytes, checkpoints, then runs
//!    random updates (100 per transaction) until `WAL_MB` (default 512) MB of
//!    WAL has been written since the checkpoint, and "crashes": the process
//!    drops the database without a shutdown checkpoint, so the data file
//!    holds only what evictions wrote.
//! 2. Reopens: recovery's analysis, redo and undo are timed by the engine
//!    (the end-of-recovery checkpoint is not counted, as PostgreSQL's
//!    `redo done … elapsed` does not count it).
//! 3. Runs `benches/pg_redo.sh`: the same measurement on PostgreSQL 15 after
//!    pgbench, in the same run.
//! 4. Measures point reads (one per transaction), single-row inserts (one
//!    per transaction, so each waits for its fsync), the same with 8
//!    concurrent sessions, and inserts batched 1,000 per transaction.
//!
//! Run `cargo bench --bench recovery` (about 2 minutes); it prints the table
//! for `docs/performance.md`. `WAL_MB` and `THUNDERDB_BENCH_DIR` adjust it;
//! `SKIP_POSTGRES=1` skips the PostgreSQL half. `CRASH_DIR=/some/dir` keeps
//! the crashed database there and replays a copy of it on later runs (to
//! time or profile redo alone; `REPLAY_ONLY=1` stops after the replay).
// Benchmarks measure the real machine: they own their clock, scratch files
// and child processes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::ops::Bound;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::db::{Database, EngineConfig};
use thunderdb::env::{Env, RealClock, RealFs};
use thunderdb::txn::Table;

const ROWS: u32 = 200_000;
const MB: f64 = 1e6;

fn key(n: u32) -> [u8; 4] {
    n.to_be_bytes()
}

fn env() -> Env {
    Env::new(Arc::new(RealFs), Arc::new(RealClock::new()), 1)
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.checkpoint_interval = Duration::from_secs(3600);
    config.max_wal_size = 1 << 40;
    config
}

async fn table(db: &Database) -> Table {
    let mut txn = db.begin().await.expect("begin");
    let table = txn.table("bench").await.expect("lookup").expect("the bench table");
    txn.commit().await.expect("commit");
    table
}

struct Replay {
    wal_bytes: u64,
    records: u64,
    seconds: f64,
}

async fn thunderdb_replay(dir: &std::path::Path, wal_mb: u64) -> Replay {
    // `CRASH_DIR` keeps the crashed database: generated there once, then
    // copied into the scratch directory for each run, to time redo alone.
    let kept = std::env::var_os("CRASH_DIR").map(std::path::PathBuf::from);
    let generate_in = match &kept {
        Some(kept) if kept.exists() => None,
        Some(kept) => Some(kept.as_path()),
        None => Some(dir),
    };
    if let Some(dir) = generate_in {
        generate(dir, wal_mb).await;
    }
    if let Some(kept) = &kept {
        let copied = Command::new("cp").arg("-a").arg(format!("{}/.", kept.display())).arg(dir).status();
        assert!(copied.expect("run cp").success(), "copy {} to {}", kept.display(), dir.display());
    }
    let db = Database::open(env(), config(dir)).await.expect("recover");
    let report = db.recovery_report().clone();
    assert!(report.crashed, "recovery ran");
    for line in &report.lines {
        eprintln!("  {line}");
    }
    eprintln!("  phases (analysis and redo in one pass, undo): {:?}", report.phases);
    Replay { wal_bytes: report.wal_bytes, records: report.records_replayed, seconds: report.duration.as_secs_f64() }
}

async fn generate(dir: &std::path::Path, wal_mb: u64) {
    let db = Database::open(env(), config(dir)).await.expect("open");
    let mut txn = db.begin().await.expect("begin");
    let table = txn.create_table("bench", b"").await.expect("create");
    for n in 0..ROWS {
        txn.put(&table, &key(n), &[7; 100]).await.expect("load");
        if n % 10_000 == 9_999 {
            txn.commit().await.expect("commit");
            txn = db.begin().await.expect("begin");
        }
    }
    txn.commit().await.expect("commit");
    let start = db.checkpoint().await.expect("checkpoint");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut updates = 0u64;
    let started = Instant::now();
    while db.wal().end_lsn().0 - start.0 < wal_mb << 20 {
        let mut txn = db.begin().await.expect("begin");
        for _ in 0..100 {
            let value = [rng.random::<u8>(); 100];
            txn.put(&table, &key(rng.random_range(0..ROWS)), &value).await.expect("update");
        }
        txn.commit().await.expect("commit");
        updates += 100;
    }
    eprintln!(
        "generated {} MB of WAL with {updates} updates in {:.1}s; crashing",
        (db.wal().end_lsn().0 - start.0) >> 20,
        started.elapsed().as_secs_f64()
    );
    // Dropped without a shutdown: a crash.
}

fn postgres_replay(wal_mb: u64) -> Option<Replay> {
    if std::env::var_os("SKIP_POSTGRES").is_some() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pg_redo.sh");
    let output = Command::new("bash").arg(script).env("WAL_MB", wal_mb.to_string()).output().expect("run pg_redo.sh");
    if !output.status.success() {
        eprintln!("pg_redo.sh failed:\n{}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    eprintln!("PostgreSQL redo from {} to {}", fields[2], fields[3]);
    Some(Replay { wal_bytes: fields[0].parse().ok()?, records: 0, seconds: fields[1].parse().ok()? })
}

async fn point_ops(db: &Arc<Database>, table: &Table) -> Vec<(String, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut rows = Vec::new();

    let reads = 200_000;
    let started = Instant::now();
    for _ in 0..reads {
        let mut txn = db.begin().await.expect("begin");
        let found = txn.get(table, &key(rng.random_range(0..ROWS))).await.expect("get");
        assert!(found.is_some());
        txn.commit().await.expect("commit");
    }
    rows.push(("point reads, one per transaction".into(), reads as f64 / started.elapsed().as_secs_f64()));

    let inserts = 5_000u32;
    let started = Instant::now();
    for n in 0..inserts {
        let mut txn = db.begin().await.expect("begin");
        txn.insert(table, &key(ROWS + n), &[1; 100]).await.expect("insert");
        txn.commit().await.expect("commit");
    }
    rows.push((
        "inserts, one per transaction (each waits for fsync)".into(),
        inserts as f64 / started.elapsed().as_secs_f64(),
    ));

    let started = Instant::now();
    let sessions: Vec<_> = (0..8u32)
        .map(|session| {
            let (db, table) = (db.clone(), table.clone());
            tokio::spawn(async move {
                for n in 0..inserts / 2 {
                    let mut txn = db.begin().await.expect("begin");
                    txn.insert(&table, &key(2 * ROWS + session * inserts + n), &[2; 100]).await.expect("insert");
                    txn.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for session in sessions {
        session.await.expect("session");
    }
    rows.push((
        "inserts, one per transaction, 8 sessions".into(),
        (inserts * 4) as f64 / started.elapsed().as_secs_f64(),
    ));

    let batched = 100_000u32;
    let started = Instant::now();
    let mut txn = db.begin().await.expect("begin");
    for n in 0..batched {
        txn.insert(table, &key(4 * ROWS + n), &[3; 100]).await.expect("insert");
        if n % 1000 == 999 {
            txn.commit().await.expect("commit");
            txn = db.begin().await.expect("begin");
        }
    }
    txn.commit().await.expect("commit");
    rows.push(("inserts, 1,000 per transaction".into(), batched as f64 / started.elapsed().as_secs_f64()));

    let mut txn = db.begin().await.expect("begin");
    let scanned = txn.scan(table, Bound::Unbounded, Bound::Unbounded).await.expect("scan").len();
    txn.commit().await.expect("commit");
    assert_eq!(scanned as u32, ROWS + inserts * 5 + batched);
    rows
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` lists; nothing to list
    }
    let wal_mb: u64 = std::env::var("WAL_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let scratch = match std::env::var_os("THUNDERDB_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("scratch dir"),
        None => tempfile::tempdir().expect("scratch dir"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let ours = runtime.block_on(thunderdb_replay(scratch.path(), wal_mb));
    if std::env::var_os("REPLAY_ONLY").is_some() {
        return;
    }
    let theirs = postgres_replay(wal_mb);

    println!("| measure | ThunderDB | PostgreSQL 15 | ratio |");
    println!("|---|---:|---:|---|");
    let ours_rate = ours.wal_bytes as f64 / MB / ours.seconds;
    let (theirs_rate, theirs_bytes, theirs_seconds) = match &theirs {
        Some(pg) => (pg.wal_bytes as f64 / MB / pg.seconds, pg.wal_bytes as f64 / MB, pg.seconds),
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    println!("| WAL replayed | {:.0} MB | {:.0} MB | |", ours.wal_bytes as f64 / MB, theirs_bytes);
    println!("| redo time | {:.2} s | {:.2} s | |", ours.seconds, theirs_seconds);
    println!(
        "| redo rate | {ours_rate:.0} MB/s | {theirs_rate:.0} MB/s | {:.2}x PostgreSQL (target >= 1, goal 2) |",
        ours_rate / theirs_rate
    );
    println!("| records replayed | {:.0} /s | | |", ours.records as f64 / ours.seconds);

    let db = Arc::new(runtime.block_on(Database::open(env(), config(scratch.path()))).expect("open"));
    let table = runtime.block_on(table(&db));
    for (name, rate) in runtime.block_on(point_ops(&db, &table)) {
        println!("| {name} | {rate:.0} /s | | |");
    }
}
