//! `preview [--json] [--sandbox] [FILE|-]`: how the relay would map a Segment payload, sending
//! nothing.
//!
//! In: a payload (one event, a JSON array, or `{"batch": [...]}`: ingest's own splitting), the
//! configuration's matching rules, the property catalogue (one `GET /v1/properties` with the
//! configured key; with `--sandbox`, the built-in sandbox's demo catalogue, no network), and, if
//! the data directory holds a store, the emails it remembers for userIds (read only).
//! Out: per event, the email and where it came from, each trait's property, rule and typed
//! value (or why it is dropped or unmatched), the Engage computation, and the update's body;
//! text, or JSON with stable field names. Exit 0 when it could explain the payload; 1 when the
//! payload or the catalogue cannot be read; 2 for a configuration that cannot be used.
//! Stays true: at most one request reaches ProsperStack, and it changes nothing; the store is
//! only read; the API key never appears in what is printed.

mod explain;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{config_failure, hide_key, sandbox_data_env, upstream_client};
use crate::clock::{Clock, TokioClock};
use crate::config::{self, ConfigError, Settings};
use crate::mapping::{Catalogue, Rules};
use crate::prosperstack::Property;
use crate::store::SqliteStore;
use explain::{explain, Context, EventPreview, TraitPreview};
use prosperstack_sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Print JSON (stable field names) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Use the built-in sandbox's demo catalogue and data directory (no account, no network).
    #[arg(long)]
    pub sandbox: bool,
    /// The payload: a file, or - for standard input.
    #[arg(value_name = "FILE|-", default_value = "-")]
    pub input: String,
}

/// Everything `preview --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// Where the property catalogue came from.
    catalogue: String,
    /// Subscriber properties in it.
    properties: usize,
    /// Requests sent to ProsperStack (0 with `--sandbox`, else 1).
    requests_sent: u32,
    /// Things that limit what the preview can know.
    notes: Vec<String>,
    events: Vec<EventPreview>,
}

/// The catalogue as read, and what reading it cost.
struct Fetched {
    catalogue: Catalogue,
    source: String,
    requests: u32,
    note: Option<String>,
}

pub(super) async fn preview(config_file: Option<PathBuf>, args: PreviewArgs) -> ExitCode {
    let settings = match load(config_file.as_deref(), args.sandbox) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    let body = match read_input(&args.input) {
        Ok(body) => body,
        Err(e) => return failure(&format!("cannot read {}: {e}", args.input)),
    };
    let events = match crate::ingest::split_body(&body) {
        Ok(events) => events,
        Err(e) => {
            return failure(&format!(
                "not a Segment payload (the relay would answer 400): {e}"
            ))
        }
    };
    let fetched = match fetch_catalogue(&settings, args.sandbox).await {
        Ok(fetched) => fetched,
        Err(line) => return failure(&line),
    };
    let report = build_report(&settings, &body, events, fetched);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_text(&report);
    }
    ExitCode::SUCCESS
}

fn failure(line: &str) -> ExitCode {
    eprintln!("{line}");
    ExitCode::FAILURE
}

/// Settings as `serve` would read them; with `--sandbox`, without secrets (the sandbox needs
/// none) and with the sandbox's data directory.
fn load(config_file: Option<&Path>, sandbox: bool) -> Result<Settings, ConfigError> {
    if sandbox {
        Settings::load_without_secrets(config_file, &sandbox_data_env)
    } else {
        Settings::load(config_file, &config::process_env)
    }
}

fn read_input(input: &str) -> std::io::Result<Vec<u8>> {
    if input == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        return Ok(body);
    }
    std::fs::read(input)
}

/// The catalogue: the sandbox's demo properties, or one page from ProsperStack.
async fn fetch_catalogue(settings: &Settings, sandbox: bool) -> Result<Fetched, String> {
    if sandbox {
        return Ok(Fetched {
            catalogue: sandbox_catalogue(),
            source: "the built-in sandbox's demo catalogue".into(),
            requests: 0,
            note: None,
        });
    }
    let url = config::display_url(&settings.prosperstack.api_url);
    let client = upstream_client(&settings.prosperstack).map_err(|e| e.to_string())?;
    let key = settings.prosperstack.api_key.as_ref();
    match client.properties_page(None).await {
        Ok((page, _)) => Ok(Fetched {
            note: page.next_cursor.is_some().then(|| {
                "only the first 100 properties were read (one request): a trait shown unmatched may match a later one".to_owned()
            }),
            catalogue: Catalogue::new(page.data),
            source: format!("GET /v1/properties at {url}"),
            requests: 1,
        }),
        Err(e) => Err(hide_key(
            &format!("cannot read the property catalogue from {url}: {e}"),
            key,
        )),
    }
}

/// The properties a fresh built-in sandbox starts with, read in process (no listener).
fn sandbox_catalogue() -> Catalogue {
    let properties = Sandbox::new(SandboxConfig::default())
        .properties()
        .into_iter()
        .filter_map(|view| {
            serde_json::from_value::<Property>(serde_json::to_value(view).ok()?).ok()
        })
        .collect();
    Catalogue::new(properties)
}

