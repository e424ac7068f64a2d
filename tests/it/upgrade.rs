//! Schema upgrades as an operator meets them: the relay started on a store written before schema
//! versions (`tests/fixtures/store-v0`, made by the relay at commit b6012cf) upgrades it and
//! keeps what it held; the CLI tools leave upgrading to the relay; a store written by a newer
//! release stops `serve` with one clear line and stays as it was.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{
    dead_letters_cli, demo_sandbox, eventually, property, relay_command, run_cli, run_to_exit,
    settings, TestRelay, PATIENCE,
};

const FIXTURE_V0: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v0/relay.db"
);

/// A copy of the v0 fixture in a data directory of its own (the relay upgrades it in place).
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(FIXTURE_V0, dir.path().join("relay.db")).expect("copy the fixture");
    dir
}

fn user_version(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(
        dir.join("relay.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open read-only");
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

/// A tool refuses the old store and says the relay upgrades it; once the relay has started on
/// it, the fixture's messageIds are still duplicates, its remembered email still serves an
/// Identify without one, and the tool lists its dead letter.
#[tokio::test]
async fn relay_upgrades_a_store_from_before_versions() {
    let sb = demo_sandbox().await;
    let tmp = fixture_copy();
    let dir = tmp.path().display().to_string();
    let refused = run_cli(
        &[("RELAY_DATA_DIR", dir.as_str())],
        &["dead-letters", "list", "--json"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a tool opened an old store");
    assert!(
        stderr.contains("schema version 0") && stderr.contains("prosperstack-relay serve"),
        "{stderr}"
    );
    assert_eq!(user_version(tmp.path()), 0);

    // The fixture's dedupe ids are older than the default retention by the time this runs.
    let relay = TestRelay::start_in(settings(
        &sb.url,
        tmp.path(),
        &[("RELAY_DEDUPE_RETENTION", "36500d")],
    ))
    .await;
    let resent = json!({"type": "identify", "messageId": "fx-jordan-1", "userId": "user-jordan",
                        "timestamp": "2024-06-10T10:00:00Z",
                        "traits": {"email": "jordan.reyes@example.com", "plan": "Pro"}});
    let (status, body) = relay.post_json(&resent).await;
    assert_eq!((status, &body["duplicates"]), (200, &json!(1)), "{body}");
    assert!(user_version(tmp.path()) > 0);

    let no_email = json!({"type": "identify", "messageId": "after-upgrade-1", "userId": "user-maria",
                          "timestamp": "2024-07-01T00:00:00Z", "traits": {"plan": "Pro"}});
    let (status, body) = relay.post_json(&no_email).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let email = "maria.lopez@example.com";
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan") == Some(json!("Pro"))
        })
        .await,
        "the Identify without email never reached {email}"
    );

    let letters = dead_letters_cli(tmp.path()).await;
    let emails: Vec<&Value> = letters.iter().map(|l| &l["email"]).collect();
    assert_eq!(emails, [&json!("ghost@example.com")]);
}

/// `serve` on a store written by a newer release exits with the refusal and changes nothing.
#[tokio::test]
async fn serve_refuses_a_store_from_a_newer_release() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("relay.db");
    rusqlite::Connection::open(&db)
        .expect("create")
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE later (x); PRAGMA user_version = 9;")
        .expect("write a newer store");
    let before = std::fs::read(&db).expect("read");

    let mut cmd = relay_command(&["serve"]);
    cmd.env("PROSPERSTACK_API_KEY", "key_test_sandbox")
        // Never reached: the store is opened before anything talks to ProsperStack.
        .env("PROSPERSTACK_API_URL", "http://127.0.0.1:9")
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_DATA_DIR", tmp.path());
    let done = run_to_exit(cmd, PATIENCE).await;
    assert!(!done.status.success(), "serve started on a newer store");
    assert!(
        done.stderr.contains(
            "was written by a newer prosperstack-relay (schema version 9; this release knows up to"
        ) && done.stderr.contains("point RELAY_DATA_DIR elsewhere"),
        "{}",
        done.stderr
    );
    assert!(
        std::fs::read(&db).expect("read") == before,
        "the store changed"
    );
    assert_eq!(user_version(tmp.path()), 9);
}
