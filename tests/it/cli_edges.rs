//! The command line's edges, through the real binary: replay's usage and unknown ids,
//! `--sandbox` for the tools, a health URL without scheme or path, and addresses another
//! process holds.

use crate::common::*;
use serde_json::json;

/// `dead-letters replay` with neither choice shows both in its usage.
#[tokio::test]
async fn replay_usage_shows_id_and_all() {
    let done = run_to_exit(relay_command(&["dead-letters", "replay"]), PATIENCE).await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stderr.contains("<--id <ID>|--all>"), "{}", done.stderr);
}

/// `replay --id` with an id that names no dead letter replays the others, says which were
/// missing, and exits 1.
#[tokio::test]
async fn replay_of_a_missing_id_says_so_and_replays_the_rest() {
    let sb = demo_sandbox().await;
    // No subscriber has this email, and no wait: its update is a dead letter at once.
    let relay = TestRelay::start(&sb.url, &[("RELAY_SUBSCRIBER_WAIT", "0s")]).await;
    let event = identify(
        "gone-1",
        "nobody@example.com",
        json!({"plan": "x"}),
        &event_time(0),
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    let store = shared_store(&relay.data_dir);
    let has_letter = || async {
        use prosperstack_relay::store::Store;
        store.dead_letters().await.is_ok_and(|d| d.len() == 1)
    };
    assert!(
        eventually(PATIENCE, has_letter).await,
        "no dead letter was written"
    );
    let id = dead_letters_cli(&relay.data_dir).await[0]["id"].to_string();

    let dir = relay.data_dir.display().to_string();
    let out = run_cli(
        &[("RELAY_DATA_DIR", dir.as_str())],
        &[
            "dead-letters",
            "replay",
            "--id",
            &id,
            "--id",
            "999",
            "--id",
            "998",
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 1 dead letter(s)"), "{stdout}");
    assert!(
        stderr.contains("no dead letter with id 999, 998"),
        "{stderr}"
    );
}

/// `dead-letters --sandbox` reads `./data/sandbox` (where `serve --sandbox` keeps its queue),
/// or `RELAY_DATA_DIR` when set; without it, `./data`.
#[tokio::test]
async fn dead_letters_sandbox_reads_the_sandbox_data_dir() {
    use prosperstack_relay::store::{SqliteStore, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(&tmp.path().join("data/sandbox"), StoreOptions::default()).unwrap());
    let list = |args: &[&str], env: Option<&std::path::Path>| {
        let mut cmd = relay_command(args);
        cmd.current_dir(tmp.path());
        if let Some(dir) = env {
            cmd.env("RELAY_DATA_DIR", dir);
        }
        run_to_exit(cmd, PATIENCE)
    };
    let done = list(&["dead-letters", "--sandbox", "list"], None).await;
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("no dead letters"), "{}", done.stdout);
    let done = list(&["dead-letters", "list", "--sandbox", "--json"], None).await;
    assert_eq!(done.stdout.trim(), "[]", "{}", done.stderr);
    let done = list(&["dead-letters", "list"], None).await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "./data has no store: {}",
        done.stdout
    );
    let elsewhere = tmp.path().join("elsewhere");
    let done = list(&["dead-letters", "--sandbox", "list"], Some(&elsewhere)).await;
    assert!(
        done.stderr.contains("elsewhere"),
        "RELAY_DATA_DIR wins: {}",
        done.stderr
    );
}

/// `healthcheck --url host:port` asks `http://host:port/healthz`.
#[tokio::test]
async fn healthcheck_url_without_scheme_or_path() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let bare = relay.url.trim_start_matches("http://").to_owned();
    let done = run_to_exit(relay_command(&["healthcheck", "--url", &bare]), PATIENCE).await;
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stdout
            .contains(&format!("healthy: http://{bare}/healthz")),
        "{}",
        done.stdout
    );
}

/// An address another process holds stops `serve` with exit 2 and one line naming the address
/// and what changes it: RELAY_LISTEN, RELAY_METRICS_LISTEN, --sandbox-listen.
#[tokio::test]
async fn taken_addresses_name_what_changes_them() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let serve = |args: &[&str], listen: &str, metrics: Option<&str>| {
        let mut cmd = relay_command(args);
        cmd.current_dir(tmp.path())
            .env("PROSPERSTACK_API_KEY", "key_test_sandbox")
            .env("PROSPERSTACK_API_URL", "http://127.0.0.1:9")
            .env("RELAY_LISTEN", listen);
        if let Some(metrics) = metrics {
            cmd.env("RELAY_METRICS_LISTEN", metrics);
        }
        run_to_exit(cmd, PATIENCE)
    };
    let done = serve(&["serve"], &taken, None).await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    let line = format!("listen (RELAY_LISTEN): cannot listen on {taken}: another process is listening there; set RELAY_LISTEN (or listen in the configuration file) to a free address");
    assert_eq!(done.stderr.trim(), format!("configuration error: {line}"));

    let done = serve(&["serve"], &free, Some(&taken)).await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!(
            "metrics_listen (RELAY_METRICS_LISTEN): cannot listen on {taken}"
        )) && done.stderr.contains("set RELAY_METRICS_LISTEN"),
        "{}",
        done.stderr
    );

    let done = serve(
        &["serve", "--sandbox", "--sandbox-listen", &taken],
        &free,
        None,
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!(
            "cannot listen on {taken} for the ProsperStack sandbox"
        )) && done.stderr.contains("--sandbox-listen"),
        "{}",
        done.stderr
    );
    drop(held);
}
