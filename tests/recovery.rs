//! Crash recovery end to end on the simulated disk: a scripted workload
//! crashed at every I/O boundary, crashes during recovery and during undo,
//! torn and rotten pages, fsync failure, and the recovery log lines.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use thunderdb::db::{Database, DbError, EngineConfig};
use thunderdb::env::{Env, FaultConfig, Fs, SimClock, SimDisk};
use thunderdb::storage::{DATA_FILE_NAME, PAGE_SIZE};
use thunderdb::txn::Table;
use thunderdb_workloads::db::{first_difference, DbModel, Rows, State, Write};

fn config() -> EngineConfig {
    let mut config = EngineConfig::new("/db");
    config.buffer_pool_size = 4 * PAGE_SIZE as u64;
    config.wal_segment_size = 1 << 14;
    config
}

fn env(disk: &SimDisk) -> Env {
    Env::new(disk.fs(), Arc::new(SimClock::new(1_700_000_000_000_000)), 7)
}

async fn open(disk: &SimDisk) -> Result<Database, DbError> {
    Database::open(env(disk), config()).await
}

async fn read_state(db: &Database) -> Result<State, DbError> {
    let mut txn = db.begin().await?;
    let mut state = State::new();
    for table in txn.tables().await? {
        let rows: Rows = txn.scan(&table, Bound::Unbounded, Bound::Unbounded).await?.into_iter().collect();
        state.insert(table.name, rows);
    }
    txn.commit().await?;
    Ok(state)
}

fn key(n: u32) -> Vec<u8> {
    let mut key = n.to_be_bytes().to_vec();
    key.resize(200, b'k');
    key
}

fn value(n: u32, len: usize) -> Vec<u8> {
    vec![n as u8; len]
}

/// The scripted workload. Every commit goes through the model; the script
/// stops at the first error (the crash).
///
/// 1. create table `t` with 60 rows of ~700 bytes (splits);
/// 2. update 30 rows and delete 10, then roll back (undo, merges);
/// 3. begin a transaction that inserts 20 rows and stays open;
/// 4. checkpoint with it open (its undo needs WAL before the redo point);
/// 5. delete 45 rows and commit (leaf merges);
/// 6. the open transaction writes 10 more rows and never commits;
/// 7. update 10 rows and commit;
/// 8. create table `u` with 20 rows and commit; drop it and roll back; drop
///    it and commit; create table `v` with 20 rows (on `u`'s freed pages)
///    and commit.
async fn script(disk: &SimDisk, model: &mut DbModel) -> Result<(), DbError> {
    let db = open(disk).await?;
    let table = fill_new_table(&db, "t", 60, 700, 0, model).await?;

    let mut txn = db.begin().await?;
    for n in 0..30 {
        txn.put(&table, &key(n), &value(100 + n, 300)).await?;
    }
    for n in 30..40 {
        txn.delete(&table, &key(n)).await?;
    }
    txn.rollback().await?;

    let mut open_txn = db.begin().await?;
    for n in 200..220 {
        open_txn.put(&table, &key(n), &value(n, 500)).await?;
    }
    db.checkpoint().await?;

    let mut txn = db.begin().await?;
    let mut writes = Vec::new();
    for n in 5..50 {
        txn.delete(&table, &key(n)).await?;
        writes.push(Write::Delete("t".into(), key(n)));
    }
    commit(txn, writes, model).await?;

    for n in 220..230 {
        open_txn.put(&table, &key(n), &value(n, 500)).await?;
    }

    let mut txn = db.begin().await?;
    let mut writes = Vec::new();
    for n in 50..60 {
        txn.put(&table, &key(n), &value(n + 1, 100)).await?;
        writes.push(Write::Put("t".into(), key(n), value(n + 1, 100)));
    }
    commit(txn, writes, model).await?;

    fill_new_table(&db, "u", 20, 700, 0, model).await?;
    let mut txn = db.begin().await?;
    txn.drop_table("u").await?;
    txn.rollback().await?;
    let mut txn = db.begin().await?;
    txn.drop_table("u").await?;
    commit(txn, vec![Write::DropTable("u".into())], model).await?;
    fill_new_table(&db, "v", 20, 700, 1, model).await?;
    std::mem::forget(open_txn);
    Ok(())
}

