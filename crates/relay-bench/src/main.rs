//! `relay-bench`: benchmarks a user can run, `relay-bench engage-sync|ingest|memory|fuzz [options]`
//! (from a checkout: `cargo run --release -p relay-bench -- engage-sync`).
//!
//! In: the command line ([`BenchArgs`]). Out: a report on stdout (a table, or JSON with `--json`)
//! whose figures are compared with the design's targets, and exit code 0 whatever the figures
//! (a missed target is a finding to read, not a crash); 1 when a benchmark could not run, or when
//! `fuzz` found a panic or a broken invariant (that is a bug, not a figure).
//!
//! Every benchmark runs on loopback only, against an in-process ProsperStack sandbox
//! ([`prosperstack_sandbox`]) and the real relay ([`prosperstack_relay::app::run`], or the real
//! binary for `memory`), in a temporary data directory removed afterwards. Every loop is bounded in count
//! and in time. Files: `engage_sync.rs` (requests spent against the floor), `diagnosis.rs`
//! (where the requests above it went), `naive.rs` (the
//! look-up-then-update baseline it is compared with), `workload.rs` (the Engage audience
//! workload), `ingest.rs` and `load.rs` (ingest throughput and latency; `ingest_stores.rs`, the
//! same by store, SQLite against PostgreSQL with one or more replicas), `memory.rs` (resident
//! memory with a large queue), `harness.rs` (starting sandbox and relay, temp dirs),
//! `recorder.rs` (the sandbox's request log), `import_lane.rs` (a live update's delay in the
//! middle of an import), `measure.rs` (targets, run info, thread figures),
//! `fuzz.rs` and `fuzz/` (generated hostile inputs through the relay's parsing, signature,
//! normalisation and typing functions).

mod diagnosis;
mod engage_sync;
mod fuzz;
mod harness;
mod import_lane;
mod ingest;
mod ingest_stores;
mod load;
mod measure;
mod memory;
mod naive;
mod recorder;
mod walk_cost;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use engage_sync::EngageArgs;
pub use fuzz::FuzzArgs;
pub use import_lane::LaneArgs;
pub use ingest::IngestArgs;
pub use memory::MemoryArgs;
pub use walk_cost::WalkArgs;

/// `relay-bench …`
#[derive(Debug, Parser)]
#[command(
    name = "relay-bench",
    version,
    about = "Benchmarks of prosperstack-relay against its ProsperStack sandbox"
)]
pub struct BenchArgs {
    /// Print the report as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub which: Benchmark,
}

