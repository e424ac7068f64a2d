//! `store copy --from DIR [--to URL]`: moves a SQLite data directory's state into PostgreSQL,
//! for a deployment outgrowing one node (the rules: `store::copy`).
//!
//! In: the source directory; the target: `--to`, else the configured `database_url`
//! (`RELAY_DATABASE_URL`, `RELAY_DATABASE_URL_FILE`, `[store] database_url`); the batch size.
//! Out: progress lines on stderr
//! (at most one a second per stage, and each stage's last), then a table (or JSON) of what was
//! copied and what was already there on stdout. Exit 0 when everything is in the target, 1
//! when a store refused or failed (rerunning finishes a copy cut short), 2 for a usage error.
//! Stays true: the URL is never printed (it holds the password); the source is refused while a
//! relay runs on it, so nothing is queued there after it was read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{config_failure, tool_settings};
use crate::store::copy::{self, CopyReport, Progress, DEFAULT_BATCH};
use crate::store::{SqliteStore, StoreError};

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite data directory (queue, dedupe ids, remembered emails, applied values, dead
    /// letters) into PostgreSQL; rerunning copies only what is missing.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The SQLite data directory to copy from; no relay may be running on it.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The PostgreSQL store to copy into (postgres://user:password@host:port/database); by
    /// default the configured database_url (RELAY_DATABASE_URL or RELAY_DATABASE_URL_FILE),
    /// which keeps the password out of the process list.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Rows per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_name = "ROWS")]
    pub batch: usize,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn store(config_file: Option<PathBuf>, args: StoreArgs) -> ExitCode {
    match args.command {
        StoreCommand::Copy(args) => store_copy(config_file, args).await,
    }
}

async fn store_copy(config_file: Option<PathBuf>, args: CopyArgs) -> ExitCode {
    let url = match args.to.clone().filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => match configured_url(config_file) {
            Ok(Some(url)) => url,
            Ok(None) => {
                eprintln!(
                    "store copy: say where to copy to: --to, or set RELAY_DATABASE_URL \
                     (or RELAY_DATABASE_URL_FILE, or [store] database_url)"
                );
                return ExitCode::from(2);
            }
            Err(code) => return code,
        },
    };
    eprintln!(
        "copying {} into {}",
        args.from.display(),
        crate::store::copy::target_location(&url)
    );
    match run(&args, &url).await {
        Ok(report) => {
            print_report(&report, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("store copy: {e}");
            if cut_short(&e) {
                eprintln!(
                    "the batches committed so far stay, and no batch is half-written: \
                     run the same command again to finish the copy"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the copy may have stopped part way (rather than refusing before it started).
fn cut_short(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::DataDir { .. }
            | StoreError::OlderSchema { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::DatabaseUrl { .. }
    )
}

/// The configured `database_url`, read as the relay reads it (secrets other than it are not
/// read); the exit code of a configuration that cannot be used.
fn configured_url(config_file: Option<PathBuf>) -> Result<Option<String>, ExitCode> {
    let settings = tool_settings(config_file.as_deref(), false).map_err(|e| config_failure(&e))?;
    Ok(settings
        .store
        .database_url
        .map(|url| url.expose().to_owned()))
}

async fn run(args: &CopyArgs, url: &str) -> Result<CopyReport, StoreError> {
    let source = SqliteStore::export(&args.from)?;
    let target = copy::open_target(url).await?;
    let mut progress = ProgressLines::default();
    copy::copy(&source, &target, args.batch, &mut |p| progress.tell(p)).await
}

/// Progress on stderr: a stage's line at most once a second, and always its last.
#[derive(Default)]
struct ProgressLines {
    last: Option<Instant>,
}

impl ProgressLines {
    const EVERY: Duration = Duration::from_secs(1);

    fn tell(&mut self, p: Progress) {
        let finished = p.done >= p.total;
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if finished || due {
            eprintln!("copying {}: {} of {}", p.stage.describe(), p.done, p.total);
            self.last = (!finished).then(Instant::now);
        }
    }
}

fn print_report(report: &CopyReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    println!("{:<32}  {:>10}  {:>13}", "", "copied", "already there");
    for (name, tally) in report.rows() {
        println!(
            "{:<32}  {:>10}  {:>13}",
            name, tally.copied, tally.already_there
        );
    }
    if report.nothing_copied() {
        println!("nothing new: the target already holds everything the source does");
    }
}
