//! `bench memory`: the real binary's resident memory with a large queue.
//!
//! In: [`MemoryArgs`]. Out: a [`MemoryReport`]: VmRSS and VmHWM of a `prosperstack-relay serve`
//! child (the `prosperstack-relay` binary) before, during and after queuing `--events` Identify events in
//! batches, with its upstream down (an in-process sandbox answering every request 503), the
//! queue depth its `/metrics` reports, and the store's size on disk.
//! Stays true: the child is started by this process, on loopback, with a temp data dir, and is
//! killed (by its own handle) when the report is made or the benchmark fails.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::harness::{start_sandbox, temp_dir, wait_healthy};
use super::measure::{filesystem_of, ms, quantile, RunInfo, Target};
use super::{BenchError, Report};
use prosperstack_sandbox::SANDBOX_API_KEY;

#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Identify events to queue (each with its own email and messageId).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per POST (a JSON array).
    #[arg(long, default_value_t = 500)]
    pub batch: u64,
    /// Concurrent posting tasks.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Where the child's temporary data directory is created (default: the system temp dir).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// A relay setting for the child, by its environment name (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Give up queuing after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// The relay binary to measure (default: `prosperstack-relay` beside this executable, as
    /// `cargo build --release` leaves it in `target/release/`).
    #[arg(long)]
    pub relay_bin: Option<std::path::PathBuf>,
}

/// The product binary this benchmark measures: the one named, else the relay built beside it.
fn relay_binary(named: Option<&std::path::Path>) -> Result<std::path::PathBuf, BenchError> {
    let path = match named {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name(format!(
            "prosperstack-relay{}",
            std::env::consts::EXE_SUFFIX
        )),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Setup(format!(
            "no relay binary at {} (build it first: cargo build --release, or pass --relay-bin)",
            path.display()
        )))
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    pub rss_mb: f64,
    pub hwm_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    pub secs: f64,
    pub events_acked: u64,
    pub rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub run: RunInfo,
    pub events: u64,
    pub batch: u64,
    pub data_dir_filesystem: String,
    pub accepted: u64,
    pub failed_batches: u64,
    pub queue_secs: f64,
    pub events_per_sec: f64,
    pub at_start: Memory,
    pub after_queuing: Memory,
    /// `relay_queue_depth` from `/metrics` (refreshed every 5 s by the relay).
    pub queue_depth: u64,
    pub store_bytes_on_disk: u64,
    pub upstream_requests: u64,
    pub samples: Vec<Sample>,
    /// Single-event POSTs while the queue is full.
    pub probe: Probe,
    /// One `Store::stats()` on the full queue, on a second connection.
    pub queue_stats_query_ms: f64,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub requests: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// VmRSS and VmHWM of a process, in MB (10^6 bytes).
fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024.0 / 1e6)
    };
    Some(Memory {
        rss_mb: field("VmRSS:")?,
        hwm_mb: field("VmHWM:")?,
    })
}

