//! `bench engage-sync`: what an Engage audience's first sync costs upstream.
//!
//! In: [`EngageArgs`]. Out: an [`EngageReport`]: the requests the real relay spent by kind,
//! against the floor (one update per subscriber whose properties really change, plus one list
//! page per 100 subscribers to find), its 429s, drain time against the ideal (floor ÷ rate),
//! the timeline behind the figures ([`Diagnosis`]), and the same workload through a naive relay.
//!
//! How: an in-process sandbox with a scaled window (100 per 1 s by default instead of per
//! minute, so a run takes minutes, not hours) holds N subscribers and three boolean audience
//! properties, 10 % of the values already `true`. The relay (`app::run`, the product's default
//! settings except upstream, limit and data dir; `--set NAME=value` overrides any) receives
//! every (subscriber, audience) entry as Webhooks (Actions) batches in shuffled order, plus 20 %
//! re-sent copies. Drain ends when every value is `true` in the sandbox and the relay's queue is
//! empty (read from its store). A recorder in front of the sandbox logs each request's time, kind
//! and subscriber, so extra requests can be traced to their cause.
//!
//! `--replicas N` (N > 1) or `--database-url`: the store is PostgreSQL, a fresh schema per run
//! (dropped after), and N relays in this process share it and the sandbox, as replicas behind a
//! load balancer would; batch `i` goes to replica `i mod N`. Which replica led (its
//! `relay_leader` gauge, sampled twice a second) and what each spent upstream is reported beside
//! the same figures. The environment's `RELAY_TEST_DATABASE_URL` stands in for `--database-url`
//! only when N > 1, so the default run stays the one-relay SQLite run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::diagnosis::{diagnose, Diagnosis};
use super::harness::{relay_settings, scrape, start_sandbox, temp_dir, RunningRelay};
use super::ingest_stores::Schema;
use super::measure::{RunInfo, Target};
use super::naive::{self, KindCounts, NaiveRun};
use super::workload::{Spec, Workload, AUDIENCES};
use super::{BenchError, Report};
use prosperstack_relay::store::{PostgresStore, SqliteStore, Store};

#[derive(Debug, Clone, Args)]
pub struct EngageArgs {
    /// Subscribers, each entering all three audiences.
    #[arg(long, default_value_t = 5000)]
    pub subscribers: usize,
    /// The sandbox's (and relay's) limit: requests per window.
    #[arg(long, default_value_t = 100)]
    pub requests: u32,
    /// The window in seconds (ProsperStack: 60; scaled down so a run takes minutes).
    #[arg(long, default_value_t = 1.0)]
    pub window_secs: f64,
    /// Events per Webhooks (Actions) batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent posting tasks.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Pace the posting at this many events a second (0: as fast as the relay answers).
    /// With the window scaled by k (60 s → 1 s: k = 60), R here models R ÷ k events/s from Segment.
    #[arg(long, default_value_t = 0.0)]
    pub post_rate: f64,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Re-sent copies (same messageId), as a fraction of the distinct events.
    #[arg(long, default_value_t = 0.2)]
    pub repeats: f64,
    /// Distinct events whose value is already current upstream, as a fraction.
    #[arg(long, default_value_t = 0.1)]
    pub already_current: f64,
    /// Skip the naive relay's run.
    #[arg(long)]
    pub skip_naive: bool,
    /// Events the naive relay processes (its figures are extrapolated to the whole workload);
    /// 0: all of them.
    #[arg(long, default_value_t = 1000)]
    pub naive_sample: usize,
    /// A relay setting for this run, by its environment name (repeatable), e.g.
    /// `--set RELAY_COALESCE_DELAY=2s`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Give up waiting for the drain after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Relays sharing one PostgreSQL store (more than 1 needs a database URL); the batches are
    /// spread round-robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub replicas: u16,
    /// PostgreSQL server for the store (a fresh schema per run); given, even one replica uses
    /// PostgreSQL. Unset with `--replicas` above 1: `RELAY_TEST_DATABASE_URL`.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl EngageArgs {
    /// The PostgreSQL server to run on, or `None` for the one-relay SQLite run.
    fn postgres_server(&self) -> Option<String> {
        let given = self.database_url.clone().filter(|u| !u.is_empty());
        if given.is_some() || self.replicas <= 1 {
            return given;
        }
        // Schema::create names the missing URL when this is empty.
        Some(std::env::var("RELAY_TEST_DATABASE_URL").unwrap_or_default())
    }
}

