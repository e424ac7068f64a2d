//! Import: files of history in, Identify events queued through the store's `ingest` out.
//!
//! In: a file's text, and what the command line said about it: a Segment export (NDJSON, one
//! event a line, or a JSON array of events) or a CSV with an email column (`--id-column`) and one
//! column per trait. Out: one [`Row`] per line or element (a Segment-shaped event, or why it is
//! not one), then, from [`queue_rows`], what the store made of each: queued, duplicate, skipped
//! (not an Identify) or rejected, with line numbers.
//!
//! Stays true:
//! - every row becomes the JSON of a Segment event and goes through `identify::normalise` and
//!   `Store::ingest`, as a request to `serve` would: same normalisation, mapping rules at
//!   delivery, dedupe and latest-wins; CSV column names are trait names, matched at delivery
//!   by the same rules as Segment's traits, and their text values typed by the mapping;
//! - a row's messageId is stable (a Segment event's own, else a hash of the row), so importing
//!   the same file again queues nothing new;
//! - a bad row costs only itself: it is reported with its line and reason, the rest go on;
//! - imported events go in the background lane ([`Lane::Background`]): live events go first;
//! - delete requests in an export are skipped, never applied: a backfill only adds values.

use std::path::Path;

use chrono::{DateTime, SecondsFormat};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

use crate::identify::{self, Event};
use crate::store::{Incoming, IngestOutcome, Lane, Store, StoreError};

/// Rows handed to the store in one `ingest` call: one transaction each, short enough that a
/// relay sharing the file never waits long for its own writes.
const CHUNK: usize = 200;

/// The `anonymousId` of the Identify a CSV row stands for.
pub const ANONYMOUS_ID: &str = "prosperstack-relay-import";

/// What a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// NDJSON or a JSON array of Segment events.
    Segment,
    Csv,
}

impl Format {
    /// By the file's name (`.csv`), else by its text: a Segment export is JSON.
    pub fn of(path: &Path) -> Format {
        let csv = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if csv {
            Format::Csv
        } else {
            Format::Segment
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Segment => "Segment events",
            Format::Csv => "CSV",
        }
    }
}

/// How rows are read.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// The CSV column holding the email (compared case-insensitively).
    pub id_column: String,
    /// `--timestamp`: every row's time. Without it, a CSV row takes `file_time_ms`, and a
    /// Segment event its own time (or `file_time_ms` when it has none).
    pub timestamp_ms: Option<i64>,
    /// The file's modification time: an export is as old as the file, so newer live events
    /// win over it.
    pub file_time_ms: i64,
}

/// One line (NDJSON, CSV) or element (JSON array) of a file.
#[derive(Clone, Debug)]
pub struct Row {
    /// 1-based line where the row starts.
    pub line: usize,
    /// The Segment event it stands for, or why it is not one.
    pub event: Result<Value, String>,
}

/// Why a whole file cannot be read (a bad row is not one of these: it is a [`Row`] error).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads every row of a file's text.
pub fn read_rows(text: &str, format: Format, options: &ReadOptions) -> Result<Vec<Row>, String> {
    // Spreadsheets often start their CSV with a byte-order mark; it is not part of a name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rows = match format {
        Format::Csv => csv_rows(text, options)?,
        Format::Segment if text.trim_start().starts_with('[') => array_rows(text)?,
        Format::Segment => ndjson_rows(text),
    };
    Ok(match format {
        Format::Csv => rows,
        Format::Segment => rows
            .into_iter()
            .map(|row| segment_row(row, options))
            .collect(),
    })
}

/// One event a line; blank lines are not rows.
fn ndjson_rows(text: &str) -> Vec<Row> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Row {
            line: i + 1,
            event: serde_json::from_str(line).map_err(|e| invalid_json(&e)),
        })
        .collect()
}

/// A JSON array: each element parsed on its own, so one bad element costs only itself; its
/// line is where it starts in the text.
fn array_rows(text: &str) -> Result<Vec<Row>, String> {
    let elements: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of events: {e}"))?;
    Ok(elements
        .iter()
        .map(|raw| Row {
            line: line_of(text, raw.get()),
            event: serde_json::from_str(raw.get()).map_err(|e| invalid_json(&e)),
        })
        .collect())
}

