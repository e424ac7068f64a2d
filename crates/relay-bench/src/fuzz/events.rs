//! Identify and typing targets: an event in, `identify::normalise` run and checked, then the
//! mapping of its traits (`mapping::plan`, `Rules::match_trait`) judged by the sandbox; and
//! `mapping::convert` of odd values for each property type.
//!
//! In: a generated event with a receive time and mapping rules, or a (type, value) pair.
//! Out: the path the input took (for the report), or the [`Violation`] of an invariant.
//! Stays true (what is checked):
//! - normalise: not an object ⇔ `NotAnObject`; no string `type` ⇔ `MissingType`; the ASCII
//!   lower-cased type decides. An Identify becomes an update, or `Invalid` only when it has no usable
//!   id or its traits are neither an object nor null. The update carries the ids as sent (trimmed
//!   text, numbers as text), the email trimmed and non-empty from `traits.email` else
//!   `context.traits.email`, the traits flattened one level (an object `traits.traits` merged in,
//!   inner winning) without `email`, the receive time when no time field is text, the Engage
//!   computation exactly when its class and key are text, and a message id (the sent one when usable).
//!   A delete needs a usable `userId`; any other type is ignored under its lower-cased name.
//! - plan: ProsperStack (the sandbox) accepts every value the plan sends, each with its event's
//!   timestamp; a value is held back as stale only when a later one was applied; every trait is
//!   sent, dropped, stale, unmatched or a missing audience; a configured mapping is obeyed.
//! - convert: ProsperStack accepts what it returns (never a list or an object); `null` and `""`
//!   delete; a value ProsperStack already accepts passes unchanged; converting its own output
//!   again changes nothing.

use std::collections::{BTreeMap, HashMap};

use prosperstack_relay::identify::{normalise, Event, EventError, IdentifyUpdate};
use prosperstack_relay::mapping::{convert, plan, readable_name, Rules};
use prosperstack_relay::prosperstack::PropertyType;
use prosperstack_relay::store::{Job, QueuedEvent};
use rand::rngs::SmallRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::mutate;
use super::scalars::{self, pick};
use super::targets::{ensure, Lab, Violation};

/// The usual receive time (about when the fixtures were sent).
const RECEIVED_MS: i64 = 1_718_000_000_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentifyInput {
    pub event: Value,
    pub received_ms: i64,
    pub snake_case_match: bool,
    pub trait_mappings: BTreeMap<String, String>,
    /// Property key → timestamp of the value already delivered.
    pub applied: BTreeMap<String, i64>,
}

pub fn identify_input(rng: &mut SmallRng, lab: &Lab) -> IdentifyInput {
    let event = mutate::event(rng, &lab.corpus);
    let received_ms = match rng.gen_range(0..10) {
        0 => *pick(rng, &[i64::MIN, i64::MAX, 0, -1]),
        _ => RECEIVED_MS,
    };
    let names: Vec<String> = trait_names(&event);
    let mut trait_mappings = BTreeMap::new();
    for _ in 0..rng.gen_range(0..=2) {
        let from = match names.is_empty() || rng.gen_bool(0.3) {
            true => scalars::string(rng),
            false => pick(rng, &names).clone(),
        };
        // Now and then to a subscription property or none: a mapping must not fall through.
        let to = match rng.gen_range(0..10) {
            0 => "plan_tier",
            1 => "no_such_property",
            _ => pick(rng, &lab.property_keys),
        };
        trait_mappings.insert(from, to.to_owned());
    }
    let mut applied = BTreeMap::new();
    for _ in 0..rng.gen_range(0..=3) {
        let at = *pick(
            rng,
            &[
                i64::MIN,
                0,
                RECEIVED_MS - 1,
                RECEIVED_MS,
                RECEIVED_MS + 1,
                i64::MAX,
            ],
        );
        applied.insert(pick(rng, &lab.property_keys).to_string(), at);
    }
    IdentifyInput {
        event,
        received_ms,
        snake_case_match: rng.gen_bool(0.5),
        trait_mappings,
        applied,
    }
}

/// The trait names an event carries, outer and inner.
fn trait_names(event: &Value) -> Vec<String> {
    let Some(traits) = event.get("traits").and_then(Value::as_object) else {
        return Vec::new();
    };
    let inner = traits.get("traits").and_then(Value::as_object);
    traits
        .keys()
        .chain(inner.into_iter().flat_map(|i| i.keys()))
        .cloned()
        .collect()
}

pub fn run_identify(input: &IdentifyInput, lab: &Lab) -> Result<&'static str, Violation> {
    match check_normalise(&input.event, input.received_ms)? {
        (_, Some(update)) if check_plan(input, &update, lab)? > 0 => Ok("update, values planned"),
        (_, Some(_)) => Ok("update, nothing planned"),
        (path, None) => Ok(path),
    }
}

