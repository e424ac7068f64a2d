//! The doctor's judgements, without I/O: from what ProsperStack answered (rate-limit headers,
//! the property catalogue) and the configuration, to [`Finding`]s.
//!
//! In: [`RateLimitHeaders`], a [`Catalogue`], the [`Rules`]. Out: findings, each one line saying
//! what is wrong and what to do.
//! Stays true: a finding never holds a secret (nothing here sees one); a trait is reported as
//! a near miss only when the rules would not carry it to the property it resembles.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::mapping::{Catalogue, Rules};
use crate::prosperstack::{Property, RateLimitHeaders};

/// How bad a finding is: `problem` makes the doctor exit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Problem,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        }
    }
}

/// One line of the doctor's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

impl Finding {
    pub fn ok(text: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            text: text.into(),
        }
    }
    pub fn warning(text: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warning,
            text: text.into(),
        }
    }
    pub fn problem(text: impl Into<String>) -> Finding {
        Finding {
            level: Level::Problem,
            text: text.into(),
        }
    }
}

/// Traits a Segment source is likely to send although no mapping names them: Segment's
/// reserved Identify traits, and `plan` (a reserved Group trait that subscription businesses
/// commonly send on Identify too).
pub const LIKELY_TRAITS: &[&str] = &[
    "address",
    "age",
    "avatar",
    "birthday",
    "company",
    "createdAt",
    "description",
    "firstName",
    "gender",
    "id",
    "lastName",
    "name",
    "phone",
    "plan",
    "title",
    "username",
    "website",
];

/// What the `RateLimit-*` headers say of this key, against `rate_limit_requests`.
pub fn rate_limit(seen: &RateLimitHeaders, configured: u32, window: Duration) -> Finding {
    let setting = "rate_limit_requests (PROSPERSTACK_RATE_LIMIT_REQUESTS)";
    let ours = format!("{configured} per {} s", window.as_secs_f64());
    let Some(limit) = seen.limit else {
        return Finding::warning(format!(
            "ProsperStack sent no RateLimit-Limit header; the relay paces itself by {setting} alone ({ours})"
        ));
    };
    let remaining = seen
        .remaining
        .map_or_else(|| "?".to_owned(), |r| r.to_string());
    let reset = seen
        .reset
        .map_or_else(|| "?".to_owned(), |r| r.as_secs().to_string());
    let heard = format!(
        "RateLimit-Limit {limit}, RateLimit-Remaining {remaining}, RateLimit-Reset {reset} s"
    );
    if limit < configured {
        return Finding::warning(format!(
            "ProsperStack allows this key {limit} requests per window ({heard}) but {setting} is \
             {configured}: set it to {limit} or less, or the relay will meet 429s"
        ));
    }
    Finding::ok(format!("rate limit: {heard}; the relay is set to {ours}"))
}

/// Every `[trait_mappings]` target must be a subscriber property key: one problem per one
/// that is not, else one line for them all.
pub fn mapping_targets(catalogue: &Catalogue, rules: &Rules) -> Vec<Finding> {
    let unknown = crate::mapping::unknown_mapping_targets(catalogue, &rules.trait_mappings);
    if unknown.is_empty() {
        return match rules.trait_mappings.len() {
            0 => Vec::new(),
            n => vec![Finding::ok(format!(
                "all {n} [trait_mappings] name subscriber properties"
            ))],
        };
    }
    unknown
        .into_iter()
        .map(|(name, key)| {
            let hint = similar(catalogue, key)
                .map(|p| format!(" (did you mean {}, named {:?}?)", p.key, p.name))
                .unwrap_or_default();
            Finding::problem(format!(
                "[trait_mappings] {name:?} = {key:?}: no subscriber property has the key {key:?}, \
                 so that trait is never sent{hint}; fix the mapping in the configuration file"
            ))
        })
        .collect()
}

/// A property whose key or name is `text` but for case, spaces, `_` and `-`.
fn similar<'c>(catalogue: &'c Catalogue, text: &str) -> Option<&'c Property> {
    let want = squash(text);
    catalogue
        .properties()
        .find(|p| squash(&p.key) == want || squash(&p.name) == want)
}

fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Case and spacing folded: `"  Last   Contacted "` and `"last contacted"` fold alike.
fn fold(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Properties whose display name differs from a mapped or likely trait only in case or
/// spacing, where the rules would not carry that trait to them: one warning per property.
pub fn near_misses(catalogue: &Catalogue, rules: &Rules) -> Vec<Finding> {
    let tidied = catalogue.properties().map(|p| tidy(&p.name));
    let candidates: BTreeSet<String> = rules
        .trait_mappings
        .keys()
        .cloned()
        .chain(LIKELY_TRAITS.iter().map(|t| t.to_string()))
        .chain(tidied)
        .collect();
    catalogue
        .properties()
        .filter_map(|property| {
            let missed: Vec<String> = candidates
                .iter()
                .filter(|name| **name != property.name && fold(name) == fold(&property.name))
                .filter_map(|name| missed_trait(name, property, catalogue, rules))
                .collect();
            (!missed.is_empty()).then(|| Finding::warning(near_miss_text(property, &missed)))
        })
        .collect()
}

/// `"name" (what becomes of it)` when the rules do not carry the trait `name` to `property`.
fn missed_trait(
    name: &str,
    property: &Property,
    catalogue: &Catalogue,
    rules: &Rules,
) -> Option<String> {
    match rules.match_trait(name, catalogue) {
        Some(p) if p.key == property.key => None,
        Some(other) => Some(format!("{name:?} (goes to {} instead)", other.key)),
        None => Some(format!("{name:?} (matches no property)")),
    }
}

/// Spaces trimmed and collapsed, case kept: the name as a person would type it.
fn tidy(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn near_miss_text(property: &Property, missed: &[String]) -> String {
    format!(
        "property {:?} (key {}) differs only in case or spacing from the trait {}: rename the \
         property to {:?}, or map the trait to {:?} in [trait_mappings]",
        property.name,
        property.key,
        missed.join(", "),
        tidy(&property.name),
        property.key
    )
}

#[cfg(test)]
mod tests;
