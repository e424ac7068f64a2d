//! Mapping: queued Segment traits in, one typed ProsperStack property update out.
//!
//! In: a [`Job`] (every queued event for one email, plus the timestamps of values already
//! delivered) and the property [`Catalogue`] (`GET /v1/properties`, cached by
//! [`CatalogueCache`]).
//! Out: a [`Plan`]: property key → value formatted for the property's type, the timestamp
//! each value came from, and what was left out (unmatched traits, unconvertible values,
//! stale values, Engage audiences with no property yet).
//!
//! Matching a trait name to a property, first rule that matches wins:
//! 1. a configured mapping (`[trait_mappings]`, trait name → property key);
//! 2. the property whose display `name` equals the trait name (ProsperStack's own Segment
//!    integration matches on it, e.g. "Last contacted");
//! 3. the property whose `key` equals the trait name (Engage sends `computation_key`, the
//!    snake_cased audience name, as the trait name, so audiences land here);
//! 4. when `snake_case_match` is on, the property whose key equals the trait's snake_case form
//!    (`preferredName` and `Preferred name` → `preferred_name`).
//!
//! Only `subscriber` properties are considered. Latest wins: for each property the value from
//! the event with the latest `timestamp` is chosen, and it is dropped when a value with a later
//! timestamp was already delivered.
//!
//! Configured by [`MappingSettings`] (the `[mapping]` section) and the `[trait_mappings]` table;
//! a configured mapping whose property key the catalogue does not hold is logged at warn each
//! time the catalogue is loaded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Datelike;
use heck::ToSnakeCase;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use tokio::sync::Mutex;

use crate::clock::SharedClock;
use crate::config::ConfigError;
use crate::prosperstack::{ApiError, Client, Property, PropertyType};
use crate::store::Job;

/// The `[mapping]` section: which matching rules apply and how fresh the catalogue is.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingSettings {
    /// Rule 4: a trait whose snake_case form equals a property key matches.
    pub snake_case_match: bool,
    /// Create a boolean subscriber property for an Engage audience that has none.
    pub create_audience_properties: bool,
    /// How long the property catalogue is cached.
    #[serde(with = "humantime_serde")]
    pub catalogue_refresh: Duration,
    /// Where an event carries its subscriber's platform ID (a trait name, or `userId`), for
    /// Identifies without a usable email; none when unset.
    pub platform_id_trait: Option<String>,
}

impl Default for MappingSettings {
    fn default() -> Self {
        MappingSettings {
            snake_case_match: true,
            create_audience_properties: false,
            catalogue_refresh: Duration::from_secs(300),
            platform_id_trait: None,
        }
    }
}

impl MappingSettings {
    /// Where events carry their platform ID, if the setting names a place.
    pub fn platform_ids(&self) -> Option<crate::identify::PlatformIdSource> {
        crate::identify::PlatformIdSource::from_setting(self.platform_id_trait.as_deref())
    }
}

/// `[trait_mappings]`: a mapping must name both a trait and a property.
pub fn check_trait_mappings(mappings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, key) in mappings {
        if name.is_empty() || key.trim().is_empty() {
            return Err(ConfigError::at(
                "trait_mappings",
                format!("{name:?} = {key:?}: trait names and property keys must not be empty"),
            ));
        }
    }
    Ok(())
}

/// The subscriber properties, indexed the ways matching needs.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    by_key: HashMap<String, Property>,
    key_by_name: HashMap<String, String>,
}

impl Catalogue {
    pub fn new(properties: Vec<Property>) -> Catalogue {
        let mut c = Catalogue::default();
        for p in properties.into_iter().filter(|p| p.entity == "subscriber") {
            c.key_by_name.insert(p.name.clone(), p.key.clone());
            c.by_key.insert(p.key.clone(), p);
        }
        c
    }

    pub fn get(&self, key: &str) -> Option<&Property> {
        self.by_key.get(key)
    }

    /// Every subscriber property, by key.
    pub fn properties(&self) -> impl Iterator<Item = &Property> {
        let mut all: Vec<&Property> = self.by_key.values().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all.into_iter()
    }
}

