//! Running it in production: the container health check, readiness through a drain, metrics,
//! secrets from files, logs free of secrets, and start-up refusing bad configuration — most of
//! it through the real binary, as an orchestrator would drive it.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use prosperstack_sandbox::SandboxConfig;
use serde_json::{json, Value};

/// A GET that answers `None` instead of panicking when nothing answers (a server going away).
async fn try_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    Some((resp.status().as_u16(), resp.text().await.ok()?))
}

/// The port of a relay URL like `http://127.0.0.1:4321`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().expect("port")
}

// ---- 1. healthcheck ----

/// `healthcheck --url` exits 0 against a running relay.
#[tokio::test]
async fn healthcheck_exits_0_for_a_running_relay() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let url = format!("{}/healthz", relay.url);
    let done = run_to_exit(relay_command(&["healthcheck", "--url", &url]), PATIENCE).await;
    assert!(done.status.success(), "{:?}: {}", done.status, done.stderr);
}

/// With no `--url`, `healthcheck` asks loopback on the port of `RELAY_LISTEN=0.0.0.0:<port>`.
#[tokio::test]
async fn healthcheck_asks_loopback_when_listening_on_every_address() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let port = port_of(&relay.url);
    let mut cmd = relay_command(&["healthcheck"]);
    cmd.env("RELAY_LISTEN", format!("0.0.0.0:{port}"));
    let done = run_to_exit(cmd, PATIENCE).await;
    assert!(done.status.success(), "{:?}: {}", done.status, done.stderr);
    // Linux routes 0.0.0.0 to loopback anyway, so the URL it reports is the evidence.
    let asked = format!("http://127.0.0.1:{port}/healthz");
    assert!(done.stdout.contains(&asked), "stdout: {}", done.stdout);
}

/// `healthcheck` exits 1 when nothing listens, by `--url` or by `RELAY_LISTEN`.
#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let done = run_to_exit(relay_command(&["healthcheck", "--url", &url]), PATIENCE).await;
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    let mut cmd = relay_command(&["healthcheck"]);
    cmd.env("RELAY_LISTEN", format!("0.0.0.0:{port}"));
    let done = run_to_exit(cmd, PATIENCE).await;
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
}

// ---- 2. readiness through a drain ----

/// `/readyz` is 200 before shutdown, 503 "draining" during the drain while `/healthz` stays
/// 200 and new events get 503; then `run` returns Ok once the drain deadline stops delivery.
#[tokio::test]
async fn readyz_flips_to_503_on_drain_while_healthz_stays_200() {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 1,
        rate_limit_window: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .await;
    let mut relay = TestRelay::start(
        &sb.url,
        &[
            ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "1"),
            ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "60"),
            // Long enough that a loaded machine's polls still see the drain in progress;
            // delivery, waiting for the window, holds the drain open until then.
            ("RELAY_DRAIN_DEADLINE", "12s"),
        ],
    )
    .await;
    let (status, body) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).ok(),
        Some(json!({"status": "ready"}))
    );

    let events = json!([
        identify(
            "d1",
            "john.doe@example.com",
            json!({"plan": "Pro"}),
            "2024-06-01T00:00:00Z"
        ),
        identify(
            "d2",
            "maria.lopez@example.com",
            json!({"plan": "Team"}),
            "2024-06-01T00:00:00Z"
        ),
    ]);
    let (status, answer) = relay.post_json(&events).await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(2)),
        "{answer}"
    );
    // The first upstream request spends the window: delivery now waits a minute for the next, longer than the drain deadline.
    assert!(
        eventually(PATIENCE, || async {
            sb.sandbox.stats().requests_total >= 1
        })
        .await,
        "delivery never started"
    );

    relay.begin_stop();
    let readyz = format!("{}/readyz", relay.url);
    let draining = eventually(PATIENCE, || async {
        let Some((503, body)) = try_get(&readyz).await else {
            return false;
        };
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("draining"))
    })
    .await;
    assert!(
        draining,
        "/readyz never answered 503 with a draining reason"
    );
    assert_eq!(relay.get("/healthz").await.0, 200);
    let late = identify(
        "d3",
        "john.doe@example.com",
        json!({"plan": "Scale"}),
        "2024-06-02T00:00:00Z",
    );
    let (status, body) = relay.post_json(&late).await;
    assert_eq!(status, 503, "Segment retries 503; {body}");

    let task = relay.take_task();
    let result = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("run returns after the drain deadline")
        .expect("run task did not panic");
    assert!(result.is_ok(), "{result:?}");
}

// ---- 3. metrics ----

