//! App: wires the stages together and runs them until shutdown.
//!
//! In: [`Settings`], a bound listener and a shutdown future (SIGTERM in `main`, a trigger in
//! tests). Out: the HTTP service (ingest, health; metrics and status on their own listener or
//! the main one), the delivery worker and the housekeeping tasks (gauges and saved status,
//! pruning, progress lines), until shutdown; then the drain:
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
use crate::status::{self, Activity};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError, StoreOptions};

/// How often queue gauges and the saved status are refreshed, and old dedupe ids pruned.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// A saved status not refreshed for this long belongs to a process that is gone.
const STATUS_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
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

/// Opens the store for `settings` as the relay does: PostgreSQL at `store.database_url`
/// (bringing its schema up to date, one replica at a time), else SQLite in `data_dir` (taking
/// the directory's lock).
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    let options = StoreOptions {
        coalesce_ms: settings.delivery.coalesce_delay.as_millis() as i64,
    };
    match &settings.store.database_url {
        Some(url) => Ok(Arc::new(
            PostgresStore::connect(url.expose(), options).await?,
        )),
        None => Ok(Arc::new(SqliteStore::open(&settings.data_dir, options)?)),
    }
}

/// Opens the configured store for a tool beside a running relay: no lock, no schema change
/// (a store not at this release's schema is refused). SQLite: [`StoreError::DataDir`] when the
/// directory holds no store yet.
pub async fn open_store_shared(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    match &settings.store.database_url {
        Some(url) => Ok(Arc::new(PostgresStore::connect_shared(url.expose()).await?)),
        None => Ok(Arc::new(SqliteStore::open_shared(&settings.data_dir)?)),
    }
}

