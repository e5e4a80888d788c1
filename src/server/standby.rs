//! The server as an archive-fed standby (`[cluster] standby = true`; see
//! [`crate::cluster::standby`]): it follows the archive, polling it every
//! [`POLL`], serves its status, health and metrics on the admin port, and
//! turns SQL clients away with SQLSTATE 57P03 (as PostgreSQL does with
//! `hot_standby = off`), until it is promoted or stopped.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwire::error::ErrorInfo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::config::Config;
use super::http::{standby_router, StandbyState};
use crate::archive::source::ArchiveSource;
use crate::cluster::standby::{Promotion, Standby};
use crate::env::Env;

/// How often the standby asks the archive for new segments.
pub const POLL: Duration = Duration::from_secs(1);

type PromoteRequest = oneshot::Sender<Result<Promotion, String>>;

/// Follows the archive until promoted (returns the SQL listener, for the
/// primary the caller then opens) or until `shutdown` (returns `None`).
pub async fn follow(
    env: &Env,
    config: &Config,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<TcpListener>, String> {
    let source = ArchiveSource::configured(&config.storage.wal_archive_dir, &config.storage.wal_restore_command)
        .ok_or("a standby needs `storage.wal_archive_dir` or `storage.wal_restore_command`")?;
    let engine = config.engine();
    let mut standby = Standby::open(env, &engine, source.clone()).await?;
    let pg_addr = format!("{}:{}", config.listen_addr, config.pg_port);
    let http_addr = format!("{}:{}", config.listen_addr, config.http_port);
    let pg = TcpListener::bind(&pg_addr).await.map_err(|e| format!("listening on {pg_addr} (pg_port) failed: {e}"))?;
    let http =
        TcpListener::bind(&http_addr).await.map_err(|e| format!("listening on {http_addr} (http_port) failed: {e}"))?;
    let status = Arc::new(Mutex::new(standby.status().clone()));
    let (promote_tx, mut promote_rx) = mpsc::channel::<PromoteRequest>(4);
    let state = StandbyState {
        token: super::serve::non_empty(&config.security.admin_token),
        node_id: config.cluster.node_id,
        status: status.clone(),
        env: env.clone(),
        promote: promote_tx,
    };
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        axum::serve(http, standby_router(state))
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    tracing::info!(
        data_dir = %config.data_dir.display(),
        archive = ?source,
        pg = %pg_addr,
        http = %http_addr,
        "ThunderDB is up as a standby: following the WAL archive until promoted"
    );
    let publish = |standby: &Standby| {
        if let Ok(mut shared) = status.lock() {
            *shared = standby.status().clone();
        }
    };
    let mut waiting: Option<PromoteRequest> = None;
    if standby.promotion_cut() {
        // Nothing else may run before the promotion is finished.
        let (reply, _) = oneshot::channel();
        waiting = Some(reply);
    }
    let mut last_error: Option<String> = None;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(reply) = waiting.take() {
            tracing::info!("promoting: replaying what the archive holds, then ending recovery on a new timeline");
            match standby.promote().await {
                Ok(done) => {
                    let _ = reply.send(Ok(done));
                    let _ = stop_http.send(());
                    let _ = http_task.await;
                    return Ok(Some(pg));
                }
                Err(error) => {
                    tracing::error!("promotion failed: {error}");
                    let _ = reply.send(Err(error));
                    standby = Standby::open(env, &engine, source.clone()).await?;
                    publish(&standby);
                    continue;
                }
            }
        }
        tokio::select! {
            () = &mut *shutdown => {
                tracing::info!("shutting down the standby: its replay resumes from its last restartpoint");
                let _ = stop_http.send(());
                let _ = http_task.await;
                return Ok(None);
            }
            Some(reply) = promote_rx.recv() => waiting = Some(reply),
            _ = poll.tick() => match standby.catch_up().await {
                Ok(fetched) => {
                    if fetched > 0 {
                        let status = standby.status();
                        tracing::info!(
                            segments = fetched,
                            last_segment = status.last_segment.as_deref().unwrap_or(""),
                            replay_lsn = %status.replay_lsn,
                            "standby: replayed archived WAL"
                        );
                    }
                    last_error = None;
                }
                Err(error) => {
                    if last_error.as_ref() != Some(&error) {
                        tracing::error!("standby: {error}; retrying every {POLL:?}");
                    }
                    last_error = Some(error);
                }
            },
            accepted = pg.accept() => {
                if let Ok((socket, _)) = accepted {
                    tokio::spawn(super::wire::refuse(socket, not_yet()));
                }
            }
        }
        publish(&standby);
    }
}

/// What a SQL client hears before the promotion.
fn not_yet() -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "FATAL".into(),
        "57P03".into(),
        "the database system is a standby: it follows the WAL archive and accepts connections once promoted".into(),
    );
    info.hint = Some("promote it with `thunderdb promote --config FILE` or POST /admin/promote".into());
    info
}
