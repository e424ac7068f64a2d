//! `import FILE… [--id-column NAME] [--timestamp T] [--dry-run] [--no-wait] [--sandbox]`:
//! history from files into the queue, in the background lane.
//!
//! In: Segment exports (NDJSON or a JSON array) and CSVs (`.csv`), read by [`crate::import`].
//! Out: the rows queued through the store's `ingest`, a progress bar while reading (plain lines
//! when stderr is not a terminal), and per file the rows queued, duplicate, skipped and rejected,
//! with the lines and reasons of the ones not queued. Exit 0 when every file was read (a bad row
//! is reported, not fatal), 1 when a file or the store could not be used, 2 for bad arguments.
//! Stays true: `--dry-run` opens no store and writes nothing; no row stops the others.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{config_failure, tool_settings};
use crate::clock::{Clock, TokioClock};
use crate::import::{self, Format, ReadOptions, Refused, Tally};
use crate::store::{SqliteStore, Store, StoreOptions};

/// At most this many refused rows are listed per file and kind; the rest are counted.
const LISTED: usize = 20;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import: Segment events (NDJSON, or a JSON array) or a CSV (named `*.csv`).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The CSV column that holds the email (any case).
    #[arg(long, default_value = "email", value_name = "NAME")]
    pub id_column: String,
    /// The events' time, RFC 3339 or a date (default: each file's modification time, so newer
    /// live events win; Segment events keep their own time unless this is given).
    #[arg(long, value_name = "TIME")]
    pub timestamp: Option<String>,
    /// Read and report only: nothing is queued.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the rows are queued, without following their delivery.
    #[arg(long)]
    pub no_wait: bool,
    /// Import into the store `serve --sandbox` uses (`./data/sandbox` unless RELAY_DATA_DIR is set).
    #[arg(long)]
    pub sandbox: bool,
}

pub(super) async fn import(config_file: Option<PathBuf>, args: ImportArgs) -> ExitCode {
    let settings = match tool_settings(config_file.as_deref(), args.sandbox) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    let timestamp_ms = match args.timestamp.as_deref().map(import::parse_timestamp) {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(line)) => {
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let store = if args.dry_run {
        None
    } else {
        let options = StoreOptions {
            coalesce_ms: settings.delivery.coalesce_delay.as_millis() as i64,
        };
        match SqliteStore::open_or_share(&settings.data_dir, options) {
            Ok((store, _owner)) => Some(store),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let store_ref = store.as_ref().map(|s| s as &dyn Store);
    let mut failed = false;
    let mut total = Tally::default();
    for file in &args.files {
        match import_file(store_ref, file, &args, timestamp_ms).await {
            Ok(tally) => add(&mut total, &tally),
            Err(line) => {
                println!("{line}");
                failed = true;
            }
        }
    }
    if args.files.len() > 1 {
        println!("all files: {}", counts(&total, args.dry_run));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads, queues and reports one file; the line saying why when it cannot be read at all.
async fn import_file(
    store: Option<&dyn Store>,
    path: &Path,
    args: &ImportArgs,
    timestamp_ms: Option<i64>,
) -> Result<Tally, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let file_time_ms = modified_ms(path).map_err(|e| format!("{shown}: {e}"))?;
    let options = ReadOptions {
        id_column: args.id_column.clone(),
        timestamp_ms,
        file_time_ms,
    };
    let format = Format::of(path);
    let rows = import::read_rows(&text, format, &options).map_err(|e| format!("{shown}: {e}"))?;
    println!(
        "{shown}: {}, {} rows, dated {}",
        format.name(),
        rows.len(),
        dated(format, &options)
    );
    let progress = Progress::new(&shown.to_string(), rows.len());
    let now_ms = TokioClock.wall_ms();
    let tally = import::queue_rows(store, rows, now_ms, |done| progress.at(done))
        .await
        .map_err(|e| format!("{shown}: the store refused the rows: {e}"))?;
    progress.finish();
    println!("  {}", counts(&tally, args.dry_run));
    list("skipped", &tally.skipped);
    list("rejected", &tally.rejected);
    Ok(tally)
}

/// The file's modification time, which dates its rows unless `--timestamp` says otherwise.
fn modified_ms(path: &Path) -> Result<i64, String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read its modification time: {e}"))?;
    let since_epoch = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Ok(crate::clock::millis(since_epoch))
}

/// What time the file's rows carry, in words.
fn dated(format: Format, options: &ReadOptions) -> String {
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    match (options.timestamp_ms, format) {
        (Some(ms), _) => format!("{} (--timestamp)", time(ms)),
        (None, Format::Csv) => format!(
            "{} (the file's modification time)",
            time(options.file_time_ms)
        ),
        (None, Format::Segment) => format!(
            "by each event's own time ({} for events without one)",
            time(options.file_time_ms)
        ),
    }
}

fn counts(tally: &Tally, dry_run: bool) -> String {
    let queued = if dry_run { "would be queued" } else { "queued" };
    format!(
        "{} {queued}, {} duplicate, {} skipped, {} rejected",
        tally.queued,
        tally.duplicates,
        tally.skipped.len(),
        tally.rejected.len()
    )
}

/// The refused rows of one kind, by line, the first [`LISTED`] of them.
fn list(kind: &str, refused: &[Refused]) {
    for r in refused.iter().take(LISTED) {
        println!("  line {}: {kind}: {}", r.line, r.reason);
    }
    if refused.len() > LISTED {
        println!("  … and {} more {kind}", refused.len() - LISTED);
    }
}

fn add(total: &mut Tally, tally: &Tally) {
    total.rows += tally.rows;
    total.queued += tally.queued;
    total.duplicates += tally.duplicates;
    total.skipped.extend(tally.skipped.iter().cloned());
    total.rejected.extend(tally.rejected.iter().cloned());
}

/// Reading progress: a bar on a terminal; elsewhere (logs, CI) a plain line each tenth.
struct Progress {
    bar: Option<ProgressBar>,
    name: String,
    total: usize,
    printed_tenths: std::cell::Cell<usize>,
}

impl Progress {
    fn new(name: &str, total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40.cyan/blue}] {pos}/{len} rows ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::new(total as u64)
                .with_style(style)
                .with_message(format!("reading {name}"))
        });
        Progress {
            bar,
            name: name.to_owned(),
            total,
            printed_tenths: std::cell::Cell::new(0),
        }
    }

    fn at(&self, done: usize) {
        if let Some(bar) = &self.bar {
            return bar.set_position(done as u64);
        }
        let tenths = (done * 10).checked_div(self.total).unwrap_or(10);
        if tenths > self.printed_tenths.get() {
            self.printed_tenths.set(tenths);
            eprintln!("reading {}: {done}/{} rows", self.name, self.total);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
