//! Health and metrics endpoints: what the orchestrator and Prometheus ask.
//!
//! In: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /status`.
//! Out: liveness without I/O; readiness from a real store round trip (and 503 while
//! draining), with the reason in the body: a probe that does not answer within
//! [`PROBE_TIMEOUT`] is a failure (an unreachable database must not hang the orchestrator's
//! check), and one probe's answer serves for [`PROBE_REUSE`] (several replicas' checks,
//! several checks a second, one round trip); the Prometheus text exposition; the status
//! document ([`crate::status`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Longest a readiness probe of the store may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's answer is reused.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct HealthState {
    pub store: Arc<dyn Store>,
    pub draining: Arc<AtomicBool>,
    pub clock: SharedClock,
    pub probe: Arc<ProbeCache>,
}

/// The last store probe: when it was made and what it found (the reason, on failure).
/// Behind an async lock, so checks arriving during a probe wait for its answer.
#[derive(Default)]
pub struct ProbeCache {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl ProbeCache {
    /// The store's readiness: the last probe's answer if it is recent, else a new probe's.
    async fn check(&self, store: &dyn Store, clock: &SharedClock) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if clock.now().saturating_duration_since(*at) < PROBE_REUSE {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, store.ping(clock.wall_ms())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err(format!(
                "store: no answer within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            )),
        };
        *last = Some((clock.now(), answer.clone()));
        answer
    }
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
    match state.probe.check(state.store.as_ref(), &state.clock).await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => not_ready(&reason),
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