/// After an Identify, an ignored track event and a 422, `/metrics` carries the documented
/// series, and no email, user id or subscriber id.
#[tokio::test]
async fn metrics_appear_after_traffic_without_personal_data() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "maria.lopez@example.com";
    let event = identify(
        "m1",
        email,
        json!({"plan": "Metered"}),
        "2024-06-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    let (status, answer) = relay.post_json(&payload("track-event.json")).await;
    assert_eq!(
        (status, answer["ignored"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    assert_eq!(
        relay.post_json(&payload("identify-no-email.json")).await.0,
        422
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan") == Some(json!("Metered"))
        })
        .await,
        "the update was never delivered"
    );

    let expected = [
        "relay_events_received_total{type=\"identify\",outcome=\"stored\"} 1",
        "relay_events_received_total{type=\"track\",outcome=\"ignored\"} 1",
        "relay_events_rejected_total",
        "relay_upstream_requests_total{endpoint=\"PUT /v1/subscribers/{id}\",status=\"200\"} 1",
        "relay_upstream_request_duration_seconds_bucket",
        "relay_updates_sent_total 1",
        "relay_budget_remaining",
        "relay_cache_lookups_total",
    ];
    // Counters after the PUT are bumped once its answer is read: poll, bounded.
    let all_present = eventually(PATIENCE, || async {
        let (_, text) = relay.get("/metrics").await;
        expected.iter().all(|e| text.contains(e))
    })
    .await;
    let (status, text) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    let missing: Vec<_> = expected.iter().filter(|e| !text.contains(*e)).collect();
    assert!(
        all_present && missing.is_empty(),
        "missing {missing:?} in:\n{text}"
    );
    assert!(relay.metric("relay_events_rejected_total").await >= 1);
    assert!(
        relay.metric("relay_budget_remaining").await > 0,
        "RateLimit-Remaining was never recorded:\n{text}"
    );

    let mut personal: Vec<String> = vec![
        "@".into(),
        "usr_77105".into(), // the 422's userId
        "usr_48213".into(), // the track event's userId
        "user-maria".into(),
    ];
    for s in sb.sandbox.subscribers() {
        personal.push(s.email);
        personal.push(s.id);
    }
    for p in &personal {
        assert!(
            !text.contains(p.as_str()),
            "{p:?} appears in /metrics:\n{text}"
        );
    }
}

/// With `RELAY_METRICS_LISTEN`, `/metrics` is served on that address and not on the main one.
#[tokio::test]
async fn metrics_served_on_their_own_listener_when_configured() {
    let sb = demo_sandbox().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let relay = TestRelay::start(&sb.url, &[("RELAY_METRICS_LISTEN", &listen)]).await;
    let url = format!("http://{listen}/metrics");
    let served = eventually(PATIENCE, || async {
        matches!(try_get(&url).await, Some((200, text)) if text.contains("relay_events_received"))
    })
    .await;
    assert!(served, "no metrics on {url}");
    assert_eq!(relay.get("/metrics").await.0, 404);
    assert_eq!(relay.get("/healthz").await.0, 200);
}

// ---- 4. secrets from files ----

const FILE_KEY: &str = "key_test_sandbox";
const FILE_SECRET: &str = "file-shared-secret-7Qp";
const FILE_TOKEN: &str = "file-ingest-token-3Wm";

/// Writes the three secret files (with a trailing newline, as `echo` or a Kubernetes Secret
/// would) and answers the `*_FILE` variables pointing at them.
fn secret_files(dir: &Path) -> Vec<(String, String)> {
    [
        ("PROSPERSTACK_API_KEY_FILE", FILE_KEY),
        ("SEGMENT_SHARED_SECRET_FILE", FILE_SECRET),
        ("RELAY_INGEST_TOKEN_FILE", FILE_TOKEN),
    ]
    .iter()
    .map(|(var, value)| {
        let path = dir.join(var.to_lowercase());
        std::fs::write(&path, format!("{value}\n")).expect("write secret file");
        (var.to_string(), path.display().to_string())
    })
    .collect()
}

/// `check-config` accepts secrets given only as `*_FILE` paths.
#[tokio::test]
async fn check_config_reads_secrets_from_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = relay_command(&["check-config"]);
    cmd.envs(secret_files(tmp.path()));
    let done = run_to_exit(cmd, PATIENCE).await;
    assert!(done.status.success(), "{:?}: {}", done.status, done.stderr);
}

