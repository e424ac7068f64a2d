//! What an operator sees: `/status` during and after a backlog, progress lines with an ETA, a
//! refused API key that is loud and pauses delivery, probes kept out of the info log.

use std::time::Duration;

use crate::common::*;
use prosperstack_sandbox::SandboxConfig;
use serde_json::{json, Value};

/// A sandbox and relay sharing a scaled limit of 10 requests a second.
async fn scaled(extra: &[(&str, &str)]) -> (TestSandbox, TestRelay) {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 10,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let mut env = vec![
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "10"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    let relay = TestRelay::start(&sb.url, &env).await;
    (sb, relay)
}

async fn status(relay: &TestRelay) -> Value {
    let (code, body) = relay.get("/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// During a backlog `/status` shows what is due, the budget and an ETA; after it, nothing due,
/// no ETA, the last delivery, and the trait names that matched nothing (names only).
#[tokio::test(start_paused = true)]
async fn status_follows_a_backlog() {
    let (sb, relay) = scaled(&[]).await;
    let emails = create_members(&sb.sandbox, "status", 60);
    let events: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            identify(
                &format!("st{i}"),
                e,
                json!({"plan": "Pro", "Shoe size": 42}),
                &event_time(0),
            )
        })
        .collect();
    assert_eq!(relay.post_json(&json!(events)).await.0, 200);

    let during = status(&relay).await;
    assert!(
        during["queue"]["due"]["subscribers"].as_u64() > Some(0),
        "{during:#}"
    );
    assert!(during["eta_secs"].as_u64().is_some(), "{during:#}");
    assert_eq!(during["budget"]["limit"], 10);
    assert_eq!(during["queue"]["waiting"]["subscribers"], 0);

    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &emails) }).await);
    let drained = eventually(PATIENCE, || async {
        status(&relay).await["queue"]["subscribers"] == 0
    })
    .await;
    assert!(drained);
    let after = status(&relay).await;
    assert_eq!(after["eta_secs"], Value::Null, "{after:#}");
    assert_eq!(after["upstream"]["key"], "accepted");
    assert!(after["upstream"]["last_delivery_ms"].as_i64().is_some());
    assert_eq!(
        after["unmatched_traits"][0],
        json!({"name": "Shoe size", "count": 60})
    );
    assert!(after["budget"]["last_seen"]["limit"] == 10, "{after:#}");
    let text = after.to_string();
    assert!(!contains_email(&text), "an email in the status: {text}");
}

/// A backlog logs a progress line at the interval, with what is left and an ETA, and one line
/// when it is drained.
#[tokio::test(start_paused = true)]
async fn progress_lines_during_a_backlog_and_a_drained_line_after() {
    let (sb, relay) = scaled(&[("RELAY_PROGRESS_INTERVAL", "2s")]).await;
    let emails = create_members(&sb.sandbox, "progress", 80);
    assert_eq!(relay.post_json(&plan_events("pr", &emails)).await.0, 200);
    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &emails) }).await);
    let drained = eventually(PATIENCE, || async {
        relay.logs.text().contains("backlog drained")
    })
    .await;
    let logs = relay.logs.text();
    assert!(drained, "no drained line:\n{logs}");
    let progress: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("INFO") && l.contains(" backlog ") && l.contains("eta="))
        .collect();
    assert!(!progress.is_empty(), "no progress line:\n{logs}");
    assert!(progress[0].contains("due_subscribers="), "{}", progress[0]);
    let drained_line = logs.lines().find(|l| l.contains("backlog drained"));
    assert!(
        drained_line.is_some_and(|l| l.contains("delivered=")),
        "{logs}"
    );
}