/// Which rule matched a trait to a property (the module's rules 1–4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchRule {
    /// A configured `[trait_mappings]` entry.
    Mapping,
    /// The property's display name equals the trait name.
    Name,
    /// The property's key equals the trait name.
    Key,
    /// The property's key equals the trait's snake_case form.
    SnakeCase,
}

impl MatchRule {
    /// The rule's name, as `preview` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchRule::Mapping => "mapping",
            MatchRule::Name => "name",
            MatchRule::Key => "key",
            MatchRule::SnakeCase => "snake_case",
        }
    }
}

/// The matching rules from configuration.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub trait_mappings: BTreeMap<String, String>,
    pub snake_case_match: bool,
}

impl Rules {
    pub fn new(settings: &MappingSettings, trait_mappings: &BTreeMap<String, String>) -> Rules {
        Rules {
            trait_mappings: trait_mappings.clone(),
            snake_case_match: settings.snake_case_match,
        }
    }

    /// The property a trait name maps to, by the module's precedence.
    pub fn match_trait<'c>(&self, name: &str, catalogue: &'c Catalogue) -> Option<&'c Property> {
        self.match_trait_with_rule(name, catalogue).map(|(p, _)| p)
    }

    /// The property a trait name maps to, and the rule that matched it.
    pub fn match_trait_with_rule<'c>(
        &self,
        name: &str,
        catalogue: &'c Catalogue,
    ) -> Option<(&'c Property, MatchRule)> {
        if let Some(key) = self.trait_mappings.get(name) {
            // A configured mapping is the operator's word: it does not fall through.
            return catalogue.get(key).map(|p| (p, MatchRule::Mapping));
        }
        if let Some(key) = catalogue.key_by_name.get(name) {
            return catalogue.get(key).map(|p| (p, MatchRule::Name));
        }
        if let Some(p) = catalogue.get(name) {
            return Some((p, MatchRule::Key));
        }
        if self.snake_case_match {
            let snake = name.to_snake_case();
            return catalogue.get(&snake).map(|p| (p, MatchRule::SnakeCase));
        }
        None
    }
}

/// What to send for one subscriber, and what was left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Property key → value formatted for ProsperStack.
    pub properties: Map<String, Value>,
    /// Property key → timestamp of the event the value came from.
    pub timestamps: HashMap<String, i64>,
    pub unmatched: Vec<String>,
    /// (property key, why the value could not be converted).
    pub dropped: Vec<(String, String)>,
    /// Property keys not sent because a later value was already delivered.
    pub stale: Vec<String>,
    /// Engage membership keys that match no property (candidates for creation).
    pub missing_audiences: Vec<String>,
}

/// Builds the update for a job: match, convert, keep the latest value per property.
pub fn plan(job: &Job, catalogue: &Catalogue, rules: &Rules) -> Plan {
    let mut plan = Plan::default();
    let mut events: Vec<_> = job.events.iter().collect();
    // Latest timestamp wins; among equal timestamps the later arrival wins.
    events.sort_by_key(|e| (e.timestamp_ms, e.id));
    let mut chosen: HashMap<String, (Value, i64)> = HashMap::new();
    for event in events {
        for (name, value) in &event.traits {
            let Some(property) = rules.match_trait(name, catalogue) else {
                let is_audience = event
                    .engage
                    .as_ref()
                    .is_some_and(|e| e.is_membership() && &e.key == name);
                if is_audience && !plan.missing_audiences.contains(name) {
                    plan.missing_audiences.push(name.clone());
                } else if !plan.unmatched.contains(name) {
                    plan.unmatched.push(name.clone());
                }
                continue;
            };
            match convert(property.kind, value) {
                Ok(v) => {
                    chosen.insert(property.key.clone(), (v, event.timestamp_ms));
                }
                Err(reason) => plan.dropped.push((property.key.clone(), reason)),
            }
        }
    }
    for (key, (value, ts)) in chosen {
        if job.applied.get(&key).is_some_and(|applied| *applied > ts) {
            plan.stale.push(key);
            continue;
        }
        plan.timestamps.insert(key.clone(), ts);
        plan.properties.insert(key, value);
    }
    plan.stale.sort();
    plan
}

