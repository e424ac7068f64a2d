//! Latest wins, as a property: whatever the arrival order of a set of timestamped updates and
//! however delivery rounds cut through it, the store, `mapping::plan` and a fake ProsperStack
//! end with the value of the latest update per subscriber and property. No network.

use std::collections::HashMap;

use proptest::prelude::*;
use prosperstack_relay::identify::normalise;
use prosperstack_relay::mapping::{plan, Catalogue, Rules};
use prosperstack_relay::prosperstack::{Property, PropertyType};
use prosperstack_relay::store::{
    Incoming, IngestOutcome, Job, JobOutcome, JobResult, SqliteStore, Store, StoreOptions,
};
use serde_json::{json, Value};

/// One generated update: subscriber, property, and the rank of its timestamp.
#[derive(Clone, Debug)]
struct Update {
    subscriber: u8,
    property: u8,
    rank: usize,
}

/// The fake ProsperStack: (email, property key) → value.
type Fake = HashMap<(String, String), Value>;

fn email(subscriber: u8) -> String {
    format!("s{subscriber}@example.com")
}

fn key(property: u8) -> String {
    format!("prop{property}")
}

/// Update `i` sets its property to `"v<i>"`, at `rank` seconds after a base time.
fn event_json(i: usize, u: &Update) -> Value {
    let ts = chrono::DateTime::from_timestamp(1_717_200_000 + u.rank as i64, 0)
        .expect("valid time")
        .to_rfc3339();
    json!({
        "type": "identify",
        "userId": format!("user{}", u.subscriber),
        "messageId": format!("m{i}"),
        "timestamp": ts,
        "traits": { "email": email(u.subscriber), key(u.property): format!("v{i}") },
    })
}

fn catalogue() -> Catalogue {
    Catalogue::new(
        (0..3)
            .map(|p| Property {
                id: format!("prop_{p}"),
                key: key(p),
                name: key(p),
                entity: "subscriber".into(),
                kind: PropertyType::Text,
                format: None,
            })
            .collect(),
    )
}

/// Plans each job and applies the plan to the fake, as delivery would send it.
fn apply(jobs: &[Job], fake: &mut Fake) -> Vec<JobResult> {
    let (catalogue, rules) = (catalogue(), Rules::default());
    jobs.iter()
        .map(|job| {
            let planned = plan(job, &catalogue, &rules);
            for (k, v) in &planned.properties {
                fake.insert((job.email.clone(), k.clone()), v.clone());
            }
            JobResult {
                email: job.email.clone(),
                up_to_event_id: job.up_to_event_id(),
                outcome: JobOutcome::Delivered {
                    applied: planned.timestamps.into_iter().collect(),
                    rejected: vec![],
                    attempts: 1,
                },
            }
        })
        .collect()
}

/// Ingests `updates` round by round in `order`; after each round takes the due jobs, applies
/// them, and finishes them at once or (`defer`) only after the next round was ingested, as
/// when events arrive while an update is in flight. Answers the fake at the end.
async fn run(updates: &[Update], order: &[usize], cuts: &[bool], defer: &[bool]) -> Fake {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions { coalesce_ms: 0 }).expect("store");
    let mut fake = Fake::new();
    let mut now = 1_800_000_000_000i64;
    let lease = store
        .acquire_lease("test", std::time::Duration::from_secs(86_400), now)
        .await
        .expect("acquire")
        .expect("a fresh store's lease is free");
    let mut pending: Vec<JobResult> = Vec::new();
    let mut rounds: Vec<Vec<usize>> = vec![Vec::new()];
    for (pos, &i) in order.iter().enumerate() {
        rounds.last_mut().expect("a round").push(i);
        if cuts[pos] {
            rounds.push(Vec::new());
        }
    }
    for (r, round) in rounds.iter().enumerate() {
        now += 1;
        let incoming: Vec<Incoming> = round
            .iter()
            .map(|&i| {
                let raw = event_json(i, &updates[i]);
                Incoming::live(normalise(&raw, now).expect("valid event"), raw.to_string())
            })
            .collect();
        let outcomes = store.ingest(incoming, now).await.expect("ingest");
        assert!(outcomes.iter().all(|o| *o == IngestOutcome::Stored));
        if !pending.is_empty() {
            store
                .finish(&lease, std::mem::take(&mut pending), now)
                .await
                .expect("finish");
        }
        now += 1;
        let jobs = store.due_jobs(now, 100).await.expect("due jobs");
        let results = apply(&jobs, &mut fake);
        if defer[r % defer.len()] {
            pending = results;
        } else {
            store.finish(&lease, results, now).await.expect("finish");
        }
    }
    store.finish(&lease, pending, now).await.expect("finish");
    // Whatever arrived while an update was in flight is still queued: deliver it.
    loop {
        now += 1;
        let jobs = store.due_jobs(now, 100).await.expect("due jobs");
        if jobs.is_empty() {
            break;
        }
        let results = apply(&jobs, &mut fake);
        store.finish(&lease, results, now).await.expect("finish");
    }
    fake
}

/// Up to 12 updates with distinct timestamps (a shuffled rank each), an arrival order, where
/// delivery rounds end, and which rounds finish late.
fn scenario() -> impl Strategy<Value = (Vec<Update>, Vec<usize>, Vec<bool>, Vec<bool>)> {
    (1usize..=12).prop_flat_map(|n| {
        let ranks = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let targets = prop::collection::vec((0u8..3, 0u8..3), n);
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let cuts = prop::collection::vec(any::<bool>(), n);
        let defer = prop::collection::vec(any::<bool>(), 1..=4);
        (ranks, targets, order, cuts, defer).prop_map(|(ranks, targets, order, cuts, defer)| {
            let updates = targets
                .into_iter()
                .zip(ranks)
                .map(|((subscriber, property), rank)| Update {
                    subscriber,
                    property,
                    rank,
                })
                .collect();
            (updates, order, cuts, defer)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any arrival order, cut into any delivery rounds, ends in the latest value per slot.
    #[test]
    fn any_arrival_order_ends_in_the_latest_values(
        (updates, order, cuts, defer) in scenario()
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let fake = runtime.block_on(run(&updates, &order, &cuts, &defer));
        let mut want: HashMap<(String, String), (usize, Value)> = HashMap::new();
        for (i, u) in updates.iter().enumerate() {
            let slot = (email(u.subscriber), key(u.property));
            let newer = want.get(&slot).is_none_or(|(rank, _)| u.rank > *rank);
            if newer {
                want.insert(slot, (u.rank, json!(format!("v{i}"))));
            }
        }
        let want: Fake = want.into_iter().map(|(k, (_, v))| (k, v)).collect();
        prop_assert_eq!(fake, want);
    }
}
