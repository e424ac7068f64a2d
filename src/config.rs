//! Configuration: defaults, then the TOML file (`--config` / `RELAY_CONFIG`), then the
//! environment; parsed once at start-up into typed [`Settings`].
//!
//! In: an optional file path and an environment (injected, so tests need not touch the process).
//! Out: [`Settings`] or a [`ConfigError`] that names the one setting that is wrong.
//! Stays true: unknown TOML keys are refused; secrets are wrapped in [`Secret`], whose `Debug`
//! never prints them; every setting has an environment name (table in the README and
//! `config/relay.example.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::prosperstack::ApiKey;

/// A secret string (shared secret, ingest token). `Debug` prints only that it is set.
#[derive(Clone, PartialEq, Eq)]
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

/// A configuration problem, naming the setting (file key and environment variable).
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    fn new(setting: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the relay needs, parsed and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub api_key: ApiKey,
    pub api_url: Url,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub shared_secret: Option<Secret>,
    pub ingest_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub request_timeout: Duration,
    pub snake_case_match: bool,
    pub create_audience_properties: bool,
    pub trait_mappings: BTreeMap<String, String>,
    pub subscriber_wait: Duration,
    pub waiting_retry_min: Duration,
    pub waiting_retry_max: Duration,
    pub retry_window: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub dedupe_retention: Duration,
    pub drain_deadline: Duration,
    pub coalesce_delay: Duration,
    pub catalogue_refresh: Duration,
    pub subscriber_cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
}

/// The file's shape. Every field optional: the file only overrides defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    data_dir: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    prosperstack: ProsperStackFile,
    #[serde(default)]
    segment: SegmentFile,
    #[serde(default)]
    mapping: MappingFile,
    #[serde(default)]
    delivery: DeliveryFile,
    #[serde(default)]
    trait_mappings: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProsperStackFile {
    api_key: Option<String>,
    api_url: Option<String>,
    rate_limit_requests: Option<u32>,
    rate_limit_window_secs: Option<f64>,
    request_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    shared_secret: Option<String>,
    ingest_token: Option<String>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    snake_case_match: Option<bool>,
    create_audience_properties: Option<bool>,
    catalogue_refresh: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    subscriber_wait: Option<String>,
    waiting_retry_min: Option<String>,
    waiting_retry_max: Option<String>,
    retry_window: Option<String>,
    retry_backoff_min: Option<String>,
    retry_backoff_max: Option<String>,
    dedupe_retention: Option<String>,
    drain_deadline: Option<String>,
    coalesce_delay: Option<String>,
    subscriber_cache_ttl: Option<String>,
    negative_cache_ttl: Option<String>,
}

/// Reads an environment variable; injected so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for `main`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One setting's raw text from the environment (winning) or the file, with its name for errors.
struct Lookup<'a> {
    env: Env<'a>,
}

impl Lookup<'_> {
    /// `env` wins over `file`; a `NAME_FILE` variable names a file holding the value (secrets
    /// mounted by Kubernetes or Docker).
    fn text(
        &self,
        env_name: &str,
        file: Option<String>,
        with_file_variant: bool,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(v) = (self.env)(env_name) {
            return Ok(Some(v));
        }
        if with_file_variant {
            let file_var = format!("{env_name}_FILE");
            if let Some(path) = (self.env)(&file_var) {
                let content = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::new(&file_var, format!("cannot read {path}: {e}")))?;
                return Ok(Some(content.trim_end_matches(['\r', '\n']).to_owned()));
            }
        }
        Ok(file)
    }
}

fn setting_name(key: &str, env: &str) -> String {
    format!("{key} ({env})")
}

fn parse_duration(
    name: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            ConfigError::new(
                name,
                format!("{t:?} is not a duration like 20s, 5m, 24h, 7d ({e})"),
            )
        }),
    }
}

fn parse_from_str<T: std::str::FromStr>(
    name: &str,
    text: Option<String>,
    default: T,
    what: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match text {
        None => Ok(default),
        Some(t) => t
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(name, format!("{t:?} is not {what} ({e})"))),
    }
}

fn parse_bool(name: &str, text: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match text.as_deref().map(|t| t.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(t) if ["true", "1", "yes", "on"].contains(&t.as_str()) => Ok(true),
        Some(t) if ["false", "0", "no", "off"].contains(&t.as_str()) => Ok(false),
        Some(t) => Err(ConfigError::new(
            name,
            format!("{t:?} is not true or false"),
        )),
    }
}

