//! Event mutations: how a seed event becomes a hostile one.
//!
//! In: a seeded [`SmallRng`] and the [`Corpus`]. Out: JSON values: events with wrong types,
//! removed keys or odd values at the paths the relay reads (`type`, `traits`, the times,
//! `messageId`, the ids, `context.personas`, `batch`), keys inserted and deleted, fragments of other
//! seeds spliced in, nesting, mixed arrays.
//! Stays true: a pure function of the RNG's state and the corpus (no clock, no global RNG), so an
//! input is regenerated from its seed; a generated `Value` is at most [`MAX_DEPTH`] deep, so a
//! saved finding parses back when replayed (deeper nesting is made as text, in `text.rs`).

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{Map, Value};

use super::corpus::Corpus;
use super::scalars::{
    self, mutate_string, number, pick, scalar, string, word, FloorCharBoundary, STRINGS,
};

/// Deepest generated `Value` (serde_json parses at most 128 levels back).
pub const MAX_DEPTH: usize = 100;

/// Where the relay reads an event (ingest, identify, mapping), so where wrong types matter most.
const KNOWN_PATHS: &[&[&str]] = &[
    &["type"],
    &["traits"],
    &["traits", "email"],
    &["traits", "traits"],
    &["traits", "traits", "email"],
    &["timestamp"],
    &["originalTimestamp"],
    &["receivedAt"],
    &["sentAt"],
    &["messageId"],
    &["userId"],
    &["anonymousId"],
    &["context"],
    &["context", "traits"],
    &["context", "traits", "email"],
    &["context", "personas"],
    &["context", "personas", "computation_class"],
    &["context", "personas", "computation_key"],
    &["integrations"],
    &["batch"],
];

/// Keys to insert: the relay's own, the fixtures' trait names (which match properties), and odd ones.
pub const KEYS: &[&str] = &[
    "type",
    "traits",
    "email",
    "timestamp",
    "originalTimestamp",
    "receivedAt",
    "sentAt",
    "messageId",
    "userId",
    "anonymousId",
    "context",
    "personas",
    "computation_class",
    "computation_key",
    "batch",
    "integrations",
    "",
    " ",
    "__proto__",
    "Number of contacts",
    "number_of_contacts",
    "Preferred name",
    "preferredName",
    "Last contacted",
    "lastContacted",
    "Is professional",
    "high_value_customers",
    "Signed up on",
    "plan",
    "PLAN",
    "ünïcödé",
    "\u{0}",
    "a\u{0}b",
    "\u{feff}email",
    "e\u{301}mail",
    "Email",
    "EMAIL",
    "𝔢𝔪𝔞𝔦𝔩",
    "İstanbul Ǆ ß",
];

const TYPES: &[&str] = &[
    "identify",
    "IDENTIFY",
    "Identify",
    "delete",
    "DELETE",
    "track",
    "page",
    "screen",
    "group",
    "alias",
    "",
    " identify",
    "identify ",
    "ıdentify",
    "İDENTİFY",
    "identify\u{0}",
    "ｉｄｅｎｔｉｆｙ",
];

const CLASSES: &[&str] = &[
    "audience",
    "journey_step",
    "trait",
    "computed_trait",
    "AUDIENCE",
    "",
];

/// A corpus event, mutated zero to several times (a few unmutated seeds keep the happy path hot).
pub fn event(rng: &mut SmallRng, corpus: &Corpus) -> Value {
    event_within(rng, corpus, MAX_DEPTH)
}

/// A mutated event at most `room` deep (it is to be put inside something).
fn event_within(rng: &mut SmallRng, corpus: &Corpus, room: usize) -> Value {
    let seed = pick(rng, &corpus.events);
    let mut v = seed.clone();
    let rounds = match rng.gen_range(0..10) {
        0 => 0,
        1..=6 => rng.gen_range(1..=3),
        _ => rng.gen_range(4..=12),
    };
    for _ in 0..rounds {
        mutate_value(rng, corpus, &mut v);
    }
    if depth_of(&v) <= room {
        v
    } else if depth_of(seed) <= room {
        seed.clone()
    } else {
        scalar(rng)
    }
}