/// Creates table `name` with `rows` rows of `len` bytes (row `n` holds
/// `value(n + seed, len)`) in one committed transaction, and returns it.
async fn fill_new_table(
    db: &Database,
    name: &str,
    rows: u32,
    len: usize,
    seed: u32,
    model: &mut DbModel,
) -> Result<Table, DbError> {
    let mut txn = db.begin().await?;
    let table = txn.create_table(name, b"").await?;
    let mut writes = vec![Write::CreateTable(name.into())];
    for n in 0..rows {
        txn.insert(&table, &key(n), &value(n + seed, len)).await?;
        writes.push(Write::Put(name.into(), key(n), value(n + seed, len)));
    }
    commit(txn, writes, model).await?;
    Ok(table)
}

async fn commit(txn: thunderdb::txn::Transaction, writes: Vec<Write>, model: &mut DbModel) -> Result<(), DbError> {
    let index = model.committing(writes);
    txn.commit().await?;
    model.acknowledged(index);
    Ok(())
}

/// Recovers and checks the state against the model; returns the database.
async fn recover_and_check(disk: &SimDisk, model: &DbModel, context: &str) -> Database {
    let db = open(disk).await.unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    let found = read_state(&db).await.unwrap_or_else(|e| panic!("{context}: reading failed: {e}"));
    model.check(&found).unwrap_or_else(|e| panic!("{context}: {e}"));
    db
}

#[tokio::test]
async fn a_crash_at_every_io_boundary_recovers_every_acknowledged_commit_and_nothing_else() {
    let total = {
        let disk = SimDisk::new(0, FaultConfig::none());
        script(&disk, &mut DbModel::default()).await.unwrap();
        disk.op_count()
    };
    assert!(total > 200, "the script does real I/O: {total} operations");
    for crash_at in 0..=total {
        let disk = SimDisk::new(crash_at, FaultConfig::power_loss());
        disk.set_crash_countdown(Some(crash_at));
        let mut model = DbModel::default();
        let _ = script(&disk, &mut model).await;
        disk.crash();
        let context = format!("crash at I/O {crash_at} of {total}");
        if crash_at % 7 == 3 {
            // Crash again part way through recovery (redo or undo) first.
            disk.set_crash_countdown(Some(crash_at % 97));
            let _ = open(&disk).await;
            disk.crash();
        }
        disk.set_crash_countdown(None);
        let db = recover_and_check(&disk, &model, &context).await;
        let first = read_state(&db).await.unwrap();
        drop(db);
        // Recovery is idempotent: crash right after it and recover again.
        disk.crash();
        let db = recover_and_check(&disk, &model, &context).await;
        let again = read_state(&db).await.unwrap();
        assert_eq!(
            first,
            again,
            "{context}: a second recovery changed the state: {}",
            first_difference(&again, &first)
        );
    }
}

#[tokio::test]
async fn a_crash_at_every_io_boundary_of_undo_recovers_the_same_state() {
    // A database with a large loser to roll back.
    let disk = SimDisk::new(3, FaultConfig::none());
    let mut model = DbModel::default();
    {
        let db = open(&disk).await.unwrap();
        let table = fill_new_table(&db, "t", 50, 400, 0, &mut model).await.unwrap();
        let mut loser = db.begin().await.unwrap();
        for n in 0..50 {
            loser.put(&table, &key(n * 3), &value(n, 900)).await.unwrap();
        }
        for n in 0..25 {
            loser.delete(&table, &key(n * 2)).await.unwrap();
        }
        db.wal().flush(db.wal().end_lsn()).await.unwrap();
        std::mem::forget(loser);
    }
    disk.crash();
    let base = disk.op_count();
    let recovery_ops = {
        let db = recover_and_check(&disk, &model, "clean recovery").await;
        assert_eq!(db.recovery_report().losers, 1);
        assert_eq!(db.recovery_report().changes_undone, 75);
        disk.op_count() - base
    };
    // Crash recovery at each of its own I/O boundaries, then recover again.
    for crash_at in 0..recovery_ops {
        let disk = SimDisk::new(3, FaultConfig::none());
        let mut model = DbModel::default();
        {
            let db = open(&disk).await.unwrap();
            let mut txn = db.begin().await.unwrap();
            let table = txn.create_table("t", b"").await.unwrap();
            let mut writes = vec![Write::CreateTable("t".into())];
            for n in 0..50 {
                txn.put(&table, &key(n), &value(n, 400)).await.unwrap();
                writes.push(Write::Put("t".into(), key(n), value(n, 400)));
            }
            commit(txn, writes, &mut model).await.unwrap();
            let mut loser = db.begin().await.unwrap();
            for n in 0..50 {
                loser.put(&table, &key(n * 3), &value(n, 900)).await.unwrap();
            }
            for n in 0..25 {
                loser.delete(&table, &key(n * 2)).await.unwrap();
            }
            db.wal().flush(db.wal().end_lsn()).await.unwrap();
            std::mem::forget(loser);
        }
        disk.crash();
        disk.set_faults(FaultConfig::power_loss());
        disk.set_crash_countdown(Some(crash_at));
        let _ = open(&disk).await;
        disk.crash();
        disk.set_crash_countdown(None);
        recover_and_check(&disk, &model, &format!("crash at I/O {crash_at} of recovery's {recovery_ops}")).await;
    }
}

