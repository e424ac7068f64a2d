//! The `[store]` section: where the durable queue lives, and how long the delivery lease lasts.
//!
//! In: the configuration tree's `[store]` table (`database_url`, `leader_lease`).
//! Out: [`StoreSettings`], checked once at start-up: a `database_url` that PostgreSQL's
//! client cannot parse is refused with the reason, never the URL (it holds the password).
//! Stays true: without `database_url` the store is SQLite in `data_dir`, as it always was;
//! the URL is only ever shown through [`StoreSettings::location`], which leaves the password
//! out.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{self, ConfigError, Secret};

/// The `[store]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// A PostgreSQL URL: set, every replica shares the queue there; unset, SQLite in
    /// `data_dir`.
    #[serde(deserialize_with = "database_url")]
    pub database_url: Option<Secret>,
    /// How long a replica holds the delivery lease without renewing it: after a leader dies, a
    /// standby delivers within this long.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            database_url: None,
            leader_lease: Duration::from_secs(10),
        }
    }
}

/// An optional database URL that PostgreSQL's client can parse (it is not connected to here):
/// refused as it is read, so the refusal names where it came from; the reason never quotes it.
fn database_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let url = config::optional_secret(d)?;
    if let Some(url) = &url {
        super::postgres::check_url(url.expose()).map_err(D::Error::custom)?;
    }
    Ok(url)
}

/// Shortest lease: renewals go every third of it, and a round trip to the database must fit.
const MIN_LEADER_LEASE: Duration = Duration::from_millis(300);

impl StoreSettings {
    /// A lease renewals can keep (the URL was checked as it was read).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.leader_lease < MIN_LEADER_LEASE {
            return Err(ConfigError::at(
                "store.leader_lease",
                "must be at least 300ms (it is renewed every third of it)",
            ));
        }
        Ok(())
    }

    /// Where the store is, for messages: the PostgreSQL URL without its password and options,
    /// or `None` for SQLite (the data directory says where).
    pub fn location(&self) -> Option<String> {
        let url = self.database_url.as_ref()?;
        Some(super::postgres::display_location(url.expose()))
    }
}
