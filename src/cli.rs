//! The command line: what each subcommand takes and does.
//!
//! In: arguments (clap) and the environment. Out: an exit code. `serve` runs the relay (with
//! `--sandbox`, against a built-in ProsperStack simulator); `sandbox` runs the simulator alone;
//! `check-config` validates settings without serving; `healthcheck` asks a running relay's
//! `/healthz` (for container health checks, no curl needed); `dead-letters` inspects, replays
//! and purges dead letters in the data directory. (The benchmarks are their own binary,
//! `crates/relay-bench`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clock::{Clock, TokioClock};
use crate::config::{self, ConfigError, Settings};
use crate::store::{DeadLetter, SqliteStore, Store};
use prosperstack_sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

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
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Relay to a built-in ProsperStack simulator with demo data (no account needed).
    #[arg(long)]
    pub sandbox: bool,
    /// Where the built-in simulator listens with --sandbox.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub sandbox_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:4010", env = "SANDBOX_LISTEN")]
    pub listen: SocketAddr,
    /// Requests allowed per window and key.
    #[arg(long, default_value_t = 100)]
    pub rate_limit_requests: u32,
    /// The rate-limit window in seconds (fractions allowed, for scaled trials).
    #[arg(long, default_value_t = 60.0)]
    pub rate_limit_window_secs: f64,
    /// Start empty instead of with the demo subscribers and properties.
    #[arg(long)]
    pub no_seed: bool,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to check; default: /healthz on RELAY_LISTEN (0.0.0.0 asked as 127.0.0.1).
    #[arg(long)]
    pub url: Option<String>,
}

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

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(cli.config, args).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::CheckConfig => match Settings::load(cli.config.as_deref(), &config::process_env) {
            Ok(s) => {
                println!(
                    "configuration is valid (upstream {}, listen {}, data {})",
                    s.api_url,
                    s.listen,
                    s.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Healthcheck(args) => healthcheck(cli.config, args).await,
        Command::DeadLetters(cmd) => dead_letters(cli.config, cmd).await,
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

async fn serve(config_file: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    let sandbox_url = format!("http://{}", args.sandbox_listen);
    // With --sandbox the simulator is the upstream, whatever the environment says.
    let env = |name: &str| -> Option<String> {
        if args.sandbox {
            match name {
                "PROSPERSTACK_API_URL" => return Some(sandbox_url.clone()),
                "PROSPERSTACK_API_KEY" => return Some(SANDBOX_API_KEY.to_owned()),
                "PROSPERSTACK_API_KEY_FILE" => return None,
                "RELAY_DATA_DIR" => {
                    return Some(
                        config::process_env(name).unwrap_or_else(|| "./data/sandbox".into()),
                    )
                }
                _ => {}
            }
        }
        config::process_env(name)
    };
    let settings = match Settings::load(config_file.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    crate::telemetry::init(settings.log_format);
    let shutdown = tokio_util::sync::CancellationToken::new();
    if args.sandbox {
        match start_sandbox(
            args.sandbox_listen,
            SandboxConfig::default(),
            shutdown.clone(),
        )
        .await
        {
            Ok(addr) => {
                tracing::info!(address = %addr, api_key = SANDBOX_API_KEY, state = %format!("http://{addr}/_sandbox/state"), "ProsperStack sandbox listening")
            }
            Err(e) => {
                tracing::error!(address = %args.sandbox_listen, error = %e, "cannot start the sandbox");
                return ExitCode::FAILURE;
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %settings.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let stop = shutdown.clone();
    let result = crate::app::run(settings, listener, async move {
        termination_signal().await;
        stop.cancel();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
}

async fn start_sandbox(
    addr: SocketAddr,
    config: SandboxConfig,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let sandbox = Sandbox::new(config);
    tokio::spawn(async move {
        if let Err(e) = sandbox.serve(listener, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "sandbox stopped");
        }
    });
    Ok(local)
}

async fn sandbox(args: SandboxArgs) -> ExitCode {
    crate::telemetry::init(crate::config::LogFormat::Text);
    if !(args.rate_limit_window_secs.is_finite() && args.rate_limit_window_secs > 0.0)
        || args.rate_limit_requests == 0
    {
        eprintln!("--rate-limit-requests and --rate-limit-window-secs must be more than 0");
        return ExitCode::from(2);
    }
    let config = SandboxConfig {
        rate_limit_requests: args.rate_limit_requests,
        rate_limit_window: Duration::from_secs_f64(args.rate_limit_window_secs),
        seed_demo: !args.no_seed,
        ..SandboxConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    match start_sandbox(args.listen, config, stop.clone()).await {
        Ok(addr) => {
            tracing::info!(address = %addr, api_key = SANDBOX_API_KEY, "ProsperStack sandbox listening")
        }
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    }
    termination_signal().await;
    stop.cancel();
    ExitCode::SUCCESS
}

/// SIGTERM (orchestrators) or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The URL `healthcheck` asks by default: `/healthz` on RELAY_LISTEN, any-address as loopback.
pub fn default_health_url(listen: Option<&str>) -> String {
    let listen = listen.unwrap_or("0.0.0.0:8080");
    let addr = listen
        .replacen("0.0.0.0:", "127.0.0.1:", 1)
        .replacen("[::]:", "[::1]:", 1);
    format!("http://{addr}/healthz")
}

async fn healthcheck(config_file: Option<PathBuf>, args: HealthcheckArgs) -> ExitCode {
    let listen = config::process_env("RELAY_LISTEN")
        .or_else(|| file_setting(config_file.as_deref(), "listen"));
    let url = args
        .url
        .unwrap_or_else(|| default_health_url(listen.as_deref()));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("healthy: {url}");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dead_letters(config_file: Option<PathBuf>, cmd: DeadLetterCommand) -> ExitCode {
    // Only the data directory is needed; the relay may be running (SQLite serialises writers).
    let data_dir = data_dir(config_file.as_deref());
    let store = match SqliteStore::open_shared(&data_dir) {
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

/// The data directory from the environment or the file, without requiring the other settings.
fn data_dir(config_file: Option<&std::path::Path>) -> PathBuf {
    config::process_env("RELAY_DATA_DIR")
        .or_else(|| file_setting(config_file, "data_dir"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./data"))
}

/// One top-level string setting of the config file, for commands that need only that one
/// (so they work even where the API key is not available, as in a health check).
fn file_setting(config_file: Option<&std::path::Path>, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_file?).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    table.get(key)?.as_str().map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The health check asks loopback when the relay listens on every address.
    #[test]
    fn health_url_from_listen() {
        assert_eq!(default_health_url(None), "http://127.0.0.1:8080/healthz");
        assert_eq!(
            default_health_url(Some("0.0.0.0:9000")),
            "http://127.0.0.1:9000/healthz"
        );
        assert_eq!(
            default_health_url(Some("10.1.2.3:80")),
            "http://10.1.2.3:80/healthz"
        );
        assert_eq!(
            default_health_url(Some("[::]:8080")),
            "http://[::1]:8080/healthz"
        );
    }

    /// The command line parses the documented forms.
    #[test]
    fn parses_commands() {
        assert!(Cli::try_parse_from(["p", "serve", "--sandbox"]).is_ok());
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay", "--all"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "replay", "--id", "3", "--id", "4"]).is_ok()
        );
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay"]).is_err());
        assert!(Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "30d"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "soon"]).is_err()
        );
    }
}