/// One mutation somewhere in `root`.
pub fn mutate_value(rng: &mut SmallRng, corpus: &Corpus, root: &mut Value) {
    if rng.gen_range(0..10) < 4 {
        known_path(rng, corpus, root);
        return;
    }
    let (node, depth) = random_node(rng, root);
    if depth == 0 && rng.gen_bool(0.8) {
        // Mostly keep an event an object: a scalar or array event only reaches the first check.
        known_path(rng, corpus, node);
        return;
    }
    let room = MAX_DEPTH.saturating_sub(depth);
    match rng.gen_range(0..9) {
        0 => *node = scalar(rng),
        1 => *node = any_value(rng, corpus, room.min(4)),
        2 => *node = wrong_type(rng, corpus, node, room),
        3 => shrink(rng, node),
        4 => grow(rng, corpus, node, room),
        5 => match node {
            Value::String(s) => mutate_string(rng, s),
            Value::Number(_) => *node = number(rng),
            _ => *node = scalar(rng),
        },
        6 => nest(rng, node, room),
        _ => {
            // Splice: a fragment of another seed event.
            let mut donor = pick(rng, &corpus.events).clone();
            let (fragment, _) = random_node(rng, &mut donor);
            if depth_of(fragment) <= room {
                *node = fragment.take();
            }
        }
    }
}

/// A random node of `v` and its depth (the root is 0).
fn random_node<'v>(rng: &mut SmallRng, v: &'v mut Value) -> (&'v mut Value, usize) {
    let mut node = v;
    let mut depth = 0;
    loop {
        let children = match &*node {
            Value::Array(items) => items.len(),
            Value::Object(obj) => obj.len(),
            _ => 0,
        };
        if children == 0 || rng.gen_bool(0.35) {
            return (node, depth);
        }
        let i = rng.gen_range(0..children);
        node = match node {
            Value::Array(items) => &mut items[i],
            Value::Object(obj) => obj.values_mut().nth(i).expect("index below len"),
            other => return (other, depth),
        };
        depth += 1;
    }
}

pub fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(obj) => 1 + obj.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// A value at one of the paths the relay reads: removed, of the wrong type, or odd.
fn known_path(rng: &mut SmallRng, corpus: &Corpus, root: &mut Value) {
    if !root.is_object() {
        *root = pick(rng, &corpus.events).clone();
    }
    let path = *pick(rng, KNOWN_PATHS);
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(obj) = node else {
            // An intermediate of the wrong type: that is the mutation.
            return;
        };
        if i + 1 == path.len() {
            if rng.gen_range(0..6) == 0 {
                obj.remove(*key);
            } else {
                let room = MAX_DEPTH.saturating_sub(i + 1);
                obj.insert((*key).to_owned(), value_for_key(rng, corpus, key, room));
            }
            return;
        }
        node = obj.entry(*key).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A value for `key`: plausible, odd or of the wrong type, by what the relay expects there.
fn value_for_key(rng: &mut SmallRng, corpus: &Corpus, key: &str, room: usize) -> Value {
    if rng.gen_range(0..4) == 0 {
        return any_value(rng, corpus, room.min(3));
    }
    let text = |s: &str| Value::String(s.to_owned());
    match key {
        "type" => text(word(rng, TYPES)),
        "timestamp" | "originalTimestamp" | "receivedAt" | "sentAt" => match rng.gen_range(0..4) {
            0 => number(rng),
            _ => Value::String(scalars::date_like(rng)),
        },
        "messageId" | "userId" | "anonymousId" => match rng.gen_range(0..4) {
            0 => number(rng),
            1 => Value::String(string(rng)),
            _ => text(word(rng, STRINGS)),
        },
        "email" => match rng.gen_range(0..3) {
            0 => scalar(rng),
            _ => Value::String(string(rng)),
        },
        "computation_class" => text(word(rng, CLASSES)),
        "computation_key" => text(word(rng, KEYS)),
        "traits" | "personas" | "context" | "integrations" => {
            let mut obj = Map::new();
            for _ in 0..rng.gen_range(0..12) {
                let k = pick(rng, KEYS).to_string();
                obj.insert(
                    k.clone(),
                    value_for_key(rng, corpus, &k, room.saturating_sub(1)),
                );
            }
            Value::Object(obj)
        }
        "batch" => {
            let n = rng.gen_range(0..8);
            Value::Array((0..n).map(|_| mixed_item(rng, corpus, room)).collect())
        }
        _ => scalar(rng),
    }
}

/// An element of a mixed array: usually an event, sometimes anything else.
pub fn mixed_item(rng: &mut SmallRng, corpus: &Corpus, room: usize) -> Value {
    match rng.gen_range(0..10) {
        0..=6 => event_within(rng, corpus, room),
        7 => scalar(rng),
        _ => any_value(rng, corpus, room.min(3)),
    }
}

/// A value of another JSON type than `current`.
fn wrong_type(rng: &mut SmallRng, corpus: &Corpus, current: &Value, room: usize) -> Value {
    loop {
        let candidate = match rng.gen_range(0..6) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => number(rng),
            3 => Value::String(string(rng)),
            4 => Value::Array(vec![scalar(rng); rng.gen_range(0..3)]),
            _ => any_object(rng, corpus, room.min(2)),
        };
        if std::mem::discriminant(&candidate) != std::mem::discriminant(current) {
            return candidate;
        }
    }
}

