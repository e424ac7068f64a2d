//! The real binary killed (SIGKILL) or stopped (SIGTERM) while it delivers: every event it
//! acknowledged reaches the sandbox after a restart on the same data directory.
//!
//! The sandbox runs in this process so that it outlives the relay's restarts; the relay runs as
//! a child process (`CARGO_BIN_EXE_prosperstack-relay serve`) with a scaled rate limit (20
//! requests per second) so that delivery is slow enough to be interrupted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use prosperstack_sandbox::{SandboxConfig, SANDBOX_API_KEY};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

/// How long a restarted relay gets to deliver everything it acknowledged.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(120);

/// The relay binary as a child process; killed (SIGKILL) and reaped when dropped, even on panic.
pub(crate) struct RelayProcess {
    pub(crate) child: ChildGuard,
    pub(crate) url: String,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts `serve` on a free port with the test environment (nothing inherited).
    pub(crate) fn spawn(
        sandbox_url: &str,
        data_dir: &Path,
        extra: &[(&str, &str)],
    ) -> RelayProcess {
        let port = free_port();
        let log = data_dir.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).expect("relay log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_prosperstack-relay"));
        command
            .arg("serve")
            .env_clear()
            .env("PROSPERSTACK_API_KEY", SANDBOX_API_KEY)
            .env("PROSPERSTACK_API_URL", sandbox_url)
            .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RELAY_DATA_DIR", data_dir)
            .env("PROSPERSTACK_RATE_LIMIT_REQUESTS", "20")
            .env("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1")
            .env("RELAY_COALESCE_DELAY", "0ms")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file);
        let child = ChildGuard {
            child: command.spawn().expect("start the relay binary"),
        };
        RelayProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits (bounded) until `/healthz` answers 200.
    pub(crate) async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let url = format!("{}/healthz", self.url);
        let healthy = eventually(PATIENCE, || async {
            matches!(http.get(&url).send().await, Ok(r) if r.status().is_success())
        })
        .await;
        if !healthy {
            panic!(
                "the relay did not become healthy (exit: {:?}); log:\n{}",
                self.child.child.try_wait(),
                self.log_tail()
            );
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.child.kill();
        let _ = self.child.child.wait();
    }

    /// SIGTERM, as an orchestrator stops a container.
    pub(crate) fn terminate(&self) {
        self.child.terminate();
    }

    /// Polls for the process to exit, up to `limit`.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(limit).await
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Per subscriber: the highest version the relay acknowledged and the highest one sent.
#[derive(Default)]
pub(crate) struct Ledger {
    versions: HashMap<String, (u32, u32)>,
    pub(crate) acknowledged: usize,
}

impl Ledger {
    pub(crate) fn record(&mut self, email: &str, version: u32, acked: bool) {
        let entry = self.versions.entry(email.to_owned()).or_default();
        entry.1 = entry.1.max(version);
        if acked {
            entry.0 = entry.0.max(version);
            self.acknowledged += 1;
        }
    }

    /// Subscribers with at least one acknowledged event.
    pub(crate) fn acknowledged_subscribers(&self) -> usize {
        self.versions
            .values()
            .filter(|(acked, _)| *acked > 0)
            .count()
    }

    /// Subscribers whose `plan` in the sandbox is the latest acknowledged version, or a later one
    /// that was sent (stored but its answer lost is allowed; older is never).
    pub(crate) fn arrived(&self, sandbox: &prosperstack_sandbox::Sandbox) -> usize {
        let values: HashMap<String, Option<serde_json::Value>> = sandbox
            .subscribers()
            .into_iter()
            .map(|s| (s.email, s.properties.get("plan").cloned()))
            .collect();
        self.versions
            .iter()
            .filter(|(_, (acked, _))| *acked > 0)
            .filter(|(email, (acked, sent))| {
                let got = values.get(*email).cloned().flatten();
                (*acked..=*sent).any(|v| got == Some(json!(plan_value(v))))
            })
            .count()
    }
}

fn plan_value(version: u32) -> String {
    format!("v{version}")
}

/// The Identify that sets `plan = "v<version>"`; a higher version has a later timestamp.
pub(crate) fn versioned_event(email: &str, version: u32) -> serde_json::Value {
    identify(
        &format!("{email}-v{version}"),
        email,
        json!({ "plan": plan_value(version) }),
        &event_time(i64::from(version) * 60),
    )
}

/// Posts one event; answers whether the relay acknowledged it (2xx).
pub(crate) async fn post_event(
    http: &reqwest::Client,
    relay_url: &str,
    event: &serde_json::Value,
) -> bool {
    let sent = http
        .post(format!("{relay_url}/v1/segment"))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await;
    matches!(sent, Ok(r) if r.status().is_success())
}

/// Posts every (email, version) from `tasks` concurrent tasks, each sending its share one
/// event per request, and records in the ledger which were acknowledged.
pub(crate) async fn burst(
    http: &reqwest::Client,
    relay_url: &str,
    events: Vec<(String, u32)>,
    tasks: usize,
    ledger: &mut Ledger,
) {
    let mut shares: Vec<Vec<(String, u32)>> = vec![Vec::new(); tasks];
    for (i, e) in events.into_iter().enumerate() {
        shares[i % tasks].push(e);
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let http = http.clone();
            let url = relay_url.to_owned();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for (email, version) in share {
                    let acked = post_event(&http, &url, &versioned_event(&email, version)).await;
                    answers.push((email, version, acked));
                }
                answers
            })
        })
        .collect();
    for handle in handles {
        for (email, version, acked) in handle.await.expect("burst task") {
            ledger.record(&email, version, acked);
        }
    }
}

/// The number in `prefix<n>@example.com`.
fn email_index(email: &str) -> usize {
    let digits: String = email
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a numbered test email")
}

