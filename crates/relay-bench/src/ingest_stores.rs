//! `relay-bench ingest --stores sqlite,postgres,postgres-2`: the relay's ingest on each store,
//! side by side in one run.
//!
//! In: [`IngestArgs`] with `stores` (and `database_url` for PostgreSQL). Out: a
//! [`StoresReport`]: per store, events/s with single-event POSTs and with batches of `batch`
//! events (closed loop, `connections` connections spread over the replicas), and latency at
//! `rate` events/s (open loop, requests spread over the replicas).
//!
//! Each PostgreSQL configuration gets a fresh schema of its own, dropped afterwards; its
//! replicas are real relays (`app::run`) in this process, each on its own port, sharing the
//! schema as replicas behind a load balancer would. Everything (generator, relays, and here the
//! PostgreSQL server) shares this machine's cores, so a second replica adds contention, not
//! CPU: the figure says what the store costs, not what more machines would give.

use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::harness::{relay_settings, start_sandbox, temp_dir, RunningRelay};
use super::ingest::{identify_body, IngestArgs};
use super::load::{self, BodyMaker, LoadResult};
use super::measure::RunInfo;
use super::{BenchError, Report};

/// A store to measure: SQLite (one relay), or PostgreSQL with this many replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    Sqlite,
    Postgres { replicas: usize },
}

impl FromStr for StoreChoice {
    type Err = String;

    /// `sqlite`, `postgres` (one replica) or `postgres-N` (N replicas).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(StoreChoice::Sqlite),
            "postgres" => Ok(StoreChoice::Postgres { replicas: 1 }),
            _ => s
                .strip_prefix("postgres-")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=8).contains(n))
                .map(|replicas| StoreChoice::Postgres { replicas })
                .ok_or_else(|| format!("{s:?}: expected sqlite, postgres or postgres-N (N ≤ 8)")),
        }
    }
}

