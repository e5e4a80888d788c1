//! The server process: configuration, logging, the engine's lifetime, the
//! PostgreSQL wire listener, the admin HTTP API and graceful shutdown.
//!
//! The listeners need real tokio sockets, so they exist only in the normal
//! build; the simulator drives [`crate::sql::Session`] directly.

#[cfg(not(madsim))]
pub mod cluster;
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

    use super::cluster::{cluster_router, ServeFn, Serving};
    use super::config::Config;
    use super::http::{router, AdminState};
    use super::pg::{Connection, Handlers, Verifier};
    use crate::backup::registry::Registry;
    use crate::db::Database;
    use crate::env::{Env, Fs, RealClock, RealFs, SessionThread, ShellCommands};

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
        if config.cluster.is_raft() {
            return run_group(env, config, pg_addr, http_addr, shutdown).await;
        }
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

        let verifier = verifier(&config, db.wall_micros());
        let max = config.max_connections;
        let session_thread = start_session_thread()?;
        let mut connections =
            serve_sql(pg, &session_thread, max, &mut shutdown, || Connection::new(db.clone(), verifier.clone())).await;
        tracing::info!(
            sessions = connections.len(),
            "shutting down: closing sessions, rolling back open transactions, taking a final checkpoint"
        );
        // Sessions are cut off between statements or mid-statement; the
        // engine's shutdown rolls back whatever they left open.
        connections.shutdown().await;
        http_task.abort();
        let result = db.shutdown().await.map_err(|e| format!("clean shutdown failed: {e}"));
        // A running backup sees the shutdown and ends as failed.
        backups.wait().await;
        drop(session_thread);
        result?;
        tracing::info!("shut down cleanly");
        Ok(())
    }

    /// The SCRAM verifier for `superuser_password`, if one is set, with a
    /// salt unique to this process: the pid and the start time.
    fn verifier(config: &Config, start_micros: u64) -> Option<Arc<Verifier>> {
        non_empty(&config.security.superuser_password).map(|password| {
            let mut salt = std::process::id().to_le_bytes().to_vec();
            salt.extend_from_slice(&start_micros.to_le_bytes());
            Verifier::new(&password, salt)
        })
    }

    /// The thread that runs SQL sessions ([`SessionThread`]). It outlives
    /// the engine's shutdown: a session cut off mid-transaction hands its
    /// rollback to that thread.
    fn start_session_thread() -> Result<SessionThread, String> {
        SessionThread::start().map_err(|e| format!("starting the session thread failed: {e}"))
    }

    /// Serves SQL on `pg`, each connection made by `connect` and run on
    /// `thread`, until `shutdown` resolves; returns the sessions still
    /// running.
    async fn serve_sql(
        pg: TcpListener,
        thread: &SessionThread,
        max: u32,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        connect: impl Fn() -> Arc<Connection>,
    ) -> JoinSet<()> {
        let mut connections = JoinSet::new();
        // One permit per session. Clients past the limit are told so; at
        // most as many again wait to be told, and the rest are dropped at
        // once, so a flood of connections costs no more than that.
        let sessions = Arc::new(Semaphore::new(max as usize));
        let refusals = Arc::new(Semaphore::new(max as usize));
        loop {
            tokio::select! {
                () = shutdown.as_mut() => break,
                accepted = pg.accept() => match accepted {
                    Ok((socket, peer)) => match sessions.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let connection = connect();
                            thread.spawn(&mut connections, socket, move |socket| async move {
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
        connections
    }

    /// A node of a Raft group (`[cluster] peers`, docs/cluster.md): the
    /// node runs beside the SQL and admin listeners, and opens the
    /// database only while it leads.
    async fn run_group(
        env: Env,
        config: Config,
        pg_addr: String,
        http_addr: String,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), String> {
        if crate::storage::ControlFile::load(env.fs.as_ref(), &config.data_dir).map_err(|e| e.to_string())?.is_none() {
            return Err(format!(
                "{} holds no database: a node of a Raft group starts from the group's database. To give this node \
                 a copy from the running group, start it once with `--rebuild-from-peers`; to start a new group, \
                 initialise the database on one node (start it without `[cluster] peers`, then stop it) and copy its \
                 data_dir and wal_dir to every node before their first start (docs/cluster.md)",
                config.data_dir.display()
            ));
        }
        let pg =
            TcpListener::bind(&pg_addr).await.map_err(|e| format!("listening on {pg_addr} (pg_port) failed: {e}"))?;
        let http = TcpListener::bind(&http_addr)
            .await
            .map_err(|e| format!("listening on {http_addr} (http_port) failed: {e}"))?;
        let token = non_empty(&config.security.admin_token);
        let (toml, node_id, admin_token) = (config.effective_toml.clone(), config.cluster.node_id, token.clone());
        let serve: ServeFn = Box::new(move |db: Arc<Database>| {
            let backups = Registry::open(db.clone(), toml.clone())?;
            let state = AdminState { db: db.clone(), token: admin_token.clone(), backups: backups.clone(), node_id };
            Ok(Serving { db, backups, admin: router(state) })
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (view, driver) = super::cluster::start(env.clone(), &config, serve, stopped).await?;
        let admin = cluster_router(view.clone(), token);
        let http_task = tokio::spawn(async move { axum::serve(http, admin).await });
        tracing::info!(
            node_id,
            raft = %config.cluster.listen_addr()?,
            pg = %pg_addr,
            http = %http_addr,
            "ThunderDB is up as a node of a Raft group: it serves SQL while it leads"
        );
        let verifier = verifier(&config, env.clock.wall_micros());
        let session_thread = start_session_thread()?;
        let mut connections = serve_sql(pg, &session_thread, config.max_connections, &mut shutdown, || {
            let db = view.serving().map(|serving| serving.db);
            Connection::in_group(db, verifier.clone(), view.clone())
        })
        .await;
        tracing::info!(sessions = connections.len(), "shutting down: closing sessions, stopping the node");
        connections.shutdown().await;
        let _ = stop.send(true);
        let _ = driver.await;
        drop(session_thread);
        http_task.abort();
        tracing::info!("shut down cleanly");
        Ok(())
    }
}