/// A `*_FILE` naming a missing file stops `check-config` with one line naming that variable.
#[tokio::test]
async fn check_config_names_a_missing_secret_file() {
    let tmp = tempfile::tempdir().unwrap();
    let files = secret_files(tmp.path());
    for (var, _) in &files {
        let mut cmd = relay_command(&["check-config"]);
        cmd.envs(files.iter().filter(|(v, _)| v != var).cloned());
        cmd.env(var, tmp.path().join("no-such-file"));
        let done = run_to_exit(cmd, PATIENCE).await;
        assert!(!done.status.success(), "{var}: exited 0");
        assert_one_line_naming(&done.stderr, var);
    }
}

/// `serve` with secrets only from files: the key reaches the sandbox, and a request needs both
/// the file's signature secret and its bearer token.
#[tokio::test]
async fn serve_uses_secrets_from_files() {
    let sb = demo_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tmp.path().join("relay.log");
    let mut cmd = relay_command(&["serve"]);
    cmd.envs(secret_files(tmp.path()))
        .env("PROSPERSTACK_API_URL", &sb.url)
        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAY_DATA_DIR", tmp.path().join("data"))
        .env("RELAY_COALESCE_DELAY", "0ms");
    let mut relay = spawn_logged(cmd, &log);
    wait_until_serving(&mut relay, &base, &log).await;

    let email = "john.doe@example.com";
    let body = identify(
        "f1",
        email,
        json!({"plan": "FromFiles"}),
        "2024-06-01T00:00:00Z",
    )
    .to_string();
    let signature = sign(FILE_SECRET, body.as_bytes());
    let bearer = format!("Bearer {FILE_TOKEN}");
    let post = |headers: Vec<(&'static str, String)>| {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/v1/segment"))
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.expect("relay answers").status().as_u16() }
    };
    assert_eq!(post(vec![]).await, 401, "no signature, no token");
    assert_eq!(
        post(vec![("authorization", bearer.clone())]).await,
        401,
        "no signature"
    );
    assert_eq!(
        post(vec![("x-signature", signature.clone())]).await,
        401,
        "no token"
    );
    assert_eq!(
        post(vec![("x-signature", signature), ("authorization", bearer)]).await,
        200
    );
    let delivered = eventually(PATIENCE, || async {
        property(&sb.sandbox, email, "plan") == Some(json!("FromFiles"))
    })
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        delivered,
        "not delivered with the key from its file; log:\n{log_text}"
    );
}

// ---- 5. logs ----

const LOG_KEY: &str = "key_test_Zx9SECRETkey";
const LOG_SECRET: &str = "Sh4redSECRETzq";
const LOG_TOKEN: &str = "T0kenSECRETqq";
const LOG_EMAIL: &str = "maria.lopez@example.com";

/// Runs `serve` with `RUST_LOG`/`RELAY_LOG_FORMAT`, sends signed and refused traffic, lets it
/// deliver, stops it with SIGTERM and answers its stderr.
async fn captured_log(rust_log: &str, format: &str) -> String {
    let sb = start_sandbox(SandboxConfig {
        api_keys: vec![LOG_KEY.into()],
        rate_limit_requests: 1000,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tmp.path().join("relay.log");
    let mut cmd = relay_command(&["serve"]);
    cmd.env("RUST_LOG", rust_log)
        .env("RELAY_LOG_FORMAT", format)
        .env("PROSPERSTACK_API_KEY", LOG_KEY)
        .env("SEGMENT_SHARED_SECRET", LOG_SECRET)
        .env("RELAY_INGEST_TOKEN", LOG_TOKEN)
        .env("PROSPERSTACK_API_URL", &sb.url)
        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAY_DATA_DIR", tmp.path().join("data"))
        .env("RELAY_COALESCE_DELAY", "0ms");
    let mut relay = spawn_logged(cmd, &log);
    wait_until_serving(&mut relay, &base, &log).await;

    let body = identify(
        "l1",
        LOG_EMAIL,
        json!({"plan": "Logged"}),
        "2024-06-01T00:00:00Z",
    )
    .to_string();
    let http = reqwest::Client::new();
    let send = |signature: &str, token: &str| {
        http.post(format!("{base}/v1/segment"))
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .header("authorization", format!("Bearer {token}"))
            .body(body.clone())
            .send()
    };
    let good = sign(LOG_SECRET, body.as_bytes());
    // Refusals are where a careless handler would echo what it was given.
    let wrong_token = send(&good, "not-the-token").await.expect("answer");
    assert_eq!(wrong_token.status().as_u16(), 401);
    let wrong_signature = send(&"0".repeat(40), LOG_TOKEN).await.expect("answer");
    assert_eq!(wrong_signature.status().as_u16(), 401);
    let accepted = send(&good, LOG_TOKEN).await.expect("answer");
    assert_eq!(accepted.status().as_u16(), 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, LOG_EMAIL, "plan") == Some(json!("Logged"))
        })
        .await,
        "not delivered; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    relay.terminate();
    let status = relay.wait_exit(PATIENCE).await;
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM should stop the relay cleanly, got {status:?}; log:\n{text}"
    );
    text
}