impl StoreChoice {
    fn label(self) -> String {
        match self {
            StoreChoice::Sqlite => "SQLite, 1 relay".into(),
            StoreChoice::Postgres { replicas: 1 } => "PostgreSQL, 1 replica".into(),
            StoreChoice::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StoresReport {
    pub run: RunInfo,
    pub connections: usize,
    pub seconds: u64,
    pub batch: usize,
    pub rate: u32,
    pub rate_seconds: u64,
    pub rows: Vec<StoreRow>,
}

#[derive(Debug, Serialize)]
pub struct StoreRow {
    pub store: String,
    /// Single-event POSTs, closed loop (events/s = requests/s).
    pub single: LoadResult,
    /// POSTs of `batch` events, closed loop (latency per request).
    pub batched: LoadResult,
    pub batched_events_per_sec: f64,
    /// Single-event POSTs at `rate` a second, open loop.
    pub at_rate: LoadResult,
}

/// A JSON array of `size` Identify events, unique per (`n`, position).
fn batch_body(size: usize) -> BodyMaker {
    Arc::new(move |n: u64| {
        let events: Vec<String> = (0..size as u64)
            .map(|i| identify_body(n * size as u64 + i).replace("bench-ingest-", "bench-batch-"))
            .collect();
        format!("[{}]", events.join(","))
    })
}

pub async fn run(args: IngestArgs) -> Result<StoresReport, BenchError> {
    let mut rows = Vec::new();
    for choice in &args.stores {
        eprintln!("ingest: {}…", choice.label());
        rows.push(measure(&args, *choice).await?);
    }
    Ok(StoresReport {
        run: RunInfo::now(),
        connections: args.connections,
        seconds: args.seconds,
        batch: args.batch,
        rate: args.rate,
        rate_seconds: args.rate_seconds,
        rows,
    })
}

/// Starts the store's relays, runs the three loads against them, stops them.
async fn measure(args: &IngestArgs, choice: StoreChoice) -> Result<StoreRow, BenchError> {
    let paused = (1, Duration::from_secs(3600));
    let sandbox = start_sandbox(paused.0, paused.1, Instant::now()).await?;
    let schema = match choice {
        StoreChoice::Postgres { .. } => Some(Schema::create(args.database_url.as_deref()).await?),
        StoreChoice::Sqlite => None,
    };
    let replicas = match choice {
        StoreChoice::Postgres { replicas } => replicas,
        StoreChoice::Sqlite => 1,
    };
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..replicas {
        let dir = temp_dir("ingest-stores", args.data_dir.as_deref())?;
        let mut set = args.set.clone();
        if let Some(schema) = &schema {
            set.push(format!("RELAY_DATABASE_URL={}", schema.url));
        }
        let settings = relay_settings(&sandbox.url, dir.path(), paused, &set)?;
        relays.push(RunningRelay::start(settings).await?);
        dirs.push(dir);
    }
    let urls: Vec<String> = relays
        .iter()
        .map(|r| format!("{}/v1/segment", r.url))
        .collect();
    let row = loads(args, choice, &urls, relays[0].started).await;
    for relay in relays {
        relay.stop().await;
    }
    if let Some(schema) = schema {
        schema.drop_it().await;
    }
    Ok(row)
}

async fn loads(
    args: &IngestArgs,
    choice: StoreChoice,
    urls: &[String],
    origin: Instant,
) -> StoreRow {
    let http = match load::client(args.connections) {
        Ok(http) => http,
        Err(_) => reqwest::Client::new(),
    };
    let seq = Arc::new(AtomicU64::new(0));
    let single: BodyMaker = Arc::new(identify_body);
    let batched_body = batch_body(args.batch.max(1));
    let seconds = Duration::from_secs(args.seconds.max(1));
    let warmup = Duration::from_secs(args.warmup_secs);
    let closed = |body: BodyMaker| {
        let (http, seq) = (http.clone(), seq.clone());
        async move {
            if !warmup.is_zero() {
                load::closed_loop_over(
                    &http,
                    urls,
                    args.connections,
                    warmup,
                    body.clone(),
                    seq.clone(),
                )
                .await;
            }
            load::closed_loop_over(&http, urls, args.connections, seconds, body, seq).await
        }
    };
    let single_result = closed(single.clone()).await;
    let batched = closed(batched_body).await;
    let at_rate = load::open_loop_over(
        &http,
        urls,
        args.rate,
        Duration::from_secs(args.rate_seconds.max(1)),
        single,
        seq.clone(),
        origin,
    )
    .await;
    StoreRow {
        store: choice.label(),
        batched_events_per_sec: batched.per_sec * args.batch.max(1) as f64,
        single: single_result,
        batched,
        at_rate,
    }
}

/// A schema of the run's own in the server `--database-url` names (shared with
/// `engage-sync --replicas`).
pub(crate) struct Schema {
    server: String,
    name: String,
    /// The server's URL with the schema first on the search path, for the relays.
    pub(crate) url: String,
}

impl Schema {
    pub(crate) async fn create(database_url: Option<&str>) -> Result<Schema, BenchError> {
        let server = database_url
            .map(str::to_owned)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                BenchError::Setup(
                    "a PostgreSQL store needs --database-url (or RELAY_TEST_DATABASE_URL)".into(),
                )
            })?;
        let name = format!("relay_bench_{:016x}", rand::random::<u64>());
        sql(&server, &format!("CREATE SCHEMA {name}")).await?;
        let joiner = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{joiner}options=-csearch_path%3D{name}");
        Ok(Schema { server, name, url })
    }

    pub(crate) async fn drop_it(self) {
        if let Err(e) = sql(&self.server, &format!("DROP SCHEMA {} CASCADE", self.name)).await {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

async fn sql(server: &str, statement: &str) -> Result<(), BenchError> {
    let failed = |e: tokio_postgres::Error| BenchError::Setup(format!("PostgreSQL: {e}"));
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .map_err(failed)?;
    tokio::spawn(connection);
    client.batch_execute(statement).await.map_err(failed)
}

impl Report for StoresReport {
    fn print_text(&self) {
        self.run.print("bench ingest, by store");
        println!(
            "closed loop: {} keep-alive connections spread over the replicas, {} s each; \
             batches of {} events; open loop: {} events/s for {} s; upstream paused",
            self.connections, self.seconds, self.batch, self.rate, self.rate_seconds
        );
        println!();
        println!(
            "{:<24} {:>14} {:>11} {:>15} {:>12} {:>13} {:>8}",
            "store",
            "single ev/s",
            "single p99",
            "batched ev/s",
            "batch p99",
            format!("p99 @{}/s", self.rate),
            "errors"
        );
        for r in &self.rows {
            let errors = r.single.errors + r.batched.errors + r.at_rate.errors;
            println!(
                "{:<24} {:>14.0} {:>8.2} ms {:>15.0} {:>9.2} ms {:>10.2} ms {:>8}",
                r.store,
                r.single.per_sec,
                r.single.p99_ms,
                r.batched_events_per_sec,
                r.batched.p99_ms,
                r.at_rate.p99_ms,
                errors
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store names the command line takes.
    #[test]
    fn parses_store_choices() {
        assert_eq!("sqlite".parse(), Ok(StoreChoice::Sqlite));
        assert_eq!(
            "postgres".parse(),
            Ok(StoreChoice::Postgres { replicas: 1 })
        );
        assert_eq!(
            "postgres-2".parse(),
            Ok(StoreChoice::Postgres { replicas: 2 })
        );
        assert!("postgres-0".parse::<StoreChoice>().is_err());
        assert!("mysql".parse::<StoreChoice>().is_err());
    }

    /// A batch body is a JSON array of distinct events.
    #[test]
    fn batch_bodies_hold_distinct_events() {
        let body = batch_body(3);
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&body(2)).expect("a JSON array");
        let ids: Vec<&str> = parsed
            .iter()
            .filter_map(|e| e["messageId"].as_str())
            .collect();
        assert_eq!(ids, ["bench-batch-6", "bench-batch-7", "bench-batch-8"]);
    }
}
