use std::path::Path;

use serde_json::json;

use super::*;
use crate::store::{SqliteStore, StoreOptions};

const FILE_TIME: i64 = 1_700_000_000_000;

fn options() -> ReadOptions {
    ReadOptions {
        id_column: "email".into(),
        timestamp_ms: None,
        file_time_ms: FILE_TIME,
    }
}

fn events(rows: &[Row]) -> Vec<&Value> {
    rows.iter().filter_map(|r| r.event.as_ref().ok()).collect()
}

/// The format comes from the name: `.csv` in any case is CSV, anything else Segment's JSON.
#[test]
fn format_by_name() {
    assert_eq!(Format::of(Path::new("a/people.CSV")), Format::Csv);
    assert_eq!(Format::of(Path::new("export.ndjson")), Format::Segment);
    assert_eq!(Format::of(Path::new("export.json")), Format::Segment);
}

/// NDJSON: a line per event, blank lines skipped, a bad line reported at its line number;
/// an event without a time takes the file's, one with its own keeps it.
#[test]
fn ndjson_lines_and_times() {
    let text = concat!(
        r#"{"type":"identify","messageId":"m1","traits":{"email":"a@x.io"}}"#,
        "\n\n",
        "{not json\n",
        r#"{"type":"identify","messageId":"m2","timestamp":"2024-01-01T00:00:00Z","traits":{"email":"b@x.io"}}"#,
        "\n"
    );
    let rows = read_rows(text, Format::Segment, &options()).expect("rows");
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4]);
    assert!(rows[1]
        .event
        .as_ref()
        .is_err_and(|e| e.contains("invalid JSON")));
    let evs = events(&rows);
    assert_eq!(evs[0]["timestamp"], "2023-11-14T22:13:20.000Z");
    assert_eq!(evs[1]["timestamp"], "2024-01-01T00:00:00Z");
}

/// A JSON array: each element's line is where it starts; a missing messageId is made from
/// the event's content, the same on every read.
#[test]
fn array_elements_with_lines_and_stable_ids() {
    let text = "[\n  {\"type\":\"identify\",\"traits\":{\"email\":\"a@x.io\"}},\n  7,\n  {\"type\":\"track\"}\n]";
    let rows = read_rows(text, Format::Segment, &options()).expect("rows");
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(rows[1].event.is_err());
    let again = read_rows(text, Format::Segment, &options()).expect("rows");
    let id = |rows: &[Row]| rows[0].event.as_ref().expect("event")["messageId"].clone();
    assert_eq!(id(&rows), id(&again));
    assert!(id(&rows)
        .as_str()
        .is_some_and(|s| s.starts_with("import-segment-")));
}

/// `--timestamp` overrides every event's time.
#[test]
fn explicit_timestamp_wins() {
    let text = r#"{"type":"identify","messageId":"m","originalTimestamp":"2020-01-01T00:00:00Z","traits":{"email":"a@x.io"}}"#;
    let opts = ReadOptions {
        timestamp_ms: Some(parse_timestamp("2024-05-01").expect("a date")),
        ..options()
    };
    let rows = read_rows(text, Format::Segment, &opts).expect("rows");
    let ev = events(&rows)[0];
    assert_eq!(ev["timestamp"], "2024-05-01T00:00:00.000Z");
    assert!(ev.get("originalTimestamp").is_none());
    assert!(parse_timestamp("2024-05-01T12:00:00+02:00").is_ok());
    assert!(parse_timestamp("yesterday").is_err());
}

/// CSV: quoted fields, a BOM, the email column found case-insensitively, empty cells left
/// out, short rows and empty emails reported at their lines; ids stable and distinct.
#[test]
fn csv_rows_become_identifies() {
    let text = "\u{feff}Email,plan,\"Seats, total\",vip\n\
                ann@x.io,pro,\"3\",true\n\
                ,basic,1,false\n\
                bob@x.io,basic\n\
                \"cy@x.io\",\"team, annual\",,\n";
    let rows = read_rows(text, Format::Csv, &options()).expect("rows");
    assert_eq!(
        rows.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    assert!(rows[1]
        .event
        .as_ref()
        .is_err_and(|e| e.contains("`Email` column is empty")));
    assert!(rows[2]
        .event
        .as_ref()
        .is_err_and(|e| e.contains("2 fields where the header has 4")));
    let evs = events(&rows);
    assert_eq!(
        evs[0]["traits"],
        json!({"email": "ann@x.io", "plan": "pro", "Seats, total": "3", "vip": "true"})
    );
    assert_eq!(
        evs[1]["traits"],
        json!({"email": "cy@x.io", "plan": "team, annual"})
    );
    assert_eq!(evs[0]["timestamp"], "2023-11-14T22:13:20.000Z");
    assert_ne!(evs[0]["messageId"], evs[1]["messageId"]);
}

/// A CSV without the id column is refused whole, naming the columns it has.
/// A cell that cannot be an email is refused when the file is read, so a dry run says so.
#[test]
fn csv_id_without_an_at_is_rejected() {
    let text = "email,plan\nn/a,pro\n dee@x.io ,pro\n";
    let rows = read_rows(text, Format::Csv, &options()).expect("rows");
    assert!(rows[0]
        .event
        .as_ref()
        .is_err_and(|e| e.contains("`email` column holds no email address")));
    assert!(rows[1].event.is_ok());
}

#[test]
fn csv_without_the_id_column() {
    let err = read_rows("mail,plan\na@x.io,pro\n", Format::Csv, &options()).expect_err("refused");
    assert!(
        err.contains("no `email` column") && err.contains("mail, plan"),
        "{err}"
    );
    let opts = ReadOptions {
        id_column: "MAIL".into(),
        ..options()
    };
    assert_eq!(
        read_rows("mail,plan\na@x.io,pro\n", Format::Csv, &opts)
            .expect("rows")
            .len(),
        1
    );
}

/// Queueing: identifies are stored in the background lane, other types skipped, bad rows
/// rejected with their lines; the same rows again are all duplicates.
#[tokio::test]
async fn queues_once() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("store");
    let text = concat!(
        r#"{"type":"identify","messageId":"m1","userId":"u1","traits":{"email":"a@x.io","plan":"pro"}}"#,
        "\n",
        r#"{"type":"track","messageId":"m2","event":"x"}"#,
        "\n",
        r#"{"type":"identify","messageId":"m3","userId":"u9","traits":{"plan":"pro"}}"#,
        "\n",
        r#"{"type":"delete","messageId":"m4","userId":"u1"}"#,
        "\n",
        "[]\n",
    );
    let rows = || read_rows(text, Format::Segment, &options()).expect("rows");
    let mut seen = Vec::new();
    let tally = queue_rows(Some(&store), rows(), FILE_TIME, |n| seen.push(n))
        .await
        .expect("queued");
    assert_eq!(
        (tally.rows, tally.queued, tally.duplicates),
        (5, 1, 0),
        "{tally:?}"
    );
    assert_eq!(
        tally.skipped.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 4]
    );
    assert_eq!(
        tally.rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
        [3, 5]
    );
    assert_eq!(seen, [5]);
    let again = queue_rows(Some(&store), rows(), FILE_TIME, |_| {})
        .await
        .expect("queued");
    assert_eq!((again.queued, again.duplicates), (0, 1));
    // A dry run asks the store nothing: an email-less row counts as one it would queue.
    let dry = queue_rows(None, rows(), FILE_TIME, |_| {})
        .await
        .expect("dry run");
    assert_eq!((dry.queued, dry.duplicates, dry.rejected.len()), (2, 0, 1));
}
