//! The server process: configuration, logging, the engine's lifetime and
//! graceful shutdown. (The PostgreSQL wire listener and the admin HTTP API
//! are the next pieces of the server work; see the README's Status.)

pub mod config;
pub mod logging;

use std::future::Future;
use std::sync::Arc;

use crate::db::{Database, EngineConfig};
use crate::env::{Env, Fs, RealClock, RealFs};
use config::Config;

impl Config {
    /// The engine settings this configuration gives.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            wal_dir: self.wal_dir.clone(),
            buffer_pool_size: self.storage.buffer_pool_size.0,
            wal_segment_size: self.storage.wal_segment_size.0,
            checkpoint_interval: self.storage.checkpoint_interval.0,
            max_wal_size: self.storage.max_wal_size.0,
            lock_timeout: self.storage.lock_timeout.0,
        }
    }
}

/// Opens the database (running crash recovery first if the last stop was
/// not clean), serves until `shutdown` resolves, then shuts down cleanly:
/// open transactions are rolled back and a final checkpoint is taken.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    let seed = u64::from(std::process::id());
    let env = Env::new(fs, Arc::new(RealClock::new()), seed);
    let db = Database::open(env, config.engine()).await.map_err(|e| format!("opening the database failed: {e}"))?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        wal_dir = %config.wal_dir.display(),
        wal_end = %db.wal().end_lsn(),
        "ThunderDB is up"
    );
    shutdown.await;
    tracing::info!("shutting down: rolling back open transactions and taking a final checkpoint");
    db.shutdown().await.map_err(|e| format!("clean shutdown failed: {e}"))?;
    tracing::info!("shut down cleanly");
    Ok(())
}
