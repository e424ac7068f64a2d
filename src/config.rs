//! Configuration: one typed tree, [`Settings`], read once at start-up from defaults, then the
//! TOML file (`--config` / `RELAY_CONFIG`), then the environment.
//!
//! In: an optional file path and an environment (injected, so tests need not touch the process).
//! Out: [`Settings`], whose sections belong to the modules that use them
//! ([`ProsperStackSettings`] here, [`StoreSettings`] in `store`, [`SegmentSettings`] in `ingest`, [`MappingSettings`] in
//! `mapping`, [`DeliverySettings`] in `delivery`), or a [`ConfigError`] naming the one setting
//! that is wrong by its file key and its environment variable, in one line.
//!
//! Stays true:
//! - every setting is one row of the settings table (`table.rs`: file key, environment
//!   variable, kind); its default is declared once, in its section's `Default`;
//! - the environment wins over the file and an empty value counts as unset; unknown file keys
//!   are refused;
//! - each section checks its own ranges; [`Settings::check_can_start`] adds what needs the
//!   machine (a writable data directory);
//! - secrets are wrapped ([`Secret`], [`ApiKey`](crate::prosperstack::ApiKey)) so `Debug`
//!   never prints them, and [`Settings::load_without_secrets`] does not read them at all;
//! - `listen` and `metrics_listen` never want the same port.

mod load;
mod startup;
mod table;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use url::Url;

use crate::delivery::DeliverySettings;
use crate::ingest::SegmentSettings;
use crate::mapping::MappingSettings;
use crate::store::StoreSettings;
pub use startup::cannot_listen;
pub use upstream::ProsperStackSettings;

/// A secret string (shared secret, ingest token). `Debug` prints only that it is set.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// An optional secret setting: an empty value means "not set", as an empty variable does.
pub fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let text = String::deserialize(d)?;
    Ok((!text.is_empty()).then_some(Secret(text)))
}

/// A configuration problem, naming the setting (file key and environment variable).
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// A problem with the setting at file key `key` (e.g. `delivery.retry_window`), named with
    /// its environment variable too.
    pub fn at(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(table::name_of(key), message)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything the relay needs, parsed and checked: the file's shape, section by section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    /// A separate address for `/metrics`; `None` serves it on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub store: StoreSettings,
    pub prosperstack: ProsperStackSettings,
    pub segment: SegmentSettings,
    pub mapping: MappingSettings,
    pub delivery: DeliverySettings,
    /// Trait name → property key (`[trait_mappings]`, file only).
    pub trait_mappings: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: None,
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            store: StoreSettings::default(),
            prosperstack: ProsperStackSettings::default(),
            segment: SegmentSettings::default(),
            mapping: MappingSettings::default(),
            delivery: DeliverySettings::default(),
            trait_mappings: BTreeMap::new(),
        }
    }
}

/// Reads an environment variable; injected so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for `main`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Loads and checks every setting: defaults, then `file` (if any), then the environment.
    /// The API key is required: this is what serving (and checking a setup for serving) needs.
    pub fn load(file: Option<&Path>, env: Env<'_>) -> Result<Settings, ConfigError> {
        let settings = load::read(file, env, load::Secrets::Read)?;
        settings.check()?;
        settings.prosperstack.require_api_key()?;
        Ok(settings)
    }

    /// Loads and checks every setting except the secrets, which are not read at all (they stay
    /// unset): for the tools that only need where the relay listens or keeps its data, such as a
    /// container's health check, where the key's file may not be readable.
    pub fn load_without_secrets(
        file: Option<&Path>,
        env: Env<'_>,
    ) -> Result<Settings, ConfigError> {
        let settings = load::read(file, env, load::Secrets::Skip)?;
        settings.check()?;
        Ok(settings)
    }

    /// The ranges and relations no single value shows, section by section.
    fn check(&self) -> Result<(), ConfigError> {
        self.check_listeners()?;
        self.store.check()?;
        self.prosperstack.check()?;
        self.segment.check()?;
        self.delivery.check()?;
        crate::mapping::check_trait_mappings(&self.trait_mappings)
    }

    /// `/metrics` on its own listener must not want the main listener's port.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        match self.metrics_listen {
            Some(metrics) if overlap(metrics, self.listen) => Err(ConfigError::at(
                "metrics_listen",
                format!(
                    "{metrics} takes the port of listen (RELAY_LISTEN, {}): give /metrics a port \
                     of its own, or leave metrics_listen unset to serve /metrics on listen",
                    self.listen
                ),
            )),
            _ => Ok(()),
        }
    }

    /// What settings alone cannot show but start-up needs: the data directory exists (it is
    /// created when missing) and this process can write in it.
    /// With a `database_url`, the data directory is not used and not checked.
    pub fn check_can_start(&self) -> Result<(), ConfigError> {
        if self.store.database_url.is_some() {
            return Ok(());
        }
        startup::check_data_dir(&self.data_dir)
    }
}

/// Whether two listeners would fight over one port (port 0 picks a free one each time).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A URL for logs and messages: any user name or password in it is left out.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

#[cfg(test)]
mod tests;
