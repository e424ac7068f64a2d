//! `import FILE… [--id-column NAME] [--timestamp T] [--dry-run] [--no-wait] [--sandbox]`:
//! history from files into the queue, in the background lane.
//!
//! In: Segment exports (NDJSON or a JSON array) and CSVs (`.csv`), read by [`crate::import`].
//! Out: the rows queued through the store's `ingest`, a progress bar while reading (plain lines
//! when stderr is not a terminal), and per file the rows queued, duplicate, skipped and rejected,
//! with the lines and reasons of the ones not queued; then (unless `--no-wait`) the drain of the
//! imported updates followed with a bar and an ETA from the budget, until each is delivered,
//! waiting for a subscriber or a dead letter, and a summary. Exit 0 when every file was read (a
//! bad row is reported, not fatal), 1 when a file or the store could not be used, 2 when the
//! arguments or settings cannot work.
//!
//! Who delivers: when `serve` runs on the store (it holds the data directory's lock), it does,
//! and import only queues and follows; when none runs, import takes the lock itself (so no relay
//! can start and deliver beside it) and runs the same delivery worker, under the store's lease.
//! Stays true: `--dry-run` opens no store and writes nothing; no row stops the others; never two
//! deliverers on one store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{config_failure, tool_settings};
use crate::app::Deliverer;
use crate::budget::Budget;
use crate::clock::{Clock, TokioClock};
use crate::config::{self, Settings};
use crate::import::{self, Format, ReadOptions, Refused, Tally};
use crate::store::{Lane, SqliteStore, Store, StoreError, StoreOptions};

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
    if args.dry_run {
        return read_all(None, &args, timestamp_ms).await.1;
    }
    let (store, owner) = match open_store(&settings).await {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let deliverer = match own_delivery(config_file.as_deref(), &args, &settings, owner, &store) {
        Ok(d) => d,
        Err(line) => {
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let (total, code) = read_all(Some(store.as_ref()), &args, timestamp_ms).await;
    if args.no_wait {
        if owner && total.queued > 0 {
            println!("no relay is running on this store: `prosperstack-relay serve` delivers the imported updates when it starts");
        }
        return code;
    }
    let per_sec = Budget::new(
        settings.prosperstack.rate_limit_requests,
        settings.prosperstack.rate_limit_window,
        TokioClock::shared(),
    )
    .sustained_per_sec();
    match follow(store.as_ref(), per_sec, deliverer).await {
        Ok(()) => code,
        Err(e) => {
            eprintln!("cannot follow the imported updates: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store, and whether this process may deliver from it. SQLite: when no relay holds the data
/// directory's lock, import takes it; beside a running relay it shares the store and only
/// queues. PostgreSQL: replicas share it anyway; import stands by for the lease like a replica,
/// so it delivers only while no relay does.
async fn open_store(settings: &Settings) -> Result<(Arc<dyn Store>, bool), StoreError> {
    if settings.store.database_url.is_some() {
        return Ok((crate::app::open_store_shared(settings).await?, true));
    }
    let options = StoreOptions {
        coalesce_ms: settings.delivery.coalesce_delay.as_millis() as i64,
    };
    let (store, owner) = SqliteStore::open_or_share(&settings.data_dir, options)?;
    Ok((Arc::new(store), owner))
}

/// The delivery worker when this process owns the store (no relay runs on it), else `None`
/// (the relay delivers, or `--no-wait` leaves it to the next one); the line saying why it
/// cannot deliver, before anything is queued.
fn own_delivery(
    config_file: Option<&Path>,
    args: &ImportArgs,
    settings: &Settings,
    owner: bool,
    store: &Arc<dyn Store>,
) -> Result<Option<Deliverer>, String> {
    if !owner {
        println!(
            "a relay is running on {}: it delivers, this import queues and follows",
            settings.data_dir.display()
        );
        return Ok(None);
    }
    if args.sandbox {
        return Err(format!("no `serve --sandbox` is running on {}: start it first (it starts its queue afresh, so rows imported before would be lost)", settings.data_dir.display()));
    }
    if args.no_wait {
        return Ok(None);
    }
    let full = Settings::load(config_file, &config::process_env).map_err(|e| {
        format!("{e}\nno relay is running on this store, so import delivers itself and needs the ProsperStack settings (or queue only with --no-wait, and start `serve` later)")
    })?;
    let worker = crate::app::deliverer(&full, store.clone()).map_err(|e| e.to_string())?;
    if settings.store.database_url.is_some() {
        println!("the store is PostgreSQL: a running relay keeps delivering; this import stands by for the delivery lease and delivers only while no relay holds it");
    } else {
        println!(
            "no relay is running on {}: this import delivers, with the relay's delivery worker",
            settings.data_dir.display()
        );
    }
    Ok(Some(worker))
}

/// Reads and queues every file (`store`: `None` for a dry run); answers the totals and the
/// exit code (1 when a file could not be read or queued).
async fn read_all(
    store_ref: Option<&dyn Store>,
    args: &ImportArgs,
    timestamp_ms: Option<i64>,
) -> (Tally, ExitCode) {
    let mut failed = false;
    let mut total = Tally::default();
    for file in &args.files {
        match import_file(store_ref, file, args, timestamp_ms).await {
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
    let code = if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    (total, code)
}

/// Follows the background lane until none of its updates is due or retrying (delivering them
/// with `deliverer` when this process owns the store), or until Ctrl-C; then the summary.
async fn follow(
    store: &dyn Store,
    per_sec: f64,
    deliverer: Option<Deliverer>,
) -> Result<(), StoreError> {
    let stop = CancellationToken::new();
    let worker = deliverer.map(|d| tokio::spawn(d.run(stop.clone())));
    let result = watch_drain(store, per_sec).await;
    // The worker returns between jobs; whatever it had not recorded stays queued.
    stop.cancel();
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    result
}

/// How often the drain is read again.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

async fn watch_drain(store: &dyn Store, per_sec: f64) -> Result<(), StoreError> {
    let dead_before = store.stats().await?.dead_letters;
    let first = store.lane_stats(Lane::Background).await?;
    let total = first.due + first.retrying + first.waiting;
    if first.due + first.retrying == 0 {
        println!(
            "nothing imported is left to deliver ({} waiting for a subscriber)",
            first.waiting
        );
        return Ok(());
    }
    println!(
        "following {total} imported updates (the budget allows {:.0} requests a minute; live events go first)",
        per_sec * 60.0
    );
    let bar = DrainBar::new(total);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    loop {
        tokio::select! {
            _ = &mut interrupted => {
                bar.finish();
                println!("stopped following: the imported updates stay queued, and the relay delivers them");
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        let lane = store.lane_stats(Lane::Background).await?;
        let left = lane.due + lane.retrying;
        let eta = crate::status::eta(&store.stats().await?, per_sec);
        bar.at(total.saturating_sub(left), lane.waiting, eta);
        if left == 0 {
            break;
        }
    }
    bar.finish();
    let waiting = store.lane_stats(Lane::Background).await?.waiting;
    let dead = store
        .stats()
        .await?
        .dead_letters
        .saturating_sub(dead_before);
    let delivered = total.saturating_sub(waiting + dead);
    println!(
        "done: {delivered} delivered, {waiting} waiting for a subscriber, {dead} dead letters"
    );
    if waiting > 0 {
        println!("  waiting updates are retried until delivery.subscriber_wait, then become dead letters");
    }
    if dead > 0 {
        println!("  see them with `prosperstack-relay dead-letters list`");
    }
    Ok(())
}

/// The drain's progress: a bar with the ETA on a terminal; elsewhere a plain line each tenth.
struct DrainBar {
    bar: Option<ProgressBar>,
    total: u64,
    printed_tenths: std::cell::Cell<u64>,
}

impl DrainBar {
    fn new(total: u64) -> DrainBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "delivering [{bar:40.green/blue}] {pos}/{len} imported updates settled, {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::new(total).with_style(style)
        });
        DrainBar {
            bar,
            total,
            printed_tenths: std::cell::Cell::new(0),
        }
    }

    fn at(&self, settled: u64, waiting: u64, eta: Option<Duration>) {
        let eta = eta.map_or_else(
            || "ETA now".to_owned(),
            |d| {
                format!(
                    "ETA {}",
                    humantime::format_duration(Duration::from_secs(d.as_secs()))
                )
            },
        );
        let message = format!("{waiting} waiting for a subscriber, {eta}");
        if let Some(bar) = &self.bar {
            bar.set_position(settled);
            return bar.set_message(message);
        }
        let tenths = (settled * 10).checked_div(self.total).unwrap_or(10);
        if tenths > self.printed_tenths.get() {
            self.printed_tenths.set(tenths);
            eprintln!(
                "delivering: {settled}/{} imported updates settled, {message}",
                self.total
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
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
