//! The relay end to end: Segment-shaped requests in, sandbox subscriber properties out.

use std::time::Duration;

use crate::common::*;
use prosperstack_sandbox::SandboxConfig;
use serde_json::json;

/// The example from Segment's ProsperStack page (nested `traits.traits`, display-name traits) lands on the subscriber,
/// typed, and a configured mapping routes a trait no rule would match.
#[tokio::test]
async fn seeds_nested_example_lands_with_mappings() {
    let sb = demo_sandbox().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "[trait_mappings]\n\"Favourite plan\" = \"plan\"\n").unwrap();
    let mut s = settings(&sb.url, tmp.path(), &[]);
    s.trait_mappings =
        prosperstack_relay::config::Settings::load(Some(&config), &|k: &str| match k {
            "PROSPERSTACK_API_KEY" => Some("key_test_sandbox".into()),
            _ => None,
        })
        .unwrap()
        .trait_mappings;
    let relay = TestRelay::start_in(s).await;

    let mut event = payload("identify-nested-traits.json");
    event["traits"]["traits"]["Favourite plan"] = json!("Scale");
    let (status, body) = relay.post_json(&event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);

    let email = "jordan.reyes@example.com";
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan").is_some()
        })
        .await
    );
    let props = sb.sandbox.subscriber_by_email(email).unwrap().properties;
    assert_eq!(props.get("number_of_contacts"), Some(&json!(5800)));
    assert_eq!(props.get("is_professional"), Some(&json!(true)));
    assert_eq!(props.get("last_contacted"), Some(&json!("2024-05-04")));
    assert_eq!(props.get("preferred_name"), Some(&json!("Jordy")));
    assert_eq!(props.get("plan"), Some(&json!("Scale")));
    // Everything for the subscriber went in one update.
    assert_eq!(sb.sandbox.stats().subscriber_updates, 1);
}

/// Log lines written while a test runs, for asserting on what was logged.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.0.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&log)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// A configured mapping to a key that is no subscriber property is logged at warn, naming the
/// trait and the key, once each time the catalogue is loaded; a good mapping is not.
#[tokio::test]
async fn unknown_mapping_target_is_logged_per_catalogue_load() {
    use prosperstack_relay::prosperstack::{ApiKey, Client};
    use prosperstack_relay::{budget::Budget, mapping::CatalogueCache, metrics::Metrics};
    let sb = demo_sandbox().await;
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let client = Client::new(
        url::Url::parse(&sb.url).unwrap(),
        ApiKey::parse("key_test_sandbox").unwrap(),
        std::sync::Arc::new(Budget::new(
            1000,
            Duration::from_secs(1),
            prosperstack_relay::clock::TokioClock::shared(),
        )),
        std::sync::Arc::new(Metrics::new()),
        Duration::from_secs(5),
    )
    .unwrap();
    let mappings = [("Nickname", "preferred_nmae"), ("Favourite plan", "plan")]
        .iter()
        .map(|(t, k)| (t.to_string(), k.to_string()))
        .collect();
    // Refreshed on every get: each get is a load.
    let cache = CatalogueCache::new(
        Duration::ZERO,
        mappings,
        prosperstack_relay::clock::TokioClock::shared(),
    );
    cache.get(&client).await.unwrap();
    let warned = log.lines_with("preferred_nmae");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("Nickname"),
        "{warned:?}"
    );
    assert!(log.lines_with("Favourite plan").is_empty());
    cache.get(&client).await.unwrap();
    assert_eq!(log.lines_with("preferred_nmae").len(), 2);
}

/// Engage: entering an audience sets the property true, exiting sets it false.
#[tokio::test]
async fn engage_audience_entered_then_exited() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "maria.lopez@example.com";
    assert_eq!(
        relay
            .post_json(&payload("identify-engage-audience-entered.json"))
            .await
            .0,
        200
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "high_value_customers") == Some(json!(true))
        })
        .await
    );
    assert_eq!(
        relay
            .post_json(&payload("identify-engage-audience-exited.json"))
            .await
            .0,
        200
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "high_value_customers") == Some(json!(false))
        })
        .await
    );
    // The computed trait lands on its number property too.
    assert_eq!(
        relay
            .post_json(&payload("identify-engage-computed-trait.json"))
            .await
            .0,
        200
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "total_spend_180_days") == Some(json!(1249.5))
        })
        .await
    );
    let stats = sb.sandbox.stats();
    eprintln!(
        "upstream requests for 3 Engage identifies: {}",
        stats.requests_total
    );
}

