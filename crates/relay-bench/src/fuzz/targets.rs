//! The fuzz targets: which relay function each one drives, its inputs, and how they are saved.
//!
//! In: a seeded RNG and the [`Lab`] (seed corpus, and a ProsperStack sandbox whose value checks
//! judge what the relay would send). Out: an [`Input`] per execution, and for each execution
//! the path it took through the relay or the [`Violation`] of an invariant (a panic is caught by
//! the caller).
//! Stays true: an input holds everything its execution reads (the bytes, the secret, the headers,
//! the event, the rules), so a saved input replays exactly without its seed.

use clap::ValueEnum;
use prosperstack_relay::mapping::Catalogue;
use prosperstack_relay::prosperstack::{Property, PropertyType};
use prosperstack_sandbox::{Sandbox, SandboxConfig};
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::{self, SignatureInput};
use super::corpus::Corpus;
use super::events::{self, IdentifyInput, TypingInput};
use super::text;

/// What a target drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `ingest::parse_body` without a secret: the three body shapes, then `identify::normalise`
    /// of every event found.
    Body,
    /// `ingest::parse_body` with a shared secret and `X-Signature` headers right and wrong.
    Signature,
    /// `identify::normalise`, then `mapping::plan` and `Rules::match_trait` on what it yields.
    Identify,
    /// `mapping::convert` of odd values to each property type.
    Typing,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Body,
        Target::Signature,
        Target::Identify,
        Target::Typing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Body => "body",
            Target::Signature => "signature",
            Target::Identify => "identify",
            Target::Typing => "typing",
        }
    }

    pub fn generate(self, rng: &mut SmallRng, lab: &Lab) -> Input {
        match self {
            Target::Body => Input::Body {
                body: HexBytes(text::body(rng, &lab.corpus)),
            },
            Target::Signature => Input::Signature(body::signature_input(rng, &lab.corpus)),
            Target::Identify => Input::Identify(events::identify_input(rng, lab)),
            Target::Typing => Input::Typing(events::typing_input(rng)),
        }
    }
}

/// One generated input, tagged with its target (the form a finding is saved in).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "lowercase")]
pub enum Input {
    Body { body: HexBytes },
    Signature(SignatureInput),
    Identify(IdentifyInput),
    Typing(TypingInput),
}

impl Input {
    pub fn target(&self) -> Target {
        match self {
            Input::Body { .. } => Target::Body,
            Input::Signature(_) => Target::Signature,
            Input::Identify(_) => Target::Identify,
            Input::Typing(_) => Target::Typing,
        }
    }

    /// Runs the relay's code on the input and checks what it answered; the path it took.
    pub fn execute(&self, lab: &Lab) -> Result<&'static str, Violation> {
        match self {
            Input::Body { body } => body::run_body(&body.0),
            Input::Signature(input) => body::run_signature(input),
            Input::Identify(input) => events::run_identify(input, lab),
            Input::Typing(input) => events::run_typing(input, lab),
        }
    }

    /// The input for a person: escaped, truncated to about `limit` characters.
    pub fn preview(&self, limit: usize) -> String {
        let text = match self {
            Input::Body { body } => format!("body ({} bytes): {}", body.0.len(), escape(&body.0)),
            Input::Signature(s) => format!(
                "secret {:?}, X-Signature headers [{}], signed bytes {}, body ({} bytes): {}",
                s.secret,
                s.headers
                    .iter()
                    .map(|h| format!("\"{}\"", escape(&h.0)))
                    .collect::<Vec<_>>()
                    .join(", "),
                s.signed.0.len(),
                s.body.0.len(),
                escape(&s.body.0)
            ),
            Input::Identify(i) => format!(
                "received_ms {}, snake_case_match {}, trait_mappings {:?}, applied {:?}, event: {}",
                i.received_ms,
                i.snake_case_match,
                i.trait_mappings,
                i.applied,
                serde_json::to_string(&i.event).unwrap_or_default()
            ),
            Input::Typing(t) => format!(
                "{:?} ← {}",
                t.kind,
                serde_json::to_string(&t.value).unwrap_or_default()
            ),
        };
        truncate(&text, limit)
    }
}