/// Creates table `t` if it does not exist, takes a checkpoint, and puts
/// `key` → `v` into it: the table's page (page 1) logs its image first.
async fn put_after_a_checkpoint(db: &Database, key: &[u8], model: &mut DbModel) {
    let mut txn = db.begin().await.unwrap();
    let table = match txn.table("t").await.unwrap() {
        Some(table) => {
            txn.commit().await.unwrap();
            table
        }
        None => {
            let table = txn.create_table("t", b"").await.unwrap();
            commit(txn, vec![Write::CreateTable("t".into())], model).await.unwrap();
            table
        }
    };
    db.checkpoint().await.unwrap();
    let mut txn = db.begin().await.unwrap();
    txn.put(&table, key, b"v").await.unwrap();
    commit(txn, vec![Write::Put("t".into(), key.to_vec(), b"v".to_vec())], model).await.unwrap();
}

#[tokio::test]
async fn a_page_damaged_after_the_checkpoint_is_rebuilt_from_its_full_page_image() {
    let disk = SimDisk::new(5, FaultConfig::none());
    let mut model = DbModel::default();
    {
        let db = open(&disk).await.unwrap();
        put_after_a_checkpoint(&db, b"k", &mut model).await;
    }
    disk.crash();
    // The table's page (page 1) is damaged on disk, as a torn write would
    // leave it; its first change after the checkpoint logged its image.
    let data = Path::new("/db/data").join(DATA_FILE_NAME);
    for offset in [PAGE_SIZE as u64 + 100, PAGE_SIZE as u64 + 5000] {
        assert!(disk.rot_at(&data, offset));
    }
    let db = recover_and_check(&disk, &model, "torn page").await;
    assert!(db.recovery_report().crashed);
}

