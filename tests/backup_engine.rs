//! Backups at the engine level, on the simulated disk, in both builds: the
//! registry's refusals and history, a shutdown during a backup, and a WAL
//! hold that outlives checkpoints.

use std::path::Path;
use std::sync::Arc;

use thunderdb::backup::registry::{Registry, StartError, Status, HISTORY_NAME};
use thunderdb::backup::verify::{verify, Scratch};
use thunderdb::backup::{take, BackupRequest, Progress};
use thunderdb::db::{Database, EngineConfig};
use thunderdb::env::{Env, FaultConfig, Fs, SimClock, SimDisk};
use thunderdb::storage::PAGE_SIZE;

fn config() -> EngineConfig {
    let mut config = EngineConfig::new("/db");
    config.buffer_pool_size = 8 * PAGE_SIZE as u64;
    config.wal_segment_size = 1 << 12;
    config
}

async fn open(disk: &SimDisk) -> Arc<Database> {
    let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_768_473_045_000_000)), 5);
    Arc::new(Database::open(env, config()).await.unwrap())
}

async fn fill(db: &Database, rows: u32) {
    let mut txn = db.begin().await.unwrap();
    let table = match txn.table("t").await.unwrap() {
        Some(table) => table,
        None => txn.create_table("t", b"").await.unwrap(),
    };
    for n in 0..rows {
        txn.put(&table, &n.to_be_bytes(), &[7; 100]).await.unwrap();
    }
    txn.commit().await.unwrap();
}

async fn verifies(disk: &SimDisk, dir: &str) -> bool {
    let scratch = SimDisk::new(9, FaultConfig::none());
    let scratch = Scratch { fs: scratch.fs(), dir: "/scratch".into() };
    let clock = std::sync::Arc::new(SimClock::new(0));
    verify(disk.fs().as_ref(), Path::new(dir), &scratch, clock, &mut |_, _| {}).await.passed()
}

#[tokio::test]
async fn one_backup_at_a_time_and_the_history_survives_a_restart() {
    let disk = SimDisk::new(1, FaultConfig::none());
    let db = open(&disk).await;
    fill(&db, 50).await;
    let registry = Registry::open(db.clone(), "# test\n".into()).unwrap();
    let (first, estimate) = registry.start("/backups/one".into(), true, false).unwrap();
    assert_eq!(first.backup_id, "bk-20260115-103045");
    assert!(estimate > 0);
    // The first has not run yet (nothing yielded): the second is refused.
    let second = registry.start("/backups/two".into(), true, false);
    assert_eq!(second, Err(StartError::Conflict(first.backup_id.clone())));
    assert!(
        matches!(registry.start("relative".into(), true, false), Err(StartError::Invalid(m)) if m.contains("absolute"))
    );
    registry.wait().await;
    let done = registry.status(&first.backup_id).unwrap();
    assert_eq!(done.status, Status::Completed, "{done:?}");
    assert!(done.end_lsn >= done.start_lsn && done.bytes_done > 0, "{done:?}");
    assert!(verifies(&disk, "/backups/one").await);
    // A second backup in the same second gets its own id.
    let (again, _) = registry.start("/backups/two".into(), true, true).unwrap();
    assert_eq!(again.backup_id, "bk-20260115-103045-2");
    registry.wait().await;
    assert!(registry.status("bk-20990101-000000").is_none());

    drop(registry);
    let db = Arc::into_inner(db).unwrap();
    db.shutdown().await.unwrap();
    drop(db);
    let db = open(&disk).await;
    let registry = Registry::open(db.clone(), String::new()).unwrap();
    let (ended, succeeded) = registry.last();
    assert_eq!(ended.map(|r| r.backup_id), Some(again.backup_id.clone()));
    assert_eq!(succeeded.map(|r| r.status), Some(Status::Completed));
    assert_eq!(registry.status(&first.backup_id).map(|r| r.status), Some(Status::Completed));
}

