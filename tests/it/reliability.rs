//! "Delivery you can trust", in process: latest-wins across arrival orders, dedupe, waiting for
//! subscribers, upstream outages, property-level dead letters and their replay, user deletion.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use prosperstack_relay::store::Store;
use prosperstack_sandbox::SANDBOX_API_KEY;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

/// The Engage audience every test subscriber of the shuffled test enters and exits.
const AUDIENCE: &str = "high_value_customers";

/// One audience entry (true) or exit (false) for a subscriber, at a time.
#[derive(Clone)]
struct Membership {
    email: String,
    offset_secs: i64,
    member: bool,
}

impl Membership {
    fn event(&self) -> Value {
        let id = format!("aud-{}-{}", self.email, self.offset_secs);
        audience_event(
            &id,
            &self.email,
            AUDIENCE,
            self.member,
            &event_time(self.offset_secs),
        )
    }
}

/// The latest membership per subscriber among `posted`.
fn latest(posted: &[Membership]) -> HashMap<String, bool> {
    let mut best: HashMap<String, (i64, bool)> = HashMap::new();
    for m in posted {
        let entry = best.entry(m.email.clone()).or_insert((i64::MIN, false));
        if m.offset_secs > entry.0 {
            *entry = (m.offset_secs, m.member);
        }
    }
    best.into_iter().map(|(e, (_, m))| (e, m)).collect()
}

async fn sandbox_shows(sb: &TestSandbox, want: &HashMap<String, bool>) -> bool {
    want.iter()
        .all(|(email, m)| property(&sb.sandbox, email, AUDIENCE) == Some(json!(m)))
}

/// Shuffled audience entries/exits, delivered in rounds, end latest; a late stale one is ignored.
#[tokio::test]
async fn shuffled_audience_entries_and_exits_end_in_the_latest() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let mut memberships = Vec::new();
    for i in 0..4 {
        let email = format!("aud{i}@example.com");
        sb.sandbox.create_subscriber(&email, "Audience Member");
        // 3 to 6 alternating entries and exits, a minute apart: the final one differs by subscriber.
        for k in 0..(3 + i) {
            memberships.push(Membership {
                email: email.clone(),
                offset_secs: 60 * k,
                member: k % 2 == 0,
            });
        }
    }
    memberships.shuffle(&mut rand::rngs::StdRng::seed_from_u64(42));

    let mut posted = Vec::new();
    for round in memberships.chunks(6) {
        // Half the round in one array, the rest one request each.
        let (together, apart) = round.split_at(round.len() / 2);
        let array: Vec<Value> = together.iter().map(Membership::event).collect();
        assert_eq!(relay.post_json(&json!(array)).await.0, 200);
        for m in apart {
            assert_eq!(relay.post_json(&m.event()).await.0, 200);
        }
        posted.extend_from_slice(round);
        let want = latest(&posted);
        assert!(
            eventually(PATIENCE, || sandbox_shows(&sb, &want)).await,
            "after a round the sandbox should show the latest memberships {want:?}: {:?}",
            sb.sandbox.subscribers()
        );
    }

    // Stale: an event older than the delivered one, with the opposite value, for everyone;
    // then a later `plan` per subscriber, which cannot arrive before the stale event was handled.
    let finals = latest(&posted);
    for (email, member) in &finals {
        let stale = Membership {
            email: email.clone(),
            offset_secs: 30,
            member: !member,
        };
        assert_eq!(relay.post_json(&stale.event()).await.0, 200);
    }
    for email in finals.keys() {
        let sentinel = identify(
            &format!("sentinel-{email}"),
            email,
            json!({"plan": "sentinel"}),
            &event_time(3600),
        );
        assert_eq!(relay.post_json(&sentinel).await.0, 200);
    }
    assert!(
        eventually(PATIENCE, || async {
            finals
                .keys()
                .all(|e| property(&sb.sandbox, e, "plan") == Some(json!("sentinel")))
        })
        .await
    );
    assert!(
        sandbox_shows(&sb, &finals).await,
        "a stale event overwrote a newer membership: want {finals:?}, got {:?}",
        sb.sandbox.subscribers()
    );
}

