use std::collections::HashMap;
use std::io::Write;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

/// With only the API key set, every other setting takes the documented default.
#[test]
fn defaults() {
    let s = Settings::load(None, &env_of(&[("PROSPERSTACK_API_KEY", "key_abc")])).unwrap();
    assert_eq!(s.api_url.as_str(), "https://api.prosperstack.com/");
    assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(s.data_dir, PathBuf::from("./data"));
    assert_eq!(
        (s.rate_limit_requests, s.rate_limit_window),
        (100, Duration::from_secs(60))
    );
    assert!(s.snake_case_match && !s.create_audience_properties);
    assert_eq!(s.subscriber_wait, Duration::from_secs(86_400));
    assert_eq!(s.dedupe_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(s.drain_deadline, Duration::from_secs(20));
    assert!(s.shared_secret.is_none() && s.ingest_token.is_none());
}

/// A missing key stops start-up naming the setting.
#[test]
fn missing_key_names_setting() {
    let e = Settings::load(None, &env_of(&[])).unwrap_err();
    assert!(e.to_string().contains("PROSPERSTACK_API_KEY"), "{e}");
}

/// A key without the key_/key_test_ prefix is refused.
#[test]
fn bad_key_prefix() {
    let e = Settings::load(None, &env_of(&[("PROSPERSTACK_API_KEY", "sk_live_123")])).unwrap_err();
    assert!(e.to_string().contains("prosperstack.api_key"), "{e}");
}

/// An unparsable URL is refused naming PROSPERSTACK_API_URL.
#[test]
fn bad_url() {
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY", "key_abc"),
        ("PROSPERSTACK_API_URL", "not a url"),
    ]);
    let e = Settings::load(None, &env).unwrap_err();
    assert!(e.to_string().contains("PROSPERSTACK_API_URL"), "{e}");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY", "key_abc"),
        ("PROSPERSTACK_API_URL", "ftp://x"),
    ]);
    assert!(Settings::load(None, &env).is_err());
}

/// The file sets values; the environment wins over it.
#[test]
fn file_then_env() {
    let f = toml_file(
        r#"
listen = "127.0.0.1:9000"
[prosperstack]
api_key = "key_test_file"
rate_limit_requests = 50
[mapping]
snake_case_match = false
[delivery]
subscriber_wait = "2h"
[trait_mappings]
"Last contacted" = "last_contacted"
"#,
    );
    let env = env_of(&[("RELAY_LISTEN", "127.0.0.1:9100")]);
    let s = Settings::load(Some(f.path()), &env).unwrap();
    assert_eq!(s.api_key.expose(), "key_test_file");
    assert_eq!(s.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(s.rate_limit_requests, 50);
    assert!(!s.snake_case_match);
    assert_eq!(s.subscriber_wait, Duration::from_secs(7200));
    assert_eq!(
        s.trait_mappings.get("Last contacted").map(String::as_str),
        Some("last_contacted")
    );
}

/// An unknown key in the file is refused, with the key and line in one line of text.
#[test]
fn unknown_toml_key() {
    let f = toml_file("[prosperstack]\napi_key = \"key_x\"\nrate_limit = 5\n");
    let e = Settings::load(Some(f.path()), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rate_limit"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// Secrets can come from files named by *_FILE variables, and never print in Debug.
#[test]
fn secrets_from_files() {
    let key = toml_file("key_test_fromfile\n");
    let secret = toml_file("s3cret\n");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY_FILE", key.path().to_str().unwrap()),
        (
            "SEGMENT_SHARED_SECRET_FILE",
            secret.path().to_str().unwrap(),
        ),
    ]);
    let s = Settings::load(None, &env).unwrap();
    assert_eq!(s.api_key.expose(), "key_test_fromfile");
    assert_eq!(s.shared_secret.as_ref().map(Secret::expose), Some("s3cret"));
    let debug = format!("{s:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("key_test_fromfile"),
        "{debug}"
    );
}

/// Bad numbers and durations name their setting.
#[test]
fn bad_values_name_setting() {
    for (var, value) in [
        ("PROSPERSTACK_RATE_LIMIT_REQUESTS", "0"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "-1"),
        ("RELAY_SUBSCRIBER_WAIT", "soon"),
        ("RELAY_SNAKE_CASE_MATCH", "maybe"),
        ("RELAY_LOG_FORMAT", "xml"),
    ] {
        let env = env_of(&[("PROSPERSTACK_API_KEY", "key_abc"), (var, value)]);
        let e = Settings::load(None, &env).unwrap_err().to_string();
        assert!(e.contains(var), "{var}: {e}");
    }
}

/// Scaled rate-limit windows (fractions of a second) are accepted, in the file too.
#[test]
fn fractional_window_in_file() {
    let f = toml_file("[prosperstack]\nrate_limit_window_secs = 2.5\n");
    let s = Settings::load(
        Some(f.path()),
        &env_of(&[("PROSPERSTACK_API_KEY", "key_abc")]),
    )
    .unwrap();
    assert_eq!(s.rate_limit_window, Duration::from_millis(2500));
}

/// Scaled rate-limit windows (fractions of a second) are accepted for tests and benchmarks.
#[test]
fn fractional_window() {
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY", "key_abc"),
        ("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "0.5"),
    ]);
    assert_eq!(
        Settings::load(None, &env).unwrap().rate_limit_window,
        Duration::from_millis(500)
    );
}

/// The example file documents every setting and is itself a valid configuration.
#[test]
fn example_file_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
    let s = Settings::load(Some(&path), &env_of(&[("PROSPERSTACK_API_KEY", "key_abc")])).unwrap();
    assert_eq!(s.coalesce_delay, Duration::from_millis(500));
    let text = std::fs::read_to_string(&path).unwrap();
    for env in [
        "RELAY_LISTEN",
        "RELAY_METRICS_LISTEN",
        "RELAY_DATA_DIR",
        "RELAY_LOG_FORMAT",
        "PROSPERSTACK_API_KEY",
        "PROSPERSTACK_API_URL",
        "PROSPERSTACK_RATE_LIMIT_REQUESTS",
        "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS",
        "PROSPERSTACK_REQUEST_TIMEOUT",
        "SEGMENT_SHARED_SECRET",
        "RELAY_INGEST_TOKEN",
        "RELAY_MAX_BODY_BYTES",
        "RELAY_SNAKE_CASE_MATCH",
        "RELAY_CREATE_AUDIENCE_PROPERTIES",
        "RELAY_CATALOGUE_REFRESH",
        "RELAY_SUBSCRIBER_WAIT",
        "RELAY_WAITING_RETRY_MIN",
        "RELAY_WAITING_RETRY_MAX",
        "RELAY_RETRY_WINDOW",
        "RELAY_DEDUPE_RETENTION",
        "RELAY_DRAIN_DEADLINE",
        "RELAY_COALESCE_DELAY",
        "RELAY_SUBSCRIBER_CACHE_TTL",
        "RELAY_NEGATIVE_CACHE_TTL",
    ] {
        assert!(
            text.contains(env),
            "{env} is not documented in the example file"
        );
    }
}