#[tokio::test]
async fn a_shutdown_during_a_backup_fails_it_and_a_crash_leaves_it_failed_in_the_history() {
    let disk = SimDisk::new(2, FaultConfig::none());
    let db = open(&disk).await;
    fill(&db, 200).await;
    let registry = Registry::open(db.clone(), String::new()).unwrap();
    let (record, _) = registry.start("/backups/cut".into(), true, false).unwrap();
    db.shutdown().await.unwrap();
    registry.wait().await;
    let cut = registry.status(&record.backup_id).unwrap();
    assert_eq!(cut.status, Status::Failed, "{cut:?}");
    assert!(cut.error.as_deref().unwrap().contains("shut"), "{cut:?}");
    assert!(!verifies(&disk, "/backups/cut").await, "a failed backup never verifies");

    // A crash while a backup runs: its durable record says `running`, and
    // the next start records it as failed.
    drop(registry);
    drop(db);
    let db = open(&disk).await;
    let registry = Registry::open(db.clone(), String::new()).unwrap();
    let (record, _) = registry.start("/backups/crashed".into(), true, false).unwrap();
    disk.crash();
    drop(registry);
    drop(db);
    let db = open(&disk).await;
    let registry = Registry::open(db.clone(), String::new()).unwrap();
    let found = registry.status(&record.backup_id).unwrap();
    assert_eq!(found.status, Status::Failed, "{found:?}");
    assert!(found.error.unwrap().contains("stopped during the backup"));
    assert!(disk.fs().exists(&Path::new("/db/data").join(HISTORY_NAME)).unwrap());
}

#[tokio::test]
async fn checkpoints_during_a_backup_keep_the_wal_it_needs() {
    let disk = SimDisk::new(3, FaultConfig::none());
    let db = open(&disk).await;
    fill(&db, 100).await;
    let start = db.start_backup(false).await.unwrap();
    let first = db.wal().options().file_name(db.wal().options().segno(start.wal_from));
    // Many segments of WAL and several checkpoints later, the backup's
    // first segment is still there.
    for _ in 0..6 {
        fill(&db, 100).await;
        db.checkpoint().await.unwrap();
    }
    let wal_dir = Path::new("/db/wal");
    assert!(disk.fs().list(wal_dir).unwrap().contains(&first), "{first} was retired under a backup's hold");
    drop(start);
    db.checkpoint().await.unwrap();
    assert!(!disk.fs().list(wal_dir).unwrap().contains(&first), "the hold outlived its backup");
    // And a whole backup taken now, with checkpoints between its steps,
    // verifies.
    let request = BackupRequest::new("/backups/full", true, true, String::new());
    take(&db, disk.fs().as_ref(), "bk-test", &request, &Progress::default()).await.unwrap();
    assert!(verifies(&disk, "/backups/full").await);
}

#[tokio::test]
async fn a_dropped_tables_pages_are_copied_as_zeroes_and_the_backup_restores_without_them() {
    use thunderdb::backup::manifest::in_ranges;
    use thunderdb::backup::restore::restore_files;
    let disk = SimDisk::new(4, FaultConfig::none());
    let db = open(&disk).await;
    fill(&db, 3000).await;
    let mut txn = db.begin().await.unwrap();
    let kept = txn.create_table("kept", b"").await.unwrap();
    for n in 0..200u32 {
        txn.put(&kept, &n.to_be_bytes(), &[9; 100]).await.unwrap();
    }
    txn.drop_table("t").await.unwrap();
    txn.commit().await.unwrap();
    let request = BackupRequest::new("/backups/free", true, false, String::new());
    let manifest = take(&db, disk.fs().as_ref(), "bk-test", &request, &Progress::default()).await.unwrap();
    let free: u32 = manifest.free_pages.iter().map(|[first, last]| last - first + 1).sum();
    assert!(free >= 30, "the dropped table's pages are listed free: {:?}", manifest.free_pages);
    // Each listed page is zeroes in the copy; every other page is not.
    let file = disk.fs().open(Path::new("/backups/free/data/main.tdb")).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    for page_no in 0..manifest.data_pages as u32 {
        file.read_exact_at(&mut page, u64::from(page_no) * PAGE_SIZE as u64).unwrap();
        let zero = page.iter().all(|b| *b == 0);
        assert_eq!(zero, in_ranges(&manifest.free_pages, page_no), "page {page_no}");
    }
    assert!(verifies(&disk, "/backups/free").await);
    // A restore opens with the kept table whole, and the free pages free.
    Arc::into_inner(db).expect("the only handle").close().await;
    let fs = disk.fs();
    restore_files(fs.as_ref(), Path::new("/backups/free"), fs.as_ref(), Path::new("/r/data"), Path::new("/r/wal"))
        .unwrap();
    let mut config = EngineConfig::new("/r");
    config.wal_segment_size = 1 << 12;
    let env = Env::new(disk.fs(), Arc::new(SimClock::new(1_768_473_045_000_000)), 6);
    let restored = Database::open(env, config).await.unwrap();
    let mut txn = restored.begin().await.unwrap();
    let kept = txn.table("kept").await.unwrap().expect("the kept table");
    for n in 0..200u32 {
        assert_eq!(txn.get(&kept, &n.to_be_bytes()).await.unwrap(), Some(vec![9; 100]), "row {n}");
    }
    assert!(txn.table("t").await.unwrap().is_none());
    txn.commit().await.unwrap();
}
