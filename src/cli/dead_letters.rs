//! `dead-letters list | replay | purge`: the operator's hands on what delivery gave up on.
//!
//! In: the configured store (`database_url`, else the data directory: `RELAY_DATA_DIR` or
//! `data_dir`; with `--sandbox`, the one `serve --sandbox` uses; other secrets are not read)
//! and the subcommand. Out: a table or JSON on
//! stdout; replayed events queued again, purged letters gone. Exit 1 when the store cannot be
//! used or a replayed id names no dead letter (the others named are still replayed).
//! Stays true: the store is opened shared (no directory lock, no schema upgrade), so relays
//! may be running; the one delivering delivers what a replay queues.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::tool_store;
use crate::clock::{Clock, TokioClock};
use crate::store::{DeadLetter, Store, StoreError};

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Use the data directory `serve --sandbox` uses (./data/sandbox unless RELAY_DATA_DIR is set).
    #[arg(long, global = true)]
    pub sandbox: bool,
    #[command(subcommand)]
    pub command: DeadLetterCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (a table, or JSON with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters' original events back in the queue.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "all"]))]
    Replay {
        /// Dead letter ids to replay (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<i64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters older than a duration (e.g. 30d).
    Purge {
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

pub(super) async fn dead_letters(config_file: Option<PathBuf>, args: DeadLettersArgs) -> ExitCode {
    // Only the store is needed, so other secrets are not read; relays may be running (SQLite
    // serialises writers, PostgreSQL has transactions).
    let store = match tool_store(config_file.as_deref(), args.sandbox).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match args.command {
        DeadLetterCommand::List { json } => store
            .dead_letters()
            .await
            .map(|letters| print_dead_letters(&letters, json))
            .map_err(Failure::from),
        DeadLetterCommand::Replay { ids, all } => {
            replay(store.as_ref(), (!all).then_some(ids)).await
        }
        DeadLetterCommand::Purge { older_than } => {
            let before = TokioClock.wall_ms() - older_than.as_millis() as i64;
            store
                .purge_dead_letters(before)
                .await
                .map(|n| println!("purged {n} dead letter(s)"))
                .map_err(Failure::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Missing(line)) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
        Err(Failure::Store(e)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a dead-letters command did not do everything it was asked.
enum Failure {
    Store(StoreError),
    /// Ids that name no dead letter (the others were replayed).
    Missing(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// Replays the chosen dead letters (all when `None`); ids naming no dead letter are reported
/// after the others are replayed.
async fn replay(store: &dyn Store, ids: Option<Vec<i64>>) -> Result<(), Failure> {
    let (found, missing) = match ids {
        None => (None, Vec::new()),
        Some(ids) => {
            let known: Vec<i64> = store.dead_letters().await?.iter().map(|d| d.id).collect();
            let (found, missing) = ids.into_iter().partition(|id| known.contains(id));
            (Some(found), missing)
        }
    };
    let replayed = match &found {
        Some(found) if found.is_empty() => 0,
        _ => {
            store
                .replay_dead_letters(found, TokioClock.wall_ms())
                .await?
        }
    };
    println!("replayed {replayed} dead letter(s); their events are queued again");
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = missing.iter().map(i64::to_string).collect();
    Err(Failure::Missing(format!(
        "no dead letter with id {} (see `dead-letters list`)",
        missing.join(", ")
    )))
}

fn print_dead_letters(letters: &[DeadLetter], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(letters).unwrap_or_default()
        );
        return;
    }
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:>6}  {:<20}  {:<32}  {:>8}  {:>6}  reason",
        "id", "created (UTC)", "email", "attempts", "events"
    );
    for d in letters {
        let created = chrono::DateTime::from_timestamp_millis(d.created_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let props = if d.properties.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                d.properties.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        println!(
            "{:>6}  {:<20}  {:<32}  {:>8}  {:>6}  {}{}",
            d.id,
            created,
            d.email,
            d.attempts,
            d.events.len(),
            d.reason,
            props
        );
    }
}
