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
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::archive::ArchiveStatus;
use crate::backup::registry::{Registry as Backups, StartError};
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
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/checkpoint", post(checkpoint))
        .route("/admin/backup", post(start_backup))
        .route("/admin/backup/status/{id}", get(backup_status))
        .route("/admin/wal/archive/status", get(archive_status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
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

/// The engine's counters in Prometheus text format.
pub async fn render_metrics(db: &Database, backups: &Backups) -> String {
    let mut registry = Registry::with_prefix("thunderdb");
    let stats = db.stats();
    counter(&mut registry, "transactions_committed", "Transactions committed", stats.committed.load(Ordering::Relaxed));
    counter(&mut registry, "transactions_aborted", "Transactions rolled back", stats.aborted.load(Ordering::Relaxed));
    counter(&mut registry, "checkpoints", "Checkpoints completed", stats.checkpoints.load(Ordering::Relaxed));
    counter(
        &mut registry,
        "commit_time_clamps",
        "Commits stamped with the previous commit's time because the wall clock stepped back",
        stats.commit_time_clamps.load(Ordering::Relaxed),
    );
    let wal = db.wal().stats();
    counter(
        &mut registry,
        "wal_written_bytes",
        "Bytes written to WAL segments",
        wal.bytes_written.load(Ordering::Relaxed),
    );
    counter(&mut registry, "wal_flushes", "WAL group flushes", wal.flushes.load(Ordering::Relaxed));
    let buffers = db.buffer_stats().await;
    counter(&mut registry, "buffer_pool_hits", "Page fetches served from memory", buffers.hits);
    counter(&mut registry, "buffer_pool_misses", "Page fetches read from disk", buffers.misses);
    counter(&mut registry, "buffer_pool_evictions", "Pages evicted", buffers.evictions);
    let recovery = db.recovery_report();
    gauge(
        &mut registry,
        "recovery_duration_seconds",
        "How long crash recovery took at the last start (0 after a clean stop)",
        if recovery.crashed { recovery.duration.as_secs_f64() } else { 0.0 },
    );
    gauge(
        &mut registry,
        "recovery_records_replayed",
        "Records redo replayed at the last start",
        recovery.records_replayed as f64,
    );
    let (ended, succeeded) = backups.last();
    if let Some(ended) = &ended {
        let ok = if ended.status == crate::backup::registry::Status::Completed { 1.0 } else { 0.0 };
        gauge(&mut registry, "last_backup_status", "1 if the last backup succeeded, 0 if it failed", ok);
        gauge(
            &mut registry,
            "last_backup_duration_seconds",
            "How long the last backup ran",
            ended.duration_seconds.unwrap_or(0.0),
        );
        gauge(&mut registry, "last_backup_bytes", "Bytes the last backup copied", ended.bytes_done as f64);
    }
    gauge(
        &mut registry,
        "last_backup_timestamp",
        "Unix time of the last successful backup's end (0: none yet)",
        succeeded.and_then(|r| r.finished_micros).map_or(0.0, |micros| (micros / 1_000_000) as f64),
    );
    let archive = db.archive_status().unwrap_or_default();
    gauge(
        &mut registry,
        "wal_archive_pending_segments",
        "Complete WAL segments not archived yet",
        archive.segments_pending as f64,
    );
    let detail = &archive.detail;
    counter(&mut registry, "wal_archived_segments", "WAL segments archived since start", detail.archived_segments);
    counter(
        &mut registry,
        "wal_archived_bytes",
        "WAL bytes archived, over the server's life",
        archive.total_archived_bytes,
    );
    counter(&mut registry, "wal_archive_failures", "Failed WAL archive attempts since start", detail.failures);
    counter(
        &mut registry,
        "wal_archive_conflicts",
        "Archive attempts that found a different file under the segment's name",
        detail.conflicts,
    );
    gauge(
        &mut registry,
        "wal_archive_last_success_timestamp",
        "Unix time of the last archived segment (0: none yet)",
        detail.last_archive_micros.map_or(0.0, |micros| (micros / 1_000_000) as f64),
    );
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = render_metrics(&state.db, &state.backups).await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
