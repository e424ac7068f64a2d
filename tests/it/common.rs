//! Shared harness for the integration tests: a sandbox and the real relay router, each on an
//! ephemeral loopback port, driven over HTTP as Segment would drive them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prosperstack_relay::config::Settings;
use prosperstack_sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};
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
    /// Everything the relay logged, at trace level; checked for emails when the relay is dropped.
    pub logs: LogCapture,
}

/// Settings for a relay against `sandbox_url`, with test-friendly timings, overridden by `extra`.
pub fn settings(sandbox_url: &str, data_dir: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("PROSPERSTACK_API_KEY", SANDBOX_API_KEY),
        ("PROSPERSTACK_API_URL", sandbox_url),
        ("RELAY_LISTEN", "127.0.0.1:0"),
        // The demo sandbox's limit; tests that study the limit set their own.
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "1000"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
        ("RELAY_COALESCE_DELAY", "0ms"),
        ("RELAY_WAITING_RETRY_MIN", "200ms"),
        ("RELAY_WAITING_RETRY_MAX", "1s"),
        ("RELAY_NEGATIVE_CACHE_TTL", "100ms"),
        ("RELAY_DRAIN_DEADLINE", "5s"),
        ("RELAY_RETRY_BACKOFF_MIN", "50ms"),
        ("RELAY_RETRY_BACKOFF_MAX", "1s"),
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
        // Before the relay's first task: tests run on one thread, so every task of the relay
        // logs to this capture.
        let logs = LogCapture::start();
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
            logs,
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
        // Every in-process test doubles as a check that no email reaches a log, at any level.
        let text = self.logs.text();
        let leaks: Vec<&str> = text.lines().filter(|l| contains_email(l)).collect();
        if !leaks.is_empty() && !std::thread::panicking() {
            panic!("emails in the relay's log:\n{}", leaks.join("\n"));
        }
    }
}

/// The log lines a test's relay wrote, at trace level, for this thread (the test's runtime).
pub struct LogCapture {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    pub fn start() -> LogCapture {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        LogCapture {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        let bytes = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `line` holds something shaped like an email address (`local@domain.tld`).
pub fn contains_email(line: &str) -> bool {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let is_domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    line.match_indices('@').any(|(at, _)| {
        let local = line[..at]
            .chars()
            .rev()
            .take_while(|c| is_local(*c))
            .count();
        let domain: String = line[at + 1..]
            .chars()
            .take_while(|c| is_domain(*c))
            .collect();
        local > 0 && domain.trim_end_matches('.').contains('.')
    })
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

/// Posts an Identify for a demo subscriber and waits until the sandbox holds its value: a
/// test that must show nothing else was sent checks the sandbox's counters after this, instead
/// of sleeping and hoping delivery would have acted by then.
pub async fn deliver_sentinel(relay: &TestRelay, sb: &TestSandbox) {
    let email = "john.doe@example.com";
    let sentinel = identify(
        "sentinel",
        email,
        serde_json::json!({"plan": "sentinel"}),
        "2024-06-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&sentinel).await.0, 200);
    let arrived = eventually(PATIENCE, || async {
        property(&sb.sandbox, email, "plan") == Some(Value::from("sentinel"))
    })
    .await;
    assert!(arrived, "the sentinel Identify was not delivered");
}

/// A reference payload from `tests/fixtures/segment-payloads`.
pub fn payload(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/segment-payloads/{name}",
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

// ---- The real binary, run as a child process (operations tests) ----

/// The relay binary Cargo built for these tests.
pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_prosperstack-relay");

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("addr")
        .port()
}

/// The relay binary with `args` and an empty environment, so nothing leaks in from the
/// test runner's own environment (a stray `PROSPERSTACK_API_KEY` would hide a bug).
pub fn relay_command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(RELAY_BIN);
    cmd.args(args).env_clear();
    cmd
}

/// A child process that is killed (and reaped) when the guard is dropped, even when a test
/// panics half way.
pub struct ChildGuard {
    pub child: std::process::Child,
}

impl ChildGuard {
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The exit status once the child has exited, polling for at most `limit`; `None` if it
    /// is still running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM, as an orchestrator does to stop a container.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command wrote and how it exited.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion (bounded by `limit`, then killed and the test fails), capturing
/// stdout and stderr through files so a chatty child can never block on a full pipe.
pub async fn run_to_exit(mut cmd: std::process::Command, limit: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut guard = ChildGuard {
        child: cmd.spawn().expect("spawn the relay binary"),
    };
    let status = guard.wait_exit(limit).await;
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("still running after {limit:?}; stderr: {stderr}"));
    Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr,
    }
}

/// Starts `cmd` in the background with its stderr going to `log` (stdout discarded).
pub fn spawn_logged(mut cmd: std::process::Command, log: &std::path::Path) -> ChildGuard {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    ChildGuard {
        child: cmd.spawn().expect("spawn the relay binary"),
    }
}

/// Waits until the child relay at `base_url` answers `/healthz` with 200; fails the test with
/// the child's log if it exits first or never answers.
pub async fn wait_until_serving(child: &mut ChildGuard, base_url: &str, log: &std::path::Path) {
    let http = reqwest::Client::new();
    let url = format!("{base_url}/healthz");
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == reqwest::StatusCode::OK {
                return;
            }
        }
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = child.child.try_wait().expect("try_wait") {
            panic!(
                "relay exited ({status}) before serving; log:\n{}",
                log_text()
            );
        }
        if start.elapsed() > PATIENCE {
            panic!("relay did not serve {url} in time; log:\n{}", log_text());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Segment's `X-Signature`: lowercase hex HMAC-SHA1 of the raw body under the shared secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A reference payload as Segment sends it: whitespace outside strings removed, as
/// `JSON.stringify` writes it (key order kept), so signature test vectors apply.
pub fn minified(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/segment-payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    // Whitespace outside strings removed, as JSON.stringify writes it (key order kept).
    let mut out = String::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false
            } else if c == '\\' {
                escaped = true
            } else if c == '"' {
                in_string = false
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
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

/// Creates `count` subscribers `{prefix}{i}@example.com` in the sandbox; answers their emails.
pub fn create_members(sandbox: &Sandbox, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let email = format!("{prefix}{i}@example.com");
            sandbox.create_subscriber(&email, "Member");
            email
        })
        .collect()
}

/// One Identify per email setting `plan` to "Pro", as one array (a Webhooks (Actions) batch).
pub fn plan_events(id_prefix: &str, emails: &[String]) -> Value {
    let events: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            identify(
                &format!("{id_prefix}{i}"),
                e,
                serde_json::json!({"plan": "Pro"}),
                "2024-06-01T00:00:00Z",
            )
        })
        .collect();
    Value::Array(events)
}

/// Whether every email's subscriber has a `plan` value.
pub fn all_have_plan(sandbox: &Sandbox, emails: &[String]) -> bool {
    emails
        .iter()
        .all(|e| property(sandbox, e, "plan").is_some())
}

/// Requests the sandbox has answered on `GET /v1/subscribers` (look-ups and list pages).
pub fn subscriber_list_requests(sandbox: &Sandbox) -> u64 {
    sandbox
        .stats()
        .by_route
        .get("GET /v1/subscribers")
        .copied()
        .unwrap_or(0)
}
