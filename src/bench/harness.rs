//! What every benchmark needs: a sandbox whose requests are recorded, the real relay in-process,
//! temporary data directories, the machine's description, and targets with their verdicts.
//!
//! In: configurations. Out: running servers with handles that stop them on drop, and small
//! report pieces. Stays true: everything listens on 127.0.0.1 only; temp dirs are removed on
//! drop; every wait is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use crate::config::Settings;
use crate::sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

/// A directory under the system temp dir (or under `parent`), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str, parent: Option<&Path>) -> Result<TempDir, BenchError> {
        let parent = parent
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(
            "prosperstack-relay-bench-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Which kind of ProsperStack request a recorded request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /v1/properties`
    Catalogue,
    /// `GET /v1/subscribers` without `email`: a directory page.
    ListPage,
    /// `GET /v1/subscribers?email=…`
    Lookup,
    /// `PUT /v1/subscribers/{id}`
    Update,
    Other,
}

/// One request the sandbox answered, as the recorder saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Since the recorder's origin.
    pub at: Duration,
    pub kind: RequestKind,
    /// The subscriber id of an update.
    pub subscriber: Option<String>,
    /// A list page asked without a cursor: the first page of a directory walk.
    pub first_page: bool,
    pub status: u16,
}

/// Every `/v1` request a sandbox answered, with its time: the timeline behind a report.
#[derive(Clone)]
pub struct Recorder {
    origin: Instant,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder {
            origin,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn snapshot(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

async fn record(State(recorder): State<Recorder>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    let (kind, subscriber) = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/properties") => (RequestKind::Catalogue, None),
        ("GET", "/v1/subscribers") if has("email") => (RequestKind::Lookup, None),
        ("GET", "/v1/subscribers") => (RequestKind::ListPage, None),
        ("PUT", p) if p.starts_with("/v1/subscribers/") => (
            RequestKind::Update,
            Some(p.trim_start_matches("/v1/subscribers/").to_owned()),
        ),
        _ if path.starts_with("/v1") => (RequestKind::Other, None),
        // Admin routes are the bench's own, not the client's.
        _ => return response,
    };
    let entry = Recorded {
        at: recorder.origin.elapsed(),
        kind,
        subscriber,
        first_page: kind == RequestKind::ListPage && !has("cursor"),
        status: response.status().as_u16(),
    };
    recorder
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(entry);
    response
}

/// A sandbox served on 127.0.0.1, stopped on drop.
pub struct RunningSandbox {
    pub sandbox: Sandbox,
    pub url: String,
    pub recorder: Recorder,
    stop: CancellationToken,
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_sandbox(
    requests: u32,
    window: Duration,
    origin: Instant,
) -> Result<RunningSandbox, BenchError> {
    let sandbox = Sandbox::new(SandboxConfig {
        rate_limit_requests: requests,
        rate_limit_window: window,
        seed_demo: false,
        ..SandboxConfig::default()
    });
    let recorder = Recorder::new(origin);
    let router = sandbox.router().layer(axum::middleware::from_fn_with_state(
        recorder.clone(),
        record,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(RunningSandbox {
        sandbox,
        url: format!("http://{addr}"),
        recorder,
        stop,
    })
}

/// The relay's settings for a benchmark: the product's defaults, except what the bench must
/// set (upstream, key, loopback listen, data dir, the sandbox's rate limit) and `overrides`
/// (`NAME=value` in the relay's environment names, from `--set`).
pub fn relay_settings(
    upstream: &str,
    data_dir: &Path,
    limit: (u32, Duration),
    overrides: &[String],
) -> Result<Settings, BenchError> {
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        ("PROSPERSTACK_API_KEY", SANDBOX_API_KEY.to_owned()),
        ("PROSPERSTACK_API_URL", upstream.to_owned()),
        ("RELAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("RELAY_DATA_DIR", data_dir.display().to_string()),
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", limit.0.to_string()),
        (
            "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS",
            limit.1.as_secs_f64().to_string(),
        ),
        ("RELAY_DRAIN_DEADLINE", "5s".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    for pair in overrides {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| BenchError::Setup(format!("--set {pair:?}: expected NAME=value")))?;
        env.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(Settings::load(None, &|k: &str| env.get(k).cloned())?)
}

/// The real relay (`app::run`) on 127.0.0.1, stopped on drop.
pub struct RunningRelay {
    pub url: String,
    /// Just before `app::run` was called: its periodic tasks tick from here.
    pub started: Instant,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), crate::app::AppError>>>,
}

impl RunningRelay {
    pub async fn start(settings: Settings) -> Result<RunningRelay, BenchError> {
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(crate::app::run(
            settings,
            listener,
            stop.clone().cancelled_owned(),
        ));
        let relay = RunningRelay {
            url: format!("http://{addr}"),
            started,
            stop,
            task: Some(task),
        };
        wait_healthy(&format!("{}/healthz", relay.url), Duration::from_secs(30)).await?;
        Ok(relay)
    }

    /// Shuts the relay down and waits (bounded) for it to return.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `url` until it answers 2xx or `limit` passes.
pub async fn wait_healthy(url: &str, limit: Duration) -> Result<(), BenchError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BenchError::Setup(format!(
        "{url} did not answer within {limit:?}"
    )))
}

/// `/metrics` of a relay, as text.
pub async fn scrape(http: &reqwest::Client, relay_url: &str) -> Result<String, BenchError> {
    Ok(http
        .get(format!("{relay_url}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// One figure against its target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub value: String,
    pub met: bool,
}

impl Target {
    pub fn at_most(name: &str, value: f64, limit: f64, unit: &str) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≤ {limit}{unit}"),
            value: format!("{value:.3}{unit}"),
            met: value <= limit,
        }
    }

    /// A count that must not exceed `limit`.
    pub fn count_at_most(name: &str, value: u64, limit: u64) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≤ {limit}"),
            value: value.to_string(),
            met: value <= limit,
        }
    }

    pub fn at_least(name: &str, value: f64, limit: f64, unit: &str) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≥ {limit}{unit}"),
            value: format!("{value:.3}{unit}"),
            met: value >= limit,
        }
    }

    pub fn print(targets: &[Target]) {
        println!("targets:");
        for t in targets {
            println!(
                "  {:<4} {:<44} {:>14}  (target {})",
                if t.met { "MET" } else { "MISS" },
                t.name,
                t.value,
                t.target
            );
        }
    }
}

/// Where and how a report was produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub command: String,
    pub date_utc: String,
    pub machine: String,
    /// `/proc/loadavg` when the report was made: other work on a shared machine skews figures.
    pub load_average: String,
    pub version: &'static str,
}

impl RunInfo {
    pub fn now() -> RunInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let kb: u64 = t
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_default();
        let profile = if cfg!(debug_assertions) {
            "DEBUG build (figures meaningless: use --release)"
        } else {
            "release build"
        };
        RunInfo {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            date_utc: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            machine: format!(
                "{} {}, {cores} cores, {cpu}, {memory}, {profile}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    pub fn print(&self, title: &str) {
        println!("== {title} ==");
        println!("command: {}", self.command);
        println!("date:    {} UTC", self.date_utc);
        println!("machine: {}", self.machine);
        println!(
            "load:    {} (1, 5, 15 min averages when the report was made)",
            self.load_average
        );
    }
}

/// The filesystem type holding `path` (from /proc/mounts): fsync costs differ a lot by it.
pub fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _device = f.next()?;
            let mount = f.next()?;
            let fs = f.next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) used so far by this process's threads, by thread name
/// (`store-writer` is the SQLite writer, `tokio-runtime-w` the async workers). Assumes the
/// kernel's usual 100 clock ticks a second.
pub fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name.trim().to_owned()).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    by_name
}

