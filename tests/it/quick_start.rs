//! The README's quick start, run twice in a row with the real binary: `serve --sandbox` in a
//! fresh working directory, the README's own curl payload, and the sandbox's admin view.

use std::path::Path;

use crate::common::*;
use serde_json::{json, Value};

/// The JSON the README's quick-start curl posts, taken from README.md as written.
fn readme_payload() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split("```sh\n")
        .find(|b| b.contains("localhost:8080/v1/segment"))
        .expect("the quick start's curl block");
    let start = block.find("-d '").expect("curl -d '…'") + 4;
    let end = start
        + block[start..]
            .find('\'')
            .expect("the payload's closing quote");
    block[start..end].to_owned()
}

/// One `serve --sandbox` run in `cwd`: posts the README's payload, waits for the sandbox to
/// hold the README's values, stops the relay; answers the relay's answer to the post.
async fn one_run(cwd: &Path, extra_env: &[(&str, &Path)], run: usize) -> Value {
    let (relay_port, sandbox_port) = (free_port(), free_port());
    let sandbox_listen = format!("127.0.0.1:{sandbox_port}");
    let mut cmd = relay_command(&["serve", "--sandbox", "--sandbox-listen", &sandbox_listen]);
    cmd.current_dir(cwd)
        .env("RELAY_LISTEN", format!("127.0.0.1:{relay_port}"))
        .envs(extra_env.iter().map(|(k, v)| (*k, *v)));
    let log = cwd.join(format!("relay-{run}.log"));
    let mut relay = spawn_logged(cmd, &log);
    let base = format!("http://127.0.0.1:{relay_port}");
    wait_until_serving(&mut relay, &base, &log).await;
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{base}/v1/segment"))
        .header("content-type", "application/json")
        .body(readme_payload())
        .send()
        .await
        .expect("relay answers")
        .json()
        .await
        .expect("a JSON answer");
    let state_url = format!("http://{sandbox_listen}/_sandbox/state");
    let readme_values = json!({"is_professional": true, "last_contacted": "2021-05-04",
                               "number_of_contacts": 5800, "preferred_name": "Johnny"});
    // A duplicate is never delivered again: nothing to wait for.
    let delivered = answer["accepted"] == 1
        && eventually(PATIENCE, || async {
            let Ok(r) = http.get(&state_url).send().await else {
                return false;
            };
            let state: Value = r.json().await.unwrap_or(Value::Null);
            state["subscribers"].as_array().is_some_and(|subs| {
                subs.iter().any(|s| {
                    s["email"] == "john.doe@example.com" && s["properties"] == readme_values
                })
            })
        })
        .await;
    relay.terminate();
    relay.wait_exit(PATIENCE).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        delivered || answer["accepted"] != 1,
        "run {run}: accepted, not delivered; log:\n{log_text}"
    );
    answer
}

/// Twice in a row, as a new user would: both runs accept the event and deliver it, because
/// the default `./data/sandbox` starts afresh with the sandbox it belongs to.
#[tokio::test]
async fn quick_start_delivers_twice_in_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let want = json!({"accepted": 1, "duplicates": 0, "ignored": 0, "rejected": []});
    assert_eq!(one_run(tmp.path(), &[], 0).await, want);
    assert!(
        tmp.path().join("data/sandbox").is_dir(),
        "the queue is not in ./data/sandbox"
    );
    assert_eq!(one_run(tmp.path(), &[], 1).await, want, "the second run");
}

/// A data directory named with RELAY_DATA_DIR is the operator's: kept across runs (so the
/// second run's event is a duplicate), with a warning that says so.
#[tokio::test]
async fn sandbox_keeps_a_named_data_dir_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    let env = [("RELAY_DATA_DIR", mine.as_path())];
    assert_eq!(one_run(tmp.path(), &env, 0).await["accepted"], 1);
    let second = one_run(tmp.path(), &env, 1).await;
    assert_eq!(
        (second["accepted"].clone(), second["duplicates"].clone()),
        (json!(0), json!(1))
    );
    let log = std::fs::read_to_string(tmp.path().join("relay-1.log")).unwrap();
    assert!(
        log.contains("serve --sandbox keeps the queue in RELAY_DATA_DIR"),
        "{log}"
    );
    assert!(mine.join("relay.db").exists());
}
