//! The HTTP verb of "Update a subscriber", which the API reference does not name.
//!
//! In: the configured [`UpdateMethod`] (`update_method` / `RELAY_UPDATE_METHOD`, `PUT` by
//! default), then what ProsperStack answers. Out: the verb the next update uses.
//! Stays true: the verb in use is shared by every clone of a client, so once one update found
//! that the other verb works (a 405 to this one), every later update uses it; it changes only
//! through [`CurrentVerb::switch`], and only one caller wins each change (and logs it).

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use reqwest::Method;
use serde::{Deserialize, Deserializer};

/// The verb an update is sent with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateMethod {
    #[default]
    Put,
    Patch,
}

impl UpdateMethod {
    pub fn method(self) -> Method {
        match self {
            UpdateMethod::Put => Method::PUT,
            UpdateMethod::Patch => Method::PATCH,
        }
    }

    /// The verb to try when this one is answered 405.
    pub fn other(self) -> UpdateMethod {
        match self {
            UpdateMethod::Put => UpdateMethod::Patch,
            UpdateMethod::Patch => UpdateMethod::Put,
        }
    }

    /// The metric label of an update sent with this verb (a template, never an id).
    pub fn endpoint(self) -> &'static str {
        match self {
            UpdateMethod::Put => "PUT /v1/subscribers/{id}",
            UpdateMethod::Patch => "PATCH /v1/subscribers/{id}",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMethod::Put => "PUT",
            UpdateMethod::Patch => "PATCH",
        }
    }
}

impl fmt::Display for UpdateMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UpdateMethod {
    type Err = String;

    /// `PUT` or `PATCH`, in any case.
    fn from_str(s: &str) -> Result<UpdateMethod, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PUT" => Ok(UpdateMethod::Put),
            "PATCH" => Ok(UpdateMethod::Patch),
            _ => Err("only PUT and PATCH update a subscriber".to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for UpdateMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UpdateMethod, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The verb in use now, shared by a client's clones.
#[derive(Debug)]
pub(super) struct CurrentVerb(AtomicU8);

impl CurrentVerb {
    pub(super) fn new(method: UpdateMethod) -> CurrentVerb {
        CurrentVerb(AtomicU8::new(encode(method)))
    }

    pub(super) fn get(&self) -> UpdateMethod {
        decode(self.0.load(Ordering::Acquire))
    }

    /// Moves from `from` to `to`; answers whether this call made the change (false when another
    /// caller already did, or the verb was no longer `from`).
    pub(super) fn switch(&self, from: UpdateMethod, to: UpdateMethod) -> bool {
        self.0
            .compare_exchange(
                encode(from),
                encode(to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

fn encode(method: UpdateMethod) -> u8 {
    match method {
        UpdateMethod::Put => 0,
        UpdateMethod::Patch => 1,
    }
}

fn decode(value: u8) -> UpdateMethod {
    match value {
        1 => UpdateMethod::Patch,
        _ => UpdateMethod::Put,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PUT and PATCH parse in any case; anything else is refused.
    #[test]
    fn parse_table() {
        let cases = [
            ("PUT", Some(UpdateMethod::Put)),
            ("put", Some(UpdateMethod::Put)),
            (" Patch ", Some(UpdateMethod::Patch)),
            ("POST", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<UpdateMethod>().ok(), want, "{text:?}");
        }
    }

    /// A switch happens once: the second caller moving the same way is told it did not.
    #[test]
    fn switch_is_won_once() {
        let verb = CurrentVerb::new(UpdateMethod::Put);
        assert!(verb.switch(UpdateMethod::Put, UpdateMethod::Patch));
        assert!(!verb.switch(UpdateMethod::Put, UpdateMethod::Patch));
        assert_eq!(verb.get(), UpdateMethod::Patch);
        assert_eq!(verb.get().endpoint(), "PATCH /v1/subscribers/{id}");
    }
}