/// The secrets a log must never contain, including the key as it travels in basic auth.
fn secrets() -> [String; 4] {
    [
        LOG_KEY.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(format!("{LOG_KEY}:")),
        LOG_SECRET.to_owned(),
        LOG_TOKEN.to_owned(),
    ]
}

/// At info, JSON logs: every line parses, requests are logged with their route, and no
/// secret or email appears.
#[tokio::test]
async fn info_logs_are_json_without_secrets_or_emails() {
    let text = captured_log("info", "json").await;
    for secret in secrets() {
        assert!(!text.contains(&secret), "{secret:?} in the log:\n{text}");
    }
    assert!(
        !text.contains(LOG_EMAIL),
        "an email in the info log:\n{text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request_line = lines
        .iter()
        .any(|v| v["level"] == "INFO" && v.to_string().contains("\"route\":\"/v1/segment\""));
    assert!(
        request_line,
        "no info line for a /v1/segment request:\n{text}"
    );
}

/// Even at trace, no secret and no email appears in the logs, and a log written to a file
/// carries no ANSI colour codes.
#[tokio::test]
async fn trace_logs_carry_no_secrets_emails_or_colours() {
    let text = captured_log("trace", "text").await;
    assert!(!text.is_empty(), "nothing was logged at trace");
    for secret in secrets() {
        assert!(!text.contains(&secret), "{secret:?} in the trace log");
    }
    let email_lines: Vec<&str> = text.lines().filter(|l| l.contains(LOG_EMAIL)).collect();
    assert!(
        email_lines.is_empty(),
        "emails in the trace log:\n{}",
        email_lines.join("\n")
    );
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a log file");
}

// ---- 6. configuration errors ----

/// Asserts `stderr` is exactly one non-empty line containing `setting`.
fn assert_one_line_naming(stderr: &str, setting: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty() && lines[0].contains(setting),
        "expected one line naming {setting}, got:\n{stderr}"
    );
}

/// One bad-configuration case: the setting the error must name, and how to get it wrong.
struct BadConfig<'a> {
    setting: &'a str,
    key: &'a str,
    env: &'a [(&'a str, &'a str)],
    file: Option<&'a Path>,
}

/// Bad settings stop `serve` and `check-config` with one line naming the setting, and the
/// line never repeats a would-be key.
#[tokio::test]
async fn bad_configuration_stops_startup_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("top.toml");
    std::fs::write(&top, "listen = \"127.0.0.1:0\"\nbogus_setting = 1\n").unwrap();
    let nested = tmp.path().join("nested.toml");
    std::fs::write(
        &nested,
        "[prosperstack]\napi_url = \"http://127.0.0.1:9\"\nratelimit = 5\n",
    )
    .unwrap();
    let wrong_key = "sk_live_Pq7notAProsperStackKey";
    let good_key = "key_test_sandbox";
    let bad_url = [("PROSPERSTACK_API_URL", "not a url")];
    let cases = [
        BadConfig {
            setting: "PROSPERSTACK_API_KEY",
            key: wrong_key,
            env: &[],
            file: None,
        },
        BadConfig {
            setting: "PROSPERSTACK_API_URL",
            key: good_key,
            env: &bad_url,
            file: None,
        },
        BadConfig {
            setting: "bogus_setting",
            key: good_key,
            env: &[],
            file: Some(&top),
        },
        BadConfig {
            setting: "ratelimit",
            key: good_key,
            env: &[],
            file: Some(&nested),
        },
    ];
    for subcommand in ["serve", "check-config"] {
        for case in &cases {
            let setting = case.setting;
            let mut args = vec![subcommand];
            let file_arg;
            if let Some(file) = case.file {
                file_arg = file.display().to_string();
                args.extend(["--config", &file_arg]);
            }
            let mut cmd = relay_command(&args);
            cmd.env("PROSPERSTACK_API_KEY", case.key)
                .envs(case.env.iter().copied())
                .env("RELAY_LISTEN", "127.0.0.1:0")
                .env("RELAY_DATA_DIR", tmp.path().join("data"));
            let done = run_to_exit(cmd, PATIENCE).await;
            assert!(
                !done.status.success(),
                "{subcommand} with a bad {setting} exited 0"
            );
            assert_one_line_naming(&done.stderr, setting);
            assert!(!done.stderr.contains(wrong_key), "{}", done.stderr);
        }
    }
}