/// Creates table `t` holding `k` → `v` (on page 1) and shuts down cleanly,
/// so the page lies outside the log's reach.
async fn one_row_then_shutdown(disk: &SimDisk) {
    let db = open(disk).await.unwrap();
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    txn.put(&table, b"k", b"v").await.unwrap();
    txn.commit().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_page_damaged_outside_the_logs_reach_is_reported_not_used() {
    let disk = SimDisk::new(6, FaultConfig::none());
    one_row_then_shutdown(&disk).await;
    let data = Path::new("/db/data").join(DATA_FILE_NAME);
    assert!(disk.rot_at(&data, PAGE_SIZE as u64 + 300));
    let db = open(&disk).await.unwrap();
    assert!(!db.recovery_report().crashed, "a clean shutdown needs no crash recovery");
    let err = read_state(&db).await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let text = err.to_string();
    assert!(text.contains("corrupt page 1") && text.contains("main.tdb"), "{text}");
}

#[tokio::test]
async fn after_an_fsync_error_the_engine_stops_and_restart_recovers() {
    let disk = SimDisk::new(8, FaultConfig::none());
    let mut model = DbModel::default();
    let db = open(&disk).await.unwrap();
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    txn.put(&table, b"a", b"1").await.unwrap();
    commit(txn, vec![Write::CreateTable("t".into()), Write::Put("t".into(), b"a".to_vec(), b"1".to_vec())], &mut model)
        .await
        .unwrap();

    disk.set_faults(FaultConfig { fsync_error_rate: 1.0, ..FaultConfig::none() });
    let mut txn = db.begin().await.unwrap();
    txn.put(&table, b"b", b"2").await.unwrap();
    let index = model.committing(vec![Write::Put("t".into(), b"b".to_vec(), b"2".to_vec())]);
    let err = txn.commit().await.unwrap_err();
    assert!(err.to_string().contains("fsync") || err.to_string().contains("sync"), "{err}");
    let _ = index; // never acknowledged

    disk.set_faults(FaultConfig::none());
    // Fail-stop: nothing more is accepted, reads included, though the disk works again.
    let mut txn = db.begin().await.unwrap();
    let err = txn.get(&table, b"a").await.unwrap_err();
    assert!(err.to_string().contains("restart the database"), "{err}");
    assert!(db.checkpoint().await.is_err());
    drop((txn, db));

    disk.crash();
    let db = recover_and_check(&disk, &model, "after fsync error").await;
    assert!(db.recovery_report().crashed);
}

#[tokio::test]
async fn recovery_logs_the_documented_lines_with_real_counts() {
    let disk = SimDisk::new(9, FaultConfig::none());
    {
        let db = open(&disk).await.unwrap();
        let mut txn = db.begin().await.unwrap();
        let table = txn.create_table("t", b"").await.unwrap();
        for n in 0..20 {
            txn.put(&table, &key(n), &value(n, 300)).await.unwrap();
        }
        txn.commit().await.unwrap();
        for loser in 0..3 {
            let mut txn = db.begin().await.unwrap();
            txn.put(&table, &key(100 + loser), b"uncommitted").await.unwrap();
            std::mem::forget(txn);
        }
        db.wal().flush(db.wal().end_lsn()).await.unwrap();
    }
    disk.crash();
    let db = open(&disk).await.unwrap();
    let report = db.recovery_report();
    assert_eq!(report.losers, 3);
    let lines: Vec<String> = report
        .lines
        .iter()
        .map(|line| match line.split_once(" in ") {
            Some((head, _)) if head == "Recovery complete" => format!("{head} in [duration]"),
            _ => line.clone(),
        })
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
    let found = read_state(&db).await.unwrap();
    assert_eq!(found["t"].len(), 20, "the losers' rows are gone");
}

/// A transaction keeps only `undo_memory` bytes of undo records in memory;
/// rolling back a larger one reads the rest back from the WAL (some of it
/// not yet flushed when the rollback starts), and leaves exactly the
/// committed rows, before and after a crash.
#[tokio::test]
async fn a_rollback_larger_than_its_undo_memory_reads_its_records_back_from_the_wal() {
    let disk = SimDisk::new(11, FaultConfig::none());
    let mut model = DbModel::default();
    let mut config = config();
    config.undo_memory = 2048;
    let db = Database::open(env(&disk), config.clone()).await.unwrap();
    let table = fill_new_table(&db, "t", 60, 300, 0, &mut model).await.unwrap();

    let mut txn = db.begin().await.unwrap();
    for n in 0..60 {
        txn.put(&table, &key(n), &value(n + 1, 200)).await.unwrap();
    }
    for n in 60..100 {
        txn.insert(&table, &key(n), &value(n, 500)).await.unwrap();
    }
    for n in 0..10 {
        txn.delete(&table, &key(n)).await.unwrap();
    }
    txn.rollback().await.unwrap();
    model.check(&read_state(&db).await.unwrap()).unwrap();
    drop(db);

    disk.crash();
    let db = Database::open(env(&disk), config).await.unwrap();
    model.check(&read_state(&db).await.unwrap()).unwrap();
}

#[cfg_attr(not(madsim), tokio::test(start_paused = true))]
#[cfg_attr(madsim, tokio::test)]
async fn checkpoints_run_on_the_interval_and_when_the_wal_outgrows_max_wal_size() {
    let disk = SimDisk::new(10, FaultConfig::none());
    let mut config = config();
    config.checkpoint_interval = std::time::Duration::from_secs(30);
    config.max_wal_size = 256 << 10;
    let db = Database::open(env(&disk), config).await.unwrap();
    let count = |db: &Database| db.stats().checkpoints.load(std::sync::atomic::Ordering::Relaxed);
    let opened = count(&db);
    tokio::time::sleep(std::time::Duration::from_secs(95)).await;
    assert_eq!(count(&db), opened + 3, "one checkpoint per 30 s interval");

    // Write well past max_wal_size between intervals.
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    txn.commit().await.unwrap();
    let before = count(&db);
    for round in 0..40u32 {
        let mut txn = db.begin().await.unwrap();
        for n in 0..10 {
            txn.put(&table, &key(round * 10 + n), &value(n, 1500)).await.unwrap();
        }
        txn.commit().await.unwrap();
        tokio::task::yield_now().await;
    }
    // The checkpoint it asked for spreads its writes over 0.9 of the interval.
    tokio::time::sleep(std::time::Duration::from_secs(28)).await;
    assert!(count(&db) > before, "WAL growth past max_wal_size triggered a checkpoint");
    let checkpoint = db.checkpoint().await.unwrap();
    assert!(checkpoint <= db.wal().end_lsn() && db.wal().durable_lsn() > checkpoint, "on demand, durable");
}

/// The background checkpoint spreads its page writes over the interval,
/// while transactions commit; an operator's checkpoint during it does not
/// wait for the spread: it hurries it and answers at once.
#[cfg_attr(not(madsim), tokio::test(start_paused = true))]
#[cfg_attr(madsim, tokio::test)]
async fn a_spread_checkpoint_lets_writers_run_and_an_operators_checkpoint_hurries_it() {
    let disk = SimDisk::new(11, FaultConfig::none());
    let mut config = config();
    config.buffer_pool_size = 64 * PAGE_SIZE as u64;
    config.checkpoint_interval = std::time::Duration::from_secs(30);
    let db = Database::open(env(&disk), config.clone()).await.unwrap();
    let count = |db: &Database| db.stats().checkpoints.load(std::sync::atomic::Ordering::Relaxed);
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    for n in 0..200 {
        txn.put(&table, &key(n), &value(n, 300)).await.unwrap();
    }
    txn.commit().await.unwrap();
    let opened = count(&db);
    // The background checkpoint begins at 30 s and spreads over 27 s.
    tokio::time::sleep(std::time::Duration::from_secs(35)).await;
    assert_eq!(count(&db), opened, "still writing its pages");
    let mut txn = db.begin().await.unwrap();
    txn.put(&table, &key(1), &value(1, 10)).await.unwrap();
    txn.commit().await.unwrap();
    let asked = db.wall_micros();
    db.checkpoint().await.unwrap();
    assert!(db.wall_micros() - asked < 1_000_000, "the operator's checkpoint waited for the spread");
    assert_eq!(count(&db), opened + 2, "the spread one ended, then the operator's");
    drop(db);
    disk.crash();
    let db = Database::open(env(&disk), config).await.unwrap();
    let found = read_state(&db).await.unwrap();
    assert_eq!(found["t"].len(), 200);
}

/// Commit times never go backwards in log order: a wall clock stepped back
/// stamps the previous commit's time (and counts a clamp), across a crash
/// (the floor comes from the commit records recovery reads) and across a
/// checkpoint (it comes from the checkpoint's end record).
#[tokio::test]
async fn commit_times_never_go_backwards_when_the_clock_steps_back() {
    use thunderdb::env::Clock;
    use thunderdb::wal::WalOptions;
    use thunderdb_workloads::commit_times::read_commit_times;

    let disk = SimDisk::new(12, FaultConfig::none());
    let clock = Arc::new(SimClock::new(1_700_000_000_000_000));
    // One segment holds the whole log, so no checkpoint retires any of it.
    let config = EngineConfig { wal_segment_size: 1 << 20, ..config() };
    let open = || Database::open(Env::new(disk.fs(), clock.clone(), 7), config.clone());
    async fn commit_one(db: &Database, n: u32) {
        let mut txn = db.begin().await.unwrap();
        let table = match txn.table("t").await.unwrap() {
            Some(table) => table,
            None => txn.create_table("t", b"").await.unwrap(),
        };
        txn.put(&table, &key(n), &value(n, 10)).await.unwrap();
        txn.commit().await.unwrap().expect("a write logs a commit");
    }
    let clamps = |db: &Database| db.stats().commit_time_clamps.load(std::sync::atomic::Ordering::Relaxed);

    let db = open().await.unwrap();
    commit_one(&db, 1).await;
    let first = clock.wall_micros();
    clock.jump_wall(-60_000_000);
    commit_one(&db, 2).await;
    assert_eq!(clamps(&db), 1, "the commit after the step back was clamped");
    drop(db);

    disk.crash();
    let db = open().await.unwrap();
    commit_one(&db, 3).await;
    assert_eq!(clamps(&db), 1, "recovery found the newest commit time in the log");
    db.checkpoint().await.unwrap();
    db.shutdown().await.unwrap();

    // Every commit now lies before the redo point: the floor comes from the
    // checkpoint's end record.
    clock.jump_wall(-60_000_000);
    let db = open().await.unwrap();
    commit_one(&db, 4).await;
    assert_eq!(clamps(&db), 1, "the checkpoint carried the newest commit time");
    drop(db);

    let opts = WalOptions::new("/db/wal").with_segment_size(config.wal_segment_size);
    let logged = read_commit_times(disk.fs(), opts.clone(), opts.first_lsn()).unwrap();
    assert!(logged.len() >= 4, "{logged:?}");
    assert!(logged.windows(2).all(|pair| pair[0].1 <= pair[1].1), "times follow log order: {logged:?}");
    // The clock stayed behind the first commit's time from the first step
    // back on, so every later commit carries exactly that time.
    assert!(logged[0].1 <= first, "{logged:?}");
    assert!(logged.iter().all(|(_, time)| *time == logged[0].1), "each was clamped: {logged:?}");
}

/// A page lost at rest (all zeroes) that a tree references is reported as
/// corruption, naming the file and page, never read as an empty page; with
/// its image in the log after the checkpoint, redo rebuilds it instead.
#[tokio::test]
async fn a_page_zeroed_at_rest_is_rebuilt_from_its_image_or_reported_never_read_as_empty() {
    use thunderdb::env::AtRestLoss;
    let data = Path::new("/db/data").join(DATA_FILE_NAME);
    let sectors = PAGE_SIZE as u64 / thunderdb::env::SECTOR_SIZE;

    // Outside the log's reach (a clean shutdown): reported.
    let disk = SimDisk::new(13, FaultConfig::none());
    one_row_then_shutdown(&disk).await;
    assert!(disk.lose_at_rest(&data, PAGE_SIZE as u64, sectors, AtRestLoss::Zeroed));
    let db = open(&disk).await.unwrap();
    let err = read_state(&db).await.unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let text = err.to_string();
    assert!(text.contains("corrupt page 1") && text.contains("main.tdb") && text.contains("zeroes"), "{text}");

    // Its first change after the checkpoint logged its image: rebuilt.
    let disk = SimDisk::new(14, FaultConfig::none());
    let mut model = DbModel::default();
    {
        let db = open(&disk).await.unwrap();
        put_after_a_checkpoint(&db, b"k", &mut model).await;
        put_after_a_checkpoint(&db, b"k2", &mut model).await;
    }
    disk.crash();
    assert!(disk.lose_at_rest(&data, PAGE_SIZE as u64, sectors, AtRestLoss::Zeroed));
    recover_and_check(&disk, &model, "zeroed page with its image in the log").await;
}

#[tokio::test]
async fn transaction_ids_logged_after_the_last_checkpoint_are_never_handed_out_again() {
    let disk = SimDisk::new(11, FaultConfig::none());
    let mut logged = Vec::new();
    {
        let db = open(&disk).await.unwrap();
        // Open's checkpoint recorded the next id; these transactions take it
        // and the ids after it, and only the WAL knows they were used.
        let mut txn = db.begin().await.unwrap();
        let table = txn.create_table("t", b"").await.unwrap();
        logged.push(txn.xid());
        txn.commit().await.unwrap();
        let mut open_txn = db.begin().await.unwrap();
        open_txn.put(&table, b"k", b"v").await.unwrap();
        logged.push(open_txn.xid());
        // The highest id belongs to a committed transaction, which recovery
        // does not adopt as a loser: only analysis's floor covers it.
        let mut txn = db.begin().await.unwrap();
        txn.put(&table, b"j", b"v").await.unwrap();
        logged.push(txn.xid());
        txn.commit().await.unwrap();
        std::mem::forget(open_txn);
    }
    disk.crash();
    let db = open(&disk).await.unwrap();
    assert!(db.recovery_report().crashed);
    let txn = db.begin().await.unwrap();
    let highest = *logged.iter().max().expect("two transactions");
    assert!(txn.xid() > highest, "xid {} handed out again after recovery (the log used up to {highest})", txn.xid());
}

#[tokio::test]
async fn a_control_file_whose_checkpoint_wal_is_gone_is_refused_naming_the_segment() {
    // The manual backup's hazard: the copied control file names a
    // checkpoint whose WAL a later checkpoint retired before the WAL copy.
    let disk = SimDisk::new(12, FaultConfig::none());
    let control_path = Path::new("/db/data/control");
    let old_control = {
        let db = open(&disk).await.unwrap();
        let mut model = DbModel::default();
        put_after_a_checkpoint(&db, b"k", &mut model).await;
        db.checkpoint().await.unwrap();
        let file = disk.fs().open(control_path).unwrap();
        let mut bytes = vec![0; file.len().unwrap() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let mut txn = db.begin().await.unwrap();
        let table = txn.table("t").await.unwrap().unwrap();
        for n in 0..200 {
            txn.put(&table, &key(n), &value(n, 300)).await.unwrap();
        }
        txn.commit().await.unwrap();
        db.checkpoint().await.unwrap();
        db.checkpoint().await.unwrap();
        db.shutdown().await.unwrap();
        bytes
    };
    let file = disk.fs().open(control_path).unwrap();
    file.write_all_at(&old_control, 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    disk.crash();
    let error = match open(&disk).await {
        Ok(_) => panic!("opened with the checkpoint's WAL gone"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("000000010000000000000001") && error.contains("does not exist"), "{error}");
}

/// An operator's checkpoint writes at full speed, but lets the store go
/// between batches of pages: transactions commit between its begin and
/// end records instead of waiting for its writes.
#[tokio::test]
async fn an_operators_checkpoint_lets_writers_commit_between_its_page_writes() {
    use thunderdb::storage::Op;
    use thunderdb::wal::{RecordKind, WalReader};
    let disk = SimDisk::new(12, FaultConfig::none());
    let mut config = config();
    config.buffer_pool_size = 512 * PAGE_SIZE as u64;
    // One segment: nothing the test reads back is retired.
    config.wal_segment_size = 16 << 20;
    let db = Arc::new(Database::open(env(&disk), config).await.unwrap());
    let mut txn = db.begin().await.unwrap();
    let table = txn.create_table("t", b"").await.unwrap();
    // Enough pages that the checkpoint writes many batches: with 2,000 rows
    // some madsim seeds (1795869414795472281) ran its few batches inside
    // one of the writer's commits.
    for n in 0..8000 {
        txn.put(&table, &key(n), &value(n, 300)).await.unwrap();
    }
    txn.commit().await.unwrap();
    // A writer that commits until the checkpoint is over.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (db, table, done) = (db.clone(), table.clone(), done.clone());
        async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let mut txn = db.begin().await.unwrap();
                txn.put(&table, &key(n % 8000), &value(n + 1, 300)).await.unwrap();
                txn.commit().await.unwrap();
                n += 1;
                tokio::task::yield_now().await;
            }
        }
    });
    tokio::task::yield_now().await;
    db.checkpoint().await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    writer.await.unwrap();

    let opts = db.wal().options().clone();
    let mut reader = WalReader::new(disk.fs(), opts.clone(), opts.first_lsn());
    let (mut in_checkpoint, mut commits_inside, mut checkpoints) = (false, 0, 0);
    while let Some((_, record)) = reader.next_record().unwrap() {
        match (record.kind, Op::decode(&record.payload)) {
            (RecordKind::Data, Ok(Op::CheckpointBegin)) => in_checkpoint = true,
            (RecordKind::Data, Ok(Op::CheckpointEnd { .. })) => {
                in_checkpoint = false;
                checkpoints += 1;
            }
            (RecordKind::Commit, _) if in_checkpoint => commits_inside += 1,
            _ => {}
        }
    }
    assert!(checkpoints >= 2, "the open's checkpoint and the operator's");
    assert!(commits_inside > 0, "no transaction committed while the checkpoint wrote its pages");
}

