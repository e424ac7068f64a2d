//! What the contract's cases share: events to ingest, a deliverer's lease, results to record.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::identify;
use crate::store::{Incoming, JobOutcome, JobResult, Lease, Store};

/// The deliverer of the queue cases: holds the lease for a day of the store's clock (SQLite's
/// clock is the callers' `now_ms`, which those cases keep small).
pub async fn deliverer(s: &impl Store) -> Lease {
    s.acquire_lease("deliverer", Duration::from_secs(86_400), 0)
        .await
        .expect("acquire")
        .expect("a fresh store's lease is free")
}

/// Records one job's result under `lease`.
pub async fn finish(
    s: &impl Store,
    lease: &Lease,
    email: &str,
    up_to_event_id: i64,
    outcome: JobOutcome,
    now_ms: i64,
) {
    let result = JobResult {
        email: email.to_owned(),
        up_to_event_id,
        outcome,
    };
    s.finish(lease, vec![result], now_ms).await.expect("finish");
}

/// An Identify with `traits.plan = "pro"`, from `user` (else an anonymous id), with `email`.
pub fn identify(message_id: &str, user: Option<&str>, email: Option<&str>, ts: i64) -> Incoming {
    let time = chrono::DateTime::from_timestamp_millis(ts).expect("a valid time");
    let mut v = json!({"type": "identify", "messageId": message_id, "traits": {"plan": "pro"},
                       "timestamp": time.to_rfc3339()});
    if let Some(u) = user {
        v["userId"] = json!(u);
    } else {
        v["anonymousId"] = json!("anon");
    }
    if let Some(e) = email {
        v["traits"]["email"] = json!(e);
    }
    incoming(&v)
}

/// A delete request for `user`.
pub fn delete(message_id: &str, user: &str) -> Incoming {
    incoming(&json!({"type": "delete", "userId": user, "messageId": message_id}))
}

/// An event as ingest hands it over: normalised, with the JSON as received.
pub fn incoming(v: &Value) -> Incoming {
    Incoming::live(
        identify::normalise(v, 0).expect("a valid event"),
        v.to_string(),
    )
}

/// Delivered, with these applied timestamps and nothing refused.
pub fn delivered(applied: &[(&str, i64)]) -> JobOutcome {
    JobOutcome::Delivered {
        applied: applied.iter().map(|(k, t)| (k.to_string(), *t)).collect(),
        rejected: vec![],
        attempts: 1,
    }
}

/// The wall clock, for the lease cases: SQLite judges expiry by it, PostgreSQL by its own.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(crate::clock::millis)
        .unwrap_or(0)
}
