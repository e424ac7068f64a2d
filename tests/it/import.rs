//! `import`: history from files into the queue behind live events, followed to delivery.
//!
//! The relay runs in-process against the sandbox (as `serve` would) and `import` is the real
//! binary beside it on the same data directory, as an operator would run it; one case runs
//! `import` with no relay, delivering itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prosperstack_sandbox::{SandboxConfig, SANDBOX_API_KEY};
use serde_json::json;

use crate::common::{
    create_members, demo_sandbox, eventually, identify, property, start_sandbox, TestRelay,
};

/// Starts a relay and waits until it serves (it has opened and upgraded its store).
async fn serving_relay(sandbox_url: &str, extra: &[(&str, &str)]) -> TestRelay {
    let relay = TestRelay::start(sandbox_url, extra).await;
    let ready = eventually(Duration::from_secs(30), || async {
        relay.get("/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "the relay became ready");
    relay
}

/// Runs `import` with `args` on `data_dir` (nothing else from the environment but `extra`);
/// answers stdout and stderr.
async fn import(data_dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> (String, String) {
    let dir = data_dir.display().to_string();
    let mut env = vec![("RELAY_DATA_DIR", dir.as_str())];
    env.extend_from_slice(extra);
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    let out = crate::common::run_cli(&env, &all).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "import failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    path
}

fn lines(stdout: &str, expected: &[&str]) {
    for line in expected {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

/// A CSV of `emails` setting `plan` to `value`.
fn plan_csv(dir: &Path, name: &str, emails: &[String], value: &str) -> PathBuf {
    let mut text = String::from("email,Plan\n");
    for e in emails {
        text.push_str(&format!("{e},{value}\n"));
    }
    write(dir, name, &text)
}

/// An NDJSON export, a JSON array and a CSV, each with bad rows: the good rows' values land in
/// the sandbox (typed, matched by display name), the report gives counts and the bad rows'
/// lines; the same files again queue nothing and send nothing.
#[tokio::test]
async fn exports_and_csv_land_once() {
    let sb = demo_sandbox().await;
    let relay = serving_relay(&sb.url, &[]).await;
    let files = tempfile::tempdir().expect("dir");
    let ndjson = [
        json!({"type": "identify", "userId": "u-maria", "messageId": "exp-1",
               "timestamp": "2024-01-01T00:00:00Z",
               "traits": {"email": "maria.lopez@example.com", "plan": "Pro", "Number of contacts": "5800"}})
        .to_string(),
        json!({"type": "track", "userId": "u-maria", "messageId": "exp-t", "event": "Clicked"}).to_string(),
        "{\"type\": \"identify\", ".to_owned(),
        identify("exp-2", "jordan.reyes@example.com", json!({"plan": "Team"}), "2024-01-01T00:00:00Z").to_string(),
    ]
    .join("\n");
    let ndjson = write(files.path(), "export.ndjson", &ndjson);
    let array = format!(
        "[\n  {},\n  {}\n]\n",
        identify(
            "exp-3",
            "john.doe@example.com",
            json!({"Preferred name": "Johnny"}),
            "2024-01-01T00:00:00Z"
        ),
        json!({"type": "identify", "userId": "ghost", "messageId": "exp-4", "traits": {"plan": "x"}})
    );
    let array = write(files.path(), "export.json", &array);
    let csv = "email,Is professional,Signed up on\n\
               maria.lopez@example.com,true,2024-03-01\n\
               ,true,2024-01-01\n\
               jordan.reyes@example.com,false\n";
    let csv = write(files.path(), "people.csv", csv);
    let paths: Vec<String> = [&ndjson, &array, &csv]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();

    let (stdout, stderr) = import(&relay.data_dir, &args, &[]).await;
    lines(
        &stdout,
        &[
            "a relay is running on",
            "export.ndjson: Segment events, 4 rows",
            "  2 queued, 0 duplicate, 1 skipped, 1 rejected",
            "  line 2: skipped: a track event, not an Identify",
            "  line 3: rejected: invalid JSON",
            "export.json: Segment events, 2 rows",
            "  1 queued, 0 duplicate, 0 skipped, 1 rejected",
            "  line 3: rejected: no email",
            "people.csv: CSV, 3 rows, dated ",
            "  1 queued, 0 duplicate, 0 skipped, 2 rejected",
            "  line 3: rejected: the `email` column is empty",
            "  line 4: rejected: 2 fields where the header has 3",
            "all files: 4 queued, 0 duplicate, 1 skipped, 4 rejected",
            "following 4 imported updates",
            "done: 4 delivered, 0 waiting for a subscriber, 0 dead letters",
        ],
    );
    lines(
        &stderr,
        &[
            "export.ndjson: 4/4 rows",
            "people.csv: 3/3 rows",
            "delivering: 4/4 imported updates settled",
        ],
    );
    let s = &sb.sandbox;
    assert_eq!(
        property(s, "maria.lopez@example.com", "plan"),
        Some(json!("Pro"))
    );
    assert_eq!(
        property(s, "maria.lopez@example.com", "number_of_contacts"),
        Some(json!(5800))
    );
    assert_eq!(
        property(s, "maria.lopez@example.com", "is_professional"),
        Some(json!(true))
    );
    assert_eq!(
        property(s, "maria.lopez@example.com", "signed_up_on"),
        Some(json!("2024-03-01"))
    );
    assert_eq!(
        property(s, "jordan.reyes@example.com", "plan"),
        Some(json!("Team"))
    );
    assert_eq!(
        property(s, "john.doe@example.com", "preferred_name"),
        Some(json!("Johnny"))
    );

    let sent = sb.sandbox.stats().requests_total;
    let (again, _) = import(&relay.data_dir, &args, &[]).await;
    lines(
        &again,
        &[
            "  0 queued, 2 duplicate, 1 skipped, 1 rejected",
            "  0 queued, 1 duplicate, 0 skipped, 1 rejected",
            "  0 queued, 1 duplicate, 0 skipped, 2 rejected",
            "all files: 0 queued, 4 duplicate, 1 skipped, 4 rejected",
            "nothing imported is left to deliver",
        ],
    );
    assert_eq!(
        sb.sandbox.stats().requests_total,
        sent,
        "a rerun sends nothing"
    );
}

/// An import followed while the relay delivers it spends the relay's budget, never more: the
/// sandbox never answers 429, over several windows.
#[tokio::test]
async fn import_beside_serve_stays_within_the_limit() {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 20,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let emails = create_members(&sb.sandbox, "backfill", 60);
    let limit = [
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "20"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
    ];
    let relay = serving_relay(&sb.url, &limit).await;
    let files = tempfile::tempdir().expect("dir");
    let csv = plan_csv(files.path(), "backfill.csv", &emails, "Pro");
    let (stdout, _) = import(&relay.data_dir, &[&csv.display().to_string()], &limit).await;
    lines(&stdout, &["60 queued", "done: 60 delivered"]);
    assert!(emails
        .iter()
        .all(|e| property(&sb.sandbox, e, "plan").is_some()));
    let stats = sb.sandbox.stats();
    assert_eq!(stats.rate_limited_total, 0, "{stats:?}");
    assert!(
        stats.requests_total > 20,
        "the import must span several windows: {stats:?}"
    );
}

/// A live Identify posted while an import's backlog is being delivered goes out before the
/// rest of the backlog: when it lands, most of the imported updates are still queued.
#[tokio::test]
async fn live_identify_overtakes_the_backlog() {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 20,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let emails = create_members(&sb.sandbox, "history", 200);
    let live = create_members(&sb.sandbox, "live", 1).remove(0);
    let limit = [
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "20"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
    ];
    let relay = serving_relay(&sb.url, &limit).await;
    let files = tempfile::tempdir().expect("dir");
    let csv = plan_csv(files.path(), "history.csv", &emails, "Imported");
    let (stdout, _) = import(
        &relay.data_dir,
        &[&csv.display().to_string(), "--no-wait"],
        &[],
    )
    .await;
    lines(&stdout, &["200 queued"]);
    let delivered = |sb: &prosperstack_sandbox::Sandbox| {
        emails
            .iter()
            .filter(|e| property(sb, e, "plan").is_some())
            .count()
    };
    let started = eventually(Duration::from_secs(60), || async {
        delivered(&sb.sandbox) >= 10
    })
    .await;
    assert!(started, "the backlog is being delivered");
    let event = identify(
        "live-1",
        &live,
        json!({"plan": "Live"}),
        "2030-01-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    let landed = eventually(Duration::from_secs(60), || async {
        property(&sb.sandbox, &live, "plan").is_some()
    })
    .await;
    assert!(landed, "the live update is delivered");
    let before_live = delivered(&sb.sandbox);
    assert!(
        before_live < 100,
        "the live update waited for {before_live} of 200 imported updates"
    );
}

/// With no relay running, import delivers what it queued itself, with the relay's worker.
#[tokio::test]
async fn import_delivers_when_no_relay_runs() {
    let sb = demo_sandbox().await;
    let data = tempfile::tempdir().expect("dir");
    let csv = write(
        data.path(),
        "plans.csv",
        "email,plan\njohn.doe@example.com,Solo\n",
    );
    let upstream = [
        ("PROSPERSTACK_API_URL", sb.url.as_str()),
        ("PROSPERSTACK_API_KEY", SANDBOX_API_KEY),
    ];
    let store = data.path().join("store");
    let (stdout, _) = import(&store, &[&csv.display().to_string()], &upstream).await;
    lines(
        &stdout,
        &["this import delivers", "1 queued", "done: 1 delivered"],
    );
    assert_eq!(
        property(&sb.sandbox, "john.doe@example.com", "plan"),
        Some(json!("Solo"))
    );
}
