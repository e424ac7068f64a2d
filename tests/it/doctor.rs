//! `doctor`: the real binary checks a setup against an in-process sandbox, spending at most two
//! requests, never printing the key, and exiting 1 on any problem.

use base64::Engine;

use crate::common::*;

const WRONG_KEY: &str = "key_test_WRONGdoctorKEY42";

/// Runs `doctor` with the sandbox's URL, `key`, a fresh data directory and `extra` variables.
async fn doctor(sandbox_url: &str, key: &str, extra: &[(&str, &str)]) -> Finished {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = relay_command(&["doctor"]);
    cmd.env("PROSPERSTACK_API_KEY", key)
        .env("PROSPERSTACK_API_URL", sandbox_url)
        .env("RELAY_DATA_DIR", tmp.path().join("data"))
        .envs(extra.iter().copied());
    run_to_exit(cmd, PATIENCE).await
}

/// A key the API refuses: exit 1, a problem that names PROSPERSTACK_API_KEY, and neither the
/// key nor its basic-auth form anywhere in the output.
#[tokio::test]
async fn doctor_with_a_wrong_key_fails_without_printing_it() {
    let sb = demo_sandbox().await;
    let done = doctor(&sb.url, WRONG_KEY, &[]).await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}{}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stdout
            .contains("problem  the API key was refused: 401")
            && done.stdout.contains("check PROSPERSTACK_API_KEY"),
        "{}",
        done.stdout
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{WRONG_KEY}:"));
    for secret in [WRONG_KEY, basic.as_str(), "WRONGdoctor"] {
        let all = format!("{}{}", done.stdout, done.stderr);
        assert!(!all.contains(secret), "{secret:?} printed:\n{all}");
    }
    assert_eq!(sb.sandbox.stats().requests_total, 1);
}

/// A good key against the demo sandbox: every check ok, exit 0, one request, as the sandbox
/// counts it too.
#[tokio::test]
async fn doctor_with_a_good_key_passes_in_one_request() {
    let sb = demo_sandbox().await;
    let done = doctor(
        &sb.url,
        "key_test_sandbox",
        &[("PROSPERSTACK_RATE_LIMIT_REQUESTS", "100")],
    )
    .await;
    assert!(done.status.success(), "{}{}", done.stdout, done.stderr);
    for line in [
        "ok       configuration is valid",
        "accepted the API key: test mode",
        "ok       rate limit: RateLimit-Limit 1000",
        "doctor sent 1 request to ProsperStack with this key; 0 problem(s), 0 warning(s)",
    ] {
        assert!(
            done.stdout.contains(line),
            "{line:?} missing:\n{}",
            done.stdout
        );
    }
    assert!(!done.stdout.contains("key_test_sandbox"), "{}", done.stdout);
    let stats = sb.sandbox.stats();
    assert_eq!(
        (stats.requests_total, stats.subscriber_updates),
        (1, 0),
        "{stats:?}"
    );
}

/// More than 100 properties: the second page is read (2 requests, never more); a mapping to
/// no property is a problem naming trait and key; a property named like a likely trait but
/// for spacing is a warning; the server's lower limit is a warning.
#[tokio::test]
async fn doctor_reads_two_pages_and_names_bad_mappings() {
    let sb = demo_sandbox().await;
    for i in 0..101 {
        let key = format!("extra_{i:03}");
        sb.sandbox
            .create_property(&key, &format!("Extra {i}"), "subscriber", "text")
            .unwrap();
    }
    sb.sandbox
        .create_property("plan_label", "Plan ", "subscriber", "text")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("relay.toml");
    let mappings = "[trait_mappings]\n\"Last Contacted\" = \"last_contacted\"\n\"Nickname\" = \"preferred_nmae\"\n";
    std::fs::write(&config, mappings).unwrap();
    let config = config.display().to_string();
    let done = doctor(
        &sb.url,
        "key_test_sandbox",
        &[
            ("RELAY_CONFIG", config.as_str()),
            ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "5000"),
        ],
    )
    .await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}{}",
        done.stdout,
        done.stderr
    );
    let out = &done.stdout;
    for line in [
        "ok       110 subscriber properties read",
        "problem  [trait_mappings] \"Nickname\" = \"preferred_nmae\": no subscriber property has the key \"preferred_nmae\"",
        "warning  property \"Plan \" (key plan_label) differs only in case or spacing from the trait",
        "warning  ProsperStack allows this key 1000 requests per window",
        "doctor sent 2 requests to ProsperStack with this key; 1 problem(s), 2 warning(s)",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(
        !out.contains("Last Contacted"),
        "a good mapping was reported:\n{out}"
    );
    assert_eq!(sb.sandbox.stats().requests_total, 2);
}

/// Nothing answers at the URL: a problem naming the URL without its credentials.
#[tokio::test]
async fn doctor_names_an_unreachable_url_without_credentials() {
    let port = free_port();
    let url = format!("http://ops:hunter2pw@127.0.0.1:{port}");
    let done = doctor(&url, "key_test_sandbox", &[]).await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}{}",
        done.stdout,
        done.stderr
    );
    let shown = format!("problem  ProsperStack at http://127.0.0.1:{port}/ could not be used");
    assert!(done.stdout.contains(&shown), "{}", done.stdout);
    assert!(
        done.stdout.contains("check PROSPERSTACK_API_URL"),
        "{}",
        done.stdout
    );
    assert!(!done.stdout.contains("hunter2pw"), "{}", done.stdout);
}

/// A store from before schema versions is reported with what to do, and left as it was.
#[tokio::test]
async fn doctor_reports_a_store_needing_an_upgrade() {
    let sb = demo_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-v0/relay.db"
    );
    std::fs::copy(fixture, tmp.path().join("relay.db")).unwrap();
    let dir = tmp.path().display().to_string();
    let done = doctor(
        &sb.url,
        "key_test_sandbox",
        &[("RELAY_DATA_DIR", dir.as_str())],
    )
    .await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}{}",
        done.stdout,
        done.stderr
    );
    let problem = done
        .stdout
        .lines()
        .find(|l| l.starts_with("problem"))
        .unwrap_or_default();
    assert!(
        problem.contains("schema version 0") && problem.contains("prosperstack-relay serve"),
        "{}",
        done.stdout
    );
    let db = rusqlite::Connection::open(tmp.path().join("relay.db")).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0, "doctor changed the store's schema");
}