/// An Identify with no email (and none remembered) is answered 422 and nothing is sent.
#[tokio::test]
async fn missing_email_is_422_and_nothing_sent() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let (status, body) = relay.post_json(&payload("identify-no-email.json")).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("email"),
        "{body}"
    );
    // Nothing happening is seen through something that must happen: a later valid Identify
    // is delivered, and it is all ProsperStack ever got.
    deliver_sentinel(&relay, &sb).await;
    assert_eq!(sb.sandbox.stats().subscriber_updates, 1);
    assert_eq!(relay.metric("relay_queue_depth").await, 0);
}

/// An email seen once for a userId is used for that user's later Identify calls without one.
#[tokio::test]
async fn remembered_email() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let first = json!({"type":"identify","userId":"u-77","messageId":"r1","timestamp":"2024-06-01T00:00:00Z",
                       "traits":{"email":"john.doe@example.com"}});
    let later = json!({"type":"identify","userId":"u-77","messageId":"r2","timestamp":"2024-06-02T00:00:00Z",
                       "traits":{"Preferred name":"Johnny"}});
    assert_eq!(relay.post_json(&first).await.0, 200);
    let (status, body) = relay.post_json(&later).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "john.doe@example.com", "preferred_name") == Some(json!("Johnny"))
        })
        .await
    );
}

/// Traits that match no property are not sent; snake_case matching finds `preferredName`.
#[tokio::test]
async fn unmatched_traits_not_sent_and_snake_case_matches() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let e = identify(
        "u1",
        "john.doe@example.com",
        json!({"favouriteColour":"teal","preferredName":"JD"}),
        "2024-06-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&e).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "john.doe@example.com", "preferred_name") == Some(json!("JD"))
        })
        .await
    );
    let props = sb
        .sandbox
        .subscriber_by_email("john.doe@example.com")
        .unwrap()
        .properties;
    assert_eq!(props.len(), 1, "{props:?}");
    assert!(relay.metric("relay_traits_unmatched_total").await >= 1);
}

/// With snake_case matching off, `preferredName` matches nothing.
#[tokio::test]
async fn snake_case_match_can_be_turned_off() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_SNAKE_CASE_MATCH", "false")]).await;
    let e = identify(
        "u1",
        "john.doe@example.com",
        json!({"preferredName":"JD", "plan": "Pro"}),
        "2024-06-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&e).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "john.doe@example.com", "plan").is_some()
        })
        .await
    );
    assert_eq!(
        property(&sb.sandbox, "john.doe@example.com", "preferred_name"),
        None
    );
}

/// Values are typed for their property: a number from "5800", a date from a date-time.
#[tokio::test]
async fn values_are_typed() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let e = identify(
        "t1",
        "john.doe@example.com",
        json!({"number_of_contacts":"5800","signed_up_on":"2024-03-18T09:12:44.000Z","is_professional":"t"}),
        "2024-06-01T00:00:00Z",
    );
    assert_eq!(relay.post_json(&e).await.0, 200);
    let email = "john.doe@example.com";
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "signed_up_on").is_some()
        })
        .await
    );
    assert_eq!(
        property(&sb.sandbox, email, "number_of_contacts"),
        Some(json!(5800))
    );
    assert_eq!(
        property(&sb.sandbox, email, "signed_up_on"),
        Some(json!("2024-03-18"))
    );
    assert_eq!(
        property(&sb.sandbox, email, "is_professional"),
        Some(json!(true))
    );
}

