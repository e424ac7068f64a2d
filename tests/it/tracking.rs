//! The Tracking API endpoints (`/v1/batch`, `/v1/identify`, …) as backends and RudderStack use
//! them: write keys, basic auth, gzip, and the answers their libraries expect.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;

const WRITE_KEY: &str = "wk_test_backend";

/// `Authorization: Basic …` with the key as the user and an empty password.
fn basic(key: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    format!("Basic {encoded}")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Posts `body` to `path` with `headers`; answers the status and the JSON body.
async fn post_to(
    relay: &TestRelay,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", relay.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("relay answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn relay_with_keys(sb: &TestSandbox) -> TestRelay {
    TestRelay::start(
        &sb.url,
        &[("RELAY_WRITE_KEYS", "wk_other, wk_test_backend")],
    )
    .await
}

fn plan_identify(message_id: &str, plan: &str) -> Value {
    identify(
        message_id,
        "john.doe@example.com",
        json!({ "plan": plan }),
        "2024-06-01T00:00:00Z",
    )
}

async fn plan_lands(sb: &TestSandbox, plan: &str) -> bool {
    eventually(PATIENCE, || async {
        property(&sb.sandbox, "john.doe@example.com", "plan") == Some(Value::from(plan))
    })
    .await
}

/// A gzipped `/v1/batch` with the key as basic-auth user is stored, answered
/// `{"success": true}`, and its Identify lands; the key is in no log.
#[tokio::test]
async fn gzipped_batch_with_basic_auth_lands() {
    let sb = demo_sandbox().await;
    let relay = relay_with_keys(&sb).await;
    let body =
        json!({"batch": [plan_identify("b-1", "Gzipped")], "sentAt": "2024-06-01T00:00:01Z"});
    let auth = basic(WRITE_KEY);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-encoding", "gzip"),
    ];
    let (status, answer) = post_to(
        &relay,
        "/v1/batch",
        gzip(body.to_string().as_bytes()),
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["accepted"], 1);
    assert!(plan_lands(&sb, "Gzipped").await);
    assert!(!relay.logs.text().contains(WRITE_KEY));
}

/// `/v1/identify` with `writeKey` in the body lands; `/v1/track` is acknowledged and ignored.
#[tokio::test]
async fn single_calls_with_key_in_body() {
    let sb = demo_sandbox().await;
    let relay = relay_with_keys(&sb).await;
    let mut call = plan_identify("i-1", "FromBody");
    call["writeKey"] = json!(WRITE_KEY);
    call.as_object_mut().map(|o| o.remove("type"));
    let (status, answer) =
        post_to(&relay, "/v1/identify", call.to_string().into_bytes(), &[]).await;
    assert_eq!(
        (status, &answer["success"]),
        (200, &json!(true)),
        "{answer}"
    );
    let track = json!({"writeKey": WRITE_KEY, "userId": "u", "event": "Clicked"});
    let (status, answer) = post_to(&relay, "/v1/track", track.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ignored"], 1);
    assert!(plan_lands(&sb, "FromBody").await);
}

/// An unknown or missing key is 401 (`success: false`); bad JSON is 400; a gzip bomb 413.
#[tokio::test]
async fn refusals_are_the_tracking_apis() {
    let sb = demo_sandbox().await;
    let relay = relay_with_keys(&sb).await;
    let body = json!({"batch": [plan_identify("r-1", "Never")]}).to_string();
    let wrong = basic("wk_unknown");
    let (status, answer) = post_to(
        &relay,
        "/v1/batch",
        body.clone().into_bytes(),
        &[("authorization", &wrong)],
    )
    .await;
    assert_eq!(
        (status, &answer["success"]),
        (401, &json!(false)),
        "{answer}"
    );
    let (status, answer) = post_to(&relay, "/v1/batch", body.into_bytes(), &[]).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["message"]
        .as_str()
        .unwrap_or("")
        .contains("write key"));

    let auth = basic(WRITE_KEY);
    let (status, _) = post_to(
        &relay,
        "/v1/batch",
        b"{not json".to_vec(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 400);
    let bomb = gzip(&vec![b' '; 16 * 1024 * 1024]);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-encoding", "gzip"),
    ];
    let (status, _) = post_to(&relay, "/v1/batch", bomb, &headers).await;
    assert_eq!(status, 413);
    assert_eq!(sb.sandbox.stats().subscriber_updates, 0);
}

/// With no write key configured, the Tracking API refuses everything and says why;
/// `/v1/segment` is unaffected.
#[tokio::test]
async fn no_write_keys_configured_is_explained() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let body = json!({"batch": [plan_identify("n-1", "Never")], "writeKey": "anything"});
    let (status, answer) = post_to(&relay, "/v1/batch", body.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 401, "{answer}");
    let message = answer["message"].as_str().unwrap_or("");
    assert!(message.contains("RELAY_WRITE_KEYS"), "{message}");
    let (status, _) = relay.post_json(&plan_identify("n-2", "Segment")).await;
    assert_eq!(status, 200);
}

/// An Engage audience sent as a Track through `/v1/track` is applied as on `/v1/segment`.
#[tokio::test]
async fn engage_track_call_is_applied() {
    let sb = demo_sandbox().await;
    let relay = relay_with_keys(&sb).await;
    let mut entered = payload("track-engage-audience-entered.json");
    entered["writeKey"] = json!(WRITE_KEY);
    let (status, answer) =
        post_to(&relay, "/v1/track", entered.to_string().into_bytes(), &[]).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
    let applied = eventually(PATIENCE, || async {
        property(
            &sb.sandbox,
            "maria.lopez@example.com",
            "high_value_customers",
        ) == Some(json!(true))
    })
    .await;
    assert!(applied, "the Engage Track call was not applied");
}
