//! `bench ingest`: how fast the relay acknowledges events, against a handler that stores nothing.
//!
//! In: [`IngestArgs`]. Out: an [`IngestReport`]: events/s and latency quantiles for (a) the real
//! relay (`app::run`, durable acknowledgement: SQLite WAL, `synchronous=FULL`, in a temp dir) and
//! (b) a bare axum handler answering 200 to `POST /v1/segment` without storing, driven alike by
//! the closed-loop generator in `load.rs`; a/b; then latency at a fixed rate (open loop) against
//! the relay.
//!
//! The relay's upstream is an in-process sandbox limited to one request an hour: delivery spends
//! that request on the property catalogue and then waits, so the figures are ingest alone.
//! Everything (generator, relay, store writer, bare server) shares this machine's cores.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::harness::{relay_settings, scrape, start_sandbox, temp_dir, RunningRelay};
use super::load::{self, BodyMaker, LoadResult};
use super::measure::{cpu_between, filesystem_of, ms, thread_cpu, thread_writes, RunInfo, Target};
use super::{BenchError, Report};
use prosperstack_relay::clock::Clock;
use prosperstack_relay::store::{SqliteStore, Store};

/// How often the relay refreshes its queue gauges (`app.rs`, `GAUGE_INTERVAL`): stalls that
/// recur at this period point at that refresh.
const GAUGE_PERIOD_SECS: f64 = 5.0;

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Seconds each closed-loop run lasts (relay, then bare axum).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent keep-alive connections of the closed-loop generator.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of unmeasured warm-up before each closed-loop run.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Events per second of the open-loop run against the relay.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds the open-loop run lasts.
    #[arg(long, default_value_t = 10)]
    pub rate_seconds: u64,
    /// Where the relay's temporary data directory is created (default: the system temp dir);
    /// the disk under it decides the cost of each durable commit.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// A relay setting for this run, by its environment name (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Compare stores instead, side by side: sqlite, postgres (one replica), postgres-N (N
    /// replicas on one database), comma-separated. See `ingest_stores.rs`.
    #[arg(long, value_delimiter = ',', value_name = "STORE,...")]
    pub stores: Vec<super::ingest_stores::StoreChoice>,
    /// Events per request of the batched run (with --stores).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The PostgreSQL server for --stores postgres… (each configuration gets a schema of its
    /// own, dropped afterwards).
    #[arg(long, env = "RELAY_TEST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub run: RunInfo,
    pub data_dir_filesystem: String,
    pub connections: usize,
    pub seconds: u64,
    pub warmup_secs: u64,
    pub relay: LoadResult,
    pub bare_axum: LoadResult,
    /// `Store::ingest` called directly (no HTTP, no handler), one event per call.
    pub store_alone: LoadResult,
    /// relay events/s ÷ bare axum events/s.
    pub ratio: f64,
    pub rate: u32,
    pub relay_at_rate: LoadResult,
    /// Events the relay reports stored (its metrics), over all runs and warm-ups.
    pub relay_stored_events: u64,
    /// CPU seconds by thread name while the relay's closed loop ran (generator included).
    pub relay_cpu_secs: BTreeMap<String, f64>,
    pub bare_cpu_secs: BTreeMap<String, f64>,
    pub store_cpu_secs: BTreeMap<String, f64>,
    /// Writes by the store-writer thread per stored event, during (a) and (c).
    pub relay_writes: Writes,
    pub store_writes: Writes,
    /// Events stored (and still queued, upstream being paused) when the open loop began.
    pub queued_before_open_loop: u64,
    /// Seconds from the relay's start to each open-loop stall, and that modulo the gauge period.
    pub stalls_since_relay_start: Vec<(f64, f64)>,
    /// One `Store::stats()` (the queue figures behind the gauges and every delivery round),
    /// timed on a second connection to the relay's database after the runs.
    pub queue_stats_query_ms: f64,
    pub targets: Vec<Target>,
}

/// A single Identify, unique per `n` (messageId and email), shaped like `identify-basic.json`.
pub(super) fn identify_body(n: u64) -> String {
    format!(
        concat!(
            r#"{{"type":"identify","userId":"usr_load_{n}","#,
            r#""traits":{{"email":"load-{n}@example.com","firstName":"Maria","lastName":"Lopez","#,
            r#""plan":"business","createdAt":"2024-03-18T09:12:44.000Z"}},"#,
            r#""context":{{"ip":"203.0.113.24","library":{{"name":"@segment/analytics-node","version":"2.1.2"}}}},"#,
            r#""integrations":{{}},"messageId":"bench-ingest-{n}","#,
            r#""timestamp":"2024-06-10T09:12:01.725Z","sentAt":"2024-06-10T09:12:01.611Z","#,
            r#""receivedAt":"2024-06-10T09:12:01.804Z","channel":"server","version":2}}"#
        ),
        n = n
    )
}