/// serde_json's message with the column, without its line (the report gives the file's line;
/// serde_json's would count from the row).
fn invalid_json(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    format!("invalid JSON at column {}: {message}", e.column())
}

/// The line at which `part`, a slice of `text`, starts.
fn line_of(text: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A Segment event as imported: its own messageId, else one made from its text; its own
/// time unless `--timestamp` says otherwise, else the file's.
fn segment_row(row: Row, options: &ReadOptions) -> Row {
    let event = row.event.and_then(|value| {
        let Value::Object(mut obj) = value else {
            return Err("an event must be a JSON object".to_owned());
        };
        if !obj.get("messageId").is_some_and(Value::is_string) {
            let id = stable_id("segment", &Value::Object(obj.clone()).to_string());
            obj.insert("messageId".into(), Value::String(id));
        }
        let has_time = ["timestamp", "originalTimestamp", "receivedAt"]
            .iter()
            .any(|k| obj.get(*k).is_some_and(Value::is_string));
        match options.timestamp_ms {
            Some(ms) => {
                for k in ["originalTimestamp", "receivedAt"] {
                    obj.remove(k);
                }
                obj.insert("timestamp".into(), Value::String(rfc3339(ms)));
            }
            None if !has_time => {
                obj.insert(
                    "timestamp".into(),
                    Value::String(rfc3339(options.file_time_ms)),
                );
            }
            None => {}
        }
        Ok(Value::Object(obj))
    });
    Row { event, ..row }
}

/// A CSV: a header row naming the columns, then one subscriber a row.
fn csv_rows(text: &str, options: &ReadOptions) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("cannot read the CSV header: {e}"))?
        .clone();
    let id = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(&options.id_column))
        .ok_or_else(|| {
            format!(
                "the CSV has no `{}` column (its columns: {}); name the email column with --id-column",
                options.id_column,
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })?;
    let time = options.timestamp_ms.unwrap_or(options.file_time_ms);
    let mut rows = Vec::new();
    for record in reader.records() {
        rows.push(match record {
            Ok(record) => Row {
                line: record.position().map_or(0, |p| p.line() as usize),
                event: csv_event(&headers, &record, id, time),
            },
            Err(e) => Row {
                line: e.position().map_or(0, |p| p.line() as usize),
                event: Err(csv_error(&e)),
            },
        });
    }
    Ok(rows)
}

/// The csv crate's message without its own position (the report gives the line).
fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "a field is not UTF-8".to_owned(),
        _ => e.to_string(),
    }
}

/// One CSV row as the Identify Segment would send: the email and every non-empty cell as a
/// trait (an empty cell is a value the sheet does not know, not one to clear).
fn csv_event(
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
    id: usize,
    time_ms: i64,
) -> Result<Value, String> {
    let email = record.get(id).unwrap_or_default().trim();
    if email.is_empty() {
        return Err(format!("the `{}` column is empty", &headers[id]));
    }
    // Known at reading time, so a dry run reports it too (the store would refuse it anyway).
    if !email.contains('@') {
        return Err(format!(
            "the `{}` column holds no email address",
            &headers[id]
        ));
    }
    let mut traits = Map::new();
    for (i, (name, value)) in headers.iter().zip(record.iter()).enumerate() {
        if i != id && !name.is_empty() && !value.is_empty() {
            traits.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    traits.insert("email".into(), Value::String(email.to_owned()));
    // The row's content names it: the same row imported again is a duplicate, whatever the
    // file is called or when it was saved.
    let identity: Vec<(&str, &str)> = headers.iter().zip(record.iter()).collect();
    let message_id = stable_id("csv", &serde_json::to_string(&identity).unwrap_or_default());
    Ok(serde_json::json!({
        "type": "identify",
        "messageId": message_id,
        // Segment requires one of userId and anonymousId; a sheet knows neither, and only a
        // userId would be remembered with the email.
        "anonymousId": ANONYMOUS_ID,
        "timestamp": rfc3339(time_ms),
        "traits": traits,
    }))
}

/// `import-<kind>-<sha1 of content>`: stable across runs and machines.
fn stable_id(kind: &str, content: &str) -> String {
    let digest = Sha1::digest(content.as_bytes());
    format!("import-{kind}-{}", hex::encode(digest))
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses `--timestamp`: RFC 3339 (`2024-05-01T12:00:00Z`) or a date (`2024-05-01`, midnight
/// UTC).
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| {
            format!("--timestamp {text:?} is not RFC 3339 (2024-05-01T12:00:00Z) or a date (2024-05-01)")
        })
}

/// A row that was not queued, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub line: usize,
    pub reason: String,
}

/// What became of a file's rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub rows: usize,
    /// Stored in the queue (`--dry-run`: would be).
    pub queued: usize,
    /// Already stored by an earlier import or by Segment (same messageId).
    pub duplicates: usize,
    /// Not Identify events (tracks, pages, delete requests): nothing to import.
    pub skipped: Vec<Refused>,
    /// Rows that can never be imported.
    pub rejected: Vec<Refused>,
}

