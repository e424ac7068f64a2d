//! Two real `serve` processes on one PostgreSQL database, against one in-process sandbox: a
//! kill -9 of the leader mid-drain, a rolling restart, the database cut off, and one messageId
//! posted to both at once. Every acknowledged event lands, and no 429 comes from two replicas
//! spending one window.
//!
//! Each test has a schema of its own (`options=-csearch_path=…` in the URL), dropped at the
//! end; without `RELAY_TEST_DATABASE_URL` the tests say they were skipped and pass. The lease is
//! scaled down to 1 s (`RELAY_TEST_LEADER_LEASE` overrides it, to measure failover with the
//! default 10 s) and the rate limit to 20 requests a window (1 s; 4 s for the failover).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prosperstack_sandbox::SandboxConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::crash::{burst, post_event, shuffled_versions, versioned_event, Ledger, RelayProcess};

const DATABASE_URL_VAR: &str = "RELAY_TEST_DATABASE_URL";
/// How long the replicas get to deliver everything acknowledged.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(120);

/// A schema of its own on the test server, dropped when the test ends.
struct Schema {
    admin: url::Url,
    name: String,
}

impl Schema {
    /// A fresh schema, or `None` (saying so on stderr) when no server is configured.
    async fn new() -> Option<Schema> {
        let Some(url) = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())
        else {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                // One write, past the harness's capture, so `cargo test` shows it whole.
                let line = format!("skipped: PostgreSQL replica tests (set {DATABASE_URL_VAR})\n");
                let _ = std::io::stderr().write_all(line.as_bytes());
            });
            return None;
        };
        let admin = url::Url::parse(&url).expect("RELAY_TEST_DATABASE_URL is a URL");
        let name = format!("relay_replicas_{:016x}", rand::random::<u64>());
        sql(&admin, &format!("CREATE SCHEMA {name}")).await;
        Some(Schema { admin, name })
    }

    /// The URL the relays use: the test's schema, through `via` (a proxy) if given.
    fn url(&self, via: Option<SocketAddr>) -> String {
        let mut url = self.admin.clone();
        if let Some(addr) = via {
            url.set_host(Some(&addr.ip().to_string())).expect("host");
            url.set_port(Some(addr.port())).expect("port");
        }
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={}", self.name));
        url.to_string()
    }

    /// Where the server listens, for a proxy in front of it.
    fn server(&self) -> SocketAddr {
        let host = self.admin.host_str().unwrap_or("127.0.0.1");
        let port = self.admin.port().unwrap_or(5432);
        format!("{host}:{port}").parse().expect("a host:port")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(sql(
                &admin,
                &format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            ));
        })
        .join();
    }
}

async fn sql(server: &url::Url, statement: &str) {
    let (client, connection) = tokio_postgres::connect(server.as_str(), tokio_postgres::NoTls)
        .await
        .expect("the test's PostgreSQL server answers");
    tokio::spawn(connection);
    client.batch_execute(statement).await.expect(statement);
}

/// The lease the replicas run with.
fn leader_lease() -> String {
    std::env::var("RELAY_TEST_LEADER_LEASE").unwrap_or_else(|_| "1s".into())
}

/// A replica: `serve` on the test's database, with the scaled lease and rate limit.
async fn replica(sb: &TestSandbox, dir: &Path, name: &str, database_url: &str) -> RelayProcess {
    let lease = leader_lease();
    let env = [
        ("RELAY_DATABASE_URL", database_url),
        ("RELAY_LEADER_LEASE", lease.as_str()),
        ("RELAY_DRAIN_DEADLINE", "5s"),
        ("RUST_LOG", "info"),
    ];
    let mut relay = RelayProcess::spawn(&sb.url, &dir.join(name), &env);
    relay.wait_healthy(&reqwest::Client::new()).await;
    relay
}

/// A sandbox allowing 20 requests a 4 s window, while the relays are told 40 (as if the key's
/// other clients spent the rest): the leader runs on the server's headers, spending the window
/// in its first half and waiting for the reset. A standby taking over (about 1.3 s after a
/// kill) that did not start from what the leader saved would send into the spent window.
async fn windowed_sandbox() -> TestSandbox {
    start_sandbox(SandboxConfig {
        rate_limit_requests: 20,
        rate_limit_window: Duration::from_secs(4),
        ..SandboxConfig::default()
    })
    .await
}

const WINDOWED: [(&str, &str); 2] = [
    ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "40"),
    ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "4"),
];