/// In an array, a bad event is rejected with its reason; its valid neighbours are stored and
/// delivered; track events are acknowledged and ignored.
#[tokio::test]
async fn array_with_one_bad_event() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let body = json!([
        identify("a1", "john.doe@example.com", json!({"plan":"Pro"}), "2024-06-01T00:00:00Z"),
        {"type": "identify", "userId": "nobody", "messageId": "a2", "traits": {"plan": "x"}},
        payload("track-event.json"),
        "not an event",
        identify("a3", "maria.lopez@example.com", json!({"plan":"Team"}), "2024-06-01T00:00:00Z"),
    ]);
    let (status, answer) = relay.post_json(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["ignored"], 1);
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].clone(), rejected[0]["status"].clone()),
        (json!(1), json!(422))
    );
    assert_eq!(
        (rejected[1]["index"].clone(), rejected[1]["status"].clone()),
        (json!(3), json!(400))
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "john.doe@example.com", "plan").is_some()
                && property(&sb.sandbox, "maria.lopez@example.com", "plan").is_some()
        })
        .await
    );
}

/// The Tracking API's `{"batch": [...]}` shape is accepted.
#[tokio::test]
async fn tracking_api_batch() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let (status, answer) = relay.post_json(&payload("batch-tracking-api.json")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].clone(), answer["ignored"].clone()),
        (json!(1), json!(1))
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "maria.lopez@example.com", "plan") == Some(json!("business"))
        })
        .await
    );
}

/// With a shared secret, a wrong or missing signature is 401 and nothing is stored; the
/// right one (over the first element of an array) is accepted.
#[tokio::test]
async fn signature_checked() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(
        &sb.url,
        &[("SEGMENT_SHARED_SECRET", "example-shared-secret")],
    )
    .await;
    let body = minified("identify-basic.json");
    let (status, _) = relay
        .post(
            body.clone(),
            &[("x-signature", "0000000000000000000000000000000000000000")],
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = relay.post(body.clone(), &[]).await;
    assert_eq!(status, 401);
    // Unsigned means 401 whatever the body, an empty array included.
    assert_eq!(relay.post("[]", &[]).await.0, 401);
    assert_eq!(relay.metric("relay_events_received_total").await, 0);
    // Every refusal is counted (reason "unauthorized"), though no event was read.
    assert_eq!(relay.metric("relay_events_rejected_total").await, 3);
    let good = "800c9b04f49c31ca47fcd633e01a7b6e779bc302";
    let (status, answer) = relay
        .post(
            minified("webhook-actions-batch-array.json"),
            &[("x-signature", good)],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert!(
        eventually(PATIENCE, || async {
            property(
                &sb.sandbox,
                "maria.lopez@example.com",
                "high_value_customers",
            ) == Some(json!(true))
        })
        .await
    );
}

/// With an ingest token, requests without the bearer token are 401.
#[tokio::test]
async fn bearer_token_required_when_set() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_INGEST_TOKEN", "t0ken")]).await;
    let e = payload("identify-basic.json").to_string();
    assert_eq!(relay.post(e.clone(), &[]).await.0, 401);
    assert_eq!(
        relay
            .post(e.clone(), &[("authorization", "Bearer wrong")])
            .await
            .0,
        401
    );
    assert_eq!(
        relay.post(e, &[("authorization", "Bearer t0ken")]).await.0,
        200
    );
}

/// Invalid JSON, an oversize body and deeply nested JSON are 4xx, and the relay stays healthy.
#[tokio::test]
async fn hostile_bodies_are_4xx_and_relay_stays_healthy() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_MAX_BODY_BYTES", "65536")]).await;
    let (status, body) = relay.post("{\"type\": \"identify\",", &[]).await;
    assert_eq!(status, 400);
    assert!(body["message"].is_string(), "{body}");
    let big = format!(
        "{{\"type\":\"identify\",\"userId\":\"u\",\"traits\":{{\"x\":\"{}\"}}}}",
        "a".repeat(100_000)
    );
    assert_eq!(relay.post(big, &[]).await.0, 413);
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    assert_eq!(relay.post(deep_object, &[]).await.0, 400);
    let deep_array = "[".repeat(5_000) + &"]".repeat(5_000);
    assert_eq!(relay.post(deep_array, &[]).await.0, 400);
    assert_eq!(relay.get("/healthz").await.0, 200);
    assert_eq!(relay.get("/readyz").await.0, 200);
    assert_eq!(
        relay.post_json(&payload("identify-basic.json")).await.0,
        200
    );
}

