//! The server process: configuration, logging, the engine's lifetime, the
//! PostgreSQL wire listener, the admin HTTP API and graceful shutdown.
//!
//! The listeners need real tokio sockets, so they exist only in the normal
//! build; the simulator drives [`crate::sql::Session`] directly.

pub mod config;
#[cfg(not(madsim))]
pub mod http;
pub mod logging;
#[cfg(not(madsim))]
pub mod pg;
#[cfg(not(madsim))]
mod standby;
#[cfg(not(madsim))]
pub mod wire;

use crate::db::EngineConfig;
use config::Config;

impl Config {
    /// The engine settings this configuration gives.
    pub fn engine(&self) -> EngineConfig {
        let mut engine = EngineConfig::new("");
        engine.data_dir = self.data_dir.clone();
        engine.wal_dir = self.wal_dir.clone();
        engine.buffer_pool_size = self.storage.buffer_pool_size.0;
        engine.wal_segment_size = self.storage.wal_segment_size.0;
        engine.wal_compression = self.storage.wal_compression;
        engine.checkpoint_interval = self.storage.checkpoint_interval.0;
        engine.max_wal_size = self.storage.max_wal_size.0;
        engine.lock_timeout = self.storage.lock_timeout.0;
        engine.archive = self.storage.archive_mode().ok().flatten().map(|mode| crate::archive::ArchiveConfig {
            retention: Some(self.storage.wal_archive_retention.0),
            command_timeout: self.storage.wal_archive_timeout.0,
            ..crate::archive::ArchiveConfig::new(mode)
        });
        engine
    }
}

#[cfg(not(madsim))]
pub use serve::run;

#[cfg(not(madsim))]
mod serve {
    use std::future::Future;
    use std::sync::Arc;

    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;
    use tokio::task::JoinSet;

    use super::config::Config;
    use super::http::{router, AdminState};
    use super::pg::{Connection, Handlers, Verifier};
    use crate::backup::registry::Registry;
    use crate::db::Database;
    use crate::env::{Env, Fs, RealClock, RealFs, ShellCommands};

    pub(super) fn non_empty(s: &str) -> Option<String> {
        (!s.is_empty()).then(|| s.to_string())
    }

    /// A compressed backup's files copied into place are not a database:
    /// starting on them would initialise an empty one beside them.
    fn refuse_compressed_copy(fs: &dyn Fs, config: &Config) -> Result<(), String> {
        for dir in [&config.data_dir, &config.wal_dir] {
            let names = fs.list(dir).unwrap_or_default();
            if let Some(name) = names.iter().find(|name| name.ends_with(".zst")) {
                return Err(format!(
                    "{} holds compressed backup files ({name}): a compressed backup cannot be copied into place; \
                     empty the data and WAL directories and restore it with \
                     `thunderdb --restore-pitr latest --restore-backup BACKUP_DIR --config FILE`",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Opens the database (running crash recovery first if the last stop
    /// was not clean), then serves SQL and the admin API until `shutdown`
    /// resolves. Then it stops accepting, ends every session (rolling back
    /// its open transaction) and shuts the engine down with a final
    /// checkpoint.
    pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let seed = u64::from(std::process::id());
        refuse_compressed_copy(fs.as_ref(), &config)?;
        let env = Env::new(fs, Arc::new(RealClock::new()), seed).with_commands(Arc::new(ShellCommands));
        let pg_addr = format!("{}:{}", config.listen_addr, config.pg_port);
        let http_addr = format!("{}:{}", config.listen_addr, config.http_port);
        tokio::pin!(shutdown);
        let pg = if config.cluster.standby {
            // Follows the archive until promoted (then opens below) or
            // stopped.
            match super::standby::follow(&env, &config, &mut shutdown).await? {
                Some(pg) => pg,
                None => return Ok(()),
            }
        } else {
            TcpListener::bind(&pg_addr).await.map_err(|e| format!("listening on {pg_addr} (pg_port) failed: {e}"))?
        };
        let db = Database::open(env, config.engine()).await.map_err(|e| format!("opening the database failed: {e}"))?;
        let db = Arc::new(db);
        let http = TcpListener::bind(&http_addr)
            .await
            .map_err(|e| format!("listening on {http_addr} (http_port) failed: {e}"))?;
        let backups = Registry::open(db.clone(), config.effective_toml.clone())?;
        let admin = AdminState {
            db: db.clone(),
            token: non_empty(&config.security.admin_token),
            backups: backups.clone(),
            node_id: config.cluster.node_id,
        };
        let http_task = tokio::spawn(async move { axum::serve(http, router(admin)).await });
        tracing::info!(
            data_dir = %config.data_dir.display(),
            wal_dir = %config.wal_dir.display(),
            wal_end = %db.wal().end_lsn(),
            pg = %pg_addr,
            http = %http_addr,
            "ThunderDB is up"
        );

        let verifier = non_empty(&config.security.superuser_password).map(|password| {
            // A salt unique to this process: the pid and the start time.
            let mut salt = std::process::id().to_le_bytes().to_vec();
            salt.extend_from_slice(&db.wall_micros().to_le_bytes());
            Verifier::new(&password, salt)
        });
        let mut connections = JoinSet::new();
        // One permit per session. Clients past the limit are told so; at
        // most as many again wait to be told, and the rest are dropped at
        // once, so a flood of connections costs no more than that.
        let max = config.max_connections;
        let sessions = Arc::new(Semaphore::new(max as usize));
        let refusals = Arc::new(Semaphore::new(max as usize));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = pg.accept() => match accepted {
                    Ok((socket, peer)) => match sessions.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let connection = Connection::new(db.clone(), verifier.clone());
                            connections.spawn(async move {
                                if let Err(error) = super::wire::serve(socket, Handlers(connection.clone())).await {
                                    tracing::debug!(%peer, %error, "connection ended with an error");
                                }
                                connection.close().await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            tracing::warn!(%peer, max_connections = max, "refusing a connection: too many clients");
                            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                                tokio::spawn(async move {
                                    let _ = super::wire::refuse_too_many(socket, max).await;
                                    drop(permit);
                                });
                            }
                        }
                    },
                    Err(error) => tracing::warn!(%error, "accepting a connection failed"),
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        tracing::info!(
            sessions = connections.len(),
            "shutting down: closing sessions, rolling back open transactions, taking a final checkpoint"
        );
        drop(pg);
        // Sessions are cut off between statements or mid-statement; the
        // engine's shutdown rolls back whatever they left open.
        connections.shutdown().await;
        http_task.abort();
        let result = db.shutdown().await.map_err(|e| format!("clean shutdown failed: {e}"));
        // A running backup sees the shutdown and ends as failed.
        backups.wait().await;
        result?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}