/// Normalises `value` and checks the result: the path it took, and the update when it is one.
pub fn check_normalise(
    value: &Value,
    received_ms: i64,
) -> Result<(&'static str, Option<IdentifyUpdate>), Violation> {
    let out = normalise(value, received_ms);
    let Some(obj) = value.as_object() else {
        ensure(
            out == Err(EventError::NotAnObject),
            "normalise: a non-object is not an event",
            || format!("{out:?}"),
        )?;
        return Ok(("not an object", None));
    };
    let kind = obj.get("type").and_then(Value::as_str);
    let Some(kind) = kind.filter(|k| !k.trim().is_empty()) else {
        ensure(
            out == Err(EventError::MissingType),
            "normalise: no non-blank string type, no event",
            || format!("{out:?}"),
        )?;
        return Ok(("no type", None));
    };
    let kind = kind.to_ascii_lowercase();
    match (kind.as_str(), out) {
        ("identify", Ok(Event::Identify(update))) => {
            check_update(obj, received_ms, &update)?;
            Ok(("update", Some(update)))
        }
        ("identify", Err(EventError::Invalid(why))) => {
            let no_id = usable_id(obj.get("userId")).is_none()
                && usable_id(obj.get("anonymousId")).is_none();
            let bad_traits = !matches!(
                obj.get("traits"),
                None | Some(Value::Null | Value::Object(_))
            );
            ensure(
                no_id || bad_traits,
                "normalise: an Identify is refused only without id or object traits",
                || why,
            )?;
            Ok(("identify refused", None))
        }
        ("delete", out) => {
            let ok = match (&out, usable_id(obj.get("userId"))) {
                (
                    Ok(Event::Delete {
                        user_id,
                        message_id,
                    }),
                    Some(sent),
                ) => *user_id == sent && !message_id.is_empty(),
                (Err(EventError::Invalid(_)), None) => true,
                _ => false,
            };
            ensure(ok, "normalise: a delete needs a usable userId", || {
                format!("{out:?}")
            })?;
            Ok(("delete", None))
        }
        ("track", out) => check_track(obj, received_ms, out),
        (kind, out) => {
            let expected = match kind {
                "identify" => false,
                _ => {
                    out == Ok(Event::Ignored {
                        event_type: kind.to_owned(),
                    })
                }
            };
            ensure(
                expected,
                "normalise: the type decides what an event is",
                || format!("type {kind:?} gave {out:?}"),
            )?;
            Ok(("ignored type", None))
        }
    }
}

/// A Track is Engage's form of an Identify when `context.personas` names a computation (both
/// strings) and `properties` holds its key: it must normalise as that Identify would; any other
/// Track is ignored.
fn check_track(
    obj: &Map<String, Value>,
    received_ms: i64,
    out: Result<Event, EventError>,
) -> Result<(&'static str, Option<IdentifyUpdate>), Violation> {
    let Some(equivalent) = engage_identify(obj) else {
        let ignored = out
            == Ok(Event::Ignored {
                event_type: "track".into(),
            });
        ensure(
            ignored,
            "normalise: a Track that is not Engage's is ignored",
            || format!("{out:?}"),
        )?;
        return Ok(("ignored type", None));
    };
    match out {
        Ok(Event::Identify(update)) => {
            check_update(&equivalent, received_ms, &update)?;
            Ok(("engage track", Some(update)))
        }
        other => {
            let no_id = usable_id(obj.get("userId")).is_none()
                && usable_id(obj.get("anonymousId")).is_none();
            let refused = matches!(other, Err(EventError::Invalid(_)));
            ensure(
                no_id && refused,
                "normalise: an Engage Track is the Identify it stands for",
                || format!("{other:?}"),
            )?;
            Ok(("engage track refused", None))
        }
    }
}

/// The Identify an Engage Track stands for: the same event with the computation's value as its
/// only trait, or `None` for any other Track.
fn engage_identify(obj: &Map<String, Value>) -> Option<Map<String, Value>> {
    let personas = obj.get("context")?.get("personas")?;
    personas.get("computation_class")?.as_str()?;
    let key = personas.get("computation_key")?.as_str()?;
    let value = obj.get("properties")?.as_object()?.get(key)?.clone();
    let mut equivalent = obj.clone();
    let mut traits = Map::new();
    traits.insert(key.to_owned(), value);
    equivalent.insert("traits".into(), Value::Object(traits));
    Some(equivalent)
}

/// Segment ids are text; some libraries send numbers.
fn usable_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn email_in(traits: Option<&Value>) -> Option<String> {
    let email = traits?.as_object()?.get("email")?.as_str()?.trim();
    // An email has an @, and never the prefix of a platform ID's queue key.
    (email.contains('@') && !email.starts_with("platform_id:")).then(|| email.to_owned())
}