fn batch_body(first: u64, count: u64) -> String {
    let events: Vec<String> = (first..first + count)
        .map(|n| {
            format!(
                concat!(
                    r#"{{"type":"identify","userId":"usr_mem_{n}","#,
                    r#""traits":{{"email":"mem-{n}@example.com","plan":"business","number_of_contacts":{n}}},"#,
                    r#""messageId":"bench-memory-{n}","timestamp":"2024-06-10T09:12:01.725Z"}}"#
                ),
                n = n
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub async fn run(args: MemoryArgs) -> Result<MemoryReport, BenchError> {
    let sandbox = start_sandbox(100, Duration::from_secs(60), Instant::now()).await?;
    sandbox.sandbox.inject_failures(503, u32::MAX);
    let dir = temp_dir("memory", args.data_dir.as_deref())?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let url = format!("http://127.0.0.1:{port}");

    let mut command = tokio::process::Command::new(relay_binary(args.relay_bin.as_deref())?);
    command.arg("serve").kill_on_drop(true);
    // Only the bench's settings: nothing from the caller's environment changes the child.
    for (name, _) in std::env::vars() {
        let ours = ["RELAY_", "PROSPERSTACK_", "SEGMENT_"];
        if ours.iter().any(|p| name.starts_with(p)) {
            command.env_remove(name);
        }
    }
    command
        .env("PROSPERSTACK_API_KEY", SANDBOX_API_KEY)
        .env("PROSPERSTACK_API_URL", &sandbox.url)
        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAY_DATA_DIR", dir.path())
        .env("RUST_LOG", "error");
    for pair in &args.set {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| BenchError::Setup(format!("--set {pair:?}: expected NAME=value")))?;
        command.env(k.trim(), v);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Setup("the child exited at once".into()))?;
    let result = measure(&args, &url, pid, dir.path(), &sandbox).await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    result
}

async fn measure(
    args: &MemoryArgs,
    url: &str,
    pid: u32,
    dir: &Path,
    sandbox: &super::harness::RunningSandbox,
) -> Result<MemoryReport, BenchError> {
    wait_healthy(&format!("{url}/healthz"), Duration::from_secs(30)).await?;
    let at_start = memory_of(pid).unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let batch = args.batch.max(1);
    let batches = args.events.div_ceil(batch);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let endpoint = format!("{url}/v1/segment");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let posters: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (http, next, acked, failed, endpoint) = (
                http.clone(),
                next.clone(),
                acked.clone(),
                failed.clone(),
                endpoint.clone(),
            );
            let total = args.events;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches || Instant::now() > deadline {
                        break;
                    }
                    let first = i * batch;
                    let count = batch.min(total - first);
                    let body = batch_body(first, count);
                    match post_batch(&http, &endpoint, body).await {
                        Some(accepted) => acked.fetch_add(accepted, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed) as u64,
                    };
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    while posters.iter().any(|p| !p.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_sample.elapsed() >= Duration::from_secs(5) {
            last_sample = Instant::now();
            let m = memory_of(pid).unwrap_or_default();
            let done = acked.load(Ordering::Relaxed);
            eprintln!("memory: {done} events queued, RSS {:.1} MB", m.rss_mb);
            samples.push(Sample {
                secs: started.elapsed().as_secs_f64(),
                events_acked: done,
                rss_mb: m.rss_mb,
            });
        }
    }
    for p in posters {
        let _ = p.await;
    }
    let queue_secs = started.elapsed().as_secs_f64();
    let accepted = acked.load(Ordering::Relaxed);
    // The gauge is refreshed every 5 s: wait (bounded) until it shows the whole queue.
    let mut queue_depth = 0;
    let gauge_wait = Instant::now();
    while gauge_wait.elapsed() < Duration::from_secs(12) {
        if let Ok(text) = super::harness::scrape(&http, url).await {
            queue_depth = prosperstack_relay::metrics::sum_series(&text, "relay_queue_depth");
            if queue_depth >= accepted {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = memory_of(pid).unwrap_or_default();
    let probe = probe_latency(&http, &endpoint, args.events).await;
    let stats_ms = {
        let store = prosperstack_relay::store::SqliteStore::open_shared(dir)?;
        let timed = Instant::now();
        prosperstack_relay::store::Store::stats(&store).await?;
        ms(timed.elapsed())
    };
    let targets = vec![Target::at_most(
        &format!("RSS with {} queued", queue_depth),
        after.rss_mb,
        100.0,
        " MB",
    )];
    Ok(MemoryReport {
        run: RunInfo::now(),
        events: args.events,
        batch,
        data_dir_filesystem: filesystem_of(dir),
        accepted,
        failed_batches: failed.load(Ordering::Relaxed) as u64,
        queue_secs,
        events_per_sec: accepted as f64 / queue_secs.max(1e-9),
        at_start,
        after_queuing: after,
        queue_depth,
        store_bytes_on_disk: dir_size(dir),
        upstream_requests: sandbox.sandbox.stats().requests_total,
        samples,
        probe,
        queue_stats_query_ms: stats_ms,
        targets,
    })
}

/// Single-event POSTs, one every 50 ms for 11 s (two of the relay's 5 s gauge refreshes), with
/// the queue full: what Segment would see meanwhile.
async fn probe_latency(http: &reqwest::Client, endpoint: &str, offset: u64) -> Probe {
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(11) && n < 1000 {
        let sent = Instant::now();
        let body = batch_body(offset + 10_000_000 + n, 1);
        let _ = post_batch(http, endpoint, body).await;
        latencies.push(sent.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort_unstable();
    Probe {
        requests: latencies.len(),
        p50_ms: ms(quantile(&latencies, 0.5)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
    }
}

/// Posts one batch (retrying a failed POST up to 5 times); the events it accepted.
async fn post_batch(http: &reqwest::Client, endpoint: &str, body: String) -> Option<u64> {
    for _ in 0..5 {
        let answer = http
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = answer {
            if r.status().is_success() {
                let json: serde_json::Value = r.json().await.unwrap_or_default();
                return json["accepted"].as_u64();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

impl Report for MemoryReport {
    fn print_text(&self) {
        self.run.print("bench memory");
        println!(
            "child: this binary's `serve`, upstream answering 503 to everything; data dir on {}",
            self.data_dir_filesystem
        );
        println!(
            "queued: {} of {} events accepted in {:.1} s ({:.0} events/s, batches of {}); {} \
             failed batches; {} upstream requests meanwhile",
            self.accepted,
            self.events,
            self.queue_secs,
            self.events_per_sec,
            self.batch,
            self.failed_batches,
            self.upstream_requests
        );
        println!(
            "RSS at start: {:.1} MB (peak {:.1} MB)",
            self.at_start.rss_mb, self.at_start.hwm_mb
        );
        for s in &self.samples {
            println!(
                "  {:>6.1} s  {:>9} queued  RSS {:>6.1} MB",
                s.secs, s.events_acked, s.rss_mb
            );
        }
        println!(
            "RSS after queuing: {:.1} MB (peak VmHWM {:.1} MB); relay_queue_depth {}; store on disk \
             {:.1} MB",
            self.after_queuing.rss_mb,
            self.after_queuing.hwm_mb,
            self.queue_depth,
            self.store_bytes_on_disk as f64 / 1e6
        );
        println!(
            "with the queue full: single-event POSTs every 50 ms for 11 s: p50 {:.1} ms, max {:.1} \
             ms ({} requests); one queue-stats query (Store::stats) took {:.0} ms",
            self.probe.p50_ms, self.probe.max_ms, self.probe.requests, self.queue_stats_query_ms
        );
        println!();
        Target::print(&self.targets);
    }
}
