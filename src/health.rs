//! Health and metrics endpoints: what the orchestrator and Prometheus ask.
//!
//! In: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /status`.
//! Out: liveness without I/O; readiness from a real store round trip (and 503 while
//! draining), with the reason in the body; the Prometheus text exposition; the status
//! document ([`crate::status`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::status;
use crate::store::Store;

#[derive(Clone)]
pub struct HealthState {
    pub store: Arc<dyn Store>,
    pub draining: Arc<AtomicBool>,
    pub clock: SharedClock,
}

/// `/healthz` and `/readyz`.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `/metrics` and `/status`, on the main listener or a separate one.
pub fn metrics_router(metrics: Arc<Metrics>, status: status::Sources) -> Router {
    let status = Router::new()
        .route("/status", get(render_status))
        .with_state(status);
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(status)
        .layer(axum::middleware::from_fn(crate::telemetry::log_request))
}

/// The status document; 503 when the store cannot be read (the rest would be half a story).
async fn render_status(State(sources): State<status::Sources>) -> axum::response::Response {
    match sources.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => not_ready(&format!("store: {e}")).into_response(),
    }
}

/// The process is up and serving; deliberately no I/O, so a slow disk never gets it killed.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if state.draining.load(Ordering::SeqCst) {
        return not_ready("draining: shutting down");
    }
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.store.ping(state.clock.wall_ms()),
    )
    .await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(e)) => not_ready(&format!("store: {e}")),
        Err(_) => not_ready("store: no answer within 2 s"),
    }
}

fn not_ready(reason: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not ready", "reason": reason})),
    )
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
