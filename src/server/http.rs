//! The admin HTTP API (axum): health, on-demand checkpoints, backups, WAL
//! archiving's status, Prometheus metrics. With `[security] admin_token` set, every request must carry
//! `Authorization: Bearer <token>`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::archive::ArchiveStatus;
use crate::backup::registry::{Registry as Backups, StartError};
use crate::cluster::standby::{Promotion, StandbyStatus};
use crate::db::Database;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The engine.
    pub db: Arc<Database>,
    /// The bearer token required, if any.
    pub token: Option<String>,
    /// Backups: the running one and the history.
    pub backups: Arc<Backups>,
    /// `[cluster] node_id`.
    pub node_id: u64,
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/checkpoint", post(checkpoint))
        .route("/admin/backup", post(start_backup))
        .route("/admin/backup/status/{id}", get(backup_status))
        .route("/admin/wal/archive/status", get(archive_status))
        .route("/admin/cluster/status", get(cluster_status))
        .route("/admin/promote", post(not_a_standby))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.token.clone(), require_token))
        .with_state(state)
}

pub(super) async fn require_token(
    State(token): State<Option<String>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            let body = Json(json!({"error": "this admin API requires `Authorization: Bearer <admin_token>`"}));
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<AdminState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut failing = Vec::new();
    let mut check = |name: &str, result: Result<(), String>| {
        match result {
            Ok(()) => checks.insert(name.into(), json!("ok")),
            Err(e) => {
                failing.push(name.to_string());
                checks.insert(name.into(), json!(format!("failed: {e}")))
            }
        };
    };
    check("wal", state.db.wal().check_running().map_err(|e| e.to_string()));
    check("engine", if state.db.is_shutting_down() { Err("shutting down".into()) } else { Ok(()) });
    if let Some(archive) = state.db.archive_status() {
        check(
            "wal_archive",
            archive_health(&archive, state.db.config().archive.as_ref().map_or(0, |a| a.pending_alarm)),
        );
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "healthy", "checks": checks}))).into_response()
    } else {
        let body = json!({"status": "unhealthy", "failing": failing, "checks": checks});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Archiving is degraded when segments pile up past the alarm, or when the
/// archive holds a different file under a segment's name (that never
/// resolves by itself).
fn archive_health(archive: &ArchiveStatus, alarm: u64) -> Result<(), String> {
    let detail = &archive.detail;
    let error = detail.last_error.as_deref().unwrap_or("none");
    if archive.segments_pending > alarm {
        return Err(format!(
            "degraded: {} segments wait to be archived (more than {alarm}); the WAL directory grows until \
             archiving works again; last error: {error}",
            archive.segments_pending
        ));
    }
    if detail.conflicts > 0 && detail.failing_for > 0 {
        return Err(format!("degraded: {error}"));
    }
    Ok(())
}

/// `GET /admin/wal/archive/status`: the page's fields, exactly.
async fn archive_status(State(state): State<AdminState>) -> Response {
    let status = state.db.archive_status().unwrap_or_default();
    Json(json!({
        "archiving_enabled": status.archiving_enabled,
        "last_archived_segment": status.last_archived_segment,
        "last_archive_time": status.last_archive_time,
        "segments_pending": status.segments_pending,
        "archive_rate_bytes_per_sec": status.archive_rate_bytes_per_sec,
        "total_archived_bytes": status.total_archived_bytes,
    }))
    .into_response()
}

/// `GET /admin/cluster/status` on a single node: it leads a group of one.
async fn cluster_status(State(state): State<AdminState>) -> Response {
    let lsn = state.db.wal().durable_lsn().to_string();
    Json(json!({
        "node_id": state.node_id,
        "role": "leader",
        "term": 0,
        "leader_id": state.node_id,
        "commit_lsn": lsn,
        "members": [{
            "node_id": state.node_id, "addr": null, "role": "leader",
            "match_lsn": lsn, "lag_bytes": 0, "lag_seconds": 0.0,
        }],
    }))
    .into_response()
}

async fn not_a_standby() -> Response {
    let error = "this server is not a standby: it already accepts writes (only a server started with `[cluster] \
                 standby = true` can be promoted)";
    (StatusCode::CONFLICT, Json(json!({"status": "rejected", "error": error}))).into_response()
}

async fn checkpoint(State(state): State<AdminState>) -> Response {
    match state.db.checkpoint().await {
        Ok(lsn) => (StatusCode::OK, Json(json!({"status": "completed", "lsn": lsn.to_string()}))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"status": "failed", "error": e.to_string()})))
            .into_response(),
    }
}

