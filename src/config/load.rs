//! Reading the layers: the TOML file into a table, the environment over it, then the typed tree.
//!
//! In: a file path (or none), an environment, whether to read secrets.
//! Out: [`Settings`], not yet range-checked, or a one-line [`ConfigError`].
//! Stays true: each set variable is converted by its kind and put at its file key, so file and
//! environment go through the same deserialisation; a refused value is named by its file key and
//! by the variable it came from (or, from the file, by its line).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::table::{self, Given, Kind, Setting, SETTINGS};
use super::{ConfigError, Env, Settings};

/// Whether secrets are read. Skipping them keeps their values out of the table entirely, so a
/// missing, unreadable or malformed secret cannot fail a tool that does not need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Secrets {
    Read,
    Skip,
}

/// Where a value set by a variable came from, to name it when it is refused.
enum Origin {
    Env { variable: String, raw: String },
    SecretFile { variable: String },
}

type Origins = HashMap<&'static str, Origin>;

/// Reads the file and the environment into the typed tree.
pub(super) fn read(
    path: Option<&Path>,
    env: Env<'_>,
    secrets: Secrets,
) -> Result<Settings, ConfigError> {
    let file = ConfigFile::read(path)?;
    file.refuse_unknown_keys()?;
    let mut table = file.table.clone();
    if secrets == Secrets::Skip {
        for setting in SETTINGS.iter().filter(|s| s.kind == Kind::Secret) {
            remove_at(&mut table, setting.key);
        }
    }
    let origins = overlay_env(&mut table, env, secrets)?;
    let merged = toml::Value::Table(table);
    serde_path_to_error::deserialize(merged.clone())
        .map_err(|e| refused(&e, &merged, &origins, &file))
}

/// Puts every variable that is set at its setting's file key, converted by the setting's kind.
fn overlay_env(
    table: &mut toml::Table,
    env: Env<'_>,
    secrets: Secrets,
) -> Result<Origins, ConfigError> {
    let mut origins = Origins::new();
    for setting in SETTINGS {
        if setting.kind == Kind::Secret && secrets == Secrets::Skip {
            continue;
        }
        if let Some((value, origin)) = from_env(setting, env)? {
            set_at(table, setting.key, value);
            origins.insert(setting.key, origin);
        }
    }
    Ok(origins)
}

/// The setting's value from its variable, or else (secrets) from the file its `_FILE` names.
fn from_env(setting: &Setting, env: Env<'_>) -> Result<Option<(toml::Value, Origin)>, ConfigError> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(raw) = set(setting.env) {
        let value = setting
            .kind
            .to_toml(&raw)
            .map_err(|message| ConfigError::new(setting.name(), message))?;
        let variable = setting.env.to_owned();
        return Ok(Some((value, Origin::Env { variable, raw })));
    }
    let Some(variable) = setting.file_variable() else {
        return Ok(None);
    };
    let Some(path) = set(&variable) else {
        return Ok(None);
    };
    let content = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            setting.name_via(&variable),
            format!("cannot read {path}: {e}"),
        )
    })?;
    // `echo` and Kubernetes secrets end the file with a newline that is no part of the secret.
    let value = content.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Ok(None);
    }
    let value = toml::Value::String(value.to_owned());
    Ok(Some((value, Origin::SecretFile { variable })))
}

/// Sets `value` at the dotted `key`, creating tables on the way. Where the file holds something
/// other than a table on the way, it is left alone: deserialising then names the file's mistake.
fn set_at(table: &mut toml::Table, key: &str, value: toml::Value) {
    let (parents, leaf) = key.rsplit_once('.').map_or(("", key), |(p, l)| (p, l));
    let mut current = table;
    for segment in parents.split('.').filter(|s| !s.is_empty()) {
        let entry = current
            .entry(segment)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(inner) => current = inner,
            _ => return,
        }
    }
    current.insert(leaf.to_owned(), value);
}

fn remove_at(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((section, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(section) {
                remove_at(inner, rest);
            }
        }
    }
}

fn value_at<'v>(value: &'v toml::Value, path: &[String]) -> Option<&'v toml::Value> {
    path.iter()
        .try_fold(value, |v, segment| v.get(segment.as_str()))
}