/// A row ready for the store, or what it was instead.
enum Prepared {
    Event(Box<Incoming>),
    Skipped(String),
    Rejected(String),
}

fn prepare(row: Row, now_ms: i64) -> Prepared {
    let value = match row.event {
        Ok(v) => v,
        Err(reason) => return Prepared::Rejected(reason),
    };
    match identify::normalise(&value, now_ms) {
        Ok(event @ Event::Identify(_)) => Prepared::Event(Box::new(Incoming {
            event,
            raw: value.to_string(),
            lane: Lane::Background,
        })),
        Ok(Event::Delete { .. }) => {
            Prepared::Skipped("a delete request: an import never deletes".into())
        }
        Ok(Event::Ignored { event_type }) => {
            Prepared::Skipped(format!("a {event_type} event, not an Identify"))
        }
        Err(e) => Prepared::Rejected(e.to_string()),
    }
}

/// Queues the rows in chunks (`dry_run`: only sorts them), calling `progress` with the rows
/// done so far after each chunk.
pub async fn queue_rows(
    store: Option<&dyn Store>,
    rows: Vec<Row>,
    now_ms: i64,
    mut progress: impl FnMut(usize),
) -> Result<Tally, StoreError> {
    let mut tally = Tally {
        rows: rows.len(),
        ..Tally::default()
    };
    let mut done = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Row> = rows.by_ref().take(CHUNK).collect();
        done += chunk.len();
        queue_chunk(store, chunk, now_ms, &mut tally).await?;
        progress(done);
    }
    // A chunk's refusals by the store come after its unreadable rows: the report goes by line.
    tally.skipped.sort_by_key(|r| r.line);
    tally.rejected.sort_by_key(|r| r.line);
    Ok(tally)
}

async fn queue_chunk(
    store: Option<&dyn Store>,
    chunk: Vec<Row>,
    now_ms: i64,
    tally: &mut Tally,
) -> Result<(), StoreError> {
    let mut lines = Vec::new();
    let mut incoming = Vec::new();
    for row in chunk {
        let line = row.line;
        match prepare(row, now_ms) {
            Prepared::Event(e) => {
                lines.push(line);
                incoming.push(*e);
            }
            Prepared::Skipped(reason) => tally.skipped.push(Refused { line, reason }),
            Prepared::Rejected(reason) => tally.rejected.push(Refused { line, reason }),
        }
    }
    let outcomes = match store {
        Some(store) if !incoming.is_empty() => store.ingest(incoming, now_ms).await?,
        _ => vec![IngestOutcome::Stored; incoming.len()],
    };
    for (line, outcome) in lines.into_iter().zip(outcomes) {
        match outcome {
            IngestOutcome::Stored | IngestOutcome::Forgotten => tally.queued += 1,
            IngestOutcome::Duplicate => tally.duplicates += 1,
            IngestOutcome::NoEmail => tally.rejected.push(Refused {
                line,
                reason:
                    "no email address (with an @) in traits.email or context.traits.email, and none known for its userId"
                        .into(),
            }),
            IngestOutcome::Ignored => tally.skipped.push(Refused {
                line,
                reason: "nothing to apply".into(),
            }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