/// Repeated messageIds (also within one array) are answered as duplicates and applied once.
#[tokio::test]
async fn duplicate_message_ids_are_applied_once() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let emails = [
        "maria.lopez@example.com",
        "jordan.reyes@example.com",
        "john.doe@example.com",
    ];
    let events: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            identify(
                &format!("dup-{i}"),
                e,
                json!({"plan": "Pro"}),
                &event_time(0),
            )
        })
        .collect();

    let doubled: Vec<Value> = events.iter().chain(&events).cloned().collect();
    let (status, first) = relay.post_json(&json!(doubled)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["accepted"].clone(), first["duplicates"].clone()),
        (json!(3), json!(3))
    );
    let (status, second) = relay.post_json(&json!(events)).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        (second["accepted"].clone(), second["duplicates"].clone()),
        (json!(0), json!(3))
    );
    let (status, third) = relay.post_json(&events[0]).await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(
        (third["accepted"].clone(), third["duplicates"].clone()),
        (json!(0), json!(1))
    );

    let store = shared_store(&relay.data_dir);
    assert!(
        eventually(PATIENCE, || async {
            emails
                .iter()
                .all(|e| property(&sb.sandbox, e, "plan") == Some(json!("Pro")))
                && queue_empty(&store).await
        })
        .await
    );
    assert_eq!(sb.sandbox.stats().subscriber_updates, emails.len() as u64);
}

/// An update for an email with no subscriber yet waits and arrives once the subscriber exists.
#[tokio::test(start_paused = true)]
async fn subscriber_created_after_its_events_gets_them() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "late.import@example.com";
    let e = identify("late-1", email, json!({"plan": "Scale"}), &event_time(0));
    assert_eq!(relay.post_json(&e).await.0, 200);
    // The relay looked and found no one.
    assert!(
        eventually(PATIENCE, || async {
            subscriber_list_requests(&sb.sandbox) >= 1
        })
        .await
    );
    assert!(sb.sandbox.subscriber_by_email(email).is_none());

    sb.sandbox.create_subscriber(email, "Late Import");
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan") == Some(json!("Scale"))
        })
        .await,
        "the waiting update never arrived: {:?}",
        sb.sandbox.stats()
    );
}

/// An upstream outage (20 answers of 503) loses nothing: all events arrive afterwards.
#[tokio::test(start_paused = true)]
async fn upstream_outage_loses_nothing() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    // Warm up first, so the outage hits look-ups and updates (the catalogue is cached).
    let warm = identify(
        "warm",
        "john.doe@example.com",
        json!({"plan": "Pro"}),
        &event_time(0),
    );
    assert_eq!(relay.post_json(&warm).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, "john.doe@example.com", "plan").is_some()
        })
        .await
    );

    let emails: Vec<String> = (0..10).map(|i| format!("outage{i}@example.com")).collect();
    for e in &emails {
        sb.sandbox.create_subscriber(e, "Outage");
    }
    sb.sandbox.inject_failures(503, 20);
    let events: Vec<Value> = emails
        .iter()
        .map(|e| {
            identify(
                &format!("out-{e}"),
                e,
                json!({"plan": "Team"}),
                &event_time(60),
            )
        })
        .collect();
    assert_eq!(relay.post_json(&json!(events)).await.0, 200);

    let arrived = eventually(Duration::from_secs(120), || async {
        emails
            .iter()
            .all(|e| property(&sb.sandbox, e, "plan") == Some(json!("Team")))
    })
    .await;
    let stats = sb.sandbox.stats();
    assert!(arrived, "events lost or stuck after the outage: {stats:?}");
    assert_eq!(stats.by_status.get(&503), Some(&20), "{stats:?}");
}

/// Makes the relay's cached catalogue disagree with the sandbox: `preferred_name` (text when the
/// relay cached it) is deleted and re-created as a number; then an event sets it to "42" (sent
/// as text, refused) beside `plan`. Answers once `plan` arrived and the dead letter is written.
async fn reject_one_property(sb: &TestSandbox, relay: &TestRelay) {
    let email = "john.doe@example.com";
    let first = identify("cat-1", email, json!({"plan": "Pro"}), &event_time(0));
    assert_eq!(relay.post_json(&first).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan") == Some(json!("Pro"))
        })
        .await
    );

    let state: Value = reqwest::get(format!("{}/_sandbox/state", sb.url))
        .await
        .expect("sandbox state")
        .json()
        .await
        .expect("state JSON");
    let id = state["properties"]
        .as_array()
        .expect("properties")
        .iter()
        .find(|p| p["key"] == "preferred_name")
        .and_then(|p| p["id"].as_str())
        .expect("preferred_name exists")
        .to_owned();
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v1/properties/{id}", sb.url))
        .basic_auth(SANDBOX_API_KEY, Some(""))
        .send()
        .await
        .expect("delete answered");
    assert_eq!(deleted.status().as_u16(), 204);
    sb.sandbox
        .create_property("preferred_name", "Preferred name", "subscriber", "number")
        .expect("re-create as a number");

    let second = identify(
        "cat-2",
        email,
        json!({"preferred_name": "42", "plan": "Team"}),
        &event_time(60),
    );
    assert_eq!(relay.post_json(&second).await.0, 200);
    let store = shared_store(&relay.data_dir);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "plan") == Some(json!("Team"))
                && store.dead_letters().await.is_ok_and(|d| !d.is_empty())
        })
        .await,
        "plan never arrived or no dead letter was written: {:?}",
        sb.sandbox.subscriber_by_email(email)
    );
}