/// The limiter keeps the relay under the sandbox's limit (10 requests per 2 s): however many
/// subscribers are queued, the sandbox never answers 429.
#[tokio::test(start_paused = true)]
async fn limiter_never_causes_429() {
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 10,
        rate_limit_window: Duration::from_secs(2),
        ..SandboxConfig::default()
    })
    .await;
    let emails = create_members(&sb.sandbox, "member", 12);
    let relay = TestRelay::start(
        &sb.url,
        &[
            ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "10"),
            ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "2"),
        ],
    )
    .await;
    assert_eq!(relay.post_json(&plan_events("l", &emails)).await.0, 200);
    let delivered = eventually(Duration::from_secs(90), || async {
        emails
            .iter()
            .all(|e| property(&sb.sandbox, e, "plan").is_some())
    })
    .await;
    let stats = sb.sandbox.stats();
    assert!(delivered, "{stats:?}");
    assert_eq!(stats.rate_limited_total, 0, "{stats:?}");
    assert!(
        stats.requests_total > 10,
        "the test must span several windows: {stats:?}"
    );
}

/// Engage syncing as Track calls: an audience entered, then exited, ends `false`, exactly as
/// the Identify form does; other Track calls are still ignored.
#[tokio::test]
async fn engage_audience_as_track_calls() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "maria.lopez@example.com";
    let entered = payload("track-engage-audience-entered.json");
    let (status, answer) = relay.post_json(&entered).await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "high_value_customers") == Some(json!(true))
        })
        .await
    );
    // The exit arrives, and then a late copy of the entry with its older timestamp.
    let mut late_entry = entered.clone();
    late_entry["messageId"] = json!("personas_late_copy");
    let exited = payload("track-engage-audience-exited.json");
    assert_eq!(relay.post_json(&json!([exited, late_entry])).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "high_value_customers") == Some(json!(false))
        })
        .await
    );
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains(r#"relay_events_received_total{type="track",outcome="stored"} 3"#),
        "{metrics}"
    );
    let (_, ordinary) = relay.post_json(&payload("track-event.json")).await;
    assert_eq!(ordinary["ignored"], 1);
}

/// Events that are not Identify calls are acknowledged and counted, not applied.
#[tokio::test]
async fn other_event_types_ignored() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let (status, answer) = relay.post_json(&payload("track-event.json")).await;
    assert_eq!(status, 200);
    assert_eq!(answer["ignored"], 1);
    // A blank or non-string type is no event at all: 400, not "ignored".
    for blank in [json!(""), json!(" "), json!(7)] {
        let event = json!({"type": blank, "userId": "u1", "messageId": "m-blank"});
        let (status, answer) = relay.post_json(&event).await;
        assert_eq!(status, 400, "{blank}: {answer}");
    }
    deliver_sentinel(&relay, &sb).await;
    assert_eq!(sb.sandbox.stats().subscriber_updates, 1);
}

/// With audience property creation on, an Engage audience with no property gets one.
#[tokio::test]
async fn missing_audience_property_is_created() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_CREATE_AUDIENCE_PROPERTIES", "true")]).await;
    let mut e = payload("identify-engage-audience-entered.json");
    e["traits"] = json!({"email": "maria.lopez@example.com", "trial_power_users": true});
    e["context"]["personas"]["computation_key"] = json!("trial_power_users");
    assert_eq!(relay.post_json(&e).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "maria.lopez@example.com", "trial_power_users")
                == Some(json!(true))
        })
        .await
    );
    let state: serde_json::Value = reqwest::get(format!("{}/_sandbox/state", sb.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created = state["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "trial_power_users")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            created["type"].clone(),
            created["entity"].clone(),
            created["name"].clone()
        ),
        (
            json!("boolean"),
            json!("subscriber"),
            json!("Trial power users")
        )
    );
}
