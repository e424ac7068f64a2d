//! What every benchmark starts: a sandbox whose requests are recorded, the real relay
//! in-process with the bench's settings, and temporary data directories.
//!
//! In: limits, settings overrides. Out: running servers with handles that stop them on drop.
//! Stays true: everything listens on 127.0.0.1 only; temp dirs are removed on drop; every wait
//! is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::recorder::{record, Recorder};
use super::BenchError;
use prosperstack_relay::config::Settings;
use prosperstack_sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

/// A fresh directory under the system temp dir (or under `parent`), removed on drop.
pub fn temp_dir(label: &str, parent: Option<&Path>) -> Result<tempfile::TempDir, BenchError> {
    let prefix = format!("prosperstack-relay-bench-{label}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    Ok(match parent {
        Some(parent) => builder.tempdir_in(parent)?,
        None => builder.tempdir()?,
    })
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
    task: Option<tokio::task::JoinHandle<Result<(), prosperstack_relay::app::AppError>>>,
}

impl RunningRelay {
    pub async fn start(settings: Settings) -> Result<RunningRelay, BenchError> {
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(prosperstack_relay::app::run(
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.delivery.coalesce_delay, Duration::from_secs(2));
        assert_eq!(s.prosperstack.rate_limit_requests, 100);
        assert_eq!(s.prosperstack.rate_limit_window, Duration::from_secs(1));
        assert!(relay_settings("http://127.0.0.1:1", &dir, limit, &["nope".into()]).is_err());
    }
}
