//! Hostile time and space: clients whose clocks, connections, bodies or disks misbehave.
//!
//! - a time from the future is held to the arrival plus `max_clock_skew`, so a later event lands.

use std::time::Duration;

use crate::common::*;
use prosperstack_relay::clock::{Clock, TokioClock};
use serde_json::{json, Value};

/// The probe that found it: an Identify dated 2038 was applied, and every later one lost to it
/// for ever. Now its time is held to its arrival plus 5 minutes; an event sent after that wins.
#[tokio::test(start_paused = true)]
async fn a_time_from_the_future_cannot_pin_a_value() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "john.doe@example.com";
    let future = identify(
        "m1",
        email,
        json!({"plan": "future"}),
        "2038-01-19T03:14:08Z",
    );
    assert_eq!(relay.post_json(&future).await.0, 200);
    let plan_is = |value: &'static str| {
        let sandbox = &sb.sandbox;
        move || async move { property(sandbox, email, "plan") == Some(Value::from(value)) }
    };
    assert!(eventually(PATIENCE, plan_is("future")).await);
    assert_eq!(relay.metric("relay_timestamps_clamped_total").await, 1);

    // Past the tolerated skew, a client with a right clock sends the next value.
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    let now = chrono::DateTime::from_timestamp_millis(TokioClock.wall_ms())
        .expect("a valid time")
        .to_rfc3339();
    let later = identify("m2", email, json!({"plan": "now"}), &now);
    let (status, answer) = relay.post_json(&later).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
    assert!(
        eventually(PATIENCE, plan_is("now")).await,
        "the later event never landed: {:?}",
        property(&sb.sandbox, email, "plan")
    );
    assert_eq!(relay.metric("relay_timestamps_clamped_total").await, 1);
}