fn shrink(rng: &mut SmallRng, node: &mut Value) {
    match node {
        Value::Object(obj) if !obj.is_empty() => {
            let key = obj.keys().nth(rng.gen_range(0..obj.len())).cloned();
            if let Some(key) = key {
                obj.remove(&key);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            items.remove(rng.gen_range(0..items.len()));
        }
        Value::String(s) => s.truncate(s.floor_char_boundary_compat(rng.gen_range(0..=s.len()))),
        _ => *node = Value::Null,
    }
}

fn grow(rng: &mut SmallRng, corpus: &Corpus, node: &mut Value, room: usize) {
    match node {
        Value::Object(obj) => {
            let key = pick(rng, KEYS).to_string();
            let value = value_for_key(rng, corpus, &key, room.saturating_sub(1));
            obj.insert(key, value);
        }
        Value::Array(items) => {
            let at = rng.gen_range(0..=items.len());
            items.insert(at, mixed_item(rng, corpus, room.saturating_sub(1)));
        }
        Value::String(s) => {
            // Long strings (the relay copies ids, emails and traits), up to Segment's 32 KB event.
            let times = match rng.gen_range(0..32) {
                0 => rng.gen_range(1..=4000),
                _ => rng.gen_range(1..=16),
            };
            *s = s.repeat(times.min(scalars::MAX_STRING / s.len().max(1)).max(1));
        }
        _ => *node = any_value(rng, corpus, room.min(3)),
    }
}

/// Wraps `node` in arrays and objects, within the depth still allowed.
fn nest(rng: &mut SmallRng, node: &mut Value, room: usize) {
    let room = room.saturating_sub(depth_of(node));
    if room == 0 {
        return;
    }
    let levels = rng.gen_range(1..=room);
    let mut v = node.take();
    for _ in 0..levels {
        v = if rng.gen_bool(0.5) {
            Value::Array(vec![v])
        } else {
            let mut obj = Map::new();
            obj.insert(pick(rng, KEYS).to_string(), v);
            Value::Object(obj)
        };
    }
    *node = v;
}

/// A random value at most `depth` deep.
pub fn any_value(rng: &mut SmallRng, corpus: &Corpus, depth: usize) -> Value {
    if depth == 0 {
        return scalar(rng);
    }
    match rng.gen_range(0..6) {
        0 | 1 => scalar(rng),
        2 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| any_value(rng, corpus, depth - 1))
                .collect(),
        ),
        3 | 4 => any_object(rng, corpus, depth),
        _ if depth >= 6 => pick(rng, &corpus.events).clone(),
        _ => scalar(rng),
    }
}

fn any_object(rng: &mut SmallRng, corpus: &Corpus, depth: usize) -> Value {
    let mut obj = Map::new();
    if depth == 0 {
        return Value::Object(obj);
    }
    for _ in 0..rng.gen_range(0..5) {
        obj.insert(
            pick(rng, KEYS).to_string(),
            any_value(rng, corpus, depth - 1),
        );
    }
    Value::Object(obj)
}

/// `{"batch": [...]}` with a shared `context`/`integrations`, or a `batch` of the wrong type.
pub fn batch_envelope(rng: &mut SmallRng, corpus: &Corpus) -> Value {
    let mut envelope = match pick(rng, &corpus.documents) {
        Value::Object(obj) if obj.contains_key("batch") => obj.clone(),
        _ => Map::new(),
    };
    let batch = if rng.gen_range(0..8) == 0 {
        wrong_type(rng, corpus, &Value::Array(Vec::new()), 3)
    } else {
        let n = *pick(rng, &[0, 1, 2, 3, 10, 50]);
        Value::Array(
            (0..n)
                .map(|_| mixed_item(rng, corpus, MAX_DEPTH - 2))
                .collect(),
        )
    };
    envelope.insert("batch".into(), batch);
    for key in ["context", "integrations", "writeKey", "sentAt"] {
        if rng.gen_range(0..4) == 0 {
            envelope.insert(key.into(), value_for_key(rng, corpus, key, 3));
        }
    }
    Value::Object(envelope)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Generated values stay within the depth a replay can parse back.
    #[test]
    fn values_stay_shallow_enough_to_replay() {
        let corpus = Corpus::load();
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..2_000 {
            let v = event(&mut rng, &corpus);
            assert!(depth_of(&v) <= MAX_DEPTH);
            let text = serde_json::to_string(&v).unwrap();
            assert!(serde_json::from_str::<Value>(&text).is_ok());
        }
    }
}
