//! The `[prosperstack]` section: which ProsperStack, with which key, at what pace.
//!
//! In: the section's values (file, then environment). Out: [`ProsperStackSettings`] for the
//! client and the budget.
//! Stays true: the URL is http(s) with a host; the window is positive and finite; a key, when
//! present, is well-formed, and it is required only where the relay talks to ProsperStack.

use std::time::Duration;

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};
use url::Url;

use super::ConfigError;
use crate::prosperstack::{ApiKey, UpdateMethod};

/// The ProsperStack API's address, key and limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProsperStackSettings {
    /// `None` only where secrets were not read ([`super::Settings::load_without_secrets`]).
    #[serde(deserialize_with = "api_key")]
    pub api_key: Option<ApiKey>,
    #[serde(deserialize_with = "http_url")]
    pub api_url: Url,
    /// Requests allowed per window for this key.
    pub rate_limit_requests: u32,
    #[serde(rename = "rate_limit_window_secs", deserialize_with = "seconds")]
    pub rate_limit_window: Duration,
    /// Time allowed for one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The verb updates are sent with first (a 405 switches to the other, with a warning).
    pub update_method: UpdateMethod,
}

impl Default for ProsperStackSettings {
    fn default() -> Self {
        ProsperStackSettings {
            api_key: None,
            api_url: Url::parse("https://api.prosperstack.com").expect("the default URL parses"),
            rate_limit_requests: 100,
            rate_limit_window: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            update_method: UpdateMethod::Put,
        }
    }
}

impl ProsperStackSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.rate_limit_requests == 0 {
            return Err(ConfigError::at(
                "prosperstack.rate_limit_requests",
                "must be at least 1",
            ));
        }
        if self.rate_limit_window.is_zero() {
            return Err(ConfigError::at(
                "prosperstack.rate_limit_window_secs",
                "must be more than 0",
            ));
        }
        Ok(())
    }

    /// The API key, for what talks to ProsperStack.
    pub fn require_api_key(&self) -> Result<&ApiKey, ConfigError> {
        self.api_key.as_ref().ok_or_else(|| {
            ConfigError::at(
                "prosperstack.api_key",
                "required (a ProsperStack API key, key_… or key_test_…, or a file holding one \
                 named by PROSPERSTACK_API_KEY_FILE)",
            )
        })
    }
}

/// A key is trimmed (a pasted one often carries a space); an empty one is no key.
fn api_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ApiKey>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // The parse error never contains the key.
    ApiKey::parse(text).map(Some).map_err(D::Error::custom)
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let text = String::deserialize(d)?;
    let url = Url::parse(text.trim()).map_err(D::Error::custom)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(D::Error::custom(format!(
            "the scheme is {}; only http and https are spoken",
            url.scheme()
        )));
    }
    if url.host_str().is_none() {
        return Err(D::Error::custom("it has no host"));
    }
    Ok(url)
}

/// Seconds, fractions allowed (scaled trials use windows like 0.5 s).
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        D::Error::invalid_value(
            Unexpected::Float(secs),
            &"a finite number of seconds, not below 0",
        )
    })
}
