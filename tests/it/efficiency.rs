//! Spending the ProsperStack budget well: directory warm-up, coalescing, skipped no-ops.

use crate::common::*;
use serde_json::json;

/// With a large backlog, the relay pages the subscriber list instead of looking each email up.
#[tokio::test]
async fn directory_warm_up_replaces_lookups() {
    let sb = demo_sandbox().await;
    let emails = create_members(&sb.sandbox, "m", 250);
    let relay = TestRelay::start(&sb.url, &[]).await;
    assert_eq!(relay.post_json(&plan_events("w", &emails)).await.0, 200);
    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &emails) }).await);
    let stats = sb.sandbox.stats();
    let lists = subscriber_list_requests(&sb.sandbox);
    // 253 subscribers (3 demo ones) fit in 3 pages; one look-up per email would be 250.
    assert!(lists <= 3, "{stats:?}");
    assert_eq!(stats.subscriber_updates, 250, "{stats:?}");
    assert!(relay.metric("relay_directory_pages_total").await >= 1);
}

/// Events for one subscriber queued together go out as one update, latest value per property.
#[tokio::test]
async fn coalesces_per_subscriber() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_COALESCE_DELAY", "300ms")]).await;
    let email = "john.doe@example.com";
    let events = json!([
        identify(
            "c1",
            email,
            json!({"plan": "Basic"}),
            "2024-06-01T00:00:00Z"
        ),
        identify(
            "c2",
            email,
            json!({"preferred_name": "J"}),
            "2024-06-01T00:00:01Z"
        ),
        identify("c3", email, json!({"plan": "Pro"}), "2024-06-01T00:00:02Z"),
    ]);
    assert_eq!(relay.post_json(&events).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "preferred_name").is_some()
        })
        .await
    );
    assert_eq!(property(&sb.sandbox, email, "plan"), Some(json!("Pro")));
    assert_eq!(sb.sandbox.stats().subscriber_updates, 1);
    assert_eq!(relay.metric("relay_updates_coalesced_total").await, 2);
}

/// An update whose values the subscriber already holds is not sent.
#[tokio::test]
async fn skips_updates_that_change_nothing() {
    let sb = demo_sandbox().await;
    let email = "maria.lopez@example.com";
    let id = sb.sandbox.subscriber_by_email(email).unwrap().id;
    sb.sandbox
        .set_subscriber_property(&id, "high_value_customers", json!(true))
        .unwrap();
    let relay = TestRelay::start(&sb.url, &[]).await;
    assert_eq!(
        relay
            .post_json(&payload("identify-engage-audience-entered.json"))
            .await
            .0,
        200
    );
    assert!(
        eventually(PATIENCE, || async {
            relay.metric("relay_updates_skipped_total").await == 1
        })
        .await
    );
    assert_eq!(sb.sandbox.stats().subscriber_updates, 0);
    assert_eq!(
        property(&sb.sandbox, email, "high_value_customers"),
        Some(json!(true))
    );
}

/// With a directory far larger than the backlog, a walk stops once it is not paying and the
/// rest is looked up one by one: a few list pages, not the whole directory.
#[tokio::test]
async fn walk_stops_when_the_directory_dwarfs_the_backlog() {
    let sb = demo_sandbox().await;
    create_members(&sb.sandbox, "bystander", 20_000);
    // The wanted subscribers sit at the end of the directory.
    let emails = create_members(&sb.sandbox, "late", 100);
    let relay = TestRelay::start(&sb.url, &[]).await;
    assert_eq!(relay.post_json(&plan_events("d", &emails)).await.0, 200);
    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &emails) }).await);
    let pages = relay.metric("relay_directory_pages_total").await;
    let stats = sb.sandbox.stats();
    // 202 pages would list everyone; 100 look-ups find them directly.
    assert!((1..=10).contains(&pages), "{pages} pages: {stats:?}");
    assert_eq!(stats.subscriber_updates, 100, "{stats:?}");
}

/// A burst of a few dozen emails in an account of a few hundred subscribers: three list pages
/// find them all, where looking each up would cost thirty requests. The account's size is
/// unknown to the relay; the walk's first pages tell it paging is the cheaper way.
#[tokio::test]
async fn small_burst_in_a_small_account_pages_the_directory() {
    let sb = demo_sandbox().await;
    let members = create_members(&sb.sandbox, "burst", 247);
    // Thirty of them, spread through the directory.
    let wanted: Vec<String> = members.iter().step_by(8).take(30).cloned().collect();
    let relay = TestRelay::start(&sb.url, &[]).await;
    assert_eq!(relay.post_json(&plan_events("b", &wanted)).await.0, 200);
    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &wanted) }).await);
    let finding = subscriber_list_requests(&sb.sandbox);
    // 250 subscribers are 3 pages; about 1.2 × that at most.
    assert!(
        finding <= 4,
        "{finding} requests to find 30 subscribers in 250"
    );
}
