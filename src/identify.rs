//! Identify: one Segment event (already parsed JSON) in, one normalised [`Event`] out.
//!
//! In: a `serde_json::Value` that `ingest` found in the request body (single, array or batch).
//! Out: [`Event::Identify`] with the email as sent (if any), flattened traits, the Engage
//! computation and the event time; [`Event::Delete`] for Segment user-deletion requests;
//! [`Event::Ignored`] for every other type; or an [`EventError`] for input that can never succeed.
//! Stays true: nothing here knows ProsperStack; the email fallback through a remembered
//! `userId` happens in the store, inside the transaction that stores the event.

mod platform;

use chrono::DateTime;
use serde_json::{Map, Value};

pub use platform::{platform_id_in, platform_id_key, PlatformIdSource, PLATFORM_ID_KEY};

/// The Engage computation an Identify carries (`context.personas`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Engage {
    /// `audience`, `journey_step`, `trait` or `computed_trait`.
    pub class: String,
    /// The snake_cased audience or trait name; the trait of this name carries the value.
    pub key: String,
}

impl Engage {
    /// Audiences and journey steps carry a boolean membership.
    pub fn is_membership(&self) -> bool {
        matches!(self.class.as_str(), "audience" | "journey_step")
    }
}

/// A normalised Identify call.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentifyUpdate {
    pub message_id: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// `traits.email`, else `context.traits.email`, trimmed; `None` when neither is a string.
    pub email: Option<String>,
    /// The subscriber's platform ID, when `mapping.platform_id_trait` is set and the event
    /// carries one (ingest fills it in: normalising knows no settings).
    pub platform_id: Option<String>,
    /// Milliseconds since the epoch: `timestamp`, else `receivedAt`, else `sentAt`, else the
    /// time the relay received it; held to at most the arrival plus the tolerated clock skew by
    /// [`clamp_time`] before it is stored.
    pub timestamp_ms: i64,
    /// Traits flattened one level (`traits.traits` merged in, inner winning), `email` removed.
    pub traits: Map<String, Value>,
    pub engage: Option<Engage>,
}

/// What one Segment event means to the relay.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Identify(IdentifyUpdate),
    /// A user-deletion request: forget the user's email and anything queued for them.
    Delete {
        message_id: String,
        user_id: String,
    },
    /// Any other type: acknowledged, counted, not applied.
    Ignored {
        event_type: String,
    },
}

impl Event {
    pub fn type_name(&self) -> &str {
        match self {
            Event::Identify(_) => "identify",
            Event::Delete { .. } => "delete",
            Event::Ignored { event_type } => event_type,
        }
    }
}

/// Why an event can never be applied (answered 4xx; Segment drops it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("an event must be a JSON object")]
    NotAnObject,
    #[error("the event's \"type\" must be a non-empty string")]
    MissingType,
    #[error("{0}")]
    Invalid(String),
}

/// The key an email is known by in the queue, the remembered `userId → email` and the
/// subscriber cache: trimmed and lowercased (ASCII), because Segment traits and ProsperStack
/// disagree on case all the time and one person must be one subscriber whatever the case.
/// The spelling as sent is kept beside it for look-ups, since ProsperStack's email filter may
/// compare exactly.
pub fn email_key(email: &str) -> String {
    let email = email.trim();
    // A subscriber known only by its platform ID is queued under that (case-sensitive) ID.
    if email.starts_with(PLATFORM_ID_KEY) {
        return email.to_owned();
    }
    email.to_ascii_lowercase()
}

/// Normalises one event. `received_ms` is used when the event carries no usable time, and
/// to make a message id for events that have none (Segment always sends one; curl may not).
pub fn normalise(value: &Value, received_ms: i64) -> Result<Event, EventError> {
    let obj = value.as_object().ok_or(EventError::NotAnObject)?;
    let event_type = obj
        .get("type")
        .and_then(Value::as_str)
        // A blank type names nothing Segment sends: refused, not ignored as an unknown type.
        .filter(|t| !t.trim().is_empty())
        .ok_or(EventError::MissingType)?
        .to_ascii_lowercase();
    match event_type.as_str() {
        "identify" => identify(obj, received_ms).map(Event::Identify),
        "delete" => delete(obj, received_ms),
        "track" => match engage_track(obj, received_ms) {
            Some(update) => update.map(Event::Identify),
            None => Ok(Event::Ignored { event_type }),
        },
        _ => Ok(Event::Ignored { event_type }),
    }
}