/// Where the configured store is, for messages: the PostgreSQL location (no password), or the
/// data directory.
pub fn store_location(settings: &Settings) -> String {
    settings
        .store
        .location()
        .unwrap_or_else(|| settings.data_dir.display().to_string())
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

/// Everything the running relay shares between its tasks and routes.
struct Parts {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    client: Client,
    activity: Arc<Activity>,
    wake: Arc<Notify>,
    draining: Arc<AtomicBool>,
}

impl Parts {
    /// Everything that can fail at start-up, before any task is spawned.
    async fn build(settings: &Settings) -> Result<Parts, AppError> {
        let store = open_store(settings).await?;
        let metrics = Arc::new(Metrics::new());
        // Tokio's clock: real time in production, the paused clock in tests that pause it.
        let clock = TokioClock::shared();
        let client = upstream_client(&settings.prosperstack, metrics.clone(), clock.clone())?;
        Ok(Parts {
            store,
            metrics,
            clock,
            client,
            activity: Arc::new(Activity::default()),
            wake: Arc::new(Notify::new()),
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    fn status_sources(&self) -> status::Sources {
        status::Sources {
            store: self.store.clone(),
            client: self.client.clone(),
            activity: self.activity.clone(),
            clock: self.clock.clone(),
            started_ms: self.clock.wall_ms(),
            replica: status::replica_name(),
        }
    }
}

/// The background tasks: delivery, and the housekeeping that stops with it.
struct Workers {
    delivery: tokio::task::JoinHandle<()>,
    housekeeping: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs the relay until `shutdown` completes, then drains and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| crate::config::cannot_listen("metrics_listen", addr, &e))?,
        ),
        None => None,
    };
    let parts = Parts::build(&settings).await?;
    let status = parts.status_sources();
    let stop_workers = CancellationToken::new();
    let workers = spawn_workers(&settings, &parts, &status, &stop_workers);

    let address = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let mut servers = Vec::new();
    let main_router = relay_router(&settings, &parts);
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(address = %metrics_listener.local_addr()?, "metrics and status listening");
        let router = health::metrics_router(parts.metrics.clone(), status);
        servers.push(spawn_server(metrics_listener, router, &stop_http));
        servers.push(spawn_server(listener, main_router, &stop_http));
    } else {
        let router = main_router.merge(health::metrics_router(parts.metrics.clone(), status));
        servers.push(spawn_server(listener, router, &stop_http));
    }
    tracing::info!(%address, upstream = %crate::config::display_url(&settings.prosperstack.api_url), "relay listening");

    shutdown.await;
    let deadline = settings.delivery.drain_deadline;
    tracing::info!(
        deadline_secs = deadline.as_secs_f64(),
        "shutting down: draining"
    );
    parts.draining.store(true, Ordering::SeqCst);
    stop_workers.cancel();
    drain(workers, deadline).await;
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

fn spawn_workers(
    settings: &Settings,
    parts: &Parts,
    status: &status::Sources,
    stop: &CancellationToken,
) -> Workers {
    let delivery = Arc::new(delivery_for(settings, parts));
    let maintenance = Maintenance {
        store: parts.store.clone(),
        metrics: parts.metrics.clone(),
        status: status.clone(),
        retention: settings.delivery.dedupe_retention,
    };
    let progress = status::progress(
        status.clone(),
        settings.delivery.progress_interval,
        stop.clone(),
    );
    Workers {
        delivery: tokio::spawn(delivery.run(stop.clone())),
        housekeeping: vec![
            tokio::spawn(maintenance.run(stop.clone())),
            tokio::spawn(progress),
        ],
    }
}

/// The relay's HTTP interface: ingest and health (metrics and status are merged in by [`run`]).
fn relay_router(settings: &Settings, parts: &Parts) -> Router {
    let ingest_state = IngestState {
        store: parts.store.clone(),
        metrics: parts.metrics.clone(),
        settings: Arc::new(settings.segment.clone()),
        wake: parts.wake.clone(),
        draining: parts.draining.clone(),
        clock: parts.clock.clone(),
    };
    let health_state = HealthState {
        store: parts.store.clone(),
        draining: parts.draining.clone(),
        clock: parts.clock.clone(),
    };
    // A stalled disk must not pile up connections: Segment gives up after 5 s and retries
    // anyway, and it retries a 408 too.
    ingest::router(ingest_state)
        .merge(health::router(health_state))
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
async fn drain(workers: Workers, deadline: Duration) {
    let abort = workers.delivery.abort_handle();
    if tokio::time::timeout(deadline, workers.delivery)
        .await
        .is_err()
    {
        abort.abort();
        tracing::warn!("drain deadline passed; in-flight delivery left queued for the next start");
    }
    for task in workers.housekeeping {
        task.abort();
    }
}

/// Builds the delivery worker: its sections are handed over whole.
fn delivery_for(settings: &Settings, parts: &Parts) -> Delivery {
    let delivery = &settings.delivery;
    let mapping = &settings.mapping;
    let clock = parts.clock.clone();
    Delivery {
        store: parts.store.clone(),
        client: parts.client.clone(),
        resolver: Resolver::new(
            delivery.subscriber_cache_ttl,
            delivery.negative_cache_ttl,
            parts.metrics.clone(),
            clock.clone(),
        ),
        catalogue: CatalogueCache::new(
            mapping.catalogue_refresh,
            settings.trait_mappings.clone(),
            clock.clone(),
        ),
        rules: Rules::new(mapping, &settings.trait_mappings),
        metrics: parts.metrics.clone(),
        settings: delivery.clone(),
        mapping: mapping.clone(),
        wake: parts.wake.clone(),
        activity: parts.activity.clone(),
        clock,
    }
}

/// Keeps queue gauges and the saved status fresh, and forgets dedupe ids past retention.
struct Maintenance {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    status: status::Sources,
    retention: Duration,
}

impl Maintenance {
    async fn run(self, stop: CancellationToken) {
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = gauges.tick() => self.refresh().await,
                _ = prune.tick() => self.prune().await,
            }
        }
    }

    /// One reading of the store feeds the gauges and the status that `status` reads.
    async fn refresh(&self) {
        let clock = &self.status.clock;
        let stats = match self.store.stats().await {
            Ok(stats) => stats,
            Err(e) => return tracing::warn!(error = %e, "cannot read queue figures"),
        };
        let now = clock.wall_ms();
        self.metrics.set_queue(&stats, now);
        let document = self.status.status_from(&stats);
        let Ok(body) = serde_json::to_string(&document) else {
            return;
        };
        let replica = self.status.replica.clone();
        let forget_before = now - millis(STATUS_FORGET_AFTER);
        if let Err(e) = self
            .store
            .save_status(replica, body, now, forget_before)
            .await
        {
            tracing::warn!(error = %e, "cannot save the status");
        }
    }

    async fn prune(&self) {
        let before = self.status.clock.wall_ms() - millis(self.retention);
        match self.store.prune(before).await {
            Ok(n) if n > 0 => tracing::info!(
                forgotten = n,
                "pruned dedupe ids and applied timestamps past retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
    }
}
