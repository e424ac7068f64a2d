//! Emails match whatever their case: Segment traits and ProsperStack disagree on it all the time,
//! and one person must be one subscriber, one queue entry and one remembered email.

use crate::common::*;
use prosperstack_relay::store::Store;
use serde_json::json;

/// An Identify for `Maria.Lopez@Example.com` reaches `maria.lopez@example.com` at once: found
/// by its first look-up, never put on the "no subscriber yet" schedule.
#[tokio::test]
async fn mixed_case_identify_lands_without_waiting() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let event = identify(
        "mixed-1",
        " Maria.Lopez@Example.com ",
        json!({"plan": "Scale"}),
        &event_time(0),
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    let landed = eventually(PATIENCE, || async {
        property(&sb.sandbox, "maria.lopez@example.com", "plan") == Some(json!("Scale"))
    })
    .await;
    assert!(landed, "{:?}", sb.sandbox.stats());
    assert_eq!(
        subscriber_list_requests(&sb.sandbox),
        1,
        "one look-up found it"
    );
    assert_eq!(relay.metric("relay_delivery_retries_total").await, 0);
}

/// A subscriber ProsperStack keeps in mixed case is found by the spelling Segment sent, when
/// looking up the lowercased key finds no one (an email filter that compares exactly).
#[tokio::test]
async fn mixed_case_subscriber_is_found_by_the_spelling_sent() {
    let sb = demo_sandbox().await;
    sb.sandbox.create_subscriber("Jo.Mixed@Example.com", "Jo");
    let relay = TestRelay::start(&sb.url, &[]).await;
    let event = identify(
        "mixed-2",
        "Jo.Mixed@Example.com",
        json!({"plan": "Team"}),
        &event_time(0),
    );
    assert_eq!(relay.post_json(&event).await.0, 200);
    let landed = eventually(PATIENCE, || async {
        property(&sb.sandbox, "Jo.Mixed@Example.com", "plan") == Some(json!("Team"))
    })
    .await;
    assert!(landed, "{:?}", sb.sandbox.stats());
    assert_eq!(relay.metric("relay_delivery_retries_total").await, 0);
}

/// Events for one person in three spellings are one queue entry and go out as one update;
/// the latest value wins across spellings.
#[tokio::test]
async fn spellings_of_one_email_share_one_queue_entry() {
    let sb = demo_sandbox().await;
    // A slow coalescing delay holds the job while all three events arrive.
    let relay = TestRelay::start(&sb.url, &[("RELAY_COALESCE_DELAY", "2s")]).await;
    let events = json!([
        identify(
            "sp-1",
            "JOHN.DOE@example.com",
            json!({"plan": "a"}),
            &event_time(0)
        ),
        identify(
            "sp-2",
            "john.doe@EXAMPLE.com",
            json!({"plan": "c"}),
            &event_time(120)
        ),
        identify(
            "sp-3",
            "John.Doe@Example.Com",
            json!({"plan": "b"}),
            &event_time(60)
        ),
    ]);
    assert_eq!(relay.post_json(&events).await.0, 200);
    let stats = shared_store(&relay.data_dir).stats().await.expect("stats");
    assert_eq!((stats.events, stats.subscribers), (3, 1), "{stats:?}");
    let landed = eventually(PATIENCE, || async {
        property(&sb.sandbox, "john.doe@example.com", "plan") == Some(json!("c"))
    })
    .await;
    assert!(landed, "{:?}", sb.sandbox.stats());
    assert_eq!(sb.sandbox.stats().subscriber_updates, 1);
}

/// The email remembered for a userId serves its later email-less events whatever case it was
/// sent in, and a delete forgets the person under every spelling.
#[tokio::test]
async fn remembered_email_and_delete_ignore_case() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let first = json!({"type": "identify", "userId": "u-case", "messageId": "rc-1",
        "timestamp": event_time(0), "traits": {"email": "Maria.LOPEZ@example.com"}});
    let later = json!({"type": "identify", "userId": "u-case", "messageId": "rc-2",
        "timestamp": event_time(60), "traits": {"Preferred name": "Mari"}});
    assert_eq!(relay.post_json(&first).await.0, 200);
    assert_eq!(relay.post_json(&later).await.0, 200);
    let landed = eventually(PATIENCE, || async {
        property(&sb.sandbox, "maria.lopez@example.com", "preferred_name") == Some(json!("Mari"))
    })
    .await;
    assert!(landed, "{:?}", sb.sandbox.stats());

    let delete = json!({"type": "delete", "userId": "u-case", "messageId": "rc-del"});
    assert_eq!(relay.post_json(&delete).await.0, 200);
    let after = json!({"type": "identify", "userId": "u-case", "messageId": "rc-3",
        "timestamp": event_time(120), "traits": {"plan": "Gone"}});
    assert_eq!(relay.post_json(&after).await.0, 422);
}

/// A directory walk matches emails whatever case either side uses.
#[tokio::test]
async fn directory_walk_matches_any_case() {
    let sb = demo_sandbox().await;
    let stored = create_members(&sb.sandbox, "Walk.Member", 150);
    let relay = TestRelay::start(&sb.url, &[]).await;
    let sent: Vec<String> = stored.iter().map(|e| e.to_uppercase()).collect();
    assert_eq!(relay.post_json(&plan_events("w", &sent)).await.0, 200);
    assert!(eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &stored) }).await);
    let pages = relay.metric("relay_directory_pages_total").await;
    assert!(pages >= 1, "the backlog was large enough for a walk");
    assert_eq!(relay.metric("relay_delivery_retries_total").await, 0);
}