/// Versions 1..=3 for every email, in a shuffled (seeded) order.
pub(crate) fn shuffled_versions(emails: &[String], seed: u64) -> Vec<(String, u32)> {
    let mut events: Vec<(String, u32)> = emails
        .iter()
        .flat_map(|e| (1..=3).map(move |v| (e.clone(), v)))
        .collect();
    events.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    events
}

async fn slow_sandbox() -> TestSandbox {
    start_sandbox(SandboxConfig {
        rate_limit_requests: 20,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await
}

/// Waits (bounded) until the sandbox has applied at least `n` subscriber updates.
async fn wait_for_updates(sb: &TestSandbox, n: u64, relay: &RelayProcess) {
    let reached = eventually(Duration::from_secs(60), || async {
        sb.sandbox.stats().subscriber_updates >= n
    })
    .await;
    assert!(
        reached,
        "delivery did not reach {n} updates: {:?}; relay log:\n{}",
        sb.sandbox.stats(),
        relay.log_tail()
    );
}

/// Restarts the relay on `data_dir` and waits until every acknowledged event has arrived.
async fn restart_and_wait(
    sb: &TestSandbox,
    data_dir: &Path,
    http: &reqwest::Client,
    ledger: &Ledger,
) -> Duration {
    let started = Instant::now();
    let mut relay = RelayProcess::spawn(&sb.url, data_dir, &[]);
    relay.wait_healthy(http).await;
    let subscribers = ledger.acknowledged_subscribers();
    let all_arrived = eventually(DELIVERY_PATIENCE, || async {
        ledger.arrived(&sb.sandbox) == subscribers
    })
    .await;
    assert!(
        all_arrived,
        "after the restart only {} of {subscribers} subscribers show their latest acknowledged \
         plan; sandbox {:?}; relay log:\n{}",
        ledger.arrived(&sb.sandbox),
        sb.sandbox.stats(),
        relay.log_tail()
    );
    started.elapsed()
}

/// SIGKILL mid-delivery loses nothing acknowledged, even events acked just before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_no_acknowledged_event() {
    let sb = slow_sandbox().await;
    let emails = create_members(&sb.sandbox, "crash", 200);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let http = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut first = RelayProcess::spawn(&sb.url, &data_dir, &[]);
    first.wait_healthy(&http).await;
    // Wave one (v1, v2 for everyone) is partly delivered when wave two (v3 for half of them)
    // arrives: at the kill some subscribers hold an older value, some the latest, and for the
    // other half the latest is still wave one's, queued or in flight.
    let (wave_one, wave_two): (Vec<_>, Vec<_>) = shuffled_versions(&emails, 7)
        .into_iter()
        .filter(|(email, version)| *version < 3 || email_index(email).is_multiple_of(2))
        .partition(|(_, version)| *version < 3);
    burst(&http, &first.url, wave_one, 4, &mut ledger).await;
    wait_for_updates(&sb, 40, &first).await;
    burst(&http, &first.url, wave_two, 4, &mut ledger).await;
    wait_for_updates(&sb, 80, &first).await;

    // Acknowledged a moment before the kill: the "answered but not yet committed" window.
    let last: Vec<(String, u32)> = emails.iter().step_by(10).map(|e| (e.clone(), 4)).collect();
    burst(&http, &first.url, last, 20, &mut ledger).await;
    first.kill();

    let updates_before = sb.sandbox.stats().subscriber_updates;
    let arrived_before = ledger.arrived(&sb.sandbox);
    let subscribers = ledger.acknowledged_subscribers();
    assert!(
        arrived_before < subscribers,
        "delivery had already finished when the relay was killed: nothing was tested"
    );
    assert_eq!(
        ledger.acknowledged, 520,
        "every event should be acknowledged"
    );
    eprintln!(
        "killed with {arrived_before} of {subscribers} subscribers up to date \
         ({updates_before} updates applied)"
    );

    let took = restart_and_wait(&sb, &data_dir, &http, &ledger).await;
    eprintln!(
        "acknowledged {} events for {subscribers} subscribers; all {subscribers} arrived after \
         restart (in {:.1} s, {} updates in all)",
        ledger.acknowledged,
        took.as_secs_f64(),
        sb.sandbox.stats().subscriber_updates
    );
}

/// SIGTERM mid-delivery drains, exits 0 in time, and a restart delivers every acked event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_loses_nothing() {
    let sb = slow_sandbox().await;
    let emails = create_members(&sb.sandbox, "term", 50);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let http = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut first = RelayProcess::spawn(&sb.url, &data_dir, &[("RELAY_DRAIN_DEADLINE", "3s")]);
    first.wait_healthy(&http).await;
    burst(
        &http,
        &first.url,
        shuffled_versions(&emails, 11),
        4,
        &mut ledger,
    )
    .await;
    wait_for_updates(&sb, 1, &first).await;

    first.terminate();
    let status = first.wait_exit(Duration::from_secs(30)).await;
    let log = first.log_tail();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM should drain and exit 0 within the deadline; status {status:?}; log:\n{log}"
    );
    assert_eq!(
        ledger.acknowledged, 150,
        "every event should be acknowledged"
    );
    let arrived_before = ledger.arrived(&sb.sandbox);
    let subscribers = ledger.acknowledged_subscribers();
    eprintln!("stopped with {arrived_before} of {subscribers} subscribers up to date");

    let took = restart_and_wait(&sb, &data_dir, &http, &ledger).await;
    eprintln!(
        "acknowledged {} events for {subscribers} subscribers; all {subscribers} arrived after \
         restart (in {:.1} s)",
        ledger.acknowledged,
        took.as_secs_f64()
    );
}