/// A TOML syntax error in the config file also stops start-up with one line naming the file
/// setting (toml's own message spans lines: "invalid string\nexpected ...").
#[tokio::test]
async fn config_file_syntax_error_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("broken.toml");
    std::fs::write(&file, "listen = \n").unwrap();
    let file_arg = file.display().to_string();
    for subcommand in ["serve", "check-config"] {
        let mut cmd = relay_command(&[subcommand, "--config", &file_arg]);
        cmd.env("PROSPERSTACK_API_KEY", "key_test_sandbox")
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_DATA_DIR", tmp.path().join("data"));
        let done = run_to_exit(cmd, PATIENCE).await;
        assert!(!done.status.success(), "{subcommand} exited 0");
        assert_one_line_naming(&done.stderr, "RELAY_CONFIG");
    }
}

/// `healthcheck` finds the relay when its listen address comes from the config file (as
/// `serve` does), not only from `RELAY_LISTEN`.
#[tokio::test]
async fn healthcheck_honours_listen_from_the_config_file() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let port = port_of(&relay.url);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("relay.toml");
    std::fs::write(&file, format!("listen = \"0.0.0.0:{port}\"\n")).unwrap();
    let mut cmd = relay_command(&["healthcheck"]);
    cmd.env("RELAY_CONFIG", &file);
    let done = run_to_exit(cmd, PATIENCE).await;
    let asked = format!("http://127.0.0.1:{port}/healthz");
    assert!(
        done.status.success() && done.stdout.contains(&asked),
        "expected a healthy answer from {asked}; got {:?}, stdout: {} stderr: {}",
        done.status,
        done.stdout,
        done.stderr
    );
}

/// `check-config` and `serve` refuse, with exit 2 and one line naming `RELAY_DATA_DIR` and the
/// path, a data directory this user cannot write (where permissions can stop this user) and one
/// that cannot be created.
#[tokio::test]
async fn unwritable_data_dir_stops_check_config_and_serve() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let read_only = tmp.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut dirs = vec![tmp.path().join("a-file").join("data")];
    std::fs::write(tmp.path().join("a-file"), b"").unwrap();
    if std::fs::write(read_only.join("probe"), b"").is_ok() {
        eprintln!("notice: permissions do not stop this user's writes (root?); the read-only data directory case is skipped");
    } else {
        dirs.push(read_only.clone());
    }
    for dir in &dirs {
        for subcommand in ["check-config", "serve"] {
            let mut cmd = relay_command(&[subcommand]);
            cmd.env("PROSPERSTACK_API_KEY", "key_test_sandbox")
                .env("RELAY_LISTEN", "127.0.0.1:0")
                .env("RELAY_DATA_DIR", dir);
            let done = run_to_exit(cmd, PATIENCE).await;
            assert_eq!(done.status.code(), Some(2), "{subcommand}: {}", done.stderr);
            assert_one_line_naming(&done.stderr, "data_dir (RELAY_DATA_DIR)");
            assert!(
                done.stderr.contains(&dir.display().to_string()),
                "{}",
                done.stderr
            );
        }
    }
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `/metrics` on the main listener's address is refused by `check-config` and `serve` alike.
#[tokio::test]
async fn metrics_listen_equal_to_listen_stops_check_config_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    for subcommand in ["check-config", "serve"] {
        let mut cmd = relay_command(&[subcommand]);
        cmd.env("PROSPERSTACK_API_KEY", "key_test_sandbox")
            .env("RELAY_LISTEN", &addr)
            .env("RELAY_METRICS_LISTEN", &addr)
            .env("RELAY_DATA_DIR", tmp.path().join("data"));
        let done = run_to_exit(cmd, PATIENCE).await;
        assert_eq!(done.status.code(), Some(2), "{subcommand}: {}", done.stderr);
        assert_one_line_naming(&done.stderr, "metrics_listen (RELAY_METRICS_LISTEN)");
    }
}

/// `healthcheck` needs no secrets: an unreadable key file (as in a container where only the
/// relay's user may read it) does not fail it.
#[tokio::test]
async fn healthcheck_ignores_unreadable_secrets() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let mut cmd = relay_command(&["healthcheck"]);
    cmd.env("RELAY_LISTEN", format!("0.0.0.0:{}", port_of(&relay.url)))
        .env("PROSPERSTACK_API_KEY_FILE", "/no/such/secret")
        .env("SEGMENT_SHARED_SECRET_FILE", "/no/such/secret");
    let done = run_to_exit(cmd, PATIENCE).await;
    assert!(done.status.success(), "{:?}: {}", done.status, done.stderr);
}