/// Formats a trait value for a property type. `null` and `""` delete the value, as the API
/// says; anything that cannot be converted is refused with a reason.
pub fn convert(kind: PropertyType, value: &Value) -> Result<Value, String> {
    match value {
        Value::Null => return Ok(Value::Null),
        Value::String(s) if s.is_empty() => return Ok(Value::Null),
        Value::Array(_) | Value::Object(_) => {
            return Err("lists and objects cannot be stored in a property".into())
        }
        _ => {}
    }
    match kind {
        PropertyType::Text => to_text(value),
        PropertyType::Number => to_number(value),
        PropertyType::Boolean => to_boolean(value),
        PropertyType::Date => to_date(value),
    }
}

fn to_text(value: &Value) -> Result<Value, String> {
    Ok(Value::String(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }))
}

fn to_number(value: &Value) -> Result<Value, String> {
    match value {
        Value::Number(_) => Ok(value.clone()),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Value::Number(i.into()));
            }
            t.parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("{s:?} is not a number"))
        }
        other => Err(format!("{other} is not a number")),
    }
}

fn to_boolean(value: &Value) -> Result<Value, String> {
    let b = match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Some(true),
            "false" | "f" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    b.map(Value::Bool)
        .ok_or_else(|| format!("{value} is not a boolean (true/false, \"t\"/\"f\", 1/0)"))
}

fn to_date(value: &Value) -> Result<Value, String> {
    let Value::String(s) = value else {
        return Err(format!("{value} is not an ISO 8601 date"));
    };
    let t = s.trim();
    let date = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        // A date-time keeps the calendar date it names, in its own offset.
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|dt| dt.date_naive())
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|dt| dt.date())
        });
    match date {
        // ProsperStack takes exactly YYYY-MM-DD, but chrono also reads one-digit months and days
        // and years of any length or sign: the date is written out afresh, four-digit years only.
        Some(d) if (0..=9999).contains(&d.year()) => {
            Ok(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        _ => Err(format!("{s:?} is not an ISO 8601 date")),
    }
}

/// A readable property name from an Engage key: `high_value_customers` → "High value customers".
pub fn readable_name(key: &str) -> String {
    let words = key.to_snake_case().replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => key.to_owned(),
    }
}

/// The configured mappings whose property key is no subscriber property in `catalogue`
/// (trait name, property key): their values would never be sent.
pub fn unknown_mapping_targets<'m>(
    catalogue: &Catalogue,
    trait_mappings: &'m BTreeMap<String, String>,
) -> Vec<(&'m str, &'m str)> {
    trait_mappings
        .iter()
        .filter(|(_, key)| catalogue.get(key).is_none())
        .map(|(name, key)| (name.as_str(), key.as_str()))
        .collect()
}

/// The property catalogue, fetched from ProsperStack (every page) and refreshed when older
/// than `refresh` or when invalidated (a property was created, or ProsperStack refused one).
pub struct CatalogueCache {
    refresh: Duration,
    clock: SharedClock,
    /// Checked against each catalogue loaded, so a typo in the configuration shows in the log.
    trait_mappings: BTreeMap<String, String>,
    current: Mutex<Option<(Instant, Arc<Catalogue>)>>,
}

impl CatalogueCache {
    pub fn new(
        refresh: Duration,
        trait_mappings: BTreeMap<String, String>,
        clock: SharedClock,
    ) -> CatalogueCache {
        CatalogueCache {
            refresh,
            clock,
            trait_mappings,
            current: Mutex::new(None),
        }
    }

    pub async fn get(&self, client: &Client) -> Result<Arc<Catalogue>, ApiError> {
        let mut current = self.current.lock().await;
        if let Some((at, catalogue)) = current.as_ref() {
            if self.clock.now().saturating_duration_since(*at) < self.refresh {
                return Ok(catalogue.clone());
            }
        }
        let catalogue = Arc::new(Catalogue::new(client.all_properties().await?));
        for (name, key) in unknown_mapping_targets(&catalogue, &self.trait_mappings) {
            tracing::warn!(r#trait = %name, property = %key, "a configured trait mapping names no subscriber property; that trait is not sent");
        }
        *current = Some((self.clock.now(), catalogue.clone()));
        Ok(catalogue)
    }

    pub async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

#[cfg(test)]
mod tests;
