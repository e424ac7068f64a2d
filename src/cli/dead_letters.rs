//! `dead-letters list | replay | purge`: the operator's hands on what delivery gave up on.
//!
//! In: the data directory (`RELAY_DATA_DIR` or `data_dir`; secrets are not read) and the
//! subcommand. Out: a table or JSON on stdout; replayed events queued again, purged letters gone.
//! Stays true: the store is opened shared (no directory lock, no schema upgrade), so the relay
//! may be running; it delivers what a replay queues.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::config_failure;
use crate::clock::{Clock, TokioClock};
use crate::config::{self, Settings};
use crate::store::{DeadLetter, SqliteStore, Store};

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (a table, or JSON with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters' original events back in the queue.
    Replay {
        /// Dead letter ids to replay (repeatable).
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<i64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters older than a duration (e.g. 30d).
    Purge {
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

pub(super) async fn dead_letters(config_file: Option<PathBuf>, cmd: DeadLetterCommand) -> ExitCode {
    // Only the data directory is needed, so secrets are not read; the relay may be running
    // (SQLite serialises writers).
    let settings =
        match Settings::load_without_secrets(config_file.as_deref(), &config::process_env) {
            Ok(s) => s,
            Err(e) => return config_failure(&e),
        };
    let store = match SqliteStore::open_shared(&settings.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        DeadLetterCommand::List { json } => store
            .dead_letters()
            .await
            .map(|letters| print_dead_letters(&letters, json)),
        DeadLetterCommand::Replay { ids, all } => {
            let chosen = if all { None } else { Some(ids) };
            store
                .replay_dead_letters(chosen, TokioClock.wall_ms())
                .await
                .map(|n| println!("replayed {n} dead letter(s); their events are queued again"))
        }
        DeadLetterCommand::Purge { older_than } => {
            let before = TokioClock.wall_ms() - older_than.as_millis() as i64;
            store
                .purge_dead_letters(before)
                .await
                .map(|n| println!("purged {n} dead letter(s)"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
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
