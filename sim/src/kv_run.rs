//! One seeded kv run: puts and deletes through a B+tree on a faulty disk,
//! crashes at random I/O boundaries (recovery included), and after every
//! recovery the rows are checked against the model.
//!
//! A checkpoint now and then flushes the pages, moves the redo point in the
//! control file and retires WAL segments, so recovery starts mid-log and
//! reads untouched pages from disk. Swarm draws: the buffer pool's size (from 4 pages, so evictions are
//! constant), WAL segment size, key length (long keys make internal nodes
//! split), value sizes, the fault kinds and the crash schedule. Recovery is
//! the storage engine's (`Store::recover`, redo only for now), so this
//! checks the tree's logging: full-page images, atomic split records and the
//! redo rule.

use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thunderdb::env::{FaultConfig, Fs, SimDisk};
use thunderdb::storage::{BufferError, StorageError, Store, StoreError, Tree, PAGE_SIZE};
use thunderdb::wal::{WalError, WalOptions};
use thunderdb_workloads::kv::KvModel;

use crate::wal_run::{SeedFailure, SeedOutcome};

const CYCLES: u32 = 6;
const CHANGES_PER_CYCLE: u32 = 150;
const DATA: &str = "/thunderdb/data/main.tdb";

struct Swarm {
    wal: WalOptions,
    pool_pages: u64,
    long_keys: bool,
    value_max: usize,
    faults: FaultConfig,
}

struct Run {
    seed: u64,
    rng: ChaCha8Rng,
    disk: SimDisk,
    swarm: Swarm,
    model: KvModel,
    crashes: u64,
    recoveries: u64,
    acknowledged: u64,
    checkpoints: u64,
}

/// Runs one kv seed to its verdict.
pub async fn run_kv_seed(seed: u64) -> Result<SeedOutcome, SeedFailure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let swarm = Swarm {
        wal: WalOptions::new("/thunderdb/wal").with_segment_size([4096, 65536][rng.random_range(0..2)]),
        pool_pages: [4, 8, 64][rng.random_range(0..3)],
        long_keys: rng.random_bool(0.5),
        value_max: [64, 400, 1400][rng.random_range(0..3)],
        faults: FaultConfig::swarm(&mut rng),
    };
    let disk = SimDisk::new(rng.random(), swarm.faults.clone());
    let mut run = Run {
        seed,
        rng,
        disk,
        swarm,
        model: KvModel::default(),
        crashes: 0,
        recoveries: 0,
        acknowledged: 0,
        checkpoints: 0,
    };
    let fs = run.disk.fs();
    fs.create_dir_all(Path::new("/thunderdb/data")).map_err(|e| run.fail("setup", e.to_string()))?;
    fs.create_dir_all(&run.swarm.wal.dir).map_err(|e| run.fail("setup", e.to_string()))?;
    for _ in 0..CYCLES {
        let countdown =
            if run.rng.random_bool(0.2) { run.rng.random_range(0..20) } else { run.rng.random_range(50..800) };
        run.disk.set_crash_countdown(Some(countdown));
        if let Some((store, tree)) = run.recover().await? {
            run.work(store, tree).await;
        }
        run.disk.crash();
        run.crashes += 1;
    }
    run.liveness().await?;
    Ok(SeedOutcome {
        seed,
        trace_hash: run.disk.trace_hash(),
        faults: run.disk.fault_counts(),
        crashes: run.crashes,
        recoveries: run.recoveries,
        records_accepted: run.model.expected().len() as u64,
        records_acknowledged: run.acknowledged,
        segments_retired: 0,
        checkpoints: run.checkpoints,
        corruption_detected: false,
        io_ops: run.disk.op_count(),
        trace: Arc::new(run.disk.trace()),
    })
}

impl Run {
    fn fail(&self, check: &'static str, detail: String) -> SeedFailure {
        SeedFailure { seed: self.seed, check, detail }
    }