/// The message for a value the typed tree refused, naming where it came from.
fn refused(
    e: &serde_path_to_error::Error<toml::de::Error>,
    merged: &toml::Value,
    origins: &Origins,
    file: &ConfigFile,
) -> ConfigError {
    let path: Vec<String> = e.path().iter().map(ToString::to_string).collect();
    let key = path.join(".");
    let detail = one_line(e.inner().message());
    let Some(setting) = table::find(&key) else {
        // Not a setting (a section of the wrong type, a mapping that is not text): the file's.
        let at = file.line_note(&path);
        return ConfigError::new(file.setting(), format!("{key}: {detail}{at}"));
    };
    let kind = setting.kind;
    match origins.get(setting.key) {
        Some(Origin::Env { variable, raw }) => ConfigError::new(
            setting.name_via(variable),
            kind.refusal(&Given::Text(raw.clone()), &detail),
        ),
        Some(Origin::SecretFile { variable }) => ConfigError::new(
            setting.name_via(variable),
            kind.refusal(&Given::Hidden, &detail),
        ),
        None => {
            let given = value_at(merged, &path).map_or(Given::Hidden, Given::of);
            let message = format!("{}{}", kind.refusal(&given, &detail), file.place(&path));
            ConfigError::new(setting.name(), message)
        }
    }
}

/// toml's messages can span lines (with a caret diagram); start-up prints one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The configuration file as read: its table, and its path and text to point at lines.
struct ConfigFile {
    path: Option<PathBuf>,
    text: String,
    table: toml::Table,
}

impl ConfigFile {
    fn read(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        let Some(path) = path else {
            return Ok(ConfigFile {
                path: None,
                text: String::new(),
                table: toml::Table::new(),
            });
        };
        let setting = file_setting(path);
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(&setting, e.to_string()))?;
        let table = text.parse::<toml::Table>().map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (at line {})", line_at(&text, s.start)))
                .unwrap_or_default();
            ConfigError::new(&setting, format!("{}{at}", one_line(e.message())))
        })?;
        let path = Some(path.to_owned());
        Ok(ConfigFile { path, text, table })
    }

    /// How messages about the file as a whole name it.
    fn setting(&self) -> String {
        self.path.as_deref().map_or_else(String::new, file_setting)
    }

    /// Refuses the first key that is no setting, naming the keys its table may hold.
    fn refuse_unknown_keys(&self) -> Result<(), ConfigError> {
        let Some(path) = unknown_key(&self.table) else {
            return Ok(());
        };
        let within = path[..path.len() - 1].join(".");
        let table_name = if within.is_empty() {
            "the top level".to_owned()
        } else {
            format!("[{within}]")
        };
        let message = format!(
            "unknown key {}{}; {table_name} takes {}",
            path.join("."),
            self.line_note(&path),
            table::keys_in(&within).join(", ")
        );
        Err(ConfigError::new(self.setting(), message))
    }

    /// ` (at line N)`, for messages that already name the file.
    fn line_note(&self, path: &[String]) -> String {
        line_of(&self.text, path)
            .map(|n| format!(" (at line {n})"))
            .unwrap_or_default()
    }

    /// ` (config file F, line N)`, for messages that name a setting.
    fn place(&self, path: &[String]) -> String {
        match (&self.path, line_of(&self.text, path)) {
            (Some(file), Some(n)) => format!(" (config file {}, line {n})", file.display()),
            (Some(file), None) => format!(" (config file {})", file.display()),
            (None, _) => String::new(),
        }
    }
}

fn file_setting(path: &Path) -> String {
    format!("config file {} (--config / RELAY_CONFIG)", path.display())
}

/// The path (`["prosperstack", "rate_limit"]`) of the first key that is no setting.
fn unknown_key(file: &toml::Table) -> Option<Vec<String>> {
    let sections = table::sections();
    for (key, value) in file {
        if table::find(key).is_some() || table::FREE_TABLES.contains(&key.as_str()) {
            continue;
        }
        if !sections.contains(&key.as_str()) {
            return Some(vec![key.clone()]);
        }
        // A section that is not a table is left to the typed tree, which names its type.
        let toml::Value::Table(inner) = value else {
            continue;
        };
        if let Some(inner_key) = inner
            .keys()
            .find(|k| table::find(&format!("{key}.{k}")).is_none())
        {
            return Some(vec![key.clone(), inner_key.clone()]);
        }
    }
    None
}

/// The line where the key at `path` is written (the parsed table keeps no positions).
fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let (leaf, parents) = path.split_last()?;
    let mut current: &dyn toml_edit::TableLike = doc.as_table();
    for segment in parents {
        current = current.get(segment)?.as_table_like()?;
    }
    let (key, item) = current.get_key_value(leaf)?;
    let span = key.span().or_else(|| item.span())?;
    Some(line_at(text, span.start))
}

fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}
