//! The Engage audience workload: N subscribers, each entering every audience, in shuffled
//! order, with at-least-once repeats and some events that change nothing.
//!
//! In: a [`Spec`] (sizes, fractions, seed). Out: the subscribers and properties to create in a
//! sandbox, the (subscriber, audience) values to pre-set there, and the events in arrival
//! order, shaped like `tests/fixtures/segment-payloads/identify-engage-audience-entered.json`.
//! Stays true: the same spec always yields the same workload (seeded RNG); a repeat carries
//! its original's messageId and timestamp and always arrives after it.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::BenchError;
use prosperstack_sandbox::Sandbox;

/// The audience properties (boolean, subscriber): Engage's `computation_key`s.
pub const AUDIENCES: [&str; 3] = ["aud_power_users", "aud_trial_converters", "aud_churn_risk"];

#[derive(Clone, Debug)]
pub struct Spec {
    pub subscribers: usize,
    /// Re-sent copies, as a fraction of the distinct events.
    pub repeat_fraction: f64,
    /// Distinct events whose value is already current in ProsperStack.
    pub current_fraction: f64,
    pub seed: u64,
}

/// One distinct event: subscriber `subscriber` enters audience `audience`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub subscriber: usize,
    pub audience: usize,
}

pub struct Workload {
    pub emails: Vec<String>,
    /// Indexed by pair id (`subscriber * AUDIENCES.len() + audience`): already true upstream.
    pub preset: Vec<bool>,
    /// Pair ids in arrival order; a repeated pair appears twice.
    pub arrival: Vec<usize>,
    /// The JSON of each distinct event, by pair id.
    events: Vec<String>,
}

impl Workload {
    pub fn new(spec: Spec) -> Workload {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let n = spec.subscribers;
        let pairs = n * AUDIENCES.len();
        let emails: Vec<String> = (0..n)
            .map(|i| format!("bench-{i:06}@example.com"))
            .collect();

        let mut ids: Vec<usize> = (0..pairs).collect();
        ids.shuffle(&mut rng);
        let mut preset = vec![false; pairs];
        let current = (spec.current_fraction * pairs as f64).round() as usize;
        for &id in ids.iter().take(current.min(pairs)) {
            preset[id] = true;
        }

        let mut order: Vec<usize> = (0..pairs).collect();
        order.shuffle(&mut rng);
        // Each repeat lands at a random point after its original.
        let mut keyed: Vec<(f64, usize)> = order
            .iter()
            .enumerate()
            .map(|(pos, &id)| (pos as f64, id))
            .collect();
        let repeats = (spec.repeat_fraction * pairs as f64).round() as usize;
        let mut positions: Vec<usize> = (0..pairs).collect();
        positions.shuffle(&mut rng);
        for &pos in positions.iter().take(repeats.min(pairs)) {
            let at = rng.gen_range(pos as f64 + 0.5..pairs as f64 + 0.5);
            keyed.push((at, order[pos]));
        }
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let arrival: Vec<usize> = keyed.into_iter().map(|(_, id)| id).collect();

        let base_ms = chrono::Utc::now().timestamp_millis() - 3_600_000;
        let mut events = vec![String::new(); pairs];
        for (pos, &id) in order.iter().enumerate() {
            let pair = pair_of(id);
            events[id] = event(&spec, &emails[pair.subscriber], pair, base_ms + pos as i64);
        }
        Workload {
            emails,
            preset,
            arrival,
            events,
        }
    }

    pub fn pairs(&self) -> usize {
        self.preset.len()
    }

    /// Subscribers with at least one value that really changes.
    pub fn changing_subscribers(&self) -> usize {
        self.preset
            .chunks(AUDIENCES.len())
            .filter(|values| values.iter().any(|&p| !p))
            .count()
    }