fn check_update(
    obj: &Map<String, Value>,
    received_ms: i64,
    u: &IdentifyUpdate,
) -> Result<(), Violation> {
    let (user, anonymous) = (
        usable_id(obj.get("userId")),
        usable_id(obj.get("anonymousId")),
    );
    ensure(
        (user.is_some() || anonymous.is_some()) && u.user_id == user && u.anonymous_id == anonymous,
        "normalise: an update carries the ids as sent",
        || {
            format!(
                "sent {user:?}/{anonymous:?}, got {:?}/{:?}",
                u.user_id, u.anonymous_id
            )
        },
    )?;
    let email = email_in(obj.get("traits"))
        .or_else(|| email_in(obj.get("context").and_then(|c| c.get("traits"))));
    ensure(
        u.email == email,
        "normalise: the email is traits.email else context.traits.email (an address), trimmed",
        || format!("expected {email:?}, got {:?}", u.email),
    )?;
    ensure(
        !u.traits.contains_key("email"),
        "normalise: traits never contain email",
        || format!("{:?}", u.traits.get("email")),
    )?;
    let mut traits = obj
        .get("traits")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(inner)) = traits.get("traits").cloned() {
        traits.remove("traits");
        traits.extend(inner);
    }
    traits.remove("email");
    ensure(
        u.traits == traits,
        "normalise: traits flattened one level, inner winning",
        || {
            format!(
                "expected {}, got {}",
                Value::Object(traits.clone()),
                Value::Object(u.traits.clone())
            )
        },
    )?;
    let any_time = ["timestamp", "receivedAt", "sentAt"]
        .iter()
        .any(|k| obj.get(*k).is_some_and(Value::is_string));
    ensure(
        any_time || u.timestamp_ms == received_ms,
        "normalise: no time given, the receive time",
        || format!("{} instead of {received_ms}", u.timestamp_ms),
    )?;
    let personas = obj.get("context").and_then(|c| c.get("personas"));
    let class = personas
        .and_then(|p| p.get("computation_class"))
        .and_then(Value::as_str);
    let key = personas
        .and_then(|p| p.get("computation_key"))
        .and_then(Value::as_str);
    let engage = u
        .engage
        .as_ref()
        .map(|e| (e.class.as_str(), e.key.as_str()));
    ensure(
        engage == class.zip(key),
        "normalise: Engage exactly when class and key are text",
        || format!("{engage:?}"),
    )?;
    let sent = usable_id(obj.get("messageId"));
    ensure(
        !u.message_id.is_empty() && sent.as_ref().is_none_or(|m| *m == u.message_id),
        "normalise: the message id is the sent one, or a fresh one",
        || format!("sent {sent:?}, got {:?}", u.message_id),
    )
}