/// A refused key is logged at error at most once a minute, shows in `/status` and a metric,
/// and pauses delivery (a probe a minute) instead of spending the budget on 401s; `/readyz`
/// stays 200 because events are still safely queued.
#[tokio::test(start_paused = true)]
async fn refused_key_is_loud_and_pauses_delivery() {
    let sb = start_sandbox(SandboxConfig {
        api_keys: vec!["key_test_the_right_one".into()],
        ..SandboxConfig::default()
    })
    .await;
    let relay = TestRelay::start(&sb.url, &[("PROSPERSTACK_API_KEY", "key_test_wrong")]).await;
    let event = identify(
        "k1",
        "john.doe@example.com",
        json!({"plan": "Pro"}),
        &event_time(0),
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            sb.sandbox.stats().requests_total >= 1
        })
        .await
    );
    // Five minutes pass.
    tokio::time::sleep(Duration::from_secs(300)).await;

    assert_eq!(relay.metric("relay_upstream_key_refused").await, 1);
    let now = status(&relay).await;
    assert_eq!(now["upstream"]["key"], "refused", "{now:#}");
    assert_eq!(now["eta_secs"], Value::Null);
    assert_eq!(now["queue"]["events"], 1);
    assert_eq!(relay.get("/readyz").await.0, 200);
    let requests = sb.sandbox.stats().requests_total;
    assert!(
        requests <= 8,
        "{requests} requests in 5 minutes with a refused key"
    );
    let logs = relay.logs.text();
    let errors = logs
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("refuses the API key"))
        .count();
    assert!((1..=6).contains(&errors), "{errors} error lines:\n{logs}");
    assert!(!logs.contains("key_test_wrong"), "the key is in the log");
}

/// Probes and scrapes are logged at debug, never at info; a refused request at info with its
/// reason.
#[tokio::test]
async fn probes_log_at_debug_refusals_with_their_reason() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert_eq!(relay.get(path).await.0, 200, "{path}");
    }
    assert_eq!(relay.post("{not json", &[]).await.0, 400);
    let logs = relay.logs.text();
    for route in ["/healthz", "/readyz", "/metrics", "/status"] {
        let line = format!("route={route} ");
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(&line)).collect();
        assert!(!lines.is_empty(), "{route} not logged at all:\n{logs}");
        assert!(
            lines.iter().all(|l| l.contains("DEBUG")),
            "{route} logged above debug: {lines:?}"
        );
    }
    let refused = logs.lines().find(|l| l.contains("refused a request"));
    assert!(
        refused.is_some_and(|l| l.contains("INFO") && l.contains("invalid JSON")),
        "{logs}"
    );
}

/// An event refused inside a batch that is otherwise stored (the request answers 200) still
/// gets its own info line, with its reason and messageId and no email.
#[tokio::test]
async fn events_refused_in_an_accepted_batch_are_logged() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let batch = r#"[
        {"type":"identify","userId":"u1","messageId":"ok-1","traits":{"email":"john.doe@example.com","plan":"x"}},
        {"type":"identify","userId":"u2","messageId":"bad-1","traits":{"email":"not-an-email","plan":"x"}}
    ]"#;
    assert_eq!(relay.post(batch, &[]).await.0, 200);
    let logs = relay.logs.text();
    let line = logs.lines().find(|l| l.contains("refused an event"));
    assert!(
        line.is_some_and(|l| l.contains("INFO")
            && l.contains("bad-1")
            && l.contains("no_email")
            && l.contains("status=422")),
        "{logs}"
    );
}

/// `status` reads what a running relay saved and the queue as it is now: text for people,
/// `--json` for scripts, both without emails.
#[tokio::test]
async fn status_command_reads_a_running_relay() {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 2,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let relay = TestRelay::start(
        &sb.url,
        &[
            ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "2"),
            ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
        ],
    )
    .await;
    let emails = create_members(&sb.sandbox, "cli", 30);
    assert_eq!(relay.post_json(&plan_events("cli", &emails)).await.0, 200);
    let dir = relay.data_dir.display().to_string();
    let env = [("RELAY_DATA_DIR", dir.as_str())];
    let status_json = || async {
        let out = run_cli(&env, &["status", "--json"]).await;
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let saved = eventually(PATIENCE, || async {
        let json = status_json().await;
        json["replica"].is_string() && json["queue"]["due"]["subscribers"].as_u64() > Some(0)
    })
    .await;
    let json = status_json().await;
    assert!(saved, "{json:#}");
    assert_eq!(json["budget"]["limit"], 2);
    let out = run_cli(&env, &["status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in [
        "queue", "due", "waiting", "retrying", "ETA", "budget", "upstream",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(!contains_email(&text) && !contains_email(&json.to_string()));
}
