//! What `preview` says of a payload, computed without I/O: the events as ingest splits them,
//! the property catalogue, the matching rules and what the store remembers.
//!
//! In: split events ([`RawEvent`]), a [`Context`]. Out: one [`EventPreview`] per event, with
//! stable field names (`preview --json` prints them as they are).
//! Stays true: the same functions decide here as in the relay (`identify::normalise`,
//! `Rules::match_trait_with_rule`, `mapping::convert`), so a preview cannot drift from what
//! the relay would do; an email remembered from an earlier event of the same payload counts, as
//! it does when the store takes the events in order.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::identify::{self, EmailSource, Engage, Event, IdentifyUpdate, PlatformIdSource};
use crate::ingest::RawEvent;
use crate::mapping::{self, Catalogue, MatchRule, Rules};
use crate::prosperstack::PropertyType;

/// What the explanation needs besides the events.
pub struct Context<'a> {
    pub catalogue: &'a Catalogue,
    pub rules: &'a Rules,
    pub create_audience_properties: bool,
    /// The store's `userId → email` memory (`None`: not known, or no store).
    pub remembered: &'a dyn Fn(&str) -> Option<String>,
    /// Stands in for the arrival time of events that carry none.
    pub received_ms: i64,
    /// Where Identifies carry a platform ID (`mapping.platform_id_trait`), if anywhere.
    pub platform_ids: Option<PlatformIdSource>,
}

/// What the relay would do with one event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventPreview {
    pub index: usize,
    /// The event's `type` (lowercase), when it has one.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    #[serde(rename = "messageId")]
    pub message_id: Option<String>,
    /// `update`, `ignored`, `delete` or `rejected`.
    pub outcome: &'static str,
    /// The answer a rejected event would get (400, 422).
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub email: Option<EmailUsed>,
    /// The platform ID the event carries, when `mapping.platform_id_trait` is set.
    pub platform_id: Option<PlatformIdUsed>,
    /// The event time latest-wins compares, RFC 3339.
    pub timestamp: Option<String>,
    pub engage: Option<EngageNote>,
    pub traits: Vec<TraitPreview>,
    /// Property key → value: the update's `properties` (sent only where it changes the
    /// subscriber's current value).
    pub update: Map<String, Value>,
}

/// The email an Identify is delivered to, and where it came from: `traits.email`,
/// `context.traits.email`, `remembered_in_payload` (an earlier event with the same userId) or
/// `remembered_in_store`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmailUsed {
    pub address: String,
    pub source: &'static str,
}

/// The platform ID an Identify carries, where it came from (`userId` or `trait NAME`), and
/// what it is used for: `key` (no email: the subscriber is looked up by it) or `fallback`
/// (looked up by it when the email finds no subscriber).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlatformIdUsed {
    pub id: String,
    pub source: String,
    pub role: &'static str,
}

/// The Engage computation an Identify carries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EngageNote {
    pub class: String,
    pub key: String,
    /// Audiences and journey steps: the trait named `key` carries true/false membership.
    pub membership: bool,
}

/// What becomes of one trait: `sent`, `dropped` (cannot be converted), `unmatched`, or
/// `missing_audience` (an Engage audience with no property yet).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraitPreview {
    pub name: String,
    pub value: Value,
    pub outcome: &'static str,
    pub property: Option<String>,
    pub property_name: Option<String>,
    pub property_type: Option<PropertyType>,
    pub rule: Option<MatchRule>,
    /// The value as ProsperStack would get it (`null` deletes).
    pub sent: Option<Value>,
    pub reason: Option<String>,
}

/// Explains every event, in order.
pub fn explain(events: Vec<RawEvent>, ctx: &Context<'_>) -> Vec<EventPreview> {
    let mut memory: HashMap<String, Option<String>> = HashMap::new();
    events
        .into_iter()
        .enumerate()
        .map(|(index, (parsed, _raw))| explain_one(index, parsed, ctx, &mut memory))
        .collect()
}

fn explain_one(
    index: usize,
    parsed: Result<Value, String>,
    ctx: &Context<'_>,
    memory: &mut HashMap<String, Option<String>>,
) -> EventPreview {
    let value = match parsed {
        Ok(value) => value,
        Err(e) => return blank(index, None, None).rejected(400, e),
    };
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let event_type = text("type").map(|t| t.to_ascii_lowercase());
    let preview = blank(index, event_type, text("messageId"));
    match identify::normalise(&value, ctx.received_ms) {
        Err(e) => preview.rejected(400, e.to_string()),
        Ok(Event::Ignored { .. }) => EventPreview {
            outcome: "ignored",
            reason: Some(
                "only identify and delete events are applied; acknowledged and counted".into(),
            ),
            ..preview
        },
        Ok(Event::Delete { user_id, .. }) => {
            memory.insert(user_id.clone(), None);
            let reason = format!(
                "the relay forgets userId {user_id:?}: its remembered email, its queued events and what was applied for that email"
            );
            EventPreview {
                outcome: "delete",
                reason: Some(reason),
                ..preview
            }
        }
        Ok(Event::Identify(update)) => explain_identify(preview, &value, update, ctx, memory),
    }
}

fn blank(index: usize, event_type: Option<String>, message_id: Option<String>) -> EventPreview {
    EventPreview {
        index,
        event_type,
        message_id,
        outcome: "update",
        status: None,
        reason: None,
        email: None,
        platform_id: None,
        timestamp: None,
        engage: None,
        traits: Vec::new(),
        update: Map::new(),
    }
}

impl EventPreview {
    fn rejected(self, status: u16, reason: String) -> EventPreview {
        EventPreview {
            outcome: "rejected",
            status: Some(status),
            reason: Some(reason),
            ..self
        }
    }
}