    /// Creates the audience properties and the subscribers, and pre-sets the current values.
    pub fn install(&self, sandbox: &Sandbox) -> Result<(), BenchError> {
        for key in AUDIENCES {
            let name = format!(
                "Audience {}",
                key.trim_start_matches("aud_").replace('_', " ")
            );
            sandbox.create_property(key, &name, "subscriber", "boolean")?;
        }
        let ids: Vec<String> = self
            .emails
            .iter()
            .enumerate()
            .map(|(i, email)| sandbox.create_subscriber(email, &format!("Bench {i}")).id)
            .collect();
        for (id, _) in self.preset.iter().enumerate().filter(|(_, &p)| p) {
            let pair = pair_of(id);
            sandbox.set_subscriber_property(
                &ids[pair.subscriber],
                AUDIENCES[pair.audience],
                Value::Bool(true),
            )?;
        }
        Ok(())
    }

    /// The arrival order cut into Webhooks (Actions) batches: (pair ids, JSON array body).
    pub fn batches(&self, size: usize) -> Vec<(Vec<usize>, String)> {
        self.arrival
            .chunks(size.max(1))
            .map(|chunk| {
                let body = format!(
                    "[{}]",
                    chunk
                        .iter()
                        .map(|&id| self.events[id].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                (chunk.to_vec(), body)
            })
            .collect()
    }

    /// Values set to `true` in the sandbox, of the workload's pairs.
    pub fn values_present(&self, sandbox: &Sandbox) -> usize {
        sandbox
            .subscribers()
            .iter()
            .map(|s| {
                AUDIENCES
                    .iter()
                    .filter(|k| s.properties.get(**k) == Some(&Value::Bool(true)))
                    .count()
            })
            .sum()
    }
}

pub fn pair_of(id: usize) -> Pair {
    Pair {
        subscriber: id / AUDIENCES.len(),
        audience: id % AUDIENCES.len(),
    }
}

/// An Engage "audience entered" Identify, as Segment sends it through Webhooks (Actions).
fn event(spec: &Spec, email: &str, pair: Pair, ts_ms: i64) -> String {
    let key = AUDIENCES[pair.audience];
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default()
    };
    let mut traits = serde_json::Map::new();
    traits.insert("email".into(), Value::String(email.to_owned()));
    traits.insert(key.into(), Value::Bool(true));
    json!({
        "type": "identify",
        "userId": format!("usr_{}", pair.subscriber),
        "traits": traits,
        "context": {
            "library": {"name": "unknown", "version": "unknown"},
            "personas": {
                "computation_class": "audience",
                "computation_id": format!("aud_bench_{}", pair.audience),
                "computation_key": key,
                "namespace": "spa_bench",
                "space_id": "spa_bench"
            }
        },
        "integrations": {"All": false, "Webhooks (Actions)": true},
        "messageId": format!("personas_bench_{}_{}_{}", spec.seed, pair.subscriber, pair.audience),
        "timestamp": at(ts_ms),
        "receivedAt": at(ts_ms + 2000),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            subscribers: 200,
            repeat_fraction: 0.2,
            current_fraction: 0.1,
            seed: 7,
        }
    }

    /// Sizes follow the spec, every distinct event arrives, and the seed fixes it all.
    #[test]
    fn shape_and_determinism() {
        let w = Workload::new(spec());
        assert_eq!(w.pairs(), 600);
        assert_eq!(w.arrival.len(), 720);
        assert_eq!(w.preset.iter().filter(|&&p| p).count(), 60);
        let distinct: std::collections::HashSet<_> = w.arrival.iter().collect();
        assert_eq!(distinct.len(), 600);
        assert_eq!(Workload::new(spec()).arrival, w.arrival);
        let body = &w.batches(100)[0].1;
        let parsed: Vec<Value> = serde_json::from_str(body).expect("JSON array");
        assert_eq!(parsed.len(), 100);
        let first = &parsed[0];
        let key = first["context"]["personas"]["computation_key"]
            .as_str()
            .expect("key");
        assert_eq!(first["traits"][key], Value::Bool(true));
    }
}