#[derive(Debug, Serialize)]
pub struct EngageReport {
    pub run: RunInfo,
    pub workload: WorkloadFigures,
    pub limit: LimitFigures,
    pub relay_settings: Vec<String>,
    pub floor: Floor,
    pub relay: RelayRun,
    pub naive: Option<NaiveRun>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadFigures {
    pub subscribers: usize,
    pub audiences: usize,
    pub distinct_events: usize,
    pub repeats: usize,
    pub already_current: usize,
    pub events_posted: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// Events a second the posting was paced at (0: unpaced).
    pub post_rate: f64,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct LimitFigures {
    pub requests: u32,
    pub window_secs: f64,
    pub per_sec: f64,
    /// The relay budget's token bucket for this limit (see `budget::quota_for`).
    pub budget_burst: u32,
    pub budget_sustained_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Floor {
    pub changing_subscribers: usize,
    pub subscribers_to_find: usize,
    pub list_pages: usize,
    pub total: usize,
    /// floor ÷ the limit's rate.
    pub ideal_drain_secs: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct RelayRun {
    pub requests: KindCounts,
    /// The sandbox's own count, by route template (list pages and look-ups share a route).
    pub by_route: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub requests_per_floor: f64,
    pub ingest_secs: f64,
    pub ingest_events_per_sec: f64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub failed_posts: u64,
    pub drained: bool,
    pub values_present: usize,
    pub values_expected: usize,
    pub drain_secs: f64,
    pub drain_per_ideal: f64,
    /// Requests spent ÷ the limit's rate: the drain time if pacing were perfect.
    pub paced_ideal_secs: f64,
    pub first_request_after_secs: f64,
    /// Requests ÷ (last request − first request).
    pub achieved_rate_per_sec: f64,
    pub requests_after_drain: u64,
    pub diagnosis: Diagnosis,
    pub relay_metrics: BTreeMap<String, u64>,
    /// The store when it is PostgreSQL ("PostgreSQL, N replicas"); absent for SQLite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Per replica, on PostgreSQL: who led and what each spent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaFigures>,
    /// Changes of leader seen across the samples (0: one replica led throughout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_changes: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplicaFigures {
    /// Batches posted to this replica.
    pub batches: usize,
    /// Samples (every 500 ms from the first post until the drain settled) in which its
    /// `relay_leader` gauge was 1.
    pub led_samples: u64,
    pub samples: u64,
    pub leader_at_end: bool,
    pub upstream_requests: u64,
    pub updates_sent: u64,
}

/// The relays' queue, read as the drain check needs it.
enum Queue {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Queue {
    async fn events(&self) -> Result<u64, BenchError> {
        Ok(match self {
            Queue::Sqlite(s) => s.stats().await?.events,
            Queue::Postgres(s) => s.stats().await?.events,
        })
    }
}

pub async fn run(args: EngageArgs) -> Result<EngageReport, BenchError> {
    if !(args.window_secs.is_finite() && args.window_secs > 0.0) || args.requests == 0 {
        return Err(BenchError::Setup(
            "--requests and --window-secs must be more than 0".into(),
        ));
    }
    let window = Duration::from_secs_f64(args.window_secs);
    let limit = (args.requests, window);
    let per_sec = f64::from(args.requests) / args.window_secs;
    let workload = Workload::new(Spec {
        subscribers: args.subscribers,
        repeat_fraction: args.repeats,
        current_fraction: args.already_current,
        seed: args.seed,
    });
    let changing = workload.changing_subscribers();
    let pages = args.subscribers.div_ceil(100);
    let floor_total = changing + pages;
    let floor = Floor {
        changing_subscribers: changing,
        subscribers_to_find: args.subscribers,
        list_pages: pages,
        total: floor_total,
        ideal_drain_secs: floor_total as f64 / per_sec,
    };
    eprintln!(
        "engage-sync: {} events for {} subscribers; floor {} requests ≈ {:.0} s at {per_sec}/s",
        workload.arrival.len(),
        args.subscribers,
        floor_total,
        floor.ideal_drain_secs
    );
    let relay = relay_run(&args, &workload, limit, &floor).await?;
    let naive = if args.skip_naive {
        None
    } else {
        let sample = match args.naive_sample {
            0 => workload.arrival.len(),
            n => n.min(workload.arrival.len()),
        };
        eprintln!("engage-sync: naive relay on {sample} events…");
        Some(naive::run(&workload, limit, sample).await?)
    };
    let (burst, period) = prosperstack_relay::budget::quota_for(args.requests, window);
    let targets = vec![
        Target::at_most(
            "upstream requests ÷ floor",
            relay.requests_per_floor,
            1.02,
            "",
        ),
        Target::count_at_most("429 answers", relay.rate_limited, 0),
        Target::at_most("drain time ÷ ideal", relay.drain_per_ideal, 1.05, ""),
    ];
    Ok(EngageReport {
        run: RunInfo::now(),
        workload: WorkloadFigures {
            subscribers: args.subscribers,
            audiences: AUDIENCES.len(),
            distinct_events: workload.pairs(),
            repeats: workload.arrival.len() - workload.pairs(),
            already_current: workload.preset.iter().filter(|&&p| p).count(),
            events_posted: workload.arrival.len(),
            batch: args.batch,
            concurrency: args.concurrency,
            post_rate: args.post_rate,
            seed: args.seed,
        },
        limit: LimitFigures {
            requests: args.requests,
            window_secs: args.window_secs,
            per_sec,
            budget_burst: burst,
            budget_sustained_per_sec: 1.0 / period.as_secs_f64(),
        },
        relay_settings: args.set.clone(),
        floor,
        relay,
        naive,
        targets,
    })
}

/// What one batch's POST saw.
#[derive(Clone, Debug, Default)]
pub struct Posted {
    pub sent: Duration,
    pub acked: Duration,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    failed: bool,
}

async fn relay_run(
    args: &EngageArgs,
    workload: &Workload,
    limit: (u32, Duration),
    floor: &Floor,
) -> Result<RelayRun, BenchError> {
    let schema = match args.postgres_server() {
        Some(server) => Some(Schema::create(Some(&server)).await?),
        None => None,
    };
    let run = relay_run_on(args, workload, limit, floor, schema.as_ref()).await;
    if let Some(schema) = schema {
        schema.drop_it().await;
    }
    run
}

async fn relay_run_on(
    args: &EngageArgs,
    workload: &Workload,
    limit: (u32, Duration),
    floor: &Floor,
    schema: Option<&Schema>,
) -> Result<RelayRun, BenchError> {
    let origin = Instant::now();
    let sandbox = start_sandbox(limit.0, limit.1, origin).await?;
    workload.install(&sandbox.sandbox)?;
    let replicas = usize::from(args.replicas.max(1));
    let mut set = args.set.clone();
    if let Some(schema) = schema {
        set.push(format!("RELAY_DATABASE_URL={}", schema.url));
        eprintln!("engage-sync: PostgreSQL, {replicas} replica(s), a fresh schema");
    }
    let mut dirs = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..replicas {
        let dir = temp_dir("engage", None)?;
        let settings = relay_settings(&sandbox.url, dir.path(), limit, &set)?;
        relays.push(RunningRelay::start(settings).await?);
        dirs.push(dir);
    }
    let store = match schema {
        Some(schema) => Queue::Postgres(PostgresStore::connect_shared(&schema.url).await?),
        None => Queue::Sqlite(SqliteStore::open_shared(dirs[0].path())?),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();
    let sampler = (schema.is_some()).then(|| LeaderSampler::start(&http, &urls));

    let batches = workload.batches(args.batch);
    let start = origin.elapsed();
    let pace =
        (args.post_rate > 0.0).then(|| Duration::from_secs_f64(args.batch as f64 / args.post_rate));
    let posted = post_all(&http, &urls, &batches, args.concurrency, pace, origin).await;
    let ingest_end = posted.iter().map(|p| p.acked).max().unwrap_or(start);
    eprintln!(
        "engage-sync: ingest done in {:.2} s; waiting for the drain…",
        (ingest_end - start).as_secs_f64()
    );

    // Drain: every value present upstream and nothing left in the relay's queue.
    let expected = workload.pairs();
    let deadline = Duration::from_secs(args.timeout_secs);
    let mut present = 0;
    let mut drained_at = None;
    let mut last_note = Instant::now();
    while origin.elapsed() - start < deadline {
        present = workload.values_present(&sandbox.sandbox);
        if present == expected && store.events().await? == 0 {
            drained_at = Some(origin.elapsed());
            break;
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            last_note = Instant::now();
            eprintln!(
                "engage-sync: {:.0} s: {present}/{expected} values, {} requests",
                (origin.elapsed() - start).as_secs_f64(),
                sandbox.recorder.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_drain = sandbox.recorder.len();
    // Settle: anything the relay still spends after the drain is waste too.
    tokio::time::sleep(limit.1 * 2 + Duration::from_secs(1)).await;
    let log = sandbox.recorder.snapshot();
    let mut texts = Vec::new();
    for url in &urls {
        texts.push(scrape(&http, url).await.unwrap_or_default());
    }
    let metrics_text = texts.join("\n");
    let samples = match sampler {
        Some(sampler) => Some(sampler.stop().await),
        None => None,
    };
    drop(store);
    for relay in relays {
        relay.stop().await;
    }
    let replica_figures = match &samples {
        Some(samples) => replica_figures(&texts, samples, batches.len()),
        None => Vec::new(),
    };

    let requests = KindCounts::from_log(&log);
    let stats = sandbox.sandbox.stats();
    let per_sec = f64::from(limit.0) / limit.1.as_secs_f64();
    let drain_secs = drained_at
        .map(|t| (t - start).as_secs_f64())
        .unwrap_or(f64::NAN);
    let ingest_secs = (ingest_end - start).as_secs_f64();
    let first = log.first().map(|r| r.at).unwrap_or(start);
    let last = log.last().map(|r| r.at).unwrap_or(start);
    let ids = subscriber_indexes(&sandbox.sandbox);
    Ok(RelayRun {
        requests_per_floor: requests.total as f64 / floor.total as f64,
        by_route: stats.by_route,
        rate_limited: stats.rate_limited_total,
        ingest_secs,
        ingest_events_per_sec: workload.arrival.len() as f64 / ingest_secs.max(1e-9),
        accepted: posted.iter().map(|p| p.accepted).sum(),
        duplicates: posted.iter().map(|p| p.duplicates).sum(),
        rejected: posted.iter().map(|p| p.rejected).sum(),
        failed_posts: posted.iter().filter(|p| p.failed).count() as u64,
        drained: drained_at.is_some(),
        values_present: present,
        values_expected: expected,
        drain_secs,
        drain_per_ideal: drain_secs / floor.ideal_drain_secs,
        paced_ideal_secs: requests.total as f64 / per_sec,
        first_request_after_secs: first.saturating_sub(start).as_secs_f64(),
        achieved_rate_per_sec: log.len() as f64 / (last - first).as_secs_f64().max(1e-9),
        requests_after_drain: (log.len() - at_drain.min(log.len())) as u64,
        diagnosis: diagnose(&log, workload, &batches, &posted, &ids, start, ingest_end),
        relay_metrics: relay_metrics(&metrics_text),
        requests,
        store: schema.map(|_| match replicas {
            1 => "PostgreSQL, 1 replica".to_owned(),
            n => format!("PostgreSQL, {n} replicas"),
        }),
        leader_changes: samples.as_ref().map(|s| s.changes),
        replicas: replica_figures,
    })
}

/// Who led, sample by sample: each replica's `relay_leader` gauge every 500 ms.
struct LeaderSampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<LeaderSamples>,
}

#[derive(Debug, Default)]
struct LeaderSamples {
    led: Vec<u64>,
    samples: u64,
    changes: u64,
}

impl LeaderSampler {
    fn start(http: &reqwest::Client, urls: &[String]) -> LeaderSampler {
        let stop = tokio_util::sync::CancellationToken::new();
        let (http, urls, halt) = (http.clone(), urls.to_vec(), stop.clone());
        let task = tokio::spawn(async move {
            let mut s = LeaderSamples {
                led: vec![0; urls.len()],
                ..LeaderSamples::default()
            };
            let mut last: Option<Vec<bool>> = None;
            while !halt.is_cancelled() {
                let mut now = Vec::with_capacity(urls.len());
                for (i, url) in urls.iter().enumerate() {
                    let text = scrape(&http, url).await.unwrap_or_default();
                    let leading =
                        prosperstack_relay::metrics::sum_series(&text, "relay_leader") > 0;
                    s.led[i] += u64::from(leading);
                    now.push(leading);
                }
                s.samples += 1;
                if last.as_ref().is_some_and(|l| *l != now) {
                    s.changes += 1;
                }
                last = Some(now);
                tokio::select! {
                    _ = halt.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            s
        });
        LeaderSampler { stop, task }
    }

    async fn stop(self) -> LeaderSamples {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Per replica: batches it was posted (round-robin), leadership, and what it spent upstream.
fn replica_figures(
    texts: &[String],
    samples: &LeaderSamples,
    batches: usize,
) -> Vec<ReplicaFigures> {
    let n = texts.len().max(1);
    let sum = prosperstack_relay::metrics::sum_series;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| ReplicaFigures {
            batches: batches / n + usize::from(i < batches % n),
            led_samples: samples.led.get(i).copied().unwrap_or(0),
            samples: samples.samples,
            leader_at_end: sum(text, "relay_leader") > 0,
            upstream_requests: sum(text, "relay_upstream_requests_total"),
            updates_sent: sum(text, "relay_updates_sent_total"),
        })
        .collect()
}

/// Posts every batch from `concurrency` tasks, batch `i` to relay `i mod urls.len()` and not
/// before `i × pace` when paced; a batch answered 5xx or not at all is retried (as Segment
/// would) up to 5 times.
async fn post_all(
    http: &reqwest::Client,
    urls: &[String],
    batches: &[(Vec<usize>, String)],
    concurrency: usize,
    pace: Option<Duration>,
    origin: Instant,
) -> Vec<Posted> {
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(vec![Posted::default(); batches.len()]));
    let bodies: Arc<Vec<String>> = Arc::new(batches.iter().map(|(_, b)| b.clone()).collect());
    let endpoints: Arc<Vec<String>> =
        Arc::new(urls.iter().map(|u| format!("{u}/v1/segment")).collect());
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (http, next, results, bodies, endpoints) = (
                http.clone(),
                next.clone(),
                results.clone(),
                bodies.clone(),
                endpoints.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    if let Some(pace) = pace {
                        tokio::time::sleep_until(start + pace.mul_f64(i as f64)).await;
                    }
                    let endpoint = &endpoints[i % endpoints.len()];
                    let posted = post_one(&http, endpoint, body, origin).await;
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = posted;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let results = results.lock().unwrap_or_else(|p| p.into_inner()).clone();
    results
}

async fn post_one(http: &reqwest::Client, endpoint: &str, body: &str, origin: Instant) -> Posted {
    let sent = origin.elapsed();
    for _ in 0..5 {
        let answer = http
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        if let Ok(r) = answer {
            if r.status().is_success() {
                let json: serde_json::Value = r.json().await.unwrap_or_default();
                let count = |k: &str| json[k].as_u64().unwrap_or(0);
                return Posted {
                    sent,
                    acked: origin.elapsed(),
                    accepted: count("accepted"),
                    duplicates: count("duplicates"),
                    rejected: json["rejected"].as_array().map_or(0, |a| a.len() as u64),
                    failed: false,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Posted {
        sent,
        acked: origin.elapsed(),
        failed: true,
        ..Posted::default()
    }
}

/// Subscriber id → workload index (the emails are `bench-NNNNNN@…` in creation order).
fn subscriber_indexes(sandbox: &prosperstack_sandbox::Sandbox) -> HashMap<String, usize> {
    sandbox
        .subscribers()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s.id, i))
        .collect()
}

/// The relay's own counters that explain its spending.
fn relay_metrics(text: &str) -> BTreeMap<String, u64> {
    [
        "relay_directory_pages_total",
        "relay_updates_sent_total",
        "relay_updates_skipped_total",
        "relay_updates_coalesced_total",
        "relay_upstream_requests_total",
        "relay_upstream_rate_limited_total",
        "relay_delivery_retries_total",
        "relay_dead_lettered_total",
    ]
    .into_iter()
    .map(|name| {
        (
            name.to_owned(),
            prosperstack_relay::metrics::sum_series(text, name),
        )
    })
    .collect()
}

impl Report for EngageReport {
    fn print_text(&self) {
        self.run.print("bench engage-sync");
        let w = &self.workload;
        println!(
            "workload: {} subscribers × {} audiences = {} distinct events, + {} repeats = {} posted \
             in batches of {} from {} tasks (seed {}); {} values already current",
            w.subscribers, w.audiences, w.distinct_events, w.repeats, w.events_posted, w.batch,
            w.concurrency, w.seed, w.already_current
        );
        let l = &self.limit;
        println!(
            "limit: {} requests per {} s ({}/s), sandbox and relay alike; relay budget: burst {}, \
             then {:.1}/s",
            l.requests, l.window_secs, l.per_sec, l.budget_burst, l.budget_sustained_per_sec
        );
        if w.post_rate > 0.0 {
            println!("posting paced at {} events/s", w.post_rate);
        }
        if !self.relay_settings.is_empty() {
            println!("relay settings: {}", self.relay_settings.join(" "));
        }
        let f = &self.floor;
        println!(
            "floor: {} updates (subscribers whose properties change) + {} list pages ({} to find) \
             = {} requests; ideal drain {:.1} s",
            f.changing_subscribers,
            f.list_pages,
            f.subscribers_to_find,
            f.total,
            f.ideal_drain_secs
        );
        println!();
        self.print_side_by_side();
        println!();
        self.relay.diagnosis.print(&self.relay, &self.floor);
        println!();
        Target::print(&self.targets);
    }
}

impl EngageReport {
    fn print_side_by_side(&self) {
        let r = &self.relay;
        let naive = self.naive.as_ref();
        let n = |f: &dyn Fn(&NaiveRun) -> String| naive.map(f).unwrap_or_else(|| "-".into());
        let row = |label: &str, relay: String, naive: String| {
            println!("{label:<34} {relay:>14} {naive:>20}");
        };
        row("", "relay".into(), "naive".into());
        if let Some(nv) = naive {
            row(
                "",
                String::new(),
                format!("({} of {} events", nv.sample_events, nv.total_events),
            );
            row("", String::new(), "extrapolated)".into());
        }
        let k = |c: &KindCounts| {
            [
                ("  properties catalogue", c.catalogue),
                ("  subscriber list pages", c.list_pages),
                ("  look-ups by email", c.lookups),
                ("  updates", c.updates),
                ("  other", c.other),
            ]
        };
        row(
            "upstream requests",
            r.requests.total.to_string(),
            n(&|v| format!("{:.0}", v.extrapolated.total)),
        );
        let naive_kinds = naive.map(|v| k(&v.requests));
        for (i, (label, value)) in k(&r.requests).into_iter().enumerate() {
            let scaled = naive_kinds
                .map(|nk| format!("{:.0}", nk[i].1 as f64 * naive.map_or(1.0, |v| v.scale)))
                .unwrap_or_else(|| "-".into());
            row(label, value.to_string(), scaled);
        }
        row(
            "requests ÷ floor",
            format!("{:.4}", r.requests_per_floor),
            n(&|v| format!("{:.3}", v.extrapolated.total / self.floor.total as f64)),
        );
        row(
            "429 answers",
            r.rate_limited.to_string(),
            n(&|v| v.rate_limited.to_string()),
        );
        row(
            "drain time (s)",
            format!("{:.1}", r.drain_secs),
            n(&|v| format!("{:.1}", v.extrapolated.drain_secs)),
        );
        row(
            "drain ÷ ideal (floor ÷ rate)",
            format!("{:.3}", r.drain_per_ideal),
            n(&|v| {
                format!(
                    "{:.2}",
                    v.extrapolated.drain_secs / self.floor.ideal_drain_secs
                )
            }),
        );
        row(
            "requests spent ÷ rate (s)",
            format!("{:.1}", r.paced_ideal_secs),
            n(&|v| format!("{:.1}", v.extrapolated.total / self.limit.per_sec)),
        );
        row(
            "achieved upstream rate (/s)",
            format!("{:.1}", r.achieved_rate_per_sec),
            n(&|v| format!("{:.1}", v.achieved_rate_per_sec)),
        );
        println!(
            "relay ingest: {} events in {:.2} s ({:.0} events/s): {} accepted, {} duplicates, \
             {} rejected, {} failed posts",
            self.workload.events_posted,
            r.ingest_secs,
            r.ingest_events_per_sec,
            r.accepted,
            r.duplicates,
            r.rejected,
            r.failed_posts
        );
        println!(
            "relay drain: {} ({}/{} values present); first upstream request {:.2} s after the \
             first event; {} requests after the drain",
            if r.drained { "complete" } else { "INCOMPLETE" },
            r.values_present,
            r.values_expected,
            r.first_request_after_secs,
            r.requests_after_drain
        );
        if let Some(v) = naive {
            println!(
                "naive: measured {} events in {:.1} s ({} requests, all values correct: {}); \
                 figures scaled ×{:.2} to the {} events",
                v.sample_events,
                v.elapsed_secs,
                v.requests.total,
                v.values_ok,
                v.scale,
                v.total_events
            );
        }
        println!(
            "sandbox by route: {:?}; answers other than 2xx: {}",
            r.by_route, r.requests.failed
        );
        if let Some(store) = &r.store {
            println!(
                "store: {store}; leader changes seen: {}",
                r.leader_changes.unwrap_or(0)
            );
            for (i, p) in r.replicas.iter().enumerate() {
                println!(
                    "  replica {i}: {} batches posted; led {}/{} samples{}; {} upstream requests, \
                     {} updates sent",
                    p.batches,
                    p.led_samples,
                    p.samples,
                    if p.leader_at_end {
                        ", leader at the end"
                    } else {
                        ""
                    },
                    p.upstream_requests,
                    p.updates_sent
                );
            }
        }
    }
}