/// A refused property becomes one dead letter with the API's message; its neighbour arrives.
#[tokio::test]
async fn refused_property_dead_letters_only_that_property() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    reject_one_property(&sb, &relay).await;

    let email = "john.doe@example.com";
    assert_eq!(property(&sb.sandbox, email, "preferred_name"), None);
    let letters = dead_letters_cli(&relay.data_dir).await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(letter["email"], json!(email));
    assert_eq!(letter["properties"], json!({"preferred_name": "42"}));
    let reason = letter["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(r#"Invalid value for property "preferred_name": expected a number"#),
        "{reason}"
    );
    assert_eq!(letter["cause"], json!("property_refused"));

    // The counter moves by cause, and the log says which dead letter to replay.
    let (_, metrics) = relay.get("/metrics").await;
    let counted = r#"relay_dead_lettered_total{reason="property_refused"} 1"#;
    assert!(metrics.contains(counted), "{metrics}");
    let id = letter["id"].as_i64().expect("an id");
    let logs = relay.logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("became a dead letter"))
        .unwrap_or_else(|| panic!("no dead letter in the log:\n{logs}"));
    assert!(
        line.contains("WARN") && line.contains(&format!("dead_letter={id}")),
        "{line}"
    );
    assert!(
        line.contains("property=\"preferred_name\"") || line.contains("property=preferred_name"),
        "{line}"
    );
}

/// `dead-letters replay --all` beside a running relay applies the refused value, now typed.
#[tokio::test(start_paused = true)]
async fn replayed_dead_letter_applies_after_the_type_change() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    reject_one_property(&sb, &relay).await;
    let store = shared_store(&relay.data_dir);
    assert!(eventually(PATIENCE, || queue_empty(&store)).await);
    let updates_before = sb.sandbox.stats().subscriber_updates;

    let dir = relay.data_dir.display().to_string();
    let out = run_cli(
        &[("RELAY_DATA_DIR", dir.as_str())],
        &["dead-letters", "replay", "--all"],
    )
    .await;
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let email = "john.doe@example.com";
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "preferred_name") == Some(json!(42))
                && queue_empty(&store).await
        })
        .await,
        "the replayed value never arrived: {:?}",
        sb.sandbox.subscriber_by_email(email)
    );
    assert_eq!(property(&sb.sandbox, email, "plan"), Some(json!("Team")));
    assert_eq!(sb.sandbox.stats().subscriber_updates, updates_before + 1);
    assert_eq!(dead_letters_cli(&relay.data_dir).await, Vec::<Value>::new());
}

/// A Segment `delete` drops the user's queued updates and forgets their remembered email.
#[tokio::test]
async fn delete_forgets_queued_updates_and_the_email() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "ghost@example.com";
    let queued = json!({"type": "identify", "userId": "ghost-user", "messageId": "g1",
        "timestamp": event_time(0), "traits": {"email": email, "plan": "Pro"}});
    assert_eq!(relay.post_json(&queued).await.0, 200);
    // The relay looked and found no one: the update is queued, waiting.
    assert!(
        eventually(PATIENCE, || async {
            subscriber_list_requests(&sb.sandbox) >= 1
        })
        .await
    );

    let delete = json!({"type": "delete", "userId": "ghost-user", "messageId": "g-del"});
    let (status, answer) = relay.post_json(&delete).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    sb.sandbox.create_subscriber(email, "Ghost");

    // A later event for the same email (another user) is delivered; the deleted one is not.
    let later = json!({"type": "identify", "userId": "other-user", "messageId": "g2",
        "timestamp": event_time(60), "traits": {"email": email, "Preferred name": "Casper"}});
    assert_eq!(relay.post_json(&later).await.0, 200);
    assert!(
        eventually(PATIENCE, || async {
            property(&sb.sandbox, email, "preferred_name") == Some(json!("Casper"))
        })
        .await
    );
    assert_eq!(
        property(&sb.sandbox, email, "plan"),
        None,
        "a deleted user's queued update was delivered"
    );

    let no_email = json!({"type": "identify", "userId": "ghost-user", "messageId": "g3",
        "timestamp": event_time(120), "traits": {"plan": "Team"}});
    let (status, body) = relay.post_json(&no_email).await;
    assert_eq!(
        status, 422,
        "the deleted user's email is still remembered: {body}"
    );
}