fn explain_identify(
    preview: EventPreview,
    value: &Value,
    update: IdentifyUpdate,
    ctx: &Context<'_>,
    memory: &mut HashMap<String, Option<String>>,
) -> EventPreview {
    let email = email_used(value, &update, ctx, memory);
    if let (Some(e), Some(user)) = (&update.email, &update.user_id) {
        memory.insert(user.clone(), Some(e.clone()));
    }
    let traits: Vec<TraitPreview> = update
        .traits
        .iter()
        .map(|(name, v)| explain_trait(name, v, update.engage.as_ref(), ctx))
        .collect();
    let platform_id = platform_id_used(&update, ctx, email.is_some());
    let preview = EventPreview {
        email,
        platform_id,
        timestamp: chrono::DateTime::from_timestamp_millis(update.timestamp_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        engage: update.engage.as_ref().map(|e| EngageNote {
            class: e.class.clone(),
            key: e.key.clone(),
            membership: e.is_membership(),
        }),
        ..preview
    };
    if preview.email.is_none() && preview.platform_id.is_none() {
        let why = "no traits.email or context.traits.email, no email is known for its userId, and no platform ID (mapping.platform_id_trait): the relay would answer 422 and Segment drops it";
        return EventPreview { traits, ..preview }.rejected(422, why.into());
    }
    let update = traits
        .iter()
        .filter_map(|t| Some((t.property.clone()?, t.sent.clone()?)))
        .collect();
    EventPreview {
        traits,
        update,
        ..preview
    }
}

/// The platform ID the relay would find the subscriber by: its key without an email, else a
/// fallback.
fn platform_id_used(
    update: &IdentifyUpdate,
    ctx: &Context<'_>,
    has_email: bool,
) -> Option<PlatformIdUsed> {
    let source = ctx.platform_ids.as_ref()?;
    let id = source.of(update.user_id.as_deref(), &update.traits)?;
    let source = match source {
        PlatformIdSource::UserId => "userId".to_owned(),
        PlatformIdSource::Trait(name) => format!("trait {name}"),
    };
    let role = if has_email { "fallback" } else { "key" };
    Some(PlatformIdUsed { id, source, role })
}

/// The email the store would file the event under, by the relay's precedence.
fn email_used(
    value: &Value,
    update: &IdentifyUpdate,
    ctx: &Context<'_>,
    memory: &HashMap<String, Option<String>>,
) -> Option<EmailUsed> {
    if let Some(address) = update.email.clone() {
        let source = match identify::email_source(value).map(|(_, s)| s) {
            Some(EmailSource::ContextTraits) => "context.traits.email",
            _ => "traits.email",
        };
        return Some(EmailUsed { address, source });
    }
    let user = update.user_id.as_deref()?;
    if let Some(earlier) = memory.get(user) {
        // A delete earlier in the payload leaves `None`: forgotten, even if the store knew it.
        let address = earlier.clone()?;
        let source = "remembered_in_payload";
        return Some(EmailUsed { address, source });
    }
    let address = (ctx.remembered)(user)?;
    let source = "remembered_in_store";
    Some(EmailUsed { address, source })
}

fn explain_trait(
    name: &str,
    value: &Value,
    engage: Option<&Engage>,
    ctx: &Context<'_>,
) -> TraitPreview {
    let mut preview = TraitPreview {
        name: name.to_owned(),
        value: value.clone(),
        outcome: "unmatched",
        property: None,
        property_name: None,
        property_type: None,
        rule: None,
        sent: None,
        reason: None,
    };
    let Some((property, rule)) = ctx.rules.match_trait_with_rule(name, ctx.catalogue) else {
        if engage.is_some_and(|e| e.is_membership() && e.key == name) {
            return missing_audience(preview, ctx);
        }
        preview.reason = Some(unmatched_reason(name, ctx.rules));
        return preview;
    };
    preview.property = Some(property.key.clone());
    preview.property_name = Some(property.name.clone());
    preview.property_type = Some(property.kind);
    preview.rule = Some(rule);
    match mapping::convert(property.kind, value) {
        Ok(sent) => {
            preview.outcome = "sent";
            preview.sent = Some(sent);
        }
        Err(reason) => {
            preview.outcome = "dropped";
            preview.reason = Some(reason);
        }
    }
    preview
}

fn missing_audience(mut preview: TraitPreview, ctx: &Context<'_>) -> TraitPreview {
    preview.outcome = "missing_audience";
    let key = &preview.name;
    preview.reason = Some(if ctx.create_audience_properties {
        let name = mapping::readable_name(key);
        preview.sent = mapping::convert(PropertyType::Boolean, &preview.value).ok();
        preview.property = preview.sent.as_ref().map(|_| key.clone());
        format!("no property has the key {key}; the relay would create a boolean subscriber property {key} ({name:?}) and send it")
    } else {
        format!("no property has the key {key}: create it in ProsperStack, or set create_audience_properties = true (RELAY_CREATE_AUDIENCE_PROPERTIES)")
    });
    preview
}

/// Why no rule matched, in the rules' words.
fn unmatched_reason(name: &str, rules: &Rules) -> String {
    if let Some(key) = rules.trait_mappings.get(name) {
        return format!(
            "[trait_mappings] maps it to {key:?}, which is no subscriber property; not sent"
        );
    }
    if !rules.snake_case_match {
        return format!(
            "no property has the name or key {name:?} (snake_case matching is off); not sent"
        );
    }
    let snake = heck::ToSnakeCase::to_snake_case(name);
    format!(
        "no property has the name or key {name:?}, nor the key {snake:?} (snake_case); not sent"
    )
}
