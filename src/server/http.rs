//! The admin HTTP API (axum): health, on-demand checkpoints, Prometheus
//! metrics. With `[security] admin_token` set, every request must carry
//! `Authorization: Bearer <token>`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
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

use crate::db::Database;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The engine.
    pub db: Arc<Database>,
    /// The bearer token required, if any.
    pub token: Option<String>,
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/checkpoint", post(checkpoint))
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
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "healthy", "checks": checks}))).into_response()
    } else {
        let body = json!({"status": "unhealthy", "failing": failing, "checks": checks});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn checkpoint(State(state): State<AdminState>) -> Response {
    match state.db.checkpoint().await {
        Ok(lsn) => (StatusCode::OK, Json(json!({"status": "completed", "lsn": lsn.to_string()}))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"status": "failed", "error": e.to_string()})))
            .into_response(),
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
pub async fn render_metrics(db: &Database) -> String {
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
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = render_metrics(&state.db).await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