/// A page made dirty by the very record that precedes a checkpoint's begin
/// record is written by that checkpoint: its change lies before the redo
/// point, so no later redo replays it. Here the page was imaged earlier in
/// the cycle and then evicted (so its change logs no image), and the change
/// comes from a transaction still open when the checkpoint begins, which
/// commits after it ends; the crash then keeps the committed change.
#[tokio::test]
async fn a_change_logged_right_before_a_checkpoint_begins_survives_a_crash_after_it() {
    let disk = SimDisk::new(13, FaultConfig::none());
    let mut model = DbModel::default();
    let db = open(&disk).await.unwrap();
    let table = fill_new_table(&db, "t", 100, 100, 0, &mut model).await.unwrap();
    db.checkpoint().await.unwrap();
    // Row 0's leaf: imaged in this cycle, then evicted by reads of the rest
    // (the pool holds four pages).
    let mut txn = db.begin().await.unwrap();
    txn.put(&table, &key(0), &value(1, 100)).await.unwrap();
    commit(txn, vec![Write::Put("t".into(), key(0), value(1, 100))], &mut model).await.unwrap();
    let mut txn = db.begin().await.unwrap();
    for n in 40..100 {
        txn.get(&table, &key(n)).await.unwrap();
    }
    txn.commit().await.unwrap();
    // The change is the last record before the checkpoint's begin record.
    let mut txn = db.begin().await.unwrap();
    txn.put(&table, &key(0), &value(2, 100)).await.unwrap();
    let change_end = db.wal().end_lsn();
    let redo_point = db.checkpoint().await.unwrap();
    assert_eq!(redo_point, change_end, "the begin record follows the change");
    commit(txn, vec![Write::Put("t".into(), key(0), value(2, 100))], &mut model).await.unwrap();
    drop(db);
    disk.crash();
    let db = open(&disk).await.unwrap();
    model.check(&read_state(&db).await.unwrap()).unwrap();
}

