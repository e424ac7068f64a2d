//! The settings table: every setting's file key, environment variable and kind, in one place.
//!
//! In: nothing (a constant). Out: look-ups by file key; each kind's conversion of an
//! environment value into the TOML value the file would hold, and its words for a refused value.
//! Stays true: a setting missing here cannot be set (the file refuses its key, the environment is
//! never read for it); tests hold the table against the typed tree and the example file.

/// What a setting holds: decides how an environment value becomes TOML, and how a refusal reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Address,
    Url,
    Path,
    LogFormat,
    /// Never quoted back; also read from the file named by `<VARIABLE>_FILE`.
    Secret,
    Count,
    /// Seconds, fractions allowed.
    Seconds,
    Bool,
    Duration,
    /// An HTTP verb for subscriber updates: `PUT` or `PATCH`.
    Verb,
    /// A PostgreSQL URL: a secret (it holds the password: never quoted back, also read from
    /// `<VARIABLE>_FILE`) that the tools still read, since reading the store is their job.
    DatabaseUrl,
}

/// One setting: where it sits in the file and which variable sets it.
#[derive(Debug)]
pub(crate) struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub kind: Kind,
}

const fn row(key: &'static str, env: &'static str, kind: Kind) -> Setting {
    Setting { key, env, kind }
}

use Kind::*;

pub(crate) const SETTINGS: &[Setting] = &[
    row("listen", "RELAY_LISTEN", Address),
    row("metrics_listen", "RELAY_METRICS_LISTEN", Address),
    row("data_dir", "RELAY_DATA_DIR", Path),
    row("log_format", "RELAY_LOG_FORMAT", LogFormat),
    row("store.database_url", "RELAY_DATABASE_URL", DatabaseUrl),
    row("store.leader_lease", "RELAY_LEADER_LEASE", Duration),
    row("prosperstack.api_key", "PROSPERSTACK_API_KEY", Secret),
    row("prosperstack.api_url", "PROSPERSTACK_API_URL", Url),
    row(
        "prosperstack.rate_limit_requests",
        "PROSPERSTACK_RATE_LIMIT_REQUESTS",
        Count,
    ),
    row(
        "prosperstack.rate_limit_window_secs",
        "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS",
        Seconds,
    ),
    row(
        "prosperstack.request_timeout",
        "PROSPERSTACK_REQUEST_TIMEOUT",
        Duration,
    ),
    row("prosperstack.update_method", "RELAY_UPDATE_METHOD", Verb),
    row("segment.shared_secret", "SEGMENT_SHARED_SECRET", Secret),
    row("segment.ingest_token", "RELAY_INGEST_TOKEN", Secret),
    row("segment.max_body_bytes", "RELAY_MAX_BODY_BYTES", Count),
    row("mapping.snake_case_match", "RELAY_SNAKE_CASE_MATCH", Bool),
    row(
        "mapping.create_audience_properties",
        "RELAY_CREATE_AUDIENCE_PROPERTIES",
        Bool,
    ),
    row(
        "mapping.catalogue_refresh",
        "RELAY_CATALOGUE_REFRESH",
        Duration,
    ),
    row(
        "delivery.subscriber_wait",
        "RELAY_SUBSCRIBER_WAIT",
        Duration,
    ),
    row(
        "delivery.waiting_retry_min",
        "RELAY_WAITING_RETRY_MIN",
        Duration,
    ),
    row(
        "delivery.waiting_retry_max",
        "RELAY_WAITING_RETRY_MAX",
        Duration,
    ),
    row("delivery.retry_window", "RELAY_RETRY_WINDOW", Duration),
    row(
        "delivery.retry_backoff_min",
        "RELAY_RETRY_BACKOFF_MIN",
        Duration,
    ),
    row(
        "delivery.retry_backoff_max",
        "RELAY_RETRY_BACKOFF_MAX",
        Duration,
    ),
    row(
        "delivery.dedupe_retention",
        "RELAY_DEDUPE_RETENTION",
        Duration,
    ),
    row("delivery.drain_deadline", "RELAY_DRAIN_DEADLINE", Duration),
    row("delivery.coalesce_delay", "RELAY_COALESCE_DELAY", Duration),
    row(
        "delivery.subscriber_cache_ttl",
        "RELAY_SUBSCRIBER_CACHE_TTL",
        Duration,
    ),
    row(
        "delivery.negative_cache_ttl",
        "RELAY_NEGATIVE_CACHE_TTL",
        Duration,
    ),
    row(
        "delivery.progress_interval",
        "RELAY_PROGRESS_INTERVAL",
        Duration,
    ),
];

/// File tables whose keys are the operator's own (trait name → property key); file only.
pub(crate) const FREE_TABLES: &[&str] = &["trait_mappings"];

