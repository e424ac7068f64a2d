//! Coalescing under a slow budget: events that reach the queue before their subscriber's update
//! is sent go out in that update, not in a second one.

use std::time::Duration;

use crate::common::*;
use prosperstack_sandbox::SandboxConfig;
use serde_json::{json, Value};

/// Events queued before a subscriber's update is sent join that update, not a second one.
#[tokio::test(start_paused = true)]
async fn events_queued_before_the_update_is_sent_join_it() {
    // 2 requests a second: five subscribers (a look-up and an update each) take seconds.
    let sb = start_sandbox(SandboxConfig {
        rate_limit_requests: 2,
        rate_limit_window: Duration::from_secs(1),
        ..SandboxConfig::default()
    })
    .await;
    let emails: Vec<String> = (0..5).map(|i| format!("slow{i}@example.com")).collect();
    for e in &emails {
        sb.sandbox.create_subscriber(e, "Slow");
    }
    let relay = TestRelay::start(
        &sb.url,
        &[
            ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "2"),
            ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "1"),
        ],
    )
    .await;
    let wave = |version: i64| -> Value {
        let events: Vec<Value> = emails
            .iter()
            .map(|e| {
                identify(
                    &format!("{e}-v{version}"),
                    e,
                    json!({"plan": format!("v{version}")}),
                    &event_time(version * 60),
                )
            })
            .collect();
        json!(events)
    };

    assert_eq!(relay.post_json(&wave(1)).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            sb.sandbox.stats().subscriber_updates >= 1
        })
        .await
    );
    assert_eq!(relay.post_json(&wave(2)).await.0, 200);
    // Subscribers already holding v1 once v2 is stored: only they may need a second update
    // (plus at most one whose v1 update was in flight).
    let updated_before = emails
        .iter()
        .filter(|e| property(&sb.sandbox, e, "plan") == Some(json!("v1")))
        .count() as u64;

    let store = shared_store(&relay.data_dir);
    assert!(
        eventually(Duration::from_secs(60), || async {
            emails
                .iter()
                .all(|e| property(&sb.sandbox, e, "plan") == Some(json!("v2")))
                && queue_empty(&store).await
        })
        .await
    );
    let updates = sb.sandbox.stats().subscriber_updates;
    let floor = emails.len() as u64 + updated_before;
    assert!(
        updates <= floor + 1,
        "{updates} updates for {} subscribers, {updated_before} of them updated before v2 \
         arrived: events already queued were left for a second update",
        emails.len()
    );
}