/// Plans the update's traits and checks the plan; how many values it sends.
fn check_plan(input: &IdentifyInput, u: &IdentifyUpdate, lab: &Lab) -> Result<usize, Violation> {
    let rules = Rules {
        trait_mappings: input.trait_mappings.clone(),
        snake_case_match: input.snake_case_match,
    };
    let job = Job {
        email: u.email.clone().unwrap_or_default(),
        spellings: Vec::new(),
        attempts: 0,
        first_queued_ms: u.timestamp_ms,
        waiting_since_ms: None,
        lane: Default::default(),
        events: vec![QueuedEvent {
            id: 1,
            message_id: u.message_id.clone(),
            timestamp_ms: u.timestamp_ms,
            traits: u.traits.clone(),
            engage: u.engage.clone(),
            user_id: u.user_id.clone(),
        }],
        applied: input
            .applied
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect::<HashMap<_, _>>(),
    };
    let planned = plan(&job, &lab.catalogue, &rules);
    let later_applied = |key: &str| job.applied.get(key).is_some_and(|t| *t > u.timestamp_ms);
    for (key, value) in &planned.properties {
        lab.api_accepts(key, value).map_err(|why| Violation {
            invariant: "plan: ProsperStack accepts every planned value",
            detail: format!("{key} = {value}: {why}"),
        })?;
        ensure(
            planned.timestamps.get(key) == Some(&u.timestamp_ms) && !later_applied(key),
            "plan: a value sent carries its event's time, never older than the applied one",
            || format!("{key}: {:?}", planned.timestamps.get(key)),
        )?;
    }
    ensure(
        planned.timestamps.len() == planned.properties.len(),
        "plan: a timestamp per value sent",
        || format!("{:?}", planned.timestamps),
    )?;
    for key in &planned.stale {
        ensure(
            later_applied(key),
            "plan: stale only when a later value was applied",
            || key.clone(),
        )?;
    }
    for name in u.traits.keys() {
        let matched = rules.match_trait(name, &lab.catalogue);
        match matched {
            Some(p) => ensure(
                p.entity == "subscriber"
                    && (planned.properties.contains_key(&p.key)
                        || planned.stale.contains(&p.key)
                        || planned.dropped.iter().any(|(k, _)| *k == p.key)),
                "plan: a matched trait is sent, stale or dropped",
                || format!("{name:?} → {}", p.key),
            )?,
            None => ensure(
                planned.unmatched.contains(name) || planned.missing_audiences.contains(name),
                "plan: an unmatched trait is reported",
                || name.clone(),
            )?,
        }
        if let Some(to) = rules.trait_mappings.get(name) {
            ensure(
                matched.map(|p| &p.key) == lab.catalogue.get(to).map(|p| &p.key),
                "match: a configured mapping is obeyed and does not fall through",
                || {
                    format!(
                        "{name:?} mapped to {to:?}, matched {:?}",
                        matched.map(|p| &p.key)
                    )
                },
            )?;
        }
    }
    for name in &planned.missing_audiences {
        let audience = u
            .engage
            .as_ref()
            .is_some_and(|e| e.is_membership() && e.key == *name);
        ensure(
            audience,
            "plan: a missing audience is the event's Engage key",
            || name.clone(),
        )?;
    }
    if let Some(e) = &u.engage {
        // The name a missing audience's property would be created with.
        let _ = readable_name(&e.key);
    }
    Ok(planned.properties.len())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TypingInput {
    pub kind: PropertyType,
    pub value: Value,
}

pub fn typing_input(rng: &mut SmallRng) -> TypingInput {
    let kind = *pick(
        rng,
        &[
            PropertyType::Text,
            PropertyType::Number,
            PropertyType::Boolean,
            PropertyType::Date,
        ],
    );
    let value = match rng.gen_range(0..20) {
        0..=6 => Value::String(scalars::date_like(rng)),
        7..=10 => Value::String(scalars::number_like(rng)),
        11..=12 => Value::String(scalars::bool_like(rng).to_owned()),
        13..=16 => scalars::scalar(rng),
        17 => scalars::number(rng),
        18 => Value::String(scalars::string(rng)),
        _ => Value::Array(vec![scalars::scalar(rng)]),
    };
    TypingInput { kind, value }
}

pub fn run_typing(input: &TypingInput, lab: &Lab) -> Result<&'static str, Violation> {
    let (kind, value) = (input.kind, &input.value);
    let key = Lab::key_for(kind);
    let out = convert(kind, value);
    let deletes = value.is_null() || value.as_str() == Some("");
    ensure(
        !deletes || out == Ok(Value::Null),
        "typing: null and \"\" delete",
        || format!("{out:?}"),
    )?;
    let native = !deletes && lab.api_accepts(key, value).is_ok();
    ensure(
        !native || out.as_ref() == Ok(value),
        "typing: a value ProsperStack accepts passes unchanged",
        || format!("{out:?}"),
    )?;
    match &out {
        Ok(v) => {
            ensure(
                !v.is_array() && !v.is_object(),
                "typing: convert never returns a list or object",
                || v.to_string(),
            )?;
            lab.api_accepts(key, v).map_err(|why| Violation {
                invariant: "typing: ProsperStack accepts what convert returns",
                detail: format!("{kind:?} {value} → {v}: {why}"),
            })?;
            let again = convert(kind, v);
            ensure(
                again.as_ref() == Ok(v),
                "typing: converting its own output changes nothing",
                || format!("{v} → {again:?}"),
            )?;
            Ok(if v.is_null() { "deletes" } else { "converted" })
        }
        Err(why) => {
            ensure(!why.is_empty(), "typing: a refusal says why", String::new).map(|()| "refused")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typing oracle is the sandbox's: an unpadded date is not a date ProsperStack accepts.
    #[test]
    fn sandbox_judges_values() {
        let lab = Lab::new().unwrap();
        assert!(lab
            .api_accepts("last_contacted", &json!("2024-01-05"))
            .is_ok());
        assert!(lab
            .api_accepts("last_contacted", &json!("2024-1-5"))
            .is_err());
        assert!(lab.api_accepts("number_of_contacts", &json!("5")).is_err());
        assert!(lab.api_accepts("plan_tier", &json!("x")).is_err());
    }

    /// The normalise oracle agrees with the relay on the documented examples.
    #[test]
    fn fixtures_pass_the_identify_checks() {
        let lab = Lab::new().unwrap();
        for event in &lab.corpus.events {
            let input = IdentifyInput {
                event: event.clone(),
                received_ms: RECEIVED_MS,
                snake_case_match: true,
                trait_mappings: BTreeMap::new(),
                applied: BTreeMap::new(),
            };
            assert!(run_identify(&input, &lab).is_ok(), "{event}");
        }
    }
}