/// Each compensation record points past the change it undid. If it pointed at
/// that change instead, a crash right after it was durable would have the
/// next recovery undo an edit a second time, and an edit's inverse refuses a
/// row that no longer holds the bytes it replaces. The table outgrows the
/// pool, so evictions make compensation records durable mid-undo.
#[tokio::test]
async fn a_rollback_of_edits_cut_off_by_a_crash_resumes_after_the_last_change_it_undid() {
    async fn build(disk: &SimDisk, model: &mut DbModel) {
        let db = open(disk).await.unwrap();
        let table = fill_new_table(&db, "t", 150, 300, 0, model).await.unwrap();
        let mut loser = db.begin().await.unwrap();
        for n in 0..150 {
            // Same length, one byte changed in the middle: logged as edits.
            let mut changed = value(n, 300);
            changed[150] ^= 0xff;
            loser.put(&table, &key(n), &changed).await.unwrap();
        }
        db.wal().flush(db.wal().end_lsn()).await.unwrap();
        std::mem::forget(loser);
    }
    let disk = SimDisk::new(5, FaultConfig::none());
    let mut model = DbModel::default();
    build(&disk, &mut model).await;
    disk.crash();
    let base = disk.op_count();
    let recovery_ops = {
        let db = recover_and_check(&disk, &model, "clean recovery").await;
        assert_eq!(db.recovery_report().changes_undone, 150);
        disk.op_count() - base
    };
    for crash_at in 0..recovery_ops {
        let disk = SimDisk::new(5, FaultConfig::none());
        let mut model = DbModel::default();
        build(&disk, &mut model).await;
        disk.crash();
        disk.set_faults(FaultConfig::power_loss());
        disk.set_crash_countdown(Some(crash_at));
        let _ = open(&disk).await;
        disk.crash();
        disk.set_crash_countdown(None);
        recover_and_check(&disk, &model, &format!("crash at I/O {crash_at} of recovery's {recovery_ops}")).await;
    }
}

