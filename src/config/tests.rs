use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::table::{self, Kind, SETTINGS};
use super::*;
use crate::prosperstack::ApiKey;

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

/// Loads from the environment `pairs` plus an API key.
fn with_key(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let mut all = vec![("PROSPERSTACK_API_KEY", "key_abc")];
    all.extend_from_slice(pairs);
    Settings::load(None, &env_of(&all))
}

fn refusal(pairs: &[(&str, &str)]) -> String {
    match with_key(pairs) {
        Ok(_) => panic!("{pairs:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// `key = value` in its own table, as a config file would hold it.
fn file_line(key: &str, value: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, leaf)) => format!("[{section}]\n{leaf} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

// ---- defaults, file, environment ----

/// With only the API key set, every other setting takes the documented default.
#[test]
fn defaults() {
    let s = with_key(&[]).unwrap();
    let ps = &s.prosperstack;
    assert_eq!(ps.api_key.as_ref().map(ApiKey::expose), Some("key_abc"));
    assert_eq!(ps.api_url.as_str(), "https://api.prosperstack.com/");
    assert_eq!(
        (ps.rate_limit_requests, ps.rate_limit_window),
        (100, Duration::from_secs(60))
    );
    assert_eq!(ps.request_timeout, Duration::from_secs(10));
    assert_eq!(ps.update_method, crate::prosperstack::UpdateMethod::Put);
    assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(s.metrics_listen, None);
    assert_eq!(s.data_dir, PathBuf::from("./data"));
    assert_eq!(s.log_format, LogFormat::Text);
    assert!(s.segment.shared_secret.is_none() && s.segment.ingest_token.is_none());
    assert_eq!(s.segment.max_body_bytes, 5 * 1024 * 1024);
    assert!(s.mapping.snake_case_match && !s.mapping.create_audience_properties);
    assert_eq!(s.mapping.catalogue_refresh, Duration::from_secs(300));
    let d = &s.delivery;
    assert_eq!(d.subscriber_wait, Duration::from_secs(86_400));
    assert_eq!(
        (d.waiting_retry_min, d.waiting_retry_max),
        (Duration::from_secs(60), Duration::from_secs(3600))
    );
    assert_eq!(d.retry_window, Duration::from_secs(86_400));
    assert_eq!(
        (d.retry_backoff_min, d.retry_backoff_max),
        (Duration::from_secs(1), Duration::from_secs(600))
    );
    assert_eq!(d.dedupe_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(d.drain_deadline, Duration::from_secs(20));
    assert_eq!(d.coalesce_delay, Duration::from_millis(500));
    assert_eq!(
        (d.subscriber_cache_ttl, d.negative_cache_ttl),
        (Duration::from_secs(3600), Duration::from_secs(60))
    );
    assert!(s.trait_mappings.is_empty());
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
coalesce_delay = "1s"
[trait_mappings]
"Last contacted" = "last_contacted"
"#,
    );
    let env = env_of(&[
        ("RELAY_LISTEN", "127.0.0.1:9100"),
        ("RELAY_COALESCE_DELAY", "250ms"),
    ]);
    let s = Settings::load(Some(f.path()), &env).unwrap();
    assert_eq!(
        s.prosperstack.api_key.as_ref().map(ApiKey::expose),
        Some("key_test_file")
    );
    assert_eq!(s.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(s.prosperstack.rate_limit_requests, 50);
    assert!(!s.mapping.snake_case_match);
    assert_eq!(s.delivery.subscriber_wait, Duration::from_secs(7200));
    assert_eq!(s.delivery.coalesce_delay, Duration::from_millis(250));
    assert_eq!(
        s.trait_mappings.get("Last contacted").map(String::as_str),
        Some("last_contacted")
    );
}

/// An empty variable counts as unset: the file's value (or the default) stays.
#[test]
fn empty_env_values_are_unset() {
    let f = toml_file("listen = \"127.0.0.1:9000\"\n");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY", "key_abc"),
        ("RELAY_LISTEN", ""),
        ("RELAY_RETRY_WINDOW", "  "),
        ("SEGMENT_SHARED_SECRET", ""),
    ]);
    let s = Settings::load(Some(f.path()), &env).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(s.delivery.retry_window, Duration::from_secs(86_400));
    assert!(s.segment.shared_secret.is_none());
}

/// Booleans from the environment take true/false, 1/0, yes/no, on/off in any case.
#[test]
fn boolean_forms() {
    for (text, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("On", true),
        ("false", false),
        ("0", false),
        ("no", false),
        ("off", false),
    ] {
        let s = with_key(&[("RELAY_CREATE_AUDIENCE_PROPERTIES", text)]).unwrap();
        assert_eq!(s.mapping.create_audience_properties, expected, "{text}");
    }
}

/// Durations are written 500ms, 20s, 5m, 24h, 7d.
#[test]
fn duration_forms() {
    for (text, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("20s", Duration::from_secs(20)),
        ("5m", Duration::from_secs(300)),
        ("24h", Duration::from_secs(86_400)),
        ("7d", Duration::from_secs(7 * 86_400)),
    ] {
        let s = with_key(&[("RELAY_DEDUPE_RETENTION", text)]).unwrap();
        assert_eq!(s.delivery.dedupe_retention, expected, "{text}");
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
    assert_eq!(
        s.prosperstack.rate_limit_window,
        Duration::from_millis(2500)
    );
}

/// Scaled rate-limit windows (fractions of a second) are accepted for tests and benchmarks.
#[test]
fn fractional_window() {
    let s = with_key(&[("PROSPERSTACK_RATE_LIMIT_WINDOW_SECS", "0.5")]).unwrap();
    assert_eq!(s.prosperstack.rate_limit_window, Duration::from_millis(500));
}

// ---- secrets ----

/// A missing key stops start-up naming the setting.
#[test]
fn missing_key_names_setting() {
    let e = Settings::load(None, &env_of(&[])).unwrap_err().to_string();
    assert!(
        e.contains("prosperstack.api_key (PROSPERSTACK_API_KEY)"),
        "{e}"
    );
}

/// A key without the key_/key_test_ prefix is refused, and not quoted back.
#[test]
fn bad_key_prefix() {
    let e = Settings::load(None, &env_of(&[("PROSPERSTACK_API_KEY", "sk_live_123")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prosperstack.api_key"), "{e}");
    assert!(!e.contains("sk_live_123"), "{e}");
}

/// Write keys: comma-separated in the variable, one a line in a `_FILE`, a list in the file;
/// never printed.
#[test]
fn write_keys_from_env_file_and_list() {
    let base = ("PROSPERSTACK_API_KEY", "key_abc");
    let s = Settings::load(None, &env_of(&[base, ("RELAY_WRITE_KEYS", "wk_a, wk_b")])).unwrap();
    assert_eq!(s.segment.write_keys.len(), 2);
    let file = toml_file("wk_one\nwk_two\r\nwk_three\n");
    let path = file.path().to_str().unwrap();
    let s = Settings::load(None, &env_of(&[base, ("RELAY_WRITE_KEYS_FILE", path)])).unwrap();
    assert_eq!(s.segment.write_keys.len(), 3);
    let debug = format!("{s:?}");
    assert!(
        !debug.contains("wk_one") && !debug.contains("wk_three"),
        "{debug}"
    );
    let listed = toml_file("[segment]\nwrite_keys = [\"wk_x\", \"wk_y\"]\n");
    let s = Settings::load(Some(listed.path()), &env_of(&[base])).unwrap();
    assert_eq!(s.segment.write_keys.len(), 2);
}

/// Secrets can come from files named by *_FILE variables, and never print in Debug.
#[test]
fn secrets_from_files() {
    let key = toml_file("key_test_fromfile\n");
    let secret = toml_file("s3cret\n");
    let token = toml_file("t0ken\r\n");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY_FILE", key.path().to_str().unwrap()),
        (
            "SEGMENT_SHARED_SECRET_FILE",
            secret.path().to_str().unwrap(),
        ),
        ("RELAY_INGEST_TOKEN_FILE", token.path().to_str().unwrap()),
    ]);
    let s = Settings::load(None, &env).unwrap();
    assert_eq!(
        s.prosperstack.api_key.as_ref().map(ApiKey::expose),
        Some("key_test_fromfile")
    );
    let seg = &s.segment;
    assert_eq!(
        seg.shared_secret.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(seg.ingest_token.as_ref().map(Secret::expose), Some("t0ken"));
    let debug = format!("{s:?}");
    for secret in ["s3cret", "t0ken", "key_test_fromfile"] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

/// The variable itself wins over its `_FILE`; an unreadable `_FILE` is named with its key.
#[test]
fn secret_variable_wins_and_unreadable_file_is_named() {
    let key = toml_file("key_test_fromfile\n");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY", "key_test_direct"),
        ("PROSPERSTACK_API_KEY_FILE", key.path().to_str().unwrap()),
    ]);
    let s = Settings::load(None, &env).unwrap();
    assert_eq!(
        s.prosperstack.api_key.as_ref().map(ApiKey::expose),
        Some("key_test_direct")
    );
    let e = refusal(&[("SEGMENT_SHARED_SECRET_FILE", "/no/such/file")]);
    assert!(
        e.contains("segment.shared_secret (SEGMENT_SHARED_SECRET_FILE)")
            && e.contains("/no/such/file"),
        "{e}"
    );
}

/// Tools that need no secrets load without them: no key needed, and a broken or unreadable
/// one is not even read.
#[test]
fn load_without_secrets_ignores_them() {
    let f = toml_file("listen = \"127.0.0.1:9000\"\n[prosperstack]\napi_key = \"bad\"\n");
    let env = env_of(&[
        ("PROSPERSTACK_API_KEY_FILE", "/no/such/file"),
        ("SEGMENT_SHARED_SECRET", "s3cret"),
        ("RELAY_DATA_DIR", "/srv/relay"),
    ]);
    let s = Settings::load_without_secrets(Some(f.path()), &env).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(s.data_dir, PathBuf::from("/srv/relay"));
    assert!(s.prosperstack.api_key.is_none() && s.segment.shared_secret.is_none());
    // Other settings are still checked.
    let bad = env_of(&[("RELAY_RETRY_WINDOW", "soon")]);
    assert!(Settings::load_without_secrets(None, &bad).is_err());
}

// ---- refusals name the setting ----

/// A bad value of every kind, from the environment, is refused in one line naming the file
/// key and the variable, quoting the value (never a secret's).
#[test]
fn bad_env_values_name_key_and_variable() {
    for setting in SETTINGS.iter().filter(|s| can_be_bad(s)) {
        let e = if setting.key == "prosperstack.api_key" {
            Settings::load(None, &env_of(&[(setting.env, "nope")]))
                .unwrap_err()
                .to_string()
        } else {
            refusal(&[(setting.env, "nope")])
        };
        let name = format!("{} ({})", setting.key, setting.env);
        assert!(e.contains(&name), "{name}: {e}");
        assert!(!e.contains('\n'), "{e}");
        let quoted = e.contains("\"nope\"");
        let hidden = matches!(setting.kind, Kind::Secret | Kind::DatabaseUrl);
        assert_eq!(quoted, !hidden, "{e}");
    }
}

/// A bad value of every kind, from the file, is refused naming the file key, the variable and
/// the line.
#[test]
fn bad_file_values_name_key_variable_and_line() {
    for setting in SETTINGS.iter().filter(|s| can_be_bad(s)) {
        let f = toml_file(&format!(
            "# a comment\n{}",
            file_line(setting.key, "\"nope\"")
        ));
        let env: &[(&str, &str)] = match setting.key {
            "prosperstack.api_key" => &[],
            _ => &[("PROSPERSTACK_API_KEY", "key_abc")],
        };
        let e = Settings::load(Some(f.path()), &env_of(env))
            .unwrap_err()
            .to_string();
        let name = format!("{} ({})", setting.key, setting.env);
        let line = if setting.key.contains('.') { 3 } else { 2 };
        assert!(e.contains(&name), "{name}: {e}");
        assert!(e.contains(&format!("line {line}")), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// Paths and the optional secrets accept any text; every other kind can be wrong.
fn can_be_bad(setting: &table::Setting) -> bool {
    match setting.kind {
        Kind::Path | Kind::Text => false,
        Kind::Secret => setting.key == "prosperstack.api_key",
        _ => true,
    }
}

/// The issue's example: a duration's message says what a duration looks like.
#[test]
fn bad_duration_reads_well() {
    let e = refusal(&[("RELAY_RETRY_WINDOW", "soon")]);
    assert!(
        e.starts_with(
            "configuration error: delivery.retry_window (RELAY_RETRY_WINDOW): \"soon\" is not a \
             duration like 20s, 5m, 24h, 7d ("
        ),
        "{e}"
    );
}

/// An unparsable URL is refused naming PROSPERSTACK_API_URL, and so is one that is not http.
#[test]
fn bad_url() {
    for url in ["not a url", "ftp://x", "http://"] {
        let e = refusal(&[("PROSPERSTACK_API_URL", url)]);
        assert!(e.contains("PROSPERSTACK_API_URL"), "{url}: {e}");
    }
}

/// An unknown key in the file is refused, with the key and line in one line of text.
#[test]
fn unknown_toml_key() {
    let f = toml_file("[prosperstack]\napi_key = \"key_x\"\nrate_limit = 5\n");
    let e = Settings::load(Some(f.path()), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prosperstack.rate_limit"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(
        e.contains("rate_limit_requests"),
        "names what is allowed: {e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

/// Unknown tables and top-level keys are refused too, also by tools that skip secrets.
#[test]
fn unknown_tables_and_top_level_keys() {
    for (text, unknown) in [
        (
            "listen = \"127.0.0.1:1\"\nbogus_setting = 1\n",
            "bogus_setting",
        ),
        ("[metrics]\nlisten = \"127.0.0.1:1\"\n", "metrics"),
        ("[delivery]\nlisten = \"127.0.0.1:1\"\n", "delivery.listen"),
    ] {
        let f = toml_file(text);
        let e = Settings::load_without_secrets(Some(f.path()), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("unknown key {unknown}")), "{e}");
        assert!(e.contains("RELAY_CONFIG"), "{e}");
    }
}

/// A TOML syntax error is one line naming the file.
#[test]
fn syntax_error_is_one_line() {
    let f = toml_file("listen = \n");
    let e = with_file(&f).unwrap_err().to_string();
    assert!(e.contains("RELAY_CONFIG") && e.contains("line 1"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

fn with_file(f: &tempfile::NamedTempFile) -> Result<Settings, ConfigError> {
    Settings::load(
        Some(f.path()),
        &env_of(&[("PROSPERSTACK_API_KEY", "key_abc")]),
    )
}

// ---- ranges ----

/// Values of the right type but out of range are refused, each naming its setting; the
/// edges are accepted.
#[test]
fn ranges() {
    const BODY: &str = "RELAY_MAX_BODY_BYTES";
    const REQUESTS: &str = "PROSPERSTACK_RATE_LIMIT_REQUESTS";
    const WINDOW: &str = "PROSPERSTACK_RATE_LIMIT_WINDOW_SECS";
    const BACKOFF: &str = "RELAY_RETRY_BACKOFF_MIN";
    const WAITING: &str = "RELAY_WAITING_RETRY_MIN";
    let refused = [
        (BODY, "1023"),
        (BODY, "-1"),
        (REQUESTS, "0"),
        (REQUESTS, "-1"),
        (WINDOW, "0"),
        (WINDOW, "-1"),
        (WINDOW, "inf"),
        (WINDOW, "NaN"),
        (BACKOFF, "0s"),
        (BACKOFF, "11m"),
        (WAITING, "2h"),
    ];
    for (var, value) in refused {
        let e = refusal(&[(var, value)]);
        assert!(e.contains(var), "{var}={value}: {e}");
    }
    let e = refusal(&[(BACKOFF, "2s"), ("RELAY_RETRY_BACKOFF_MAX", "1s")]);
    assert!(e.contains(BACKOFF), "{e}");
    let edges = [
        (BODY, "1024"),
        (REQUESTS, "1"),
        (WINDOW, "0.001"),
        (BACKOFF, "10m"),
        (WAITING, "1h"),
    ];
    for (var, value) in edges {
        assert!(with_key(&[(var, value)]).is_ok(), "{var}={value}");
    }
}

/// A trait mapping needs a trait name and a property key.
#[test]
fn empty_trait_mapping_is_refused() {
    let f = toml_file("[trait_mappings]\n\"Nickname\" = \" \"\n");
    let e = with_file(&f).unwrap_err().to_string();
    assert!(
        e.contains("trait_mappings") && e.contains("Nickname"),
        "{e}"
    );
}

/// `/metrics` may not take the main listener's port (port 0 picks a free one each time).
#[test]
fn metrics_listen_must_not_be_listen() {
    for (listen, metrics) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
    ] {
        let e = refusal(&[("RELAY_LISTEN", listen), ("RELAY_METRICS_LISTEN", metrics)]);
        assert!(
            e.contains("metrics_listen (RELAY_METRICS_LISTEN)") && e.contains("RELAY_LISTEN"),
            "{e}"
        );
    }
    for (listen, metrics) in [
        ("127.0.0.1:8080", "127.0.0.1:9090"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
    ] {
        let ok = with_key(&[("RELAY_LISTEN", listen), ("RELAY_METRICS_LISTEN", metrics)]);
        assert!(ok.is_ok(), "{listen} {metrics}");
    }
}

// ---- what start-up needs of the machine ----

/// A missing data directory is created, and the check leaves nothing in it.
#[test]
fn missing_data_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let s = Settings {
        data_dir: dir.clone(),
        ..Settings::default()
    };
    s.check_can_start().unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// A data directory that cannot be created is refused naming the setting, the path and the user.
#[test]
fn uncreatable_data_dir_is_refused() {
    let file = toml_file("");
    let dir = file.path().join("data");
    let s = Settings {
        data_dir: dir.clone(),
        ..Settings::default()
    };
    let e = s.check_can_start().unwrap_err().to_string();
    assert!(e.contains("data_dir (RELAY_DATA_DIR)"), "{e}");
    assert!(e.contains(&dir.display().to_string()), "{e}");
    assert!(e.contains("uid") && e.contains("needs write access"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// A refused data directory says what to change: the access, or the setting.
#[test]
fn refused_data_dir_says_what_to_change() {
    let file = toml_file("");
    let s = Settings {
        data_dir: file.path().join("data"),
        ..Settings::default()
    };
    let e = s.check_can_start().unwrap_err().to_string();
    assert!(
        e.contains("or set RELAY_DATA_DIR (or data_dir) to a directory it can write"),
        "{e}"
    );
}

/// An address that cannot be bound names the setting, the address and how to change it.
#[test]
fn cannot_listen_names_the_setting() {
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    let e = cannot_listen("listen", addr, &in_use).to_string();
    assert_eq!(
        e,
        "configuration error: listen (RELAY_LISTEN): cannot listen on 127.0.0.1:8080: another \
         process is listening there; set RELAY_LISTEN (or listen in the configuration file) to a \
         free address"
    );
    let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    let e = cannot_listen("metrics_listen", addr, &denied).to_string();
    assert!(
        e.contains("metrics_listen (RELAY_METRICS_LISTEN)") && e.contains("permission"),
        "{e}"
    );
}

/// A read-only data directory is refused naming the path and the user who needs write access.
#[cfg(unix)]
#[test]
fn unwritable_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let s = Settings {
        data_dir: dir.clone(),
        ..Settings::default()
    };
    let result = s.check_can_start();
    let root = std::fs::write(dir.join("probe"), b"").is_ok();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        eprintln!("notice: permissions do not stop this user's writes (root?); unwritable-directory assertion skipped");
        return;
    }
    let e = result.unwrap_err().to_string();
    assert!(e.contains("data_dir (RELAY_DATA_DIR)"), "{e}");
    assert!(e.contains(&dir.display().to_string()), "{e}");
    assert!(e.contains("needs write access"), "{e}");
}

/// The user is read from `/proc/self/status` (effective uid) and named from `/etc/passwd`.
#[test]
fn process_user_parsing() {
    let status = "Name:\trelay\nUid:\t1000\t65532\t65532\t65532\nGid:\t0\n";
    assert_eq!(startup::effective_uid(status), Some(65532));
    assert_eq!(startup::effective_uid("Name:\tx\n"), None);
    let passwd =
        "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n";
    assert_eq!(
        startup::user_name(passwd, 65532).as_deref(),
        Some("nonroot")
    );
    assert_eq!(startup::user_name(passwd, 7), None);
    assert!(startup::process_user().contains("uid") || !cfg!(target_os = "linux"));
}

// ---- the table holds the tree, the example file holds the table ----

/// Every row of the table can be set from the file and from the environment, to one effect.
#[test]
fn every_setting_reads_alike_from_file_and_env() {
    for setting in SETTINGS {
        let sample = match setting.kind {
            Kind::Address => "127.0.0.1:9999",
            Kind::Url => "http://relay.test/",
            Kind::Path => "/srv/relay",
            Kind::LogFormat => "json",
            Kind::Secret => "key_test_sample",
            Kind::Count => "4096",
            Kind::Seconds => "2.5",
            Kind::Bool => "false",
            Kind::Duration => "7m",
            Kind::Verb => "PATCH",
            Kind::Text => "stripe_customer_id",
            Kind::DatabaseUrl => "postgres://relay:pw@db.internal:5433/queue",
        };
        let value = setting.kind.to_toml(sample).unwrap();
        let f = toml_file(&file_line(setting.key, &value.to_string()));
        let mut env = vec![("PROSPERSTACK_API_KEY", "key_test_base")];
        if setting.key == "prosperstack.api_key" {
            env.clear();
        }
        let from_file = Settings::load(Some(f.path()), &env_of(&env))
            .unwrap_or_else(|e| panic!("{}: {e}", setting.key));
        env.push((setting.env, sample));
        let from_env =
            Settings::load(None, &env_of(&env)).unwrap_or_else(|e| panic!("{}: {e}", setting.key));
        assert_eq!(
            format!("{from_file:?}"),
            format!("{from_env:?}"),
            "{}",
            setting.key
        );
    }
}

/// Every field of the typed tree has a row in the table (a field without one could not be set).
#[test]
fn every_field_has_a_row() {
    let mut sections = table::sections();
    sections.push("");
    for section in sections {
        let text = match section {
            "" => "no_such_field = 1\n".to_owned(),
            section => format!("[{section}]\nno_such_field = 1\n"),
        };
        let value: toml::Value = toml::from_str(&text).unwrap();
        let e = value.try_into::<Settings>().unwrap_err().to_string();
        // "unknown field `x`, expected one of `a`, `b`", then a line saying where.
        let first_line = e.lines().next().unwrap_or_default();
        let expected = first_line
            .split("expected")
            .nth(1)
            .unwrap_or_else(|| panic!("{e}"));
        let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!fields.is_empty(), "{e}");
        for field in fields {
            let key = match section {
                "" => field.to_owned(),
                _ => format!("{section}.{field}"),
            };
            let known = table::find(&key).is_some()
                || (section.is_empty()
                    && (table::sections().contains(&field) || table::FREE_TABLES.contains(&field)));
            assert!(known, "{key} has no row in the settings table");
        }
    }
}

/// The example file is a valid configuration that names every setting: its variable, and its
/// key in its own table (set, or commented out); uncommented, it is still valid.
#[test]
fn example_file_documents_every_setting() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relay.example.toml");
    let s = Settings::load(Some(&path), &env_of(&[("PROSPERSTACK_API_KEY", "key_abc")])).unwrap();
    assert_eq!(s.delivery.coalesce_delay, Duration::from_millis(500));
    let text = std::fs::read_to_string(&path).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.parse::<toml::Table>().is_ok_and(|t| t.len() == 1) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let table: toml::Value = toml::from_str(&uncommented).unwrap();
    for setting in SETTINGS {
        assert!(
            text.contains(setting.env),
            "{} is not documented in the example file",
            setting.env
        );
        let found = setting
            .key
            .split('.')
            .try_fold(&table, |v, segment| v.get(segment));
        assert!(
            found.is_some(),
            "{} has no line in the example",
            setting.key
        );
    }
    let f = toml_file(&uncommented);
    Settings::load(Some(f.path()), &env_of(&[])).expect("the uncommented example is valid");
}

// ---- the store's settings ----

/// A database URL is read from the environment or a `_FILE`, and is shown (settings' Debug,
/// the store's location) and refused without its password; tools read it too.
#[test]
fn database_url_is_a_secret_the_tools_read() {
    let url = "postgres://relay:s3cret@db.internal:5433/queue";
    let s = with_key(&[("RELAY_DATABASE_URL", url)]).unwrap();
    assert_eq!(s.store.database_url.as_ref().map(Secret::expose), Some(url));
    assert!(!format!("{s:?}").contains("s3cret"));
    assert_eq!(
        s.store.location().as_deref(),
        Some("postgres://db.internal:5433/queue (user relay)")
    );
    let f = toml_file(&format!("{url}\n"));
    let path = f.path().display().to_string();
    let tools =
        Settings::load_without_secrets(None, &env_of(&[("RELAY_DATABASE_URL_FILE", &path)]))
            .unwrap();
    assert_eq!(
        tools.store.database_url.as_ref().map(Secret::expose),
        Some(url)
    );
    for bad in [
        "postgres://relay:s3cret@db/queue?sslmode=require",
        "postgres://relay:s3cret@db/queue?nosuchoption=1",
    ] {
        let e = refusal(&[("RELAY_DATABASE_URL", bad)]);
        assert!(e.contains("store.database_url (RELAY_DATABASE_URL)"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}

/// Without a database URL the store is SQLite in data_dir; the lease defaults to 10 s and
/// cannot be shorter than a renewal round trip.
#[test]
fn leader_lease_default_and_floor() {
    let s = with_key(&[]).unwrap();
    assert!(s.store.database_url.is_none());
    assert_eq!(s.store.location(), None);
    assert_eq!(s.store.leader_lease, Duration::from_secs(10));
    let e = refusal(&[("RELAY_LEADER_LEASE", "100ms")]);
    assert!(e.contains("store.leader_lease (RELAY_LEADER_LEASE)"), "{e}");
}