/// Engage syncing an audience or computed trait as Track calls (`Audience Entered`,
/// `Audience Exited`, `Trait Computed`; the names are configurable in Segment, so the shape
/// decides, not the name): `context.personas` names the computation and `properties` carries
/// its value under the computation key, the email is in `context.traits.email`. Such a Track
/// is the Identify `{traits: {key: value}}` it stands for; any other Track is `None` (ignored).
fn engage_track(
    obj: &Map<String, Value>,
    received_ms: i64,
) -> Option<Result<IdentifyUpdate, EventError>> {
    let engage = engage(obj)?;
    let value = obj.get("properties")?.get(&engage.key)?.clone();
    let mut as_identify = obj.clone();
    let mut traits = Map::new();
    traits.insert(engage.key.clone(), value);
    as_identify.insert("traits".into(), Value::Object(traits));
    Some(identify(&as_identify, received_ms))
}

fn identify(obj: &Map<String, Value>, received_ms: i64) -> Result<IdentifyUpdate, EventError> {
    let user_id = id_field(obj, "userId");
    let anonymous_id = id_field(obj, "anonymousId");
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(EventError::Invalid(
            "an Identify needs a userId or an anonymousId".into(),
        ));
    }
    let traits = match obj.get("traits") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(t)) => t.clone(),
        Some(_) => return Err(EventError::Invalid("\"traits\" must be an object".into())),
    };
    let context_traits = obj
        .get("context")
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object);
    let email = email_from(&traits).or_else(|| context_traits.and_then(email_from));
    Ok(IdentifyUpdate {
        message_id: message_id(obj, received_ms),
        user_id,
        anonymous_id,
        email,
        platform_id: None,
        timestamp_ms: event_time(obj).unwrap_or(received_ms),
        traits: flatten(traits),
        engage: engage(obj),
    })
}

fn delete(obj: &Map<String, Value>, received_ms: i64) -> Result<Event, EventError> {
    let user_id = id_field(obj, "userId")
        .ok_or_else(|| EventError::Invalid("a delete event needs a userId".into()))?;
    Ok(Event::Delete {
        message_id: message_id(obj, received_ms),
        user_id,
    })
}

