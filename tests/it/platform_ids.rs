//! Subscribers found by platform ID (`mapping.platform_id_trait`): Identifies without an email,
//! or whose email finds no subscriber, land on the subscriber with that platform ID.

use serde_json::{json, Value};

use crate::common::*;

const JOHN: &str = "john.doe@example.com";

fn johns_platform_id(sb: &TestSandbox) -> String {
    sb.sandbox
        .subscriber_by_email(JOHN)
        .expect("the demo subscriber")
        .platform_id
}

async fn plan_lands(sb: &TestSandbox, plan: &str) -> bool {
    eventually(PATIENCE, || async {
        property(&sb.sandbox, JOHN, "plan") == Some(Value::from(plan))
    })
    .await
}

/// With `platform_id_trait = userId`, an Identify with no email (and none remembered) whose
/// userId is the Stripe customer id lands on that subscriber, looked up by platform_id.
#[tokio::test]
async fn identify_without_email_is_resolved_by_platform_id() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_PLATFORM_ID_TRAIT", "userId")]).await;
    let event = json!({
        "type": "identify", "messageId": "p-1", "userId": johns_platform_id(&sb),
        "timestamp": "2024-06-01T00:00:00Z", "traits": {"plan": "ByPlatformId"},
    });
    let (status, answer) = relay.post_json(&event).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
    assert!(plan_lands(&sb, "ByPlatformId").await);
    let (_, metrics) = relay.get("/metrics").await;
    assert!(metrics.contains("method=\"platform_id\""), "{metrics}");
    assert_eq!(resolved_by_platform_id(&relay).await, 1);
}

/// What `/status` says of the subscribers found by platform ID.
async fn resolved_by_platform_id(relay: &TestRelay) -> u64 {
    let (_, status) = relay.get("/status").await;
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    status["resolved_by"]["platform_id"].as_u64().unwrap_or(0)
}

/// An email that finds no subscriber falls back to the platform ID in the configured trait.
#[tokio::test]
async fn unknown_email_falls_back_to_the_platform_id_trait() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(
        &sb.url,
        &[("RELAY_PLATFORM_ID_TRAIT", "stripe_customer_id")],
    )
    .await;
    let event = identify(
        "p-2",
        "john.at.work@example.org",
        json!({"plan": "FromWorkEmail", "stripe_customer_id": johns_platform_id(&sb)}),
        "2024-06-01T00:00:00Z",
    );
    let (status, answer) = relay.post_json(&event).await;
    assert_eq!(status, 200, "{answer}");
    assert!(plan_lands(&sb, "FromWorkEmail").await);
    assert_eq!(resolved_by_platform_id(&relay).await, 1);
}

/// No email and no platform ID stays a 422, the setting set or not.
#[tokio::test]
async fn neither_email_nor_platform_id_is_422() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(
        &sb.url,
        &[("RELAY_PLATFORM_ID_TRAIT", "stripe_customer_id")],
    )
    .await;
    let event = json!({"type": "identify", "messageId": "p-3", "userId": "u-unknown",
                       "traits": {"plan": "Nobody"}});
    let (status, answer) = relay.post_json(&event).await;
    assert_eq!(status, 422, "{answer}");
}

/// A backlog of email-less Identifies is found by paging the directory, which indexes platform
/// IDs, not by one look-up each: 30 subscribers in a 35-subscriber account cost one list page.
#[tokio::test]
async fn directory_walk_finds_platform_ids() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_PLATFORM_ID_TRAIT", "userId")]).await;
    let emails = create_members(&sb.sandbox, "walk", 30);
    let events: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, email)| {
            let platform_id = sb
                .sandbox
                .subscriber_by_email(email)
                .expect("member")
                .platform_id;
            json!({"type": "identify", "messageId": format!("w-{i}"), "userId": platform_id,
                   "timestamp": "2024-06-01T00:00:00Z", "traits": {"plan": "Pro"}})
        })
        .collect();
    let (status, answer) = relay.post_json(&Value::Array(events)).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(30)), "{answer}");
    let landed = eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &emails) }).await;
    assert!(landed, "not every email-less Identify landed");
    let requests = subscriber_list_requests(&sb.sandbox);
    assert!(
        requests <= 2,
        "{requests} GET /v1/subscribers for 30 subscribers"
    );
}
