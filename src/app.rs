//! App: wires the stages together and runs them until shutdown.
//!
//! In: [`Settings`], a bound listener and a shutdown future (SIGTERM in `main`, a trigger in
//! tests). Out: the HTTP service (ingest, health, metrics), the delivery worker and the
//! maintenance task, until shutdown; then the drain:
//! 1. `/readyz` answers 503 and new events are refused with 503 (Segment retries them);
//! 2. delivery finishes its current job, or is stopped at the drain deadline — its events are
//!    still queued, so nothing is lost;
//! 3. in-flight HTTP requests finish and [`run`] returns `Ok`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::clock::{millis, SharedClock, TokioClock};
use crate::config::{ConfigError, ProsperStackSettings, Settings};
use crate::delivery::Delivery;
use crate::health::{self, HealthState};
use crate::ingest::{self, IngestState};
use crate::mapping::{CatalogueCache, Rules};
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, Client};
use crate::resolve::Resolver;
use crate::store::{SqliteStore, Store, StoreError, StoreOptions};

/// How often queue gauges are refreshed and old dedupe ids pruned.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Longest an HTTP request may take before it is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("ProsperStack client: {0}")]
    Client(#[from] ApiError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Opens the store for `settings` (taking the data directory's lock).
pub fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    let options = StoreOptions {
        coalesce_ms: settings.delivery.coalesce_delay.as_millis() as i64,
    };
    Ok(Arc::new(SqliteStore::open(&settings.data_dir, options)?))
}

/// The ProsperStack client, behind the one budget every upstream request passes.
fn upstream_client(
    upstream: &ProsperStackSettings,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) -> Result<Client, AppError> {
    let budget = Arc::new(Budget::new(
        upstream.rate_limit_requests,
        upstream.rate_limit_window,
        clock,
    ));
    Ok(Client::new(
        upstream.api_url.clone(),
        upstream.require_api_key()?.clone(),
        budget,
        metrics,
        upstream.request_timeout,
    )?
    .with_update_method(upstream.update_method))
}

/// Runs the relay until `shutdown` completes, then drains and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    // Everything that can fail at start-up happens before any task is spawned.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| crate::config::cannot_listen("metrics_listen", addr, &e))?,
        ),
        None => None,
    };
    let store = open_store(&settings)?;
    let metrics = Arc::new(Metrics::new());
    // Tokio's clock: real time in production, the paused clock in tests that pause it.
    let clock = TokioClock::shared();
    let client = upstream_client(&settings.prosperstack, metrics.clone(), clock.clone())?;
    let wake = Arc::new(Notify::new());
    let draining = Arc::new(AtomicBool::new(false));
    let delivery = Arc::new(delivery_for(
        &settings,
        store.clone(),
        client,
        metrics.clone(),
        wake.clone(),
        clock.clone(),
    ));

    let stop_workers = CancellationToken::new();
    let delivery_task = tokio::spawn(delivery.run(stop_workers.clone()));
    let maintenance_task = tokio::spawn(maintenance(
        store.clone(),
        metrics.clone(),
        settings.delivery.dedupe_retention,
        clock.clone(),
        stop_workers.clone(),
    ));

    let router = relay_router(
        &settings,
        store.clone(),
        metrics.clone(),
        wake,
        draining.clone(),
        clock,
        metrics_listener.is_none(),
    );
    let stop_http = CancellationToken::new();
    let mut servers = Vec::new();
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(address = %metrics_listener.local_addr()?, "metrics listening");
        let router = health::metrics_router(metrics.clone());
        servers.push(spawn_server(metrics_listener, router, &stop_http));
    }
    tracing::info!(address = %listener.local_addr()?, upstream = %crate::config::display_url(&settings.prosperstack.api_url), "relay listening");
    servers.push(spawn_server(listener, router, &stop_http));

    shutdown.await;
    let deadline = settings.delivery.drain_deadline;
    tracing::info!(
        deadline_secs = deadline.as_secs_f64(),
        "shutting down: draining"
    );
    draining.store(true, Ordering::SeqCst);
    stop_workers.cancel();
    drain(delivery_task, deadline).await;
    maintenance_task.abort();
    stop_http.cancel();
    for server in servers {
        match server.await {
            Ok(result) => result?,
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The relay's HTTP interface: ingest, health, and `/metrics` unless it has a listener of its own.
fn relay_router(
    settings: &Settings,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    draining: Arc<AtomicBool>,
    clock: SharedClock,
    with_metrics: bool,
) -> Router {
    let ingest_state = IngestState {
        store: store.clone(),
        metrics: metrics.clone(),
        settings: Arc::new(settings.segment.clone()),
        wake,
        draining: draining.clone(),
        clock: clock.clone(),
    };
    let health_state = HealthState {
        store,
        draining,
        clock,
    };
    let mut router = ingest::router(ingest_state).merge(health::router(health_state));
    if with_metrics {
        router = router.merge(health::metrics_router(metrics));
    }
    // A stalled disk must not pile up connections: Segment gives up after 5 s and retries
    // anyway, and it retries a 408 too.
    router
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::log_request))
}

fn spawn_server(
    listener: TcpListener,
    router: Router,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    })
}

/// Waits for delivery to stop by itself; at the deadline, stops it where it is. Its current
/// job was not recorded as done, so its events are still queued for the next start.
async fn drain(delivery: tokio::task::JoinHandle<()>, deadline: Duration) {
    let abort = delivery.abort_handle();
    if tokio::time::timeout(deadline, delivery).await.is_err() {
        abort.abort();
        tracing::warn!("drain deadline passed; in-flight delivery left queued for the next start");
    }
}

/// Builds the delivery worker: its sections are handed over whole.
pub fn delivery_for(
    settings: &Settings,
    store: Arc<dyn Store>,
    client: Client,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    clock: SharedClock,
) -> Delivery {
    let delivery = &settings.delivery;
    let mapping = &settings.mapping;
    Delivery {
        store,
        client,
        resolver: Resolver::new(
            delivery.subscriber_cache_ttl,
            delivery.negative_cache_ttl,
            metrics.clone(),
            clock.clone(),
        ),
        catalogue: CatalogueCache::new(
            mapping.catalogue_refresh,
            settings.trait_mappings.clone(),
            clock.clone(),
        ),
        rules: Rules::new(mapping, &settings.trait_mappings),
        metrics,
        settings: delivery.clone(),
        mapping: mapping.clone(),
        wake,
        clock,
    }
}

/// Keeps queue gauges fresh and forgets dedupe ids past the retention window.
async fn maintenance(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Duration,
    clock: SharedClock,
    stop: CancellationToken,
) {
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = gauges.tick() => refresh_gauges(store.as_ref(), &metrics, clock.wall_ms()).await,
            _ = prune.tick() => {
                let before = clock.wall_ms() - millis(retention);
                match store.prune(before).await {
                    Ok(n) if n > 0 => tracing::info!(forgotten = n, "pruned dedupe ids and applied timestamps past retention"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning failed"),
                }
            }
        }
    }
}

pub async fn refresh_gauges(store: &dyn Store, metrics: &Metrics, now_ms: i64) {
    match store.stats().await {
        Ok(stats) => {
            let age = stats
                .oldest_received_ms
                .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics.set_queue(stats.events, stats.subscribers, age);
            metrics.set_dead_letters(stats.dead_letters);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read queue figures"),
    }
}
