//! The update verb end to end: the real binary, on its default `PUT`, against a sandbox whose
//! "Update a subscriber" accepts only `PATCH` (and answers `PUT` 405 with an `Allow` header).

use std::time::Duration;

use crate::common::*;
use prosperstack_sandbox::{SandboxConfig, UpdateVerb, SANDBOX_API_KEY};
use serde_json::{json, Value};

/// Every update lands by PATCH, nothing becomes a dead letter, the log says once which setting
/// to change (and logs no failure), and the metrics label the updates with the verb that was
/// really sent.
#[tokio::test]
async fn relay_on_put_delivers_to_a_patch_only_api() {
    let sb = start_sandbox(SandboxConfig {
        update_verb: UpdateVerb::Patch,
        rate_limit_requests: 1000,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tmp.path().join("relay.log");
    let mut cmd = relay_command(&["serve"]);
    cmd.env("PROSPERSTACK_API_KEY", SANDBOX_API_KEY)
        .env("PROSPERSTACK_API_URL", &sb.url)
        .env("PROSPERSTACK_RATE_LIMIT_REQUESTS", "1000")
        .env("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1")
        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RELAY_DATA_DIR", &data)
        .env("RELAY_COALESCE_DELAY", "0ms");
    let mut relay = spawn_logged(cmd, &log);
    wait_until_serving(&mut relay, &base, &log).await;

    let emails: Vec<String> = sb
        .sandbox
        .subscribers()
        .into_iter()
        .map(|s| s.email)
        .collect();
    assert_eq!(emails.len(), 3, "the demo's subscribers");
    let events: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            identify(
                &format!("v{i}"),
                e,
                json!({"plan": format!("Patched {i}")}),
                &event_time(0),
            )
        })
        .collect();
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/segment"))
        .json(&events)
        .send()
        .await
        .expect("relay answers");
    assert_eq!(answer.status().as_u16(), 200);
    let landed = eventually(PATIENCE, || async {
        emails
            .iter()
            .enumerate()
            .all(|(i, e)| property(&sb.sandbox, e, "plan") == Some(json!(format!("Patched {i}"))))
    })
    .await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(landed, "not every update landed; log:\n{}", log_text());
    let store = shared_store(&data);
    assert!(
        eventually(PATIENCE, || queue_empty(&store)).await,
        "queue never emptied"
    );
    assert_eq!(dead_letters_cli(&data).await, Vec::<Value>::new());

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"relay_upstream_requests_total{endpoint="PUT /v1/subscribers/{id}",status="405"} 1"#,
        r#"relay_upstream_requests_total{endpoint="PATCH /v1/subscribers/{id}",status="200"} 3"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    relay.terminate();
    relay.wait_exit(PATIENCE).await;
    let warning = "ProsperStack answered 405 to PUT updates; PATCH works — set update_method = \"PATCH\" (RELAY_UPDATE_METHOD)";
    let text = log_text();
    assert_eq!(text.matches(warning).count(), 1, "{text}");
    // The 405 that PATCH repaired is no failure.
    assert!(!text.contains("ProsperStack call failed"), "{text}");
}