/// Bytes and calls written so far (`wchar`, `syscw` of `/proc/self/task/*/io`) by this
/// process's threads named `name`.
pub fn thread_writes(name: &str) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).unwrap_or_default();
        let field = |key: &str| -> u64 {
            io.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("wchar:");
        total.1 += field("syscw:");
    }
    total
}

/// CPU seconds per thread name between two [`thread_cpu`] readings.
pub fn cpu_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 0.01)
        .collect()
}

/// The `q` quantile (0..=1) of sorted samples, nearest-rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank quantiles: p50 of 1..=100 ms is 50 ms, p99 is 99 ms, p100 the max.
    #[test]
    fn quantiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    /// `--set` overrides reach the settings; a malformed one is refused by name.
    #[test]
    fn settings_overrides() {
        let dir = std::env::temp_dir();
        let limit = (100, Duration::from_secs(1));
        let s = relay_settings(
            "http://127.0.0.1:1",
            &dir,
            limit,
            &["RELAY_COALESCE_DELAY=2s".into()],
        )
        .expect("settings");
        assert_eq!(s.coalesce_delay, Duration::from_secs(2));
        assert_eq!(s.rate_limit_requests, 100);
        assert_eq!(s.rate_limit_window, Duration::from_secs(1));
        assert!(relay_settings("http://127.0.0.1:1", &dir, limit, &["nope".into()]).is_err());
    }
}
