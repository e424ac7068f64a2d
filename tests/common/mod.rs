//! Shared harness for the integration tests: a sandbox and the real relay router, each on an
//! ephemeral loopback port, driven over HTTP as Segment would drive them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prosperstack_relay::config::Settings;
use prosperstack_relay::sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A running sandbox.
pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub url: String,
    stop: CancellationToken,
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_sandbox(config: SandboxConfig) -> TestSandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sandbox");
    let addr = listener.local_addr().expect("addr");
    let sandbox = Sandbox::new(config);
    let stop = CancellationToken::new();
    let serve = sandbox
        .clone()
        .serve(listener, stop.clone().cancelled_owned());
    tokio::spawn(serve);
    TestSandbox {
        sandbox,
        url: format!("http://{addr}"),
        stop,
    }
}

/// The default demo sandbox with a generous limit (tests that study the limit set their own).
pub async fn demo_sandbox() -> TestSandbox {
    start_sandbox(SandboxConfig {
        rate_limit_requests: 1000,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await
}

/// A running relay (the real `app::run`) against a sandbox.
pub struct TestRelay {
    pub url: String,
    pub data_dir: std::path::PathBuf,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), prosperstack_relay::app::AppError>>>,
    _tmp: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Settings for a relay against `sandbox_url`, with test-friendly timings, overridden by `extra`.
pub fn settings(sandbox_url: &str, data_dir: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("PROSPERSTACK_API_KEY", SANDBOX_API_KEY),
        ("PROSPERSTACK_API_URL", sandbox_url),
        ("RELAY_LISTEN", "127.0.0.1:0"),
        ("RELAY_COALESCE_DELAY", "0ms"),
        ("RELAY_WAITING_RETRY_MIN", "200ms"),
        ("RELAY_WAITING_RETRY_MAX", "1s"),
        ("RELAY_NEGATIVE_CACHE_TTL", "100ms"),
        ("RELAY_DRAIN_DEADLINE", "5s"),
        ("PROSPERSTACK_REQUEST_TIMEOUT", "5s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("RELAY_DATA_DIR".into(), data_dir.display().to_string());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::load(None, &|k: &str| env.get(k).cloned()).expect("valid test settings")
}

impl TestRelay {
    pub async fn start(sandbox_url: &str, extra: &[(&str, &str)]) -> TestRelay {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut relay = Self::start_in(settings(sandbox_url, &dir, extra)).await;
        relay._tmp = Some(tmp);
        relay
    }

    pub async fn start_in(settings: Settings) -> TestRelay {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind relay");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let data_dir = settings.data_dir.clone();
        let task = tokio::spawn(prosperstack_relay::app::run(
            settings,
            listener,
            stop.clone().cancelled_owned(),
        ));
        TestRelay {
            url: format!("http://{addr}"),
            data_dir,
            stop,
            task: Some(task),
            _tmp: None,
            http: reqwest::Client::new(),
        }
    }

    /// Posts a body to `/v1/segment`; answers the status and the JSON body.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/segment", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("relay answers");
        let status = resp.status().as_u16();
        let json = resp.json().await.unwrap_or(Value::Null);
        (status, json)
    }

    pub async fn post_json(&self, value: &Value) -> (u16, Value) {
        self.post(value.to_string(), &[]).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("relay answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    /// The value of a metric (summed over its series), from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        prosperstack_relay::metrics::sum_series(&text, name)
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), prosperstack_relay::app::AppError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.expect("relay task"),
            None => Ok(()),
        }
    }

    /// Triggers shutdown without waiting.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    pub fn take_task(
        &mut self,
    ) -> tokio::task::JoinHandle<Result<(), prosperstack_relay::app::AppError>> {
        self.task.take().expect("task")
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` until it answers true or `limit` passes; answers whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Generous: tests must pass on a slow, shared machine; the poll ends as soon as it can.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A reference payload from `shared/reference/segment-payloads`.
pub fn payload(name: &str) -> Value {
    let path = format!(
        "{}/../shared/reference/segment-payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("payload file"))
        .expect("payload JSON")
}

/// A property value of a sandbox subscriber.
pub fn property(sandbox: &Sandbox, email: &str, key: &str) -> Option<Value> {
    sandbox
        .subscriber_by_email(email)?
        .properties
        .get(key)
        .cloned()
}

/// An Identify for `email` with the given traits and time.
pub fn identify(message_id: &str, email: &str, traits: Value, timestamp: &str) -> Value {
    let mut traits = traits;
    traits["email"] = Value::String(email.to_owned());
    serde_json::json!({
        "type": "identify",
        "userId": format!("user-{email}"),
        "messageId": message_id,
        "timestamp": timestamp,
        "traits": traits,
    })
}

/// A loopback port free right now: bound on `:0`, then released for a child process to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An RFC 3339 time `offset_secs` after a fixed base (2024-06-01T00:00:00Z), for event timestamps.
pub fn event_time(offset_secs: i64) -> String {
    chrono::DateTime::from_timestamp(1_717_200_000 + offset_secs, 0)
        .expect("a valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An Engage audience Identify: `email` entered (`member`) or exited the audience `key`.
pub fn audience_event(message_id: &str, email: &str, key: &str, member: bool, ts: &str) -> Value {
    serde_json::json!({
        "type": "identify",
        "userId": format!("user-{email}"),
        "messageId": message_id,
        "timestamp": ts,
        "traits": { "email": email, key: member },
        "context": { "personas": { "computation_class": "audience", "computation_key": key } },
    })
}

/// Runs the relay binary with only `env` (nothing inherited) and `args`; answers its output.
pub async fn run_cli(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_prosperstack-relay"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .await
        .expect("the relay binary runs")
}

/// The dead letters in a relay's data directory, as `dead-letters list --json` prints them.
pub async fn dead_letters_cli(data_dir: &std::path::Path) -> Vec<Value> {
    let dir = data_dir.display().to_string();
    let out = run_cli(
        &[("RELAY_DATA_DIR", dir.as_str())],
        &["dead-letters", "list", "--json"],
    )
    .await;
    assert!(
        out.status.success(),
        "dead-letters list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dead-letters list --json prints a JSON array")
}

/// A second handle on a running relay's store (no directory lock), to watch its queue.
pub fn shared_store(data_dir: &std::path::Path) -> prosperstack_relay::store::SqliteStore {
    prosperstack_relay::store::SqliteStore::open_shared(data_dir).expect("open the relay's store")
}

/// Whether every queued event has left the queue (delivered or dead-lettered).
pub async fn queue_empty(store: &prosperstack_relay::store::SqliteStore) -> bool {
    use prosperstack_relay::store::Store;
    store.stats().await.map(|s| s.events == 0).unwrap_or(false)
}
