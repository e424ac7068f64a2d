//! The sandbox's data: properties, subscribers, request counters, pending injected faults and the
//! rate limiter, all behind the one mutex in [`super::Sandbox`]. In: validated commands from the API,
//! admin routes and Rust calls; out: results and the JSON the API answers with.
//!
//! What stays true: items keep creation order (pagination relies on it); a subscriber update
//! validates every key before changing anything; deleted properties stay as tombstones so stored
//! values and cursors survive them; a live property key names exactly one property.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::page::{paginate, PageRequest};
use super::property::{new_id, Entity, Format, Kind, NewProperty, Property};
use super::ratelimit::RateLimiter;
use super::values::{check_value, formatted_value, Change};
use super::{SandboxError, SandboxStats, SubscriberView};

/// A subscriber and its property values, keyed by property id (a key can be reused after its
/// property is deleted; the id cannot).
#[derive(Clone, Debug)]
pub(crate) struct Subscriber {
    pub(crate) id: String,
    pub(crate) platform_id: String,
    pub(crate) name: String,
    pub(crate) email: String,
    values: HashMap<String, Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Answers still to be failed on purpose.
#[derive(Clone, Copy, Debug)]
struct Faults {
    status: StatusCode,
    remaining: u32,
}

/// One page of a list endpoint, rendered.
pub(crate) struct Page {
    pub(crate) data: Vec<Value>,
    pub(crate) next_cursor: Option<String>,
}

/// Filters of `GET /v1/subscribers`; both exact matches.
#[derive(Debug, Default)]
pub(crate) struct SubscriberFilter {
    pub(crate) email: Option<String>,
    pub(crate) platform_id: Option<String>,
}

pub(crate) struct State {
    properties: Vec<Property>,
    subscribers: Vec<Subscriber>,
    faults: Option<Faults>,
    pub(crate) stats: SandboxStats,
    pub(crate) limiter: RateLimiter,
    /// Added to tokio's clock for the rate limiter; moved only by `Sandbox::advance_clock`.
    pub(crate) clock_skew: Duration,
}

impl State {
    pub(crate) fn new(limiter: RateLimiter) -> State {
        State {
            properties: Vec::new(),
            subscribers: Vec::new(),
            faults: None,
            stats: SandboxStats::default(),
            limiter,
            clock_skew: Duration::ZERO,
        }
    }

    // ----- properties -----

    /// Adds a property; a key already used by a live property is a conflict.
    pub(crate) fn create_property(&mut self, new: NewProperty) -> Result<&Property, SandboxError> {
        if self.live_property_by_key(&new.key).is_some() {
            return Err(SandboxError::Conflict(format!(
                r#"A property with key "{}" already exists"#,
                new.key
            )));
        }
        self.properties.push(Property::new(new));
        Ok(&self.properties[self.properties.len() - 1])
    }

    pub(crate) fn property(&self, id: &str) -> Result<&Property, SandboxError> {
        self.live_properties()
            .find(|p| p.id == id)
            .ok_or_else(|| not_found("property", id))
    }

    /// Marks a property deleted; values already stored on subscribers are kept.
    pub(crate) fn delete_property(&mut self, id: &str) -> Result<(), SandboxError> {
        let property = self
            .properties
            .iter_mut()
            .find(|p| p.id == id && !p.deleted)
            .ok_or_else(|| not_found("property", id))?;
        property.deleted = true;
        Ok(())
    }

    pub(crate) fn live_properties(&self) -> impl Iterator<Item = &Property> {
        self.properties.iter().filter(|p| !p.deleted)
    }

    fn live_property_by_key(&self, key: &str) -> Option<&Property> {
        self.live_properties().find(|p| p.key == key)
    }

    pub(crate) fn list_properties(
        &self,
        entity: Option<Entity>,
        request: &PageRequest,
    ) -> Result<Page, SandboxError> {
        let keep = |p: &Property| !p.deleted && entity.is_none_or(|e| p.entity == e);
        let (items, next_cursor) = paginate(&self.properties, |p| &p.id, keep, request)?;
        let data = items.into_iter().map(property_json).collect();
        Ok(Page { data, next_cursor })
    }