/// `POST /admin/backup`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    destination: String,
    #[serde(default = "yes")]
    include_wal: bool,
    #[serde(default)]
    compress: bool,
}

fn yes() -> bool {
    true
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"status": "rejected", "error": message}))).into_response()
}

async fn start_backup(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let body: BackupBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return bad_request(format!(
            "the body must be JSON {{\"destination\": ABSOLUTE_DIR, \"include_wal\": bool, \"compress\": bool}}: {e}"
        ))
        }
    };
    match state.backups.start(body.destination.into(), body.include_wal, body.compress) {
        Ok((record, estimate)) => {
            tracing::info!(backup_id = %record.backup_id, destination = %record.destination, "backup started");
            let answer = json!({
                "status": "started",
                "backup_id": record.backup_id,
                "destination": record.destination,
                "estimated_size_bytes": estimate,
            });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(e @ StartError::Conflict(_)) => {
            (StatusCode::CONFLICT, Json(json!({"status": "rejected", "error": e.to_string()}))).into_response()
        }
        Err(StartError::Invalid(message)) => bad_request(message),
    }
}

async fn backup_status(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.backups.status(&id) {
        Some(record) => Json(json!({
            "backup_id": record.backup_id,
            "status": record.status,
            "destination": record.destination,
            "bytes_done": record.bytes_done,
            "bytes_total": record.bytes_total,
            "start_lsn": record.start_lsn,
            "end_lsn": record.end_lsn,
            "error": record.error,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no backup with id {id:?}")}))).into_response(),
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// A node's part in its cluster, as `/metrics` gives it.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    /// Whether the node serves writes (a single node always does).
    pub leader: bool,
    /// The Raft term (0: not in a Raft group).
    pub term: u64,
    /// On a leader, each voter's id, lag in bytes and lag in seconds.
    pub members: Vec<(u64, u64, f64)>,
    /// The entries the node's Raft log holds (0: not in a Raft group).
    pub raft_log_entries: u64,
}

fn cluster_gauges(registry: &mut Registry, cluster: &ClusterGauges) {
    gauge(registry, "cluster_standby", "1 on a standby that follows the WAL archive, 0 on a primary", 0.0);
    gauge(registry, "cluster_term", "The Raft term (0: not in a Raft group)", cluster.term as f64);
    gauge(
        registry,
        "cluster_leader",
        "1 on the node that serves writes (a Raft group's leader, or a single node), 0 on others",
        if cluster.leader { 1.0 } else { 0.0 },
    );
    gauge(
        registry,
        "cluster_raft_log_entries",
        "The entries this node's Raft log holds; compaction drops those every voter holds (0: not in a Raft group)",
        cluster.raft_log_entries as f64,
    );
    let bytes = Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let seconds = Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (node, lag_bytes, lag_seconds) in &cluster.members {
        let labels = vec![("node_id".to_string(), node.to_string())];
        bytes.get_or_create(&labels).set(*lag_bytes as f64);
        seconds.get_or_create(&labels).set(*lag_seconds);
    }
    registry.register(
        "cluster_replication_lag_bytes",
        "On a Raft group's leader: the WAL bytes it flushed that each voter does not hold yet",
        bytes,
    );
    registry.register(
        "cluster_replication_lag_seconds",
        "On a Raft group's leader: how long ago it shipped the oldest WAL each voter does not hold yet",
        seconds,
    );
}

/// The node's cluster gauges, and the engine's counters if it serves, in
/// Prometheus text format.
pub async fn render_metrics(engine: Option<(&Database, &Backups)>, cluster: &ClusterGauges) -> String {
    let mut registry = Registry::with_prefix("thunderdb");
    cluster_gauges(&mut registry, cluster);
    if let Some((db, backups)) = engine {
        engine_metrics(&mut registry, db, backups).await;
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

async fn engine_metrics(registry: &mut Registry, db: &Database, backups: &Backups) {
    let stats = db.stats();
    counter(registry, "transactions_committed", "Transactions committed", stats.committed.load(Ordering::Relaxed));
    counter(registry, "transactions_aborted", "Transactions rolled back", stats.aborted.load(Ordering::Relaxed));
    counter(registry, "checkpoints", "Checkpoints completed", stats.checkpoints.load(Ordering::Relaxed));
    counter(
        registry,
        "commit_time_clamps",
        "Commits stamped with the previous commit's time because the wall clock stepped back",
        stats.commit_time_clamps.load(Ordering::Relaxed),
    );
    let wal = db.wal().stats();
    counter(registry, "wal_written_bytes", "Bytes written to WAL segments", wal.bytes_written.load(Ordering::Relaxed));
    counter(registry, "wal_flushes", "WAL group flushes", wal.flushes.load(Ordering::Relaxed));
    let buffers = db.buffer_stats().await;
    counter(registry, "buffer_pool_hits", "Page fetches served from memory", buffers.hits);
    counter(registry, "buffer_pool_misses", "Page fetches read from disk", buffers.misses);
    counter(registry, "buffer_pool_evictions", "Pages evicted", buffers.evictions);
    let recovery = db.recovery_report();
    gauge(
        registry,
        "recovery_duration_seconds",
        "How long crash recovery took at the last start (0 after a clean stop)",
        if recovery.crashed { recovery.duration.as_secs_f64() } else { 0.0 },
    );
    gauge(
        registry,
        "recovery_records_replayed",
        "Records redo replayed at the last start",
        recovery.records_replayed as f64,
    );
    let (ended, succeeded) = backups.last();
    if let Some(ended) = &ended {
        let ok = if ended.status == crate::backup::registry::Status::Completed { 1.0 } else { 0.0 };
        gauge(registry, "last_backup_status", "1 if the last backup succeeded, 0 if it failed", ok);
        gauge(
            registry,
            "last_backup_duration_seconds",
            "How long the last backup ran",
            ended.duration_seconds.unwrap_or(0.0),
        );
        gauge(registry, "last_backup_bytes", "Bytes the last backup copied", ended.bytes_done as f64);
    }
    gauge(
        registry,
        "last_backup_timestamp",
        "Unix time of the last successful backup's end (0: none yet)",
        succeeded.and_then(|r| r.finished_micros).map_or(0.0, |micros| (micros / 1_000_000) as f64),
    );
    let archive = db.archive_status().unwrap_or_default();
    gauge(
        registry,
        "wal_archive_pending_segments",
        "Complete WAL segments not archived yet",
        archive.segments_pending as f64,
    );
    let detail = &archive.detail;
    counter(registry, "wal_archived_segments", "WAL segments archived since start", detail.archived_segments);
    counter(registry, "wal_archived_bytes", "WAL bytes archived, over the server's life", archive.total_archived_bytes);
    counter(registry, "wal_archive_failures", "Failed WAL archive attempts since start", detail.failures);
    counter(
        registry,
        "wal_archive_conflicts",
        "Archive attempts that found a different file under the segment's name",
        detail.conflicts,
    );
    gauge(
        registry,
        "wal_archive_last_success_timestamp",
        "Unix time of the last archived segment (0: none yet)",
        detail.last_archive_micros.map_or(0.0, |micros| (micros / 1_000_000) as f64),
    );
}

/// The answer to `GET /metrics`.
pub fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let single = ClusterGauges { leader: true, term: 0, members: Vec::new(), raft_log_entries: 0 };
    metrics_response(render_metrics(Some((&state.db, &state.backups)), &single).await)
}

/// What a standby's admin API shares (see [`standby_router`]).
#[derive(Clone)]
pub struct StandbyState {
    /// The bearer token required, if any.
    pub token: Option<String>,
    /// `[cluster] node_id`.
    pub node_id: u64,
    /// What the standby reports, updated after every round.
    pub status: Arc<std::sync::Mutex<StandbyStatus>>,
    /// The wall clock, for the replay lag.
    pub env: crate::env::Env,
    /// Asks the standby to promote itself; the answer comes back once done.
    pub promote: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<Promotion, String>>>,
}

impl StandbyState {
    fn status(&self) -> StandbyStatus {
        self.status.lock().map(|status| status.clone()).unwrap_or_default()
    }

    /// Seconds since the newest commit replayed was made on the primary
    /// (PostgreSQL's `now() - pg_last_xact_replay_timestamp()`): it grows
    /// while the primary is idle too.
    fn lag_seconds(&self, status: &StandbyStatus) -> Option<f64> {
        (status.last_commit_micros > 0)
            .then(|| self.env.clock.wall_micros().saturating_sub(status.last_commit_micros) as f64 / 1e6)
    }
}

/// A standby's admin API: its status, health, metrics and promotion.
/// Everything else answers 503: there is no database to act on until the
/// standby is promoted.
pub fn standby_router(state: StandbyState) -> Router {
    Router::new()
        .route("/admin/health", get(standby_health))
        .route("/admin/cluster/status", get(standby_status))
        .route("/admin/promote", post(promote))
        .route("/metrics", get(standby_metrics))
        .fallback(|| async {
            let error = "this server is a standby that follows the WAL archive: promote it (`thunderdb promote`, or \
                         POST /admin/promote) before using this endpoint";
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "rejected", "error": error}))).into_response()
        })
        .layer(middleware::from_fn_with_state(state.token.clone(), require_token))
        .with_state(state)
}

async fn standby_health(State(state): State<StandbyState>) -> Response {
    let status = state.status();
    match &status.last_error {
        None => (StatusCode::OK, Json(json!({"status": "healthy", "role": "standby"}))).into_response(),
        Some(error) => {
            let body = json!({"status": "unhealthy", "role": "standby", "failing": ["replay"], "checks": {"replay": format!("failed: {error}")}});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn standby_status(State(state): State<StandbyState>) -> Response {
    let status = state.status();
    Json(json!({
        "node_id": state.node_id,
        "role": "standby",
        "term": 0,
        "leader_id": null,
        "commit_lsn": status.replay_lsn.to_string(),
        "members": [],
        "standby": {
            "timeline": status.timeline,
            "replay_lsn": status.replay_lsn.to_string(),
            "restartpoint_lsn": status.restartpoint_lsn.to_string(),
            "last_segment": status.last_segment,
            "segments_fetched": status.segments_fetched,
            "last_replayed_commit_time": status.last_commit_time(),
            "lag_seconds": state.lag_seconds(&status),
            "open_transactions": status.open_transactions,
            "last_error": status.last_error,
        },
    }))
    .into_response()
}

async fn promote(State(state): State<StandbyState>) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let failed = |error: String| {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"status": "failed", "error": error}))).into_response()
    };
    if state.promote.send(reply).await.is_err() {
        return failed("the standby is shutting down".into());
    }
    match answer.await {
        Ok(Ok(done)) => Json(json!({
            "status": "promoted",
            "timeline": done.timeline,
            "switch_lsn": done.stop.to_string(),
            "rolled_back": done.rolled_back,
            "last_commit_time": (done.last_commit_micros > 0).then(|| crate::backup::pitr::format_micros(done.last_commit_micros)),
        }))
        .into_response(),
        Ok(Err(error)) => failed(error),
        Err(_) => failed("the standby stopped before it was promoted".into()),
    }
}

async fn standby_metrics(State(state): State<StandbyState>) -> Response {
    let status = state.status();
    let mut registry = Registry::with_prefix("thunderdb");
    gauge(&mut registry, "cluster_standby", "1 on a standby that follows the WAL archive, 0 on a primary", 1.0);
    gauge(&mut registry, "cluster_term", "The Raft term (0: not in a Raft group)", 0.0);
    gauge(
        &mut registry,
        "standby_replay_lsn",
        "Where the WAL the standby replayed ends (bytes)",
        status.replay_lsn.0 as f64,
    );
    gauge(
        &mut registry,
        "standby_replay_lag_seconds",
        "Seconds since the newest commit the standby replayed was made on the primary",
        state.lag_seconds(&status).unwrap_or(0.0),
    );
    counter(
        &mut registry,
        "standby_fetched_segments",
        "WAL segments fetched from the archive since start",
        status.segments_fetched,
    );
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