/// A crash recovery opens without waiting for its checkpoint, which runs in
/// the background. Until it completes, the old redo point stays: a crash
/// then recovers again from there, through the first recovery's undo and the
/// transactions committed since, and loses nothing.
#[tokio::test]
async fn a_crash_recovery_opens_before_its_checkpoint_and_a_crash_before_that_checkpoint_loses_nothing() {
    use std::sync::atomic::Ordering;
    let disk = SimDisk::new(21, FaultConfig::none());
    let mut model = DbModel::default();
    let checkpoint = {
        let db = open(&disk).await.unwrap();
        let table = fill_new_table(&db, "t", 40, 300, 0, &mut model).await.unwrap();
        let checkpoint = db.checkpoint().await.unwrap();
        for n in 0..20 {
            let mut txn = db.begin().await.unwrap();
            txn.put(&table, &key(n), &value(n + 1, 300)).await.unwrap();
            commit(txn, vec![Write::Put("t".into(), key(n), value(n + 1, 300))], &mut model).await.unwrap();
        }
        let mut loser = db.begin().await.unwrap();
        loser.put(&table, &key(500), b"never committed").await.unwrap();
        db.wal().flush(db.wal().end_lsn()).await.unwrap();
        std::mem::forget(loser);
        checkpoint
    };
    disk.crash();

    // Opened, and crashed again before its checkpoint could run (nothing
    // awaited in between on this one-thread runtime).
    let db = open(&disk).await.unwrap();
    assert!(db.recovery_report().crashed);
    assert_eq!(db.recovery_report().losers, 1);
    assert_eq!(db.stats().checkpoints.load(Ordering::Relaxed), 0, "open did not wait for a checkpoint");
    drop(db);
    disk.crash();

    // Again from the same redo point, over what the first recovery logged.
    let db = recover_and_check(&disk, &model, "a crash before the end-of-recovery checkpoint").await;
    assert_eq!(db.recovery_report().checkpoint_lsn, Some(checkpoint), "the redo point did not move");
    let table = {
        let mut txn = db.begin().await.unwrap();
        let table = txn.tables().await.unwrap().into_iter().find(|t| t.name == "t").unwrap();
        txn.commit().await.unwrap();
        table
    };
    // Writers commit while the background checkpoint runs.
    for n in 20..30 {
        let mut txn = db.begin().await.unwrap();
        txn.put(&table, &key(n), &value(n + 2, 300)).await.unwrap();
        commit(txn, vec![Write::Put("t".into(), key(n), value(n + 2, 300))], &mut model).await.unwrap();
    }
    // Once the background checkpoint is done, the next recovery starts there.
    for _ in 0..100_000 {
        if db.stats().checkpoints.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(db.stats().checkpoints.load(Ordering::Relaxed), 1, "the end-of-recovery checkpoint completed");
    drop(db);
    disk.crash();
    let db = recover_and_check(&disk, &model, "a crash after the end-of-recovery checkpoint").await;
    let moved = db.recovery_report().checkpoint_lsn.unwrap();
    assert!(moved > checkpoint, "the end-of-recovery checkpoint moved the redo point: {moved} after {checkpoint}");
}