    // ----- subscribers -----

    /// Adds a subscriber with fresh ids.
    pub(crate) fn create_subscriber(&mut self, email: &str, name: &str) -> SubscriberView {
        let now = Utc::now();
        let subscriber = Subscriber {
            id: new_id("subr_", 24),
            platform_id: new_id("cus_", 14),
            name: name.to_string(),
            email: email.to_string(),
            values: HashMap::new(),
            created_at: now,
            updated_at: now,
        };
        let view = self.subscriber_view(&subscriber);
        self.subscribers.push(subscriber);
        view
    }

    pub(crate) fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.subscribers.iter()
    }

    pub(crate) fn subscriber(&self, id: &str) -> Result<&Subscriber, SandboxError> {
        self.subscribers
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| not_found("subscriber", id))
    }

    pub(crate) fn list_subscribers(
        &self,
        filter: &SubscriberFilter,
        request: &PageRequest,
    ) -> Result<Page, SandboxError> {
        let keep = |s: &Subscriber| {
            filter.email.as_ref().is_none_or(|e| &s.email == e)
                && filter
                    .platform_id
                    .as_ref()
                    .is_none_or(|p| &s.platform_id == p)
        };
        let (items, next_cursor) = paginate(&self.subscribers, |s| &s.id, keep, request)?;
        let data = items.into_iter().map(|s| self.subscriber_json(s)).collect();
        Ok(Page { data, next_cursor })
    }

    /// Applies `changes` (property key → value) to a subscriber, all or nothing. `updated_at`
    /// moves only when a stored value really changes.
    pub(crate) fn update_subscriber(
        &mut self,
        id: &str,
        changes: &Map<String, Value>,
    ) -> Result<(), SandboxError> {
        let index = self
            .subscribers
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| not_found("subscriber", id))?;
        let plan = self.plan_changes(changes)?;
        let subscriber = &mut self.subscribers[index];
        let mut changed = false;
        for (property_id, change) in plan {
            changed |= match change {
                Change::Set(value) => {
                    subscriber.values.insert(property_id, value.clone()) != Some(value)
                }
                Change::Delete => subscriber.values.remove(&property_id).is_some(),
            };
        }
        if changed {
            subscriber.updated_at = Utc::now();
        }
        Ok(())
    }

    /// Checks every key and value of an update, returning what to do per property id, or one 400
    /// listing every problem (keys in double quotes) so a client sees them all at once.
    fn plan_changes(
        &self,
        changes: &Map<String, Value>,
    ) -> Result<Vec<(String, Change)>, SandboxError> {
        let mut plan = Vec::with_capacity(changes.len());
        let mut problems = Vec::new();
        for (key, value) in changes {
            match self.live_property_by_key(key) {
                None => problems.push(format!(r#"Unknown property "{key}""#)),
                Some(p) if p.entity != Entity::Subscriber => problems.push(format!(
                    r#"Property "{key}" is a subscription property and cannot be set on a subscriber"#
                )),
                Some(p) => match check_value(p.kind, value) {
                    Ok(change) => plan.push((p.id.clone(), change)),
                    Err(expected) => problems.push(format!(
                        r#"Invalid value for property "{key}": {expected}"#
                    )),
                },
            }
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(SandboxError::Invalid(problems.join("; ")))
        }
    }

    /// The subscriber JSON of the reference. Values are listed in property creation order,
    /// including those of deleted properties, whose data the reference says is kept.
    pub(crate) fn subscriber_json(&self, s: &Subscriber) -> Value {
        let properties: Vec<Value> = self
            .stored_values(s)
            .map(|(p, value)| {
                json!({
                    "property": property_json(p),
                    "value": value,
                    "formatted_value": formatted_value(p.kind, p.format, value),
                })
            })
            .collect();
        json!({
            "id": s.id,
            "platform_id": s.platform_id,
            "name": s.name,
            "email": s.email,
            "status": "active",
            "properties": properties,
            "created_at": rfc3339(s.created_at),
            "updated_at": rfc3339(s.updated_at),
        })
    }

    /// The subscriber for tests and the admin API; a live property's value wins over a deleted
    /// property's value stored under the same key (the live one was created later).
    pub(crate) fn subscriber_view(&self, s: &Subscriber) -> SubscriberView {
        SubscriberView {
            id: s.id.clone(),
            email: s.email.clone(),
            name: s.name.clone(),
            platform_id: s.platform_id.clone(),
            properties: self
                .stored_values(s)
                .map(|(p, value)| (p.key.clone(), value.clone()))
                .collect(),
        }
    }

    fn stored_values<'a>(
        &'a self,
        s: &'a Subscriber,
    ) -> impl Iterator<Item = (&'a Property, &'a Value)> + 'a {
        self.properties
            .iter()
            .filter_map(|p| s.values.get(&p.id).map(|value| (p, value)))
    }

    // ----- faults and stats -----

    pub(crate) fn inject_failures(&mut self, status: StatusCode, count: u32) {
        self.faults = (count > 0).then_some(Faults {
            status,
            remaining: count,
        });
    }

    /// The status to fail the current request with, if any faults are pending; uses one up.
    pub(crate) fn take_fault(&mut self) -> Option<StatusCode> {
        let faults = self.faults.as_mut()?;
        let status = faults.status;
        faults.remaining -= 1;
        if faults.remaining == 0 {
            self.faults = None;
        }
        Some(status)
    }

    /// Counts one `/v1` request under its route label and answer status.
    pub(crate) fn record(&mut self, route: String, status: StatusCode) {
        let stats = &mut self.stats;
        stats.requests_total += 1;
        *stats.by_route.entry(route).or_default() += 1;
        *stats.by_status.entry(status.as_u16()).or_default() += 1;
        if status == StatusCode::TOO_MANY_REQUESTS {
            stats.rate_limited_total += 1;
        }
    }
}

