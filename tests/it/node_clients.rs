//! The real npm clients, `@segment/analytics-node` and `@rudderstack/rudder-sdk-node`, send an
//! Identify through the relay's Tracking API endpoints, as a backend would.
//!
//! The clients (pinned in `tests/fixtures/node-clients/package.json`) are installed by the
//! test itself, once, into `target/tmp/node-clients` (npm's registry is needed the first time).
//! Without `node` and `npm` the tests are skipped with a notice, unless
//! `RELAY_TEST_NODE_CLIENTS=required` (CI sets it), when they fail instead.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

const WRITE_KEY: &str = "wk_test_node";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-clients")
}

/// Whether `program --version` runs.
async fn runs(program: &str) -> bool {
    tokio::process::Command::new(program)
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// The installed clients' `node_modules`, or `None` (after a notice) where node is missing.
async fn clients() -> Option<PathBuf> {
    if !(runs("node").await && runs("npm").await) {
        let required = std::env::var("RELAY_TEST_NODE_CLIENTS").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "node and npm are required (RELAY_TEST_NODE_CLIENTS=required)"
        );
        eprintln!("SKIPPED: node or npm is missing, so the npm clients are not tested");
        return None;
    }
    // One install at a time: both tests of this binary need it.
    static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _installing = INSTALL.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-clients");
    let manifest = std::fs::read_to_string(fixtures().join("package.json")).expect("package.json");
    let installed = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
    if installed != manifest || !dir.join("node_modules").is_dir() {
        install(&dir, &manifest).await;
    }
    Some(dir.join("node_modules"))
}

/// `npm install` of the pinned clients into `dir`; the manifest is written last, so an
/// interrupted install is redone.
async fn install(dir: &Path, manifest: &str) {
    std::fs::create_dir_all(dir).expect("create the clients' directory");
    let _ = std::fs::remove_file(dir.join("package.json"));
    std::fs::write(dir.join("package.tmp.json"), manifest).expect("write package.json");
    std::fs::rename(dir.join("package.tmp.json"), dir.join("package.json")).expect("rename");
    let out = tokio::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .await
        .expect("run npm");
    if !out.status.success() {
        let _ = std::fs::remove_file(dir.join("package.json"));
        panic!(
            "npm install of the clients failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs a client's script against the relay; answers what it printed (statuses, headers).
async fn send(script: &str, modules: &Path, relay: &TestRelay, key: &str, plan: &str) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(fixtures().join(script))
        .env("NODE_PATH", modules)
        .env("RELAY_URL", &relay.url)
        .env("WRITE_KEY", key)
        .env("USER_ID", "user-john")
        .env("EMAIL", "john.doe@example.com")
        .env("PLAN", plan)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed {stdout} ({e})"))
}

async fn relay_for_clients(sb: &TestSandbox) -> TestRelay {
    TestRelay::start(&sb.url, &[("RELAY_WRITE_KEYS", WRITE_KEY)]).await
}

/// What one client must show: its Identify lands with basic auth (and gzip where `gzips`), and
/// an unknown write key is answered 401.
async fn client_lands(script: &str, gzips: bool) {
    let Some(modules) = clients().await else {
        return;
    };
    let sb = demo_sandbox().await;
    let relay = relay_for_clients(&sb).await;
    let plan = format!("via {script}");
    let seen = send(script, &modules, &relay, WRITE_KEY, &plan).await;
    assert_eq!(seen["statuses"], serde_json::json!([200]), "{seen}");
    assert!(seen["authorization"].is_string(), "{seen}");
    assert_eq!(seen["gzip"], gzips, "{seen}");
    let landed = eventually(PATIENCE, || async {
        property(&sb.sandbox, "john.doe@example.com", "plan") == Some(Value::from(plan.as_str()))
    })
    .await;
    assert!(landed, "{script}'s Identify did not reach the sandbox");

    let refused = send(script, &modules, &relay, "wk_unknown", "never").await;
    assert_eq!(refused["statuses"], serde_json::json!([401]), "{refused}");
}

/// `@segment/analytics-node` (basic auth, no gzip) lands; an unknown key is 401.
#[tokio::test]
async fn segment_analytics_node_lands() {
    client_lands("segment.js", false).await;
}

/// `@rudderstack/rudder-sdk-node` (basic auth, gzip by default) lands; an unknown key is 401.
#[tokio::test]
async fn rudder_sdk_node_lands() {
    client_lands("rudder.js", true).await;
}