/// The setting at file key `key`.
pub(crate) fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// `key (VARIABLE)` for a setting of the table; the bare key otherwise.
pub(crate) fn name_of(key: &str) -> String {
    find(key).map_or_else(|| key.to_owned(), Setting::name)
}

/// The tables (`[prosperstack]`, ...) that hold settings.
pub(crate) fn sections() -> Vec<&'static str> {
    let mut sections: Vec<&str> = Vec::new();
    for (section, _) in SETTINGS.iter().filter_map(|s| s.key.split_once('.')) {
        if !sections.contains(&section) {
            sections.push(section);
        }
    }
    sections
}

/// The keys a file table may hold (`""`: the top level), for a message refusing another.
pub(crate) fn keys_in(section: &str) -> Vec<&'static str> {
    let mut keys: Vec<&str> = SETTINGS
        .iter()
        .filter_map(|s| match s.key.rsplit_once('.') {
            Some((within, leaf)) if within == section => Some(leaf),
            None if section.is_empty() => Some(s.key),
            _ => None,
        })
        .collect();
    if section.is_empty() {
        keys.extend(sections());
        keys.extend(FREE_TABLES);
    }
    keys
}

impl Setting {
    /// `key (VARIABLE)`: how every message names the setting.
    pub fn name(&self) -> String {
        self.name_via(self.env)
    }

    /// The setting named by the variable its value actually came from (e.g. a `_FILE` one).
    pub fn name_via(&self, variable: &str) -> String {
        format!("{} ({variable})", self.key)
    }

    /// The variable naming a file that holds the value (Kubernetes and Docker secrets).
    pub fn file_variable(&self) -> Option<String> {
        matches!(self.kind, Secret | DatabaseUrl).then(|| format!("{}_FILE", self.env))
    }
}

/// A refused value as the operator wrote it, for the message.
pub(crate) enum Given {
    /// Text (an environment value, a TOML string): quoted back.
    Text(String),
    /// Any other TOML value, as TOML writes it.
    Value(String),
    /// Not to be shown.
    Hidden,
}

impl Given {
    pub fn of(value: &toml::Value) -> Given {
        match value {
            toml::Value::String(s) => Given::Text(s.clone()),
            other => Given::Value(other.to_string()),
        }
    }
}

impl Kind {
    /// What a good value is, for "… is not …".
    fn what(self) -> &'static str {
        match self {
            Address => "an address like 0.0.0.0:8080",
            Url => "an http or https URL with a host",
            Path => "a path",
            LogFormat => "text or json",
            Secret => "usable",
            Count => "a whole number",
            Seconds => "a number of seconds",
            Bool => "true or false",
            Duration => "a duration like 20s, 5m, 24h, 7d",
            Verb => "PUT or PATCH",
            DatabaseUrl => "a PostgreSQL URL",
        }
    }

    /// An environment value as the TOML value the file would hold, so that file and
    /// environment go through one deserialisation.
    pub fn to_toml(self, raw: &str) -> Result<toml::Value, String> {
        let text = raw.trim();
        let refuse = |detail: String| self.refusal(&Given::Text(raw.to_owned()), &detail);
        match self {
            Count => text
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|e| refuse(e.to_string())),
            Seconds => text
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|e| refuse(e.to_string())),
            Bool => match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
                "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
                _ => Err(refuse(
                    "the environment also takes 1/0, yes/no and on/off".into(),
                )),
            },
            // A secret is taken byte for byte: trimming could turn a wrong one into a right one.
            Secret | DatabaseUrl => Ok(toml::Value::String(raw.to_owned())),
            Address | Url | Path | LogFormat | Duration | Verb => {
                Ok(toml::Value::String(text.to_owned()))
            }
        }
    }

    /// The message for a value of this kind that was refused, with the reason (`detail`).
    /// A secret is never quoted back.
    pub fn refusal(self, given: &Given, detail: &str) -> String {
        let shown = match (self, given) {
            (Secret, _) | (_, Given::Hidden) => return detail.to_owned(),
            (DatabaseUrl, _) => return format!("not a PostgreSQL URL ({detail})"),
            (_, Given::Text(text)) => format!("{text:?}"),
            (_, Given::Value(value)) => value.clone(),
        };
        // humantime's own reason ("unknown time unit \"x\"") says more than serde's summary.
        let detail = match (self, given) {
            (Duration, Given::Text(text)) => humantime::parse_duration(text.trim())
                .err()
                .map_or_else(|| detail.to_owned(), |e| e.to_string()),
            _ => detail.to_owned(),
        };
        format!("{shown} is not {} ({detail})", self.what())
    }
}
