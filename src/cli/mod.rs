//! The command line: what each subcommand takes, and which module runs it.
//!
//! In: arguments (clap) and the environment. Out: an exit code. One file per command group:
//! - [`serve`]: `serve` runs the relay (with `--sandbox`, against a built-in ProsperStack
//!   simulator); `sandbox` runs the simulator alone;
//! - [`check_config`]: `check-config` refuses what `serve` would refuse at start (settings, an
//!   unwritable data directory) without serving;
//! - [`health`]: `healthcheck` asks a running relay's `/healthz` (for container health checks,
//!   no curl needed);
//! - [`dead_letters`]: `dead-letters` inspects, replays and purges dead letters in the data
//!   directory;
//! - [`doctor`]: `doctor` checks a setup against the real API (at most 2 requests);
//! - [`preview`]: `preview` shows how a payload would map, sending nothing;
//! - [`status`]: `status` shows what a running relay is doing, from its store;
//! - [`import`]: `import` queues history from files (Segment exports, CSV) behind live events.
//! - [`store_copy`]: `store copy` moves a SQLite data directory into PostgreSQL.
//!
//! (The benchmarks are their own binary, `crates/relay-bench`.)
//!
//! Every command reads settings through [`Settings`](crate::config::Settings); `healthcheck` and
//! `dead-letters` load them without secrets, which they do not need. An invalid configuration
//! exits 2 with one line (`healthcheck`: 1, as container runtimes reserve 2).

mod check_config;
mod dead_letters;
mod doctor;
mod health;
mod import;
mod preview;
mod serve;
mod status;
mod store_copy;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use clap::{Parser, Subcommand};

use crate::budget::Budget;
use crate::clock::TokioClock;
use crate::config::{self, ConfigError, ProsperStackSettings};
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, ApiKey, Client};

pub use dead_letters::{DeadLetterCommand, DeadLettersArgs};
pub use health::{default_health_url, HealthcheckArgs};
pub use import::ImportArgs;
pub use preview::PreviewArgs;
pub use serve::{termination_signal, SandboxArgs, ServeArgs};
pub use status::StatusArgs;
pub use store_copy::{CopyArgs, StoreArgs, StoreCommand};

#[derive(Debug, Parser)]
#[command(
    name = "prosperstack-relay",
    version,
    about = "Segment Identify calls in, ProsperStack subscriber properties out"
)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Run the ProsperStack API simulator alone.
    Sandbox(SandboxArgs),
    /// Check the configuration and exit (0: valid, 2: invalid).
    CheckConfig,
    /// Ask a running relay's /healthz; exit 0 when healthy, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Inspect, replay and purge dead letters.
    DeadLetters(DeadLettersArgs),
    /// Check the configuration, the store and ProsperStack with this key (at most 2 requests);
    /// exit 1 on any problem.
    Doctor,
    /// Show how a Segment payload would map to ProsperStack properties, sending nothing.
    Preview(PreviewArgs),
    /// What a running relay is doing: queue states, budget, ETA, upstream, dead letters.
    Status(StatusArgs),
    /// Queue history from files (a Segment export as NDJSON or a JSON array, or a CSV with an
    /// email column and one column per trait) behind live events, then follow its delivery.
    Import(ImportArgs),
    /// Move a store's contents between backends (`store copy`: SQLite into PostgreSQL).
    Store(StoreArgs),
}

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::serve(cli.config, args).await,
        Command::Sandbox(args) => serve::sandbox(args).await,
        Command::CheckConfig => check_config::check_config(cli.config.as_deref()),
        Command::Healthcheck(args) => health::healthcheck(cli.config, args).await,
        Command::DeadLetters(args) => dead_letters::dead_letters(cli.config, args).await,
        Command::Doctor => doctor::doctor(cli.config).await,
        Command::Preview(args) => preview::preview(cli.config, args).await,
        Command::Status(args) => status::status(cli.config, args).await,
        Command::Import(args) => import::import(cli.config, args).await,
        Command::Store(args) => store_copy::store(cli.config, args).await,
    }
}

/// A configuration that cannot be used: its one line on stderr, exit 2.
fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// The data directory `serve --sandbox` uses: the process environment, except that
/// `RELAY_DATA_DIR` defaults to `./data/sandbox` (tools given `--sandbox` look there too).
fn sandbox_data_env(name: &str) -> Option<String> {
    match name {
        "RELAY_DATA_DIR" => {
            Some(config::process_env(name).unwrap_or_else(|| SANDBOX_DATA_DIR.into()))
        }
        _ => config::process_env(name),
    }
}

/// Settings for a tool that needs no secrets (they are not read): with `sandbox`, the data
/// directory `serve --sandbox` uses. For `dead-letters`, `status` and the like.
fn tool_settings(
    config_file: Option<&std::path::Path>,
    sandbox: bool,
) -> Result<crate::config::Settings, ConfigError> {
    let env: config::Env<'_> = if sandbox {
        &sandbox_data_env
    } else {
        &config::process_env
    };
    crate::config::Settings::load_without_secrets(config_file, env)
}

/// The configured store for a tool beside a running relay (see [`tool_settings`]); on failure,
/// the exit code after saying why (2 for settings, 1 for the store).
async fn tool_store(
    config_file: Option<&std::path::Path>,
    sandbox: bool,
) -> Result<std::sync::Arc<dyn crate::store::Store>, ExitCode> {
    let settings = tool_settings(config_file, sandbox).map_err(|e| config_failure(&e))?;
    crate::app::open_store_shared(&settings).await.map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// Where `serve --sandbox` keeps its queue when `RELAY_DATA_DIR` is not set.
const SANDBOX_DATA_DIR: &str = "./data/sandbox";

/// A ProsperStack client for a tool: the configured URL, key, verb and pace, its own budget
/// and metrics (a tool's few requests are its own).
fn upstream_client(upstream: &ProsperStackSettings) -> Result<Client, ApiError> {
    let key = upstream.require_api_key().map_err(|e| ApiError::Rejected {
        status: 0,
        message: e.to_string(),
    })?;
    let budget = Budget::new(
        upstream.rate_limit_requests,
        upstream.rate_limit_window,
        TokioClock::shared(),
    );
    let client = Client::new(
        upstream.api_url.clone(),
        key.clone(),
        Arc::new(budget),
        Arc::new(Metrics::new()),
        upstream.request_timeout,
    )?;
    Ok(client.with_update_method(upstream.update_method))
}

/// `text` with the API key, and its basic-auth form, replaced: what a tool prints may quote a
/// server's message, and a server (or a proxy) could echo either.
fn hide_key(text: &str, key: Option<&ApiKey>) -> String {
    let Some(key) = key else {
        return text.to_owned();
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", key.expose()));
    text.replace(key.expose(), "[API key]")
        .replace(&basic, "[API key]")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line parses the documented forms.
    #[test]
    fn parses_commands() {
        assert!(Cli::try_parse_from(["p", "serve", "--sandbox"]).is_ok());
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay", "--all"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "replay", "--id", "3", "--id", "4"]).is_ok()
        );
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay"]).is_err());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "replay", "--id", "1", "--all"]).is_err()
        );
        assert!(Cli::try_parse_from(["p", "dead-letters", "--sandbox", "list"]).is_ok());
        assert!(Cli::try_parse_from(["p", "dead-letters", "list", "--sandbox"]).is_ok());
        assert!(Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "30d"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "soon"]).is_err()
        );
        assert!(Cli::try_parse_from(["p", "store", "copy", "--from", "d", "--to", "u"]).is_ok());
        assert!(Cli::try_parse_from(["p", "store", "copy", "--to", "u"]).is_err());
    }
}
