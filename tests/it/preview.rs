//! `preview`: the real binary explains a payload against the sandbox's catalogue, spending at
//! most the one catalogue request and changing nothing.

use crate::common::*;
use serde_json::{json, Value};

fn fixture_path(name: &str) -> String {
    format!(
        "{}/tests/fixtures/segment-payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Segment's page example against a running sandbox with the configured key: each trait is
/// named with its property and rule, one request is spent (the catalogue), nothing is updated.
#[tokio::test]
async fn preview_names_each_property_and_rule_with_one_request() {
    let sb = demo_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let file = fixture_path("identify-nested-traits.json");
    let mut cmd = relay_command(&["preview", &file]);
    cmd.env("PROSPERSTACK_API_KEY", "key_test_sandbox")
        .env("PROSPERSTACK_API_URL", &sb.url)
        .env("RELAY_DATA_DIR", tmp.path().join("data"));
    let done = run_to_exit(cmd, PATIENCE).await;
    assert!(done.status.success(), "{:?}: {}", done.status, done.stderr);
    for line in [
        r#""Is professional"    → is_professional (boolean) by name: true"#,
        r#""Last contacted"     → last_contacted (date) by name: "2024-05-04""#,
        r#""Number of contacts" → number_of_contacts (number) by name: 5800"#,
        r#""Preferred name"     → preferred_name (text) by name: "Jordy""#,
        "email   jordan.reyes@example.com (from traits.email)",
        "1 request sent to ProsperStack, nothing else",
    ] {
        assert!(
            done.stdout.contains(line),
            "{line:?} missing:\n{}",
            done.stdout
        );
    }
    let stats = sb.sandbox.stats();
    assert_eq!(stats.requests_total, 1, "{stats:?}");
    assert_eq!(stats.by_route.get("GET /v1/properties"), Some(&1));
    assert_eq!(stats.subscriber_updates, 0);
    assert!(!done.stdout.contains("key_test_sandbox"), "{}", done.stdout);
}

/// `--sandbox --json` reads a batch from stdin with no network and no key, with stable fields.
#[tokio::test]
async fn preview_json_from_stdin_with_the_builtin_catalogue() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let body = json!({"batch": [
        payload("identify-engage-audience-entered.json"),
        payload("track-event.json"),
        {"type": "identify", "userId": "nobody-knows", "traits": {"plan": "x"}},
    ]});
    let mut cmd = relay_command(&["preview", "--sandbox", "--json", "-"]);
    cmd.env("RELAY_DATA_DIR", tmp.path().join("data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("write the payload");
    let out = child.wait_with_output().expect("preview exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["requests_sent"], 0);
    let events = report["events"].as_array().expect("events");
    let audience = &events[0];
    assert_eq!(audience["engage"]["key"], "high_value_customers");
    assert_eq!(audience["traits"][0]["rule"], "key");
    assert_eq!(audience["update"], json!({"high_value_customers": true}));
    assert_eq!(events[1]["outcome"], "ignored");
    assert_eq!(
        (events[2]["outcome"].clone(), events[2]["status"].clone()),
        (json!("rejected"), json!(422))
    );
    assert!(
        !tmp.path().join("data").exists(),
        "preview created the data directory"
    );
}