fn build_report(
    settings: &Settings,
    body: &[u8],
    events: Vec<crate::ingest::RawEvent>,
    fetched: Fetched,
) -> Report {
    let mut notes: Vec<String> = fetched.note.into_iter().collect();
    if body.len() > settings.segment.max_body_bytes {
        notes.push(format!(
            "the body is {} bytes, more than max_body_bytes ({}): the relay would answer 413",
            body.len(),
            settings.segment.max_body_bytes
        ));
    }
    let (store, store_note) = match settings.store.location() {
        // The memory is read through SQLite's own connection; PostgreSQL's is not read here.
        Some(location) => (
            None,
            Some(format!(
                "emails remembered for userIds are unknown: preview does not read them from \
                 {location}"
            )),
        ),
        None => open_store(&settings.data_dir),
    };
    let asked = std::cell::Cell::new(false);
    let remembered = |user: &str| {
        asked.set(true);
        store.as_ref()?.remembered_email(user).ok().flatten()
    };
    let rules = Rules::new(&settings.mapping, &settings.trait_mappings);
    let ctx = Context {
        catalogue: &fetched.catalogue,
        rules: &rules,
        create_audience_properties: settings.mapping.create_audience_properties,
        remembered: &remembered,
        received_ms: TokioClock.wall_ms(),
    };
    let events = explain(events, &ctx);
    if asked.get() {
        notes.extend(store_note);
    }
    Report {
        catalogue: fetched.source,
        properties: fetched.catalogue.properties().count(),
        requests_sent: fetched.requests,
        notes,
        events,
    }
}

/// The store in `dir`, read-only use; when there is none (or it cannot be used) the note
/// saying that emails remembered for userIds are unknown.
fn open_store(dir: &Path) -> (Option<SqliteStore>, Option<String>) {
    match SqliteStore::open_shared(dir) {
        Ok(store) => (Some(store), None),
        Err(e) => (
            None,
            Some(format!(
                "emails remembered for userIds are unknown: the store in {} was not read ({e})",
                dir.display()
            )),
        ),
    }
}

fn print_text(report: &Report) {
    let sent = match report.requests_sent {
        0 => "nothing was sent anywhere".to_owned(),
        n => format!("{n} request sent to ProsperStack, nothing else"),
    };
    println!(
        "catalogue: {} subscriber properties from {} ({sent})",
        report.properties, report.catalogue
    );
    for note in &report.notes {
        println!("note: {note}");
    }
    for event in &report.events {
        println!();
        print_event(event);
    }
}

fn print_event(e: &EventPreview) {
    let kind = e.event_type.as_deref().unwrap_or("(no type)");
    let id = e.message_id.as_deref().unwrap_or("(none)");
    let outcome = match (e.outcome, e.status, &e.reason) {
        ("rejected", Some(status), Some(reason)) => format!("rejected {status}: {reason}"),
        ("update", _, _) => "update".to_owned(),
        (outcome, _, Some(reason)) => format!("{outcome}: {reason}"),
        (outcome, _, None) => outcome.to_owned(),
    };
    println!("event {} · {kind} · messageId {id}: {outcome}", e.index);
    if let Some(email) = &e.email {
        let from = match email.source {
            "remembered_in_payload" => "remembered for its userId from an earlier event here",
            "remembered_in_store" => "remembered for its userId by the relay's store",
            source => source,
        };
        let key = crate::identify::email_key(&email.address);
        if key == email.address {
            println!("  email   {} (from {from})", email.address);
        } else {
            // Whatever its case, an email is one subscriber: say which key it is known by.
            println!("  email   {} (from {from}; known as {key})", email.address);
        }
    }
    if let Some(time) = &e.timestamp {
        println!("  time    {time}");
    }
    if let Some(engage) = &e.engage {
        let carries = if engage.membership {
            "true/false membership"
        } else {
            "its value"
        };
        println!(
            "  engage  {} {}: the trait {} carries {carries}",
            engage.class, engage.key, engage.key
        );
    }
    let width = e
        .traits
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    for t in &e.traits {
        println!(
            "  trait   {:<width$} {}",
            format!("{:?}", t.name),
            trait_line(t)
        );
    }
    if e.outcome == "update" {
        let body = serde_json::json!({ "properties": e.update });
        println!("  update  {body} (only values that change the subscriber are sent)");
    }
}

fn trait_line(t: &TraitPreview) -> String {
    let target = match (&t.property, t.property_type, t.rule) {
        (Some(key), Some(kind), Some(rule)) => {
            let kind = serde_json::to_value(kind).ok();
            let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("?");
            format!("→ {key} ({kind}) by {}", rule.as_str())
        }
        _ => String::new(),
    };
    let reason = t.reason.as_deref().unwrap_or("");
    match t.outcome {
        "sent" => format!("{target}: {}", t.sent.clone().unwrap_or_default()),
        "dropped" => format!("{target}: dropped, {reason}"),
        "missing_audience" => format!("Engage audience without a property: {reason}"),
        _ => format!("unmatched: {reason}"),
    }
}

#[cfg(test)]
mod tests;