/// The store alone, without HTTP: `tasks` callers of `Store::ingest` with one event each (as
/// the relay's handler does for a single-event request), so HTTP's share of (a) shows.
async fn store_alone(
    dir: &std::path::Path,
    tasks: usize,
    duration: Duration,
    body: BodyMaker,
    seq: Arc<AtomicU64>,
) -> Result<LoadResult, BenchError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
        dir,
        prosperstack_relay::store::StoreOptions { coalesce_ms: 500 },
    )?);
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..tasks.max(1))
        .map(|_| {
            let (store, body, seq) = (store.clone(), body.clone(), seq.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(65_536);
                let mut errors = 0u64;
                while Instant::now() < end {
                    let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sent = Instant::now();
                    let clock = prosperstack_relay::clock::TokioClock;
                    let raw = body(n);
                    let stored = match serde_json::from_str::<serde_json::Value>(&raw) {
                        Ok(value) => {
                            match prosperstack_relay::identify::normalise(&value, clock.wall_ms()) {
                                Ok(event) => store
                                    .ingest(
                                        vec![prosperstack_relay::store::Incoming::live(event, raw)],
                                        clock.wall_ms(),
                                    )
                                    .await
                                    .is_ok(),
                                Err(_) => false,
                            }
                        }
                        Err(_) => false,
                    };
                    errors += u64::from(!stored);
                    latencies.push(sent.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            all.extend(l);
            errors += e;
        }
    }
    Ok(LoadResult::from_samples(
        all,
        errors,
        start.elapsed().as_secs_f64(),
    ))
}

/// The baseline: accepts the same request and stores nothing.
async fn start_bare(stop: &CancellationToken) -> Result<String, BenchError> {
    let router = Router::new().route(
        "/v1/segment",
        post(|body: Bytes| async move {
            let _ = body.len();
            axum::Json(
                serde_json::json!({"accepted": 1, "duplicates": 0, "ignored": 0, "rejected": []}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(format!("http://{addr}"))
}

pub async fn run(args: IngestArgs) -> Result<IngestReport, BenchError> {
    let paused = (1, Duration::from_secs(3600));
    let sandbox = start_sandbox(paused.0, paused.1, Instant::now()).await?;
    let dir = temp_dir("ingest", args.data_dir.as_deref())?;
    let settings = relay_settings(&sandbox.url, dir.path(), paused, &args.set)?;
    let relay = RunningRelay::start(settings).await?;
    let stop_bare = CancellationToken::new();
    let bare_url = start_bare(&stop_bare).await?;

    let http = load::client(args.connections)?;
    let body: BodyMaker = Arc::new(identify_body);
    let seq = Arc::new(AtomicU64::new(0));
    let seconds = Duration::from_secs(args.seconds.max(1));
    let warmup = Duration::from_secs(args.warmup_secs);
    let relay_ingest = format!("{}/v1/segment", relay.url);
    let bare_ingest = format!("{bare_url}/v1/segment");
    let connections = args.connections;
    let closed = |url: String| {
        let (http, body, seq) = (http.clone(), body.clone(), seq.clone());
        async move {
            if !warmup.is_zero() {
                load::closed_loop(&http, &url, connections, warmup, body.clone(), seq.clone())
                    .await;
            }
            load::closed_loop(&http, &url, connections, seconds, body, seq).await
        }
    };
    eprintln!(
        "ingest: relay, {} connections, {} s…",
        args.connections, args.seconds
    );
    let before = thread_cpu();
    let writes = thread_writes("store-writer");
    let stored = stored_events(&scrape(&http, &relay.url).await?);
    let relay_result = closed(relay_ingest.clone()).await;
    let relay_cpu = cpu_between(&before, &thread_cpu());
    let relay_writes = per_event(
        writes,
        thread_writes("store-writer"),
        stored_events(&scrape(&http, &relay.url).await?) - stored,
    );
    eprintln!(
        "ingest: bare axum, {} connections, {} s…",
        args.connections, args.seconds
    );
    let before = thread_cpu();
    let bare_result = closed(bare_ingest).await;
    let bare_cpu = cpu_between(&before, &thread_cpu());
    eprintln!(
        "ingest: relay at {} events/s for {} s…",
        args.rate, args.rate_seconds
    );
    let queued_before_open_loop = stored_events(&scrape(&http, &relay.url).await?);
    let at_rate = load::open_loop(
        &http,
        &relay_ingest,
        args.rate,
        Duration::from_secs(args.rate_seconds.max(1)),
        body.clone(),
        seq.clone(),
        relay.started,
    )
    .await;
    let metrics = scrape(&http, &relay.url).await.unwrap_or_default();
    eprintln!(
        "ingest: store alone, {} tasks, {} s…",
        args.connections, args.seconds
    );
    let store_dir = temp_dir("ingest-store", args.data_dir.as_deref())?;
    let before = thread_cpu();
    let writes = thread_writes("store-writer");
    let store_result = store_alone(
        store_dir.path(),
        args.connections,
        seconds,
        body.clone(),
        seq.clone(),
    )
    .await?;
    let store_cpu = cpu_between(&before, &thread_cpu());
    let store_writes = per_event(writes, thread_writes("store-writer"), store_result.requests);
    drop(store_dir);
    let second = SqliteStore::open_shared(dir.path())?;
    let timed = Instant::now();
    second.stats().await?;
    let queue_stats_query_ms = ms(timed.elapsed());
    drop(second);
    stop_bare.cancel();
    relay.stop().await;

    let ratio = relay_result.per_sec / bare_result.per_sec.max(1e-9);
    let targets = vec![
        Target::at_least("relay events/s ÷ bare axum events/s", ratio, 0.5, ""),
        Target::at_most(
            &format!("p99 latency at {} events/s (open loop)", args.rate),
            at_rate.p99_ms,
            10.0,
            " ms",
        ),
    ];
    let stalls = at_rate
        .stalls
        .iter()
        .map(|s| (s.at_secs, s.at_secs % GAUGE_PERIOD_SECS))
        .collect();
    Ok(IngestReport {
        run: RunInfo::now(),
        warmup_secs: args.warmup_secs,
        data_dir_filesystem: filesystem_of(dir.path()),
        connections: args.connections,
        seconds: args.seconds,
        relay: relay_result,
        bare_axum: bare_result,
        ratio,
        rate: args.rate,
        relay_at_rate: at_rate,
        relay_stored_events: stored_events(&metrics),
        relay_cpu_secs: relay_cpu,
        bare_cpu_secs: bare_cpu,
        store_cpu_secs: store_cpu,
        relay_writes,
        store_writes,
        queued_before_open_loop,
        store_alone: store_result,
        stalls_since_relay_start: stalls,
        queue_stats_query_ms,
        targets,
    })
}

/// Bytes and write calls per stored event between two [`thread_writes`] readings.
fn per_event(before: (u64, u64), after: (u64, u64), events: u64) -> Writes {
    let n = events.max(1) as f64;
    Writes {
        bytes_per_event: after.0.saturating_sub(before.0) as f64 / n,
        calls_per_event: after.1.saturating_sub(before.1) as f64 / n,
    }
}

/// What the SQLite writer thread wrote (WAL frames and checkpoints) per stored event.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Writes {
    pub bytes_per_event: f64,
    pub calls_per_event: f64,
}

/// `relay_events_received_total{…outcome="stored"…}` summed.
fn stored_events(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.starts_with("relay_events_received_total{") && l.contains("outcome=\"stored\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl Report for IngestReport {
    fn print_text(&self) {
        self.run.print("bench ingest");
        println!(
            "relay store: SQLite WAL, synchronous=FULL, temp dir on {}; upstream paused (1 request/hour)",
            self.data_dir_filesystem
        );
        println!(
            "closed loop: {} keep-alive connections, single-event POSTs, {} s each (after warm-up)",
            self.connections, self.seconds
        );
        println!();
        println!(
            "{:<26} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "", "events/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms", "n"
        );
        let row = |label: &str, r: &LoadResult| {
            println!(
                "{label:<26} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                r.per_sec, r.errors, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.requests
            );
        };
        row("(a) relay", &self.relay);
        row("(b) bare axum", &self.bare_axum);
        println!("a/b: {:.3}", self.ratio);
        row("(c) store alone, no HTTP", &self.store_alone);
        println!();
        row(
            &format!("relay at {}/s (open loop)", self.rate),
            &self.relay_at_rate,
        );
        println!(
            "  (the relay held {} queued events when the open loop began)",
            self.queued_before_open_loop
        );
        if let Some(p) = self.relay_at_rate.send_p99_ms {
            println!("  (latency from the scheduled time; from the actual send: p99 {p:.2} ms)");
        }
        for s in &self.relay_at_rate.stalls {
            println!(
                "  stall: {} requests over {} ms, worst {:.1} ms, {:.2} s after the relay started \
                 ({:.2} s into a {GAUGE_PERIOD_SECS} s gauge period)",
                s.requests,
                super::load::STALL_MS,
                s.max_ms,
                s.at_secs,
                s.at_secs % GAUGE_PERIOD_SECS
            );
        }
        println!(
            "relay stored {} events in all; one queue-stats query (Store::stats) on them took \
             {:.1} ms",
            self.relay_stored_events, self.queue_stats_query_ms
        );
        let cpu = |label: &str, m: &BTreeMap<String, f64>| {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
            println!(
                "CPU seconds during {label} ({} s with warm-up): {}",
                self.seconds + self.warmup_secs,
                parts.join(", ")
            );
        };
        cpu("(a)", &self.relay_cpu_secs);
        cpu("(b)", &self.bare_cpu_secs);
        let c = &self.store_cpu_secs;
        let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!(
            "CPU seconds during (c) ({} s): {}",
            self.seconds,
            parts.join(", ")
        );
        println!(
            "store-writer thread writes per stored event: (a) {:.0} bytes in {:.1} calls, (c) {:.0} \
             bytes in {:.1} calls",
            self.relay_writes.bytes_per_event,
            self.relay_writes.calls_per_event,
            self.store_writes.bytes_per_event,
            self.store_writes.calls_per_event
        );
        println!();
        Target::print(&self.targets);
    }
}
