//! What every store writes the same way: the JSON it keeps for an event and a dead letter, and
//! what replaying a dead letter puts back in the queue.
//!
//! In: normalised updates, the raw JSON of queued events, dead letters. Out: the text a store
//! keeps ([`Encoded`], [`to_json`], [`dead_letter_events`]), an email's key and spelling
//! ([`Email`]) and the updates a replay queues ([`replay`]).
//! Stays true: a store reading back what it wrote gets the same values ([`from_json`] fails
//! only on text the relay never wrote, as [`StoreError::Corrupt`]); both backends queue the
//! same events for the same dead letter.

use serde_json::Value;

use super::{DeadLetter, Incoming, StoreError};
use crate::identify::{self, Event, IdentifyUpdate};

/// An email as the queue keeps it: its key, and the spelling it was sent with when that differs.
pub(super) struct Email<'a> {
    pub key: String,
    pub spelling: Option<&'a str>,
}

impl Email<'_> {
    pub fn sent_as(sent: &str) -> Email<'_> {
        let key = identify::email_key(sent);
        let spelling = (key != sent).then_some(sent);
        Email { key, spelling }
    }
}

/// An update's traits and Engage computation as stored, encoded before they reach a store's
/// writer (the one place every commit waits for).
pub(super) struct Encoded {
    pub traits: String,
    pub engage: Option<String>,
}

impl Encoded {
    pub fn of(update: &IdentifyUpdate) -> Result<Encoded, StoreError> {
        Ok(Encoded {
            traits: to_json(&update.traits)?,
            engage: update.engage.as_ref().map(to_json).transpose()?,
        })
    }

    /// One entry per incoming event: the encoding of each Identify, `None` for the others.
    pub fn all(events: &[Incoming]) -> Result<Vec<Option<Encoded>>, StoreError> {
        events
            .iter()
            .map(|e| match &e.event {
                Event::Identify(update) => Encoded::of(update).map(Some),
                _ => Ok(None),
            })
            .collect()
    }
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A dead letter's events: each queued event's raw JSON as a value (as a string if it no
/// longer parses, so nothing is dropped).
pub(super) fn dead_letter_events(raws: &[String]) -> Vec<Value> {
    raws.iter()
        .map(|raw| serde_json::from_str(raw).unwrap_or(Value::String(raw.clone())))
        .collect()
}

/// What replaying `letter` queues under its email, as (update, raw JSON) pairs, bypassing
/// dedupe (its events were seen, on purpose). A whole-update dead letter re-queues its original
/// events; a dead letter for refused properties re-queues only those properties, with the time
/// of the latest original event, so replaying it cannot bring back older values of others.
pub(super) fn replay(
    letter: &DeadLetter,
    now_ms: i64,
) -> Result<Vec<(IdentifyUpdate, String)>, StoreError> {
    let originals: Vec<(IdentifyUpdate, String)> = letter
        .events
        .iter()
        .filter_map(|raw| match identify::normalise(raw, now_ms) {
            Ok(Event::Identify(update)) => Some((update, raw.to_string())),
            _ => None,
        })
        .collect();
    if letter.properties.is_empty() {
        return Ok(originals);
    }
    let latest = originals
        .iter()
        .map(|(u, _)| u.timestamp_ms)
        .max()
        .unwrap_or(now_ms);
    let update = IdentifyUpdate {
        message_id: format!("replay-{}-{now_ms}", letter.id),
        user_id: None,
        anonymous_id: None,
        email: Some(letter.email.clone()),
        timestamp_ms: latest,
        traits: letter.properties.clone(),
        engage: None,
    };
    Ok(vec![(update, to_json(&letter.events)?)])
}