impl Settings {
    /// Loads settings: defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>, env: Env<'_>) -> Result<Settings, ConfigError> {
        let file_config = match file {
            None => FileConfig::default(),
            Some(path) => read_file(path)?,
        };
        Self::build(file_config, env)
    }

    fn build(f: FileConfig, env: Env<'_>) -> Result<Settings, ConfigError> {
        let l = Lookup { env };
        let ps = f.prosperstack;
        let seg = f.segment;
        let map = f.mapping;
        let del = f.delivery;

        let name = setting_name("prosperstack.api_key", "PROSPERSTACK_API_KEY");
        let api_key_text = l
            .text("PROSPERSTACK_API_KEY", ps.api_key, true)?
            .ok_or_else(|| {
                ConfigError::new(
                    &name,
                    "required (a ProsperStack API key, key_… or key_test_…)",
                )
            })?;
        let api_key = ApiKey::parse(api_key_text.trim())
            .map_err(|e| ConfigError::new(&name, e.to_string()))?;

        let name = setting_name("prosperstack.api_url", "PROSPERSTACK_API_URL");
        let api_url = l
            .text("PROSPERSTACK_API_URL", ps.api_url, false)?
            .unwrap_or_else(|| "https://api.prosperstack.com".into());
        let api_url = parse_url(&name, &api_url)?;

        let name = setting_name("listen", "RELAY_LISTEN");
        let listen = parse_from_str(
            &name,
            l.text("RELAY_LISTEN", f.listen, false)?,
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            "an address like 0.0.0.0:8080",
        )?;
        let name = setting_name("metrics_listen", "RELAY_METRICS_LISTEN");
        let metrics_listen = match l.text("RELAY_METRICS_LISTEN", f.metrics_listen, false)? {
            None => None,
            Some(t) => Some(parse_from_str(
                &name,
                Some(t),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                "an address like 0.0.0.0:9090",
            )?),
        };
        let data_dir = PathBuf::from(
            l.text("RELAY_DATA_DIR", f.data_dir, false)?
                .unwrap_or_else(|| "./data".into()),
        );
        let name = setting_name("log_format", "RELAY_LOG_FORMAT");
        let log_format = match l
            .text("RELAY_LOG_FORMAT", f.log_format, false)?
            .as_deref()
            .map(str::trim)
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    &name,
                    format!("{other:?} is not json or text"),
                ))
            }
        };

        let shared_secret = l
            .text("SEGMENT_SHARED_SECRET", seg.shared_secret, true)?
            .filter(|s| !s.is_empty())
            .map(Secret);
        let ingest_token = l
            .text("RELAY_INGEST_TOKEN", seg.ingest_token, true)?
            .filter(|s| !s.is_empty())
            .map(Secret);
        let name = setting_name("segment.max_body_bytes", "RELAY_MAX_BODY_BYTES");
        let max_body_bytes = parse_from_str(
            &name,
            l.text(
                "RELAY_MAX_BODY_BYTES",
                seg.max_body_bytes.map(|n| n.to_string()),
                false,
            )?,
            5 * 1024 * 1024,
            "a number of bytes",
        )?;
        if max_body_bytes < 1024 {
            return Err(ConfigError::new(&name, "must be at least 1024"));
        }

        let name = setting_name(
            "prosperstack.rate_limit_requests",
            "PROSPERSTACK_RATE_LIMIT_REQUESTS",
        );
        let rate_limit_requests: u32 = parse_from_str(
            &name,
            l.text(
                "PROSPERSTACK_RATE_LIMIT_REQUESTS",
                ps.rate_limit_requests.map(|n| n.to_string()),
                false,
            )?,
            100,
            "a whole number",
        )?;
        if rate_limit_requests == 0 {
            return Err(ConfigError::new(&name, "must be at least 1"));
        }
        let name = setting_name(
            "prosperstack.rate_limit_window_secs",
            "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS",
        );
        let window_text = l.text(
            "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS",
            ps.rate_limit_window_secs.map(|n| n.to_string()),
            false,
        )?;
        let window_secs: f64 = parse_from_str(&name, window_text, 60.0, "a number of seconds")?;
        if !(window_secs.is_finite() && window_secs > 0.0) {
            return Err(ConfigError::new(&name, "must be more than 0"));
        }
        let rate_limit_window = Duration::from_secs_f64(window_secs);
        let request_timeout = parse_duration(
            &setting_name(
                "prosperstack.request_timeout",
                "PROSPERSTACK_REQUEST_TIMEOUT",
            ),
            l.text("PROSPERSTACK_REQUEST_TIMEOUT", ps.request_timeout, false)?,
            Duration::from_secs(10),
        )?;

        let snake_case_match = parse_bool(
            &setting_name("mapping.snake_case_match", "RELAY_SNAKE_CASE_MATCH"),
            l.text(
                "RELAY_SNAKE_CASE_MATCH",
                map.snake_case_match.map(|b| b.to_string()),
                false,
            )?,
            true,
        )?;
        let create_audience_properties = parse_bool(
            &setting_name(
                "mapping.create_audience_properties",
                "RELAY_CREATE_AUDIENCE_PROPERTIES",
            ),
            l.text(
                "RELAY_CREATE_AUDIENCE_PROPERTIES",
                map.create_audience_properties.map(|b| b.to_string()),
                false,
            )?,
            false,
        )?;
        let catalogue_refresh = duration_setting(
            &l,
            "mapping.catalogue_refresh",
            "RELAY_CATALOGUE_REFRESH",
            map.catalogue_refresh,
            300,
        )?;

        let settings = Settings {
            api_key,
            api_url,
            listen,
            metrics_listen,
            data_dir,
            log_format,
            shared_secret,
            ingest_token,
            max_body_bytes,
            rate_limit_requests,
            rate_limit_window,
            request_timeout,
            snake_case_match,
            create_audience_properties,
            trait_mappings: f.trait_mappings,
            subscriber_wait: duration_setting(
                &l,
                "delivery.subscriber_wait",
                "RELAY_SUBSCRIBER_WAIT",
                del.subscriber_wait,
                24 * 3600,
            )?,
            waiting_retry_min: duration_setting(
                &l,
                "delivery.waiting_retry_min",
                "RELAY_WAITING_RETRY_MIN",
                del.waiting_retry_min,
                60,
            )?,
            waiting_retry_max: duration_setting(
                &l,
                "delivery.waiting_retry_max",
                "RELAY_WAITING_RETRY_MAX",
                del.waiting_retry_max,
                3600,
            )?,
            retry_window: duration_setting(
                &l,
                "delivery.retry_window",
                "RELAY_RETRY_WINDOW",
                del.retry_window,
                24 * 3600,
            )?,
            retry_backoff_min: duration_setting(
                &l,
                "delivery.retry_backoff_min",
                "RELAY_RETRY_BACKOFF_MIN",
                del.retry_backoff_min,
                1,
            )?,
            retry_backoff_max: duration_setting(
                &l,
                "delivery.retry_backoff_max",
                "RELAY_RETRY_BACKOFF_MAX",
                del.retry_backoff_max,
                600,
            )?,
            dedupe_retention: duration_setting(
                &l,
                "delivery.dedupe_retention",
                "RELAY_DEDUPE_RETENTION",
                del.dedupe_retention,
                7 * 24 * 3600,
            )?,
            drain_deadline: duration_setting(
                &l,
                "delivery.drain_deadline",
                "RELAY_DRAIN_DEADLINE",
                del.drain_deadline,
                20,
            )?,
            coalesce_delay: parse_duration(
                &setting_name("delivery.coalesce_delay", "RELAY_COALESCE_DELAY"),
                l.text("RELAY_COALESCE_DELAY", del.coalesce_delay, false)?,
                Duration::from_millis(500),
            )?,
            catalogue_refresh,
            subscriber_cache_ttl: duration_setting(
                &l,
                "delivery.subscriber_cache_ttl",
                "RELAY_SUBSCRIBER_CACHE_TTL",
                del.subscriber_cache_ttl,
                3600,
            )?,
            negative_cache_ttl: duration_setting(
                &l,
                "delivery.negative_cache_ttl",
                "RELAY_NEGATIVE_CACHE_TTL",
                del.negative_cache_ttl,
                60,
            )?,
        };
        settings.check_trait_mappings()?;
        Ok(settings)
    }

    fn check_trait_mappings(&self) -> Result<(), ConfigError> {
        for (name, key) in &self.trait_mappings {
            if name.is_empty() || key.trim().is_empty() {
                return Err(ConfigError::new(
                    "trait_mappings",
                    format!("{name:?} = {key:?}: trait names and property keys must not be empty"),
                ));
            }
        }
        if self.retry_backoff_min > self.retry_backoff_max || self.retry_backoff_min.is_zero() {
            return Err(ConfigError::new(
                "delivery.retry_backoff_min (RELAY_RETRY_BACKOFF_MIN)",
                "must be more than 0 and not more than delivery.retry_backoff_max",
            ));
        }
        if self.waiting_retry_min > self.waiting_retry_max {
            return Err(ConfigError::new(
                "delivery.waiting_retry_min (RELAY_WAITING_RETRY_MIN)",
                "must not be more than delivery.waiting_retry_max",
            ));
        }
        Ok(())
    }
}

fn duration_setting(
    l: &Lookup<'_>,
    key: &str,
    env: &str,
    file: Option<String>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    parse_duration(
        &setting_name(key, env),
        l.text(env, file, false)?,
        Duration::from_secs(default_secs),
    )
}

/// A URL for logs and messages: any user name or password in it is left out.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn parse_url(name: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| ConfigError::new(name, format!("{text:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            name,
            format!("{text:?} must be an http or https URL with a host"),
        ));
    }
    Ok(url)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let setting = format!("config file {} (--config / RELAY_CONFIG)", path.display());
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(&setting, e.to_string()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines with a caret diagram; one line is what start-up prints.
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let place = e
            .span()
            .map(|s| {
                format!(
                    " (at line {})",
                    text[..s.start.min(text.len())].matches('\n').count() + 1
                )
            })
            .unwrap_or_default();
        ConfigError::new(&setting, format!("{message}{place}"))
    })
}

#[cfg(test)]
mod tests;