    /// Recovers the store and checks its rows. An I/O error (injected, or the
    /// countdown) ends the attempt with `None`; corruption or a model
    /// mismatch fails the seed.
    async fn recover(&mut self) -> Result<Option<(Store, Tree)>, SeedFailure> {
        let fs: Arc<dyn Fs> = self.disk.fs();
        let pool_bytes = self.swarm.pool_pages * PAGE_SIZE as u64;
        let mut store = match Store::recover(fs, self.swarm.wal.clone(), Path::new(DATA), pool_bytes).await {
            Ok(store) => store,
            Err(StoreError::Wal(e @ WalError::Corrupt { .. })) => {
                return Err(self.fail("wal_no_corruption", e.to_string()))
            }
            Err(e @ StoreError::BadRecord { .. }) => return Err(self.fail("kv_log_decodes", e.to_string())),
            Err(e) if is_corrupt_page(&e) => return Err(self.fail("kv_tree_readable", e.to_string())),
            Err(_) => return Ok(None),
        };
        let tree = Tree { table: 1, root: 0 };
        let found = if store.is_empty() {
            Vec::new()
        } else {
            match store.scan(&tree).await {
                Ok(rows) => rows,
                Err(e) if is_corrupt_page(&e) => return Err(self.fail("kv_tree_readable", e.to_string())),
                Err(_) => return Ok(None),
            }
        };
        self.model.check(&found).map_err(|detail| self.fail("kv_durable_prefix", detail))?;
        self.model.adopt(found);
        self.recoveries += 1;
        let tree = if store.is_empty() {
            match store.create_tree(1).await {
                Ok(tree) => tree,
                Err(_) => return Ok(None),
            }
        } else {
            tree
        };
        Ok(Some((store, tree)))
    }

    /// Puts and deletes until an error (the crash) or the cycle's quota.
    async fn work(&mut self, mut store: Store, tree: Tree) {
        for step in 0..CHANGES_PER_CYCLE {
            let id: u16 = self.rng.random_range(0..300);
            let mut key = id.to_be_bytes().to_vec();
            if self.swarm.long_keys {
                key.resize(400, b'k');
            }
            let result = if self.rng.random_bool(0.25) {
                store.delete(&tree, &key).await.map(|_| None)
            } else {
                let value = vec![step as u8; self.rng.random_range(0..self.swarm.value_max)];
                store.put(&tree, &key, &value).await.map(|_| Some(value))
            };
            let Ok(value) = result else { return };
            self.model.changed(key, value);
            if self.rng.random_bool(0.03) {
                if store.checkpoint(&|_| true).await.is_err() {
                    return;
                }
                self.model.acknowledged_all();
                self.checkpoints += 1;
            } else if self.rng.random_bool(0.2) {
                let wal = store.wal().clone();
                if wal.flush(wal.end_lsn()).await.is_err() {
                    return;
                }
                self.model.acknowledged_all();
                self.acknowledged += 1;
            }
        }
    }

    /// Faults off: the store must come back and keep new changes.
    async fn liveness(&mut self) -> Result<(), SeedFailure> {
        self.disk.set_faults(FaultConfig::none());
        self.disk.set_crash_countdown(None);
        let Some((mut store, tree)) = self.recover().await? else {
            return Err(self.fail("liveness", "recovery failed with faults off".into()));
        };
        for id in 0..5u8 {
            let key = vec![b'L', id];
            store.put(&tree, &key, b"live").await.map_err(|e| self.fail("liveness", e.to_string()))?;
            self.model.changed(key, Some(b"live".to_vec()));
        }
        let wal = store.wal().clone();
        wal.flush(wal.end_lsn()).await.map_err(|e| self.fail("liveness", e.to_string()))?;
        self.model.acknowledged_all();
        drop((store, wal));
        self.disk.crash();
        match self.recover().await? {
            Some(_) => Ok(()),
            None => Err(self.fail("liveness", "recovery failed with faults off".into())),
        }
    }
}

/// A page that fails its checks after recovery is a bug: redo rebuilds every
/// page from the log, and every page written since passed the WAL rule.
fn is_corrupt_page(error: &StoreError) -> bool {
    matches!(error, StoreError::Buffer(BufferError::Storage(StorageError::CorruptPage { .. })))
}