pub(crate) fn property_json(p: &Property) -> Value {
    serde_json::to_value(p.view()).unwrap_or_default()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn not_found(what: &str, id: &str) -> SandboxError {
    SandboxError::NotFound(format!(r#"No {what} with id "{id}""#))
}

/// The demo data: the reference's sample properties and a few more of each type, one subscription
/// property (Identify must never set it), and three subscribers.
pub(crate) fn seed_demo(state: &mut State) {
    use Entity::{Subscriber as Sub, Subscription};
    let properties = [
        (
            "number_of_contacts",
            "Number of contacts",
            Sub,
            Kind::Number,
            Some(Format::Number),
        ),
        (
            "is_professional",
            "Is professional",
            Sub,
            Kind::Boolean,
            None,
        ),
        ("last_contacted", "Last contacted", Sub, Kind::Date, None),
        ("preferred_name", "Preferred name", Sub, Kind::Text, None),
        (
            "high_value_customers",
            "High value customers",
            Sub,
            Kind::Boolean,
            None,
        ),
        (
            "total_spend_180_days",
            "Total spend 180 days",
            Sub,
            Kind::Number,
            Some(Format::Currency),
        ),
        ("plan", "Plan", Sub, Kind::Text, None),
        ("signed_up_on", "Signed up on", Sub, Kind::Date, None),
        ("plan_tier", "Plan tier", Subscription, Kind::Text, None),
    ];
    for (key, name, entity, kind, format) in properties {
        state
            .create_property(NewProperty::demo(key, name, entity, kind, format))
            .expect("demo keys are distinct and the store starts empty");
    }
    for (email, name) in [
        ("maria.lopez@example.com", "Maria Lopez"),
        ("jordan.reyes@example.com", "Jordan Reyes"),
        ("john.doe@example.com", "John Doe"),
    ] {
        state.create_subscriber(email, name);
    }
}