/// Bytes as `\xNN` escapes where they are not printable ASCII, so nothing is lost.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let head: String = text.chars().take(limit).collect();
    format!("{head}… ({} characters in all)", text.chars().count())
}

/// Bytes saved as a hex string: a body need not be UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HexBytes, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// An invariant that did not hold: its name (findings are grouped by it) and the particulars.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Fails with `invariant` unless `holds`.
pub fn ensure(
    holds: bool,
    invariant: &'static str,
    detail: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if holds {
        Ok(())
    } else {
        Err(Violation {
            invariant,
            detail: detail(),
        })
    }
}

/// The subscriber properties the targets map onto: the sandbox's demo set (named as the
/// fixtures' traits are), one whose display name is another trait's camelCase form, and a
/// subscription property Identify must never set.
const PROPERTIES: &[(&str, &str, &str, &str)] = &[
    (
        "number_of_contacts",
        "Number of contacts",
        "subscriber",
        "number",
    ),
    (
        "is_professional",
        "Is professional",
        "subscriber",
        "boolean",
    ),
    ("last_contacted", "Last contacted", "subscriber", "date"),
    ("preferred_name", "Preferred name", "subscriber", "text"),
    (
        "high_value_customers",
        "High value customers",
        "subscriber",
        "boolean",
    ),
    (
        "total_spend_180_days",
        "Total spend 180 days",
        "subscriber",
        "number",
    ),
    ("plan", "Plan", "subscriber", "text"),
    ("signed_up_on", "Signed up on", "subscriber", "date"),
    ("nickname", "preferredName", "subscriber", "text"),
    ("plan_tier", "Plan tier", "subscription", "text"),
];

/// What every execution shares: the seed corpus, the property catalogue the relay maps onto,
/// and the sandbox that judges a value the way ProsperStack would.
pub struct Lab {
    pub corpus: Corpus,
    pub catalogue: Catalogue,
    pub property_keys: Vec<&'static str>,
    sandbox: Sandbox,
    subscriber_id: String,
}

impl Lab {
    pub fn new() -> Result<Lab, String> {
        let sandbox = Sandbox::new(SandboxConfig {
            seed_demo: false,
            ..SandboxConfig::default()
        });
        let mut properties = Vec::new();
        for (key, name, entity, kind) in PROPERTIES {
            let view = sandbox
                .create_property(key, name, entity, kind)
                .map_err(|e| format!("sandbox property {key}: {e}"))?;
            let kind: PropertyType = serde_json::from_value(Value::String(view.kind.clone()))
                .map_err(|e| format!("property type {}: {e}", view.kind))?;
            properties.push(Property {
                id: view.id,
                key: view.key,
                name: view.name,
                entity: view.entity,
                kind,
                format: view.format,
            });
        }
        let subscriber_id = sandbox.create_subscriber("fuzz@example.com", "Fuzz").id;
        Ok(Lab {
            corpus: Corpus::load(),
            catalogue: Catalogue::new(properties),
            property_keys: PROPERTIES.iter().map(|p| p.0).collect(),
            sandbox,
            subscriber_id,
        })
    }

    /// Whether ProsperStack (as the sandbox models it) accepts `value` for property `key`.
    pub fn api_accepts(&self, key: &str, value: &Value) -> Result<(), String> {
        self.sandbox
            .set_subscriber_property(&self.subscriber_id, key, value.clone())
            .map_err(|e| e.to_string())
    }

    /// The subscriber property the typing target checks values of `kind` against.
    pub fn key_for(kind: PropertyType) -> &'static str {
        match kind {
            PropertyType::Text => "preferred_name",
            PropertyType::Number => "number_of_contacts",
            PropertyType::Boolean => "is_professional",
            PropertyType::Date => "last_contacted",
        }
    }
}