/// Segment ids are strings, but some libraries send numbers; both are accepted as text.
fn id_field(obj: &Map<String, Value>, name: &str) -> Option<String> {
    match obj.get(name)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn message_id(obj: &Map<String, Value>, received_ms: i64) -> String {
    id_field(obj, "messageId").unwrap_or_else(|| {
        // Without a messageId there is nothing to dedupe on; a fresh id keeps the event.
        format!("relay-{received_ms}-{:016x}", rand::random::<u64>())
    })
}

fn email_from(traits: &Map<String, Value>) -> Option<String> {
    let email = traits.get("email")?.as_str()?.trim();
    // Without an @ it cannot name a subscriber: queued, it would only wait a day for one that
    // never comes, then be dead-lettered. No email starts with the platform-ID prefix; one
    // that does would pass for a platform ID's queue key.
    let usable = email.contains('@') && !email.starts_with(PLATFORM_ID_KEY);
    usable.then(|| email.to_owned())
}

/// Flattens `traits.traits` (the shape of the example on Segment's ProsperStack page) into the outer traits; the inner
/// object wins on conflict. `email` is the identifier, not a property, so it is removed.
fn flatten(mut traits: Map<String, Value>) -> Map<String, Value> {
    match traits.remove("traits") {
        Some(Value::Object(inner)) => {
            for (k, v) in inner {
                traits.insert(k, v);
            }
        }
        // Not the nested shape: a trait that happens to be called "traits", kept like any other.
        Some(other) => {
            traits.insert("traits".into(), other);
        }
        None => {}
    }
    traits.remove("email");
    traits
}

/// Segment's `timestamp` (already corrected for the device's clock), else the times Segment and
/// the library stamped; `originalTimestamp` is the device's own clock, the one most often wrong.
fn event_time(obj: &Map<String, Value>) -> Option<i64> {
    ["timestamp", "receivedAt", "sentAt"]
        .iter()
        .filter_map(|k| obj.get(*k)?.as_str())
        .find_map(parse_time)
}

/// Holds an update's time to at most `latest_ms` (its arrival plus the tolerated clock skew),
/// so one client with a wrong clock cannot pin a property for ever: latest-wins would believe a
/// time in 2038 over every later event. Answers the time the event claimed when it was held.
pub fn clamp_time(update: &mut IdentifyUpdate, latest_ms: i64) -> Option<i64> {
    let claimed = update.timestamp_ms;
    (claimed > latest_ms).then(|| {
        update.timestamp_ms = latest_ms;
        claimed
    })
}

/// RFC 3339 time in milliseconds; Segment's own docs show malformed times, which fall through.
pub fn parse_time(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

fn engage(obj: &Map<String, Value>) -> Option<Engage> {
    let personas = obj.get("context")?.get("personas")?.as_object()?;
    let class = personas.get("computation_class")?.as_str()?;
    let key = personas.get("computation_key")?.as_str()?;
    Some(Engage {
        class: class.to_owned(),
        key: key.to_owned(),
    })
}

/// Where an Identify's email was found, for tools that explain an event (`preview`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum EmailSource {
    #[serde(rename = "traits.email")]
    Traits,
    #[serde(rename = "context.traits.email")]
    ContextTraits,
}

/// The email an Identify carries and where, by [`normalise`]'s precedence: `traits.email`,
/// else `context.traits.email`. `None` when neither holds one (the store may still remember
/// one for the `userId`).
pub fn email_source(event: &Value) -> Option<(String, EmailSource)> {
    let traits = event.get("traits").and_then(Value::as_object);
    if let Some(email) = traits.and_then(email_from) {
        return Some((email, EmailSource::Traits));
    }
    let context = event.get("context").and_then(|c| c.get("traits"));
    let email = context.and_then(Value::as_object).and_then(email_from)?;
    Some((email, EmailSource::ContextTraits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/segment-payloads/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("reference payload readable");
        serde_json::from_str(&text).expect("reference payload is JSON")
    }

    fn identify_of(v: &Value) -> IdentifyUpdate {
        match normalise(v, 0).expect("valid") {
            Event::Identify(u) => u,
            other => panic!("expected identify, got {other:?}"),
        }
    }

    /// The nested example from Segment's ProsperStack page flattens `traits.traits` and keeps the email.
    #[test]
    fn nested_traits_are_flattened() {
        let u = identify_of(&payload("identify-nested-traits.json"));
        assert_eq!(u.email.as_deref(), Some("jordan.reyes@example.com"));
        assert_eq!(u.traits.get("Number of contacts"), Some(&json!(5800)));
        assert_eq!(u.traits.get("Preferred name"), Some(&json!("Jordy")));
        assert!(!u.traits.contains_key("traits"));
        assert!(!u.traits.contains_key("email"));
        assert_eq!(
            u.timestamp_ms,
            parse_time("2024-06-10T09:20:34.968Z").unwrap()
        );
    }

    /// The inner object wins over an outer trait of the same name.
    #[test]
    fn inner_traits_win_on_conflict() {
        let v = json!({"type":"identify","userId":"u","traits":{"plan":"a","traits":{"plan":"b"}}});
        assert_eq!(identify_of(&v).traits.get("plan"), Some(&json!("b")));
    }

    /// A `traits` trait that is not an object is an ordinary trait, not dropped (found by
    /// `relay-bench fuzz`: `"traits": 1` vanished without being reported as unmatched).
    #[test]
    fn non_object_traits_trait_is_kept() {
        let v = json!({"type":"identify","userId":"u","traits":{"plan":"a","traits":"x"}});
        let u = identify_of(&v);
        assert_eq!(u.traits.get("traits"), Some(&json!("x")));
        assert_eq!(u.traits.get("plan"), Some(&json!("a")));
    }

    /// Email falls back to `context.traits.email`.
    #[test]
    fn a_value_without_an_at_is_no_email() {
        let v = json!({"type":"identify","userId":"u","traits":{"email":"n/a"},"context":{"traits":{"email":"a@b.c"}}});
        assert_eq!(identify_of(&v).email.as_deref(), Some("a@b.c"));
        let v = json!({"type":"identify","userId":"u","traits":{"email":"bad-row-no-email"}});
        assert_eq!(identify_of(&v).email, None);
    }

    #[test]
    fn email_from_context_traits() {
        let v = json!({"type":"identify","userId":"u","traits":{},"context":{"traits":{"email":" a@b.c "}}});
        assert_eq!(identify_of(&v).email.as_deref(), Some("a@b.c"));
    }

    /// Engage audience payloads carry their computation.
    #[test]
    fn engage_audience_is_recognised() {
        let u = identify_of(&payload("identify-engage-audience-entered.json"));
        let e = u.engage.expect("engage");
        assert_eq!(e.key, "high_value_customers");
        assert!(e.is_membership());
        assert_eq!(u.traits.get("high_value_customers"), Some(&json!(true)));
        let c = identify_of(&payload("identify-engage-computed-trait.json"));
        assert!(!c.engage.expect("engage").is_membership());
    }

    /// Engage's Track form (audience entered or exited, trait computed) is the Identify it
    /// stands for: the computation key's value as the one trait, the email from
    /// `context.traits`, the computation kept; whatever the event's name.
    #[test]
    fn engage_track_is_an_identify() {
        let entered = identify_of(&payload("track-engage-audience-entered.json"));
        assert_eq!(entered.email.as_deref(), Some("maria.lopez@example.com"));
        assert_eq!(
            entered.traits,
            json!({"high_value_customers": true})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert!(entered.engage.expect("engage").is_membership());
        let exited = identify_of(&payload("track-engage-audience-exited.json"));
        assert_eq!(
            exited.traits.get("high_value_customers"),
            Some(&json!(false))
        );
        assert!(exited.timestamp_ms > entered.timestamp_ms);
        let mut renamed = payload("track-engage-audience-entered.json");
        renamed["event"] = json!("Joined VIPs");
        assert!(matches!(normalise(&renamed, 0), Ok(Event::Identify(_))));
        let computed = identify_of(&payload("track-engage-computed-trait.json"));
        assert_eq!(
            computed.traits.get("total_spend_180_days"),
            Some(&json!(1234.5))
        );
        // Without the key's value in properties it is an ordinary Track: ignored.
        let mut bare = payload("track-engage-audience-entered.json");
        bare["properties"] = json!({"audience_key": "high_value_customers"});
        assert!(matches!(normalise(&bare, 0), Ok(Event::Ignored { .. })));
    }

    /// Track events are ignored, not rejected; deletes need a userId.
    #[test]
    fn other_types() {
        assert!(matches!(
            normalise(&payload("track-event.json"), 0),
            Ok(Event::Ignored { .. })
        ));
        assert!(matches!(
            normalise(&json!({"type":"delete","userId":"u1"}), 0),
            Ok(Event::Delete { .. })
        ));
        assert!(normalise(&json!({"type":"delete"}), 0).is_err());
    }

    /// Input that can never succeed is an error, not a panic.
    #[test]
    fn invalid_shapes() {
        assert_eq!(normalise(&json!([1]), 0), Err(EventError::NotAnObject));
        assert_eq!(normalise(&json!({"a":1}), 0), Err(EventError::MissingType));
        for blank in [json!(""), json!("  "), json!(5), json!(null)] {
            let event = json!({"type": blank, "userId": "u"});
            assert_eq!(
                normalise(&event, 0),
                Err(EventError::MissingType),
                "{blank}"
            );
        }
        assert!(normalise(&json!({"type":"identify","traits":{}}), 0).is_err());
        assert!(normalise(&json!({"type":"identify","userId":"u","traits":[1]}), 0).is_err());
    }

    /// A malformed timestamp falls back to `receivedAt`, then `sentAt`, then to the receive
    /// time; the device's `originalTimestamp` is never believed.
    #[test]
    fn time_fallbacks() {
        let v = json!({"type":"identify","userId":"u","timestamp":"2015-2-02T00:30:08.276Z",
                       "originalTimestamp":"2030-01-01T00:00:00Z",
                       "sentAt":"2024-01-01T00:00:01Z",
                       "receivedAt":"2024-01-01T00:00:00Z"});
        assert_eq!(identify_of(&v).timestamp_ms, 1_704_067_200_000);
        let v = json!({"type":"identify","userId":"u","originalTimestamp":"2030-01-01T00:00:00Z",
                       "sentAt":"2024-01-01T00:00:01Z"});
        assert_eq!(identify_of(&v).timestamp_ms, 1_704_067_201_000);
        let v = json!({"type":"identify","userId":"u"});
        assert_eq!(
            match normalise(&v, 42) {
                Ok(Event::Identify(u)) => u.timestamp_ms,
                _ => 0,
            },
            42
        );
    }

    /// A time past the limit is held to it, and the claim is reported; an earlier one is kept.
    #[test]
    fn clamp_holds_future_times() {
        let v = json!({"type":"identify","userId":"u","timestamp":"2038-01-19T03:14:08Z"});
        let mut update = identify_of(&v);
        assert_eq!(clamp_time(&mut update, 1_000), Some(2_147_483_648_000));
        assert_eq!(update.timestamp_ms, 1_000);
        assert_eq!(clamp_time(&mut update, 5_000), None);
        assert_eq!(update.timestamp_ms, 1_000);
    }
}