#[derive(Debug, Subcommand)]
pub enum Benchmark {
    /// Upstream requests, 429s and drain time for an Engage audience sync, against the floor
    /// and against a naive relay (look-up + update per event).
    EngageSync(EngageArgs),
    /// Ingest throughput and latency of the relay (durable acknowledgement) against a bare
    /// axum handler, then p99 latency at a fixed rate.
    Ingest(IngestArgs),
    /// Resident memory of the real binary with a large queue and upstream down.
    Memory(MemoryArgs),
    /// Generated hostile inputs through body parsing, signature checking, Identify
    /// normalisation and value typing, in-process; exit code 1 on any panic or broken invariant.
    Fuzz(FuzzArgs),
    /// Requests spent finding subscribers for a burst of distinct emails, against the better
    /// of looking each up and paging the directory, across account sizes.
    WalkCost(WalkArgs),
    /// How long a live Identify waits when posted in the middle of a large import's delivery.
    ImportLane(LaneArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    run(BenchArgs::parse()).await
}

/// Runs the chosen benchmark and prints its report.
async fn run(args: BenchArgs) -> ExitCode {
    // The relay runs in-process: its logs would drown the report, so they are off unless asked.
    if std::env::var_os("RUST_LOG").is_some() {
        prosperstack_relay::telemetry::init(prosperstack_relay::config::LogFormat::Text);
    }
    let mut found_bugs = false;
    let result = match args.which {
        Benchmark::EngageSync(a) => engage_sync::run(a).await.map(|r| emit(&r, args.json)),
        Benchmark::Ingest(a) if !a.stores.is_empty() => {
            ingest_stores::run(a).await.map(|r| emit(&r, args.json))
        }
        Benchmark::Ingest(a) => ingest::run(a).await.map(|r| emit(&r, args.json)),
        Benchmark::Memory(a) => memory::run(a).await.map(|r| emit(&r, args.json)),
        Benchmark::WalkCost(a) => walk_cost::run(a).await.map(|r| emit(&r, args.json)),
        Benchmark::ImportLane(a) => import_lane::run(a).await.map(|r| emit(&r, args.json)),
        // CPU-bound and synchronous: it runs on this thread, nothing else is scheduled meanwhile.
        Benchmark::Fuzz(a) => fuzz::run(a).map(|r| {
            emit(&r, args.json);
            if !r.clean() {
                found_bugs = true;
            }
        }),
    };
    match result {
        Ok(()) if found_bugs => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A report prints itself as text; `--json` prints its serde form.
trait Report: serde::Serialize {
    fn print_text(&self);
}

fn emit(report: &impl Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot render the report as JSON: {e}"),
        }
    } else {
        report.print_text();
    }
}

/// Why a benchmark could not run (not: a missed target).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("ProsperStack client: {0}")]
    Api(#[from] prosperstack_relay::prosperstack::ApiError),
    #[error("store: {0}")]
    Store(#[from] prosperstack_relay::store::StoreError),
    #[error("configuration: {0}")]
    Config(#[from] prosperstack_relay::config::ConfigError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] prosperstack_sandbox::SandboxError),
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{BenchArgs, Benchmark};

    /// The documented command lines parse, `--json` before or after the benchmark's name.
    #[test]
    fn parses_bench_commands() {
        let args = BenchArgs::try_parse_from(["b", "--json", "engage-sync", "--subscribers", "10"])
            .expect("parses");
        assert!(args.json);
        assert!(matches!(args.which, Benchmark::EngageSync(_)));
        assert!(BenchArgs::try_parse_from(["b", "ingest", "--seconds", "3", "--json"]).is_ok());
        let stores = ["b", "ingest", "--stores", "sqlite,postgres,postgres-2"];
        assert!(BenchArgs::try_parse_from(stores).is_ok());
        assert!(BenchArgs::try_parse_from(["b", "memory", "--events", "1000"]).is_ok());
        assert!(
            BenchArgs::try_parse_from(["b", "engage-sync", "--set", "A=b", "--set", "C=d"]).is_ok()
        );
        assert!(BenchArgs::try_parse_from(["b", "nonsense"]).is_err());
        let pg = [
            "b",
            "engage-sync",
            "--replicas",
            "2",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/test",
        ];
        match BenchArgs::try_parse_from(pg).map(|a| a.which) {
            Ok(Benchmark::EngageSync(e)) => {
                assert_eq!(e.replicas, 2);
                assert_eq!(
                    e.database_url.as_deref(),
                    Some("postgres://postgres@127.0.0.1:5432/test")
                );
            }
            other => panic!("engage-sync --replicas: {other:?}"),
        }
        match BenchArgs::try_parse_from(["b", "engage-sync"]).map(|a| a.which) {
            Ok(Benchmark::EngageSync(e)) => assert_eq!((e.replicas, e.database_url), (1, None)),
            other => panic!("engage-sync: {other:?}"),
        }
        assert!(BenchArgs::try_parse_from(["b", "engage-sync", "--replicas", "0"]).is_err());
        let fuzz = [
            "b",
            "fuzz",
            "--executions",
            "10",
            "--seed",
            "1",
            "--target",
            "signature",
        ];
        assert!(matches!(
            BenchArgs::try_parse_from(fuzz).map(|a| a.which),
            Ok(Benchmark::Fuzz(_))
        ));
        assert!(
            BenchArgs::try_parse_from(["b", "fuzz", "--target", "all", "--seconds", "30"]).is_ok()
        );
        assert!(BenchArgs::try_parse_from(["b", "fuzz", "--target", "nonsense"]).is_err());
    }
}