/// A replica against [`windowed_sandbox`].
async fn windowed_replica(sb: &TestSandbox, dir: &Path, name: &str, url: &str) -> RelayProcess {
    let lease = leader_lease();
    let mut env = vec![
        ("RELAY_DATABASE_URL", url),
        ("RELAY_LEADER_LEASE", lease.as_str()),
        ("RUST_LOG", "info"),
    ];
    env.extend(WINDOWED);
    let mut relay = RelayProcess::spawn(&sb.url, &dir.join(name), &env);
    relay.wait_healthy(&reqwest::Client::new()).await;
    relay
}

/// The replica's `/status` leader part: (leading, epoch).
async fn leading(http: &reqwest::Client, relay: &RelayProcess) -> Option<(bool, Option<i64>)> {
    let status: Value = http
        .get(format!("{}/status", relay.url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let leader = status.get("leader")?;
    Some((leader["leading"].as_bool()?, leader["epoch"].as_i64()))
}

/// What the replica last heard the server's window had left (`RateLimit-Remaining`).
async fn window_left(http: &reqwest::Client, relay: &RelayProcess) -> Option<u64> {
    let status: Value = http
        .get(format!("{}/status", relay.url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["budget"]["last_seen"]["remaining"].as_u64()
}

/// Which of `relays` leads, once one does (bounded wait).
async fn wait_for_leader(http: &reqwest::Client, relays: &[&RelayProcess]) -> usize {
    let found = Arc::new(Mutex::new(None));
    let led = eventually(PATIENCE, || async {
        for (i, relay) in relays.iter().enumerate() {
            if matches!(leading(http, relay).await, Some((true, _))) {
                *found.lock().expect("lock") = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    assert!(led, "no replica took the delivery lease");
    let index = found.lock().expect("lock").expect("a leader");
    index
}

/// Waits until every subscriber with an acknowledged event shows its latest acknowledged value.
async fn wait_all_arrived(sb: &TestSandbox, ledger: &Ledger, relays: &[&RelayProcess]) {
    let subscribers = ledger.acknowledged_subscribers();
    let all = eventually(DELIVERY_PATIENCE, || async {
        ledger.arrived(&sb.sandbox) == subscribers
    })
    .await;
    let logs: Vec<String> = relays.iter().map(|r| r.log_tail()).collect();
    assert!(
        all,
        "only {} of {subscribers} subscribers show their latest acknowledged value; sandbox {:?}; \
         logs:\n{}",
        ledger.arrived(&sb.sandbox),
        sb.sandbox.stats(),
        logs.join("\n-----\n")
    );
}

/// kill -9 of the leader mid-drain: the standby takes over, every acknowledged latest value
/// lands, and the sandbox answers no 429 (the budget was handed over through the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_mid_drain_loses_nothing_and_spends_one_window() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let sb = windowed_sandbox().await;
    let emails = create_members(&sb.sandbox, "failover", 100);
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = schema.url(None);
    let http = reqwest::Client::new();
    let mut relays = [
        windowed_replica(&sb, tmp.path(), "a", &url).await,
        windowed_replica(&sb, tmp.path(), "b", &url).await,
    ];
    let mut ledger = Ledger::default();
    let (one, two): (Vec<_>, Vec<_>) = shuffled_versions(&emails, 3)
        .into_iter()
        .filter(|(_, v)| *v < 3)
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let strip = |v: Vec<(usize, (String, u32))>| v.into_iter().map(|(_, e)| e).collect();
    burst(&http, &relays[0].url, strip(one), 4, &mut ledger).await;
    burst(&http, &relays[1].url, strip(two), 4, &mut ledger).await;
    assert_eq!(
        ledger.acknowledged, 200,
        "every event should be acknowledged"
    );

    let updated = |n: u64| {
        let sb = &sb;
        move || async move { sb.sandbox.stats().subscriber_updates >= n }
    };
    assert!(
        eventually(Duration::from_secs(60), updated(20)).await,
        "no delivery"
    );
    let leader = wait_for_leader(&http, &[&relays[0], &relays[1]]).await;
    let standby = 1 - leader;
    // Killed just as it has spent a window: the hardest moment for the standby's budget.
    let spent = eventually(Duration::from_secs(30), || async {
        window_left(&http, &relays[leader]).await == Some(0)
    })
    .await;
    assert!(spent, "the leader never saw its window spent");
    relays[leader].kill();
    let killed = Instant::now();
    let at_kill = sb.sandbox.stats().subscriber_updates;
    assert!(
        ledger.arrived(&sb.sandbox) < ledger.acknowledged_subscribers(),
        "the drain had finished before the kill: nothing was tested"
    );

    let took_over = eventually(Duration::from_secs(60), || async {
        matches!(leading(&http, &relays[standby]).await, Some((true, _)))
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        took_over,
        "the standby never took the lease:\n{}",
        relays[standby].log_tail()
    );
    // An update the killed leader had in flight may still land: wait for two more.
    let resumed = eventually(Duration::from_secs(60), updated(at_kill + 2)).await;
    let failover = killed.elapsed();
    assert!(
        resumed,
        "the standby never delivered:\n{}",
        relays[standby].log_tail()
    );
    assert!(matches!(
        leading(&http, &relays[standby]).await,
        Some((true, Some(_)))
    ));
    wait_all_arrived(&sb, &ledger, &[&relays[standby]]).await;
    let stats = sb.sandbox.stats();
    eprintln!(
        "failover (leader_lease {}): kill -9 at {at_kill} updates, with the window spent; the \
         standby led after {:.2} s, its updates resumed after {:.2} s (at the window's reset); \
         429s: {}; {} requests, {} updates for 100 subscribers",
        leader_lease(),
        takeover.as_secs_f64(),
        failover.as_secs_f64(),
        stats.rate_limited_total,
        stats.requests_total,
        stats.subscriber_updates
    );
    assert_eq!(stats.rate_limited_total, 0, "429s: {stats:?}");
}

/// Posts events for `emails` round-robin over the replicas in `urls` until `stop`, a version
/// higher each round, and records which were acknowledged.
async fn keep_posting(
    http: reqwest::Client,
    urls: Arc<Mutex<Vec<String>>>,
    emails: Vec<String>,
    stop: CancellationToken,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let email = &emails[i % emails.len()];
        let version = u32::try_from(i / emails.len() + 1).expect("a small version");
        let url = {
            let urls = urls.lock().expect("lock");
            urls[i % urls.len()].clone()
        };
        let acked = post_event(&http, &url, &versioned_event(email, version)).await;
        ledger.record(email, version, acked);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ledger
}

/// Rolling restart: each replica SIGTERMed (it exits 0, handing the lease over) and started
/// again in turn while events are posted: every acknowledged event lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_acknowledged_event() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let sb = demo_sandbox().await;
    let emails = create_members(&sb.sandbox, "rolling", 30);
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = schema.url(None);
    let http = reqwest::Client::new();
    let mut relays = [
        replica(&sb, tmp.path(), "a", &url).await,
        replica(&sb, tmp.path(), "b", &url).await,
    ];
    let urls = Arc::new(Mutex::new(relays.iter().map(|r| r.url.clone()).collect()));
    let stop = CancellationToken::new();
    let poster = tokio::spawn(keep_posting(
        http.clone(),
        urls.clone(),
        emails,
        stop.clone(),
    ));
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let mut handovers = Vec::new();
    for (i, name) in ["a2", "b2"].into_iter().enumerate() {
        let was_leading = matches!(leading(&http, &relays[i]).await, Some((true, _)));
        let stopped = Instant::now();
        relays[i].terminate();
        if was_leading {
            let other = &relays[1 - i];
            let took = eventually(PATIENCE, || async {
                matches!(leading(&http, other).await, Some((true, _)))
            })
            .await;
            assert!(took, "no handover on SIGTERM:\n{}", other.log_tail());
            handovers.push(stopped.elapsed().as_secs_f64());
        }
        let exit = relays[i].wait_exit(Duration::from_secs(30)).await;
        assert_eq!(
            exit.and_then(|s| s.code()),
            Some(0),
            "{name}'s predecessor did not drain and exit 0:\n{}",
            relays[i].log_tail()
        );
        relays[i] = replica(&sb, tmp.path(), name, &url).await;
        urls.lock().expect("lock")[i] = relays[i].url.clone();
        settle().await;
    }
    stop.cancel();
    let ledger = poster.await.expect("poster");
    assert!(
        ledger.acknowledged > 30,
        "only {} acknowledged",
        ledger.acknowledged
    );
    wait_all_arrived(&sb, &ledger, &[&relays[0], &relays[1]]).await;
    eprintln!(
        "rolling restart (leader_lease {}): {} events acknowledged for {} subscribers, all \
         landed; SIGTERM to the standby leading: {handovers:.2?} s; 429s: {}",
        leader_lease(),
        ledger.acknowledged,
        ledger.acknowledged_subscribers(),
        sb.sandbox.stats().rate_limited_total
    );
}

/// A TCP proxy between the relays and PostgreSQL that the test can cut: cut, it closes every
/// connection it carries and every new one at once, as a network partition that resets would.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(server: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let proxy = Proxy {
            addr: listener.local_addr().expect("addr"),
            cut: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (cut, connections, stop) = (
            proxy.cut.clone(),
            proxy.connections.clone(),
            proxy.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let token = connections.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        proxy
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().expect("lock").cancel();
    }

    fn restore(&self) {
        *self.connections.lock().expect("lock") = CancellationToken::new();
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.connections.lock().expect("lock").cancel();
    }
}

/// The status of one post, `None` when the relay did not answer.
async fn post_status(http: &reqwest::Client, url: &str, event: &Value) -> Option<u16> {
    let sent = http
        .post(format!("{url}/v1/segment"))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await;
    sent.ok().map(|r| r.status().as_u16())
}

async fn ready_status(http: &reqwest::Client, relay: &RelayProcess) -> Option<u16> {
    let answer = http.get(format!("{}/readyz", relay.url)).send().await;
    answer.ok().map(|r| r.status().as_u16())
}

/// How long the database stays cut off: the 30 s, many times the test's lease, so the
/// leader's lease lapses meanwhile and delivery must find its way back by itself.
const CUT_FOR: Duration = Duration::from_secs(30);

/// The database cut off: ingest answers 503 and `/readyz` 503, nothing acknowledged is lost,
/// and delivery resumes by itself once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cut_off_answers_503_and_recovers() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let proxy = Proxy::start(schema.server()).await;
    let sb = demo_sandbox().await;
    let emails = create_members(&sb.sandbox, "cut", 40);
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = schema.url(Some(proxy.addr));
    let http = reqwest::Client::new();
    let relays = [
        replica(&sb, tmp.path(), "a", &url).await,
        replica(&sb, tmp.path(), "b", &url).await,
    ];
    let mut ledger = Ledger::default();
    let (before, after) = emails.split_at(20);
    let first: Vec<(String, u32)> = before.iter().map(|e| (e.clone(), 1)).collect();
    burst(&http, &relays[0].url, first, 4, &mut ledger).await;

    proxy.cut();
    let cut_at = Instant::now();
    let probe = versioned_event(&after[0], 9);
    for relay in &relays {
        let refused = eventually(PATIENCE, || async {
            post_status(&http, &relay.url, &probe).await == Some(503)
        })
        .await;
        assert!(refused, "ingest never answered 503:\n{}", relay.log_tail());
        let unready = eventually(PATIENCE, || async {
            ready_status(&http, relay).await == Some(503)
        })
        .await;
        assert!(unready, "/readyz never answered 503:\n{}", relay.log_tail());
    }
    // Anything posted while the database is away must not be acknowledged.
    let during: Vec<(String, u32)> = after.iter().map(|e| (e.clone(), 2)).collect();
    burst(&http, &relays[1].url, during, 4, &mut ledger).await;
    let held = CUT_FOR.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(held).await;
    proxy.restore();

    for relay in &relays {
        let ready = eventually(PATIENCE, || async {
            ready_status(&http, relay).await == Some(200)
        })
        .await;
        assert!(ready, "/readyz never recovered:\n{}", relay.log_tail());
    }
    let last: Vec<(String, u32)> = emails.iter().map(|e| (e.clone(), 3)).collect();
    burst(&http, &relays[1].url, last, 4, &mut ledger).await;
    wait_all_arrived(&sb, &ledger, &[&relays[0], &relays[1]]).await;
    eprintln!(
        "database cut for {:.1} s: {} events acknowledged, all landed",
        CUT_FOR.as_secs_f64(),
        ledger.acknowledged
    );
}

/// The same messageId posted to both replicas at once is stored once: across the two answers
/// one accepts it and the other calls it a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_id_posted_to_both_replicas_is_stored_once() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let sb = demo_sandbox().await;
    let emails = create_members(&sb.sandbox, "twice", 50);
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = schema.url(None);
    let http = reqwest::Client::new();
    let relays = [
        replica(&sb, tmp.path(), "a", &url).await,
        replica(&sb, tmp.path(), "b", &url).await,
    ];
    let mut accepted = 0;
    let mut duplicates = 0;
    for email in &emails {
        let event = versioned_event(email, 1);
        let (one, two) = tokio::join!(
            post_answer(&http, &relays[0].url, &event),
            post_answer(&http, &relays[1].url, &event)
        );
        for answer in [one, two] {
            accepted += answer["accepted"].as_u64().unwrap_or(0);
            duplicates += answer["duplicates"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!((accepted, duplicates), (50, 50));
    let mut ledger = Ledger::default();
    for email in &emails {
        ledger.record(email, 1, true);
    }
    wait_all_arrived(&sb, &ledger, &[&relays[0], &relays[1]]).await;
    assert_eq!(sb.sandbox.stats().subscriber_updates, 50);
}

/// Posts until the relay answers 2xx (a 503 is retried, as Segment would); the answer's body.
async fn post_answer(http: &reqwest::Client, url: &str, event: &Value) -> Value {
    for _ in 0..20 {
        let sent = http
            .post(format!("{url}/v1/segment"))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await;
        if let Ok(answer) = sent {
            if answer.status().is_success() {
                return answer.json().await.unwrap_or(json!({}));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never acknowledged the event");
}
