//! `relay-bench fuzz`: hostile inputs through the relay's own parsing, signature, normalisation
//! and typing functions, in-process, on the stable toolchain (no cargo-fuzz, no nightly).
//!
//! In: [`FuzzArgs`]: targets, a seed, a bound in executions and/or seconds. Out: a [`FuzzReport`]:
//! executions per target and in all, executions/s, the slowest input, and every panic and broken
//! invariant with what reproduces it (target, seed, iteration, the input escaped and truncated,
//! and with `--crashes` a file `--replay` runs again).
//!
//! Stays true: input `n` of a target is a pure function of (seed, target, n) and the corpus
//! compiled in, so `--target T --seed S --from N --executions 1` regenerates it; each execution
//! runs under `catch_unwind`, with the panic hook silenced on the fuzzing thread only (other threads,
//! e.g. parallel tests, keep theirs) and restored afterwards; the loop is bounded in count and time.
//! There is no coverage feedback (that needs instrumentation stable Rust does not offer): the
//! search is as good as the mutations; the report counts the paths inputs took instead. A hang
//! is not caught (the time bound is checked between executions); the slowest input is reported.
//!
//! Files: `fuzz/corpus.rs` (seeds), `fuzz/scalars.rs`, `fuzz/mutate.rs` and `fuzz/text.rs`
//! (values, events and bodies), `fuzz/targets.rs` (targets, inputs, the sandbox oracle),
//! `fuzz/body.rs` and `fuzz/events.rs` (the calls and their invariants), `fuzz/panics.rs`
//! (catching and locating panics), `fuzz/report.rs` (findings, saving, the report).

mod body;
mod corpus;
mod events;
mod mutate;
mod panics;
mod report;
mod scalars;
mod targets;
mod text;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::measure::RunInfo;
use super::BenchError;
use panics::{panic_message, QuietPanics};
pub use report::FuzzReport;
use report::{Findings, Outcome, TargetFigures};
use targets::{Input, Lab, Target, Violation};

/// How long a run lasts when neither `--seconds` nor `--executions` is given.
const DEFAULT_SECONDS: f64 = 60.0;
/// How often a long run prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct FuzzArgs {
    /// Stop after this many seconds (default 60 when --executions is not given either).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Stop after this many executions, all targets together (taken in turn).
    #[arg(long)]
    pub executions: Option<u64>,
    /// Seed of the generated inputs (default: from the clock; the report prints it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The function(s) to fuzz.
    #[arg(long, value_enum, default_value_t = TargetChoice::All)]
    pub target: TargetChoice,
    /// First iteration number: with --seed, --target and --executions 1, regenerates one input.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Save each distinct finding's input in this directory (created if missing).
    #[arg(long)]
    pub crashes: Option<PathBuf>,
    /// Run one saved finding again, with the normal panic hook (RUST_BACKTRACE=1 for a backtrace).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetChoice {
    Body,
    Signature,
    Identify,
    Typing,
    All,
}

impl TargetChoice {
    fn targets(self) -> Vec<Target> {
        match self {
            TargetChoice::Body => vec![Target::Body],
            TargetChoice::Signature => vec![Target::Signature],
            TargetChoice::Identify => vec![Target::Identify],
            TargetChoice::Typing => vec![Target::Typing],
            TargetChoice::All => Target::ALL.to_vec(),
        }
    }
}

pub fn run(args: FuzzArgs) -> Result<FuzzReport, BenchError> {
    let lab = Lab::new().map_err(BenchError::Setup)?;
    if let Some(path) = &args.replay {
        return replay(&lab, path);
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    let max_executions = args.executions.unwrap_or(u64::MAX);
    let max_time = match (args.seconds, args.executions) {
        (Some(s), _) => Some(Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs_f64(DEFAULT_SECONDS)),
    };
    let chosen = args.target.targets();
    let mut figures: Vec<TargetFigures> = chosen
        .iter()
        .map(|t| TargetFigures {
            target: t.name(),
            ..TargetFigures::default()
        })
        .collect();
    let mut findings = Findings::new(args.crashes.clone());
    let quiet = QuietPanics::install();
    let start = Instant::now();
    let mut executions = 0u64;
    let mut iteration = args.from;
    let mut next_progress = PROGRESS_EVERY;
    let stopped_by = 'run: loop {
        for (target, fig) in chosen.iter().zip(figures.iter_mut()) {
            if executions >= max_executions {
                break 'run "executions";
            }
            if executions.is_multiple_of(256) {
                let elapsed = start.elapsed();
                if max_time.is_some_and(|t| elapsed >= t) {
                    break 'run "seconds";
                }
                if elapsed >= next_progress {
                    // A long run says it is alive (stderr: the report on stdout stays clean).
                    eprintln!(
                        "fuzz: {executions} executions in {:.0} s ({:.0}/s), {} distinct findings",
                        elapsed.as_secs_f64(),
                        per_sec(executions, elapsed.as_secs_f64()),
                        findings.list.len()
                    );
                    next_progress += PROGRESS_EVERY;
                }
            }
            let began = Instant::now();
            let outcome = execute(&lab, *target, seed, iteration, &quiet);
            let took = began.elapsed();
            fig.executions += 1;
            fig.busy_secs += took.as_secs_f64();
            if took.as_secs_f64() * 1000.0 > fig.slowest_ms {
                fig.slowest_ms = took.as_secs_f64() * 1000.0;
                fig.slowest_iteration = iteration;
            }
            match &outcome {
                Outcome::Passed(path) => *fig.paths.entry(path).or_default() += 1,
                Outcome::Found { kind, .. } => match *kind {
                    "panic" => fig.panics += 1,
                    "invariant" => fig.invariant_failures += 1,
                    _ => {}
                },
            }
            findings.record(*target, seed, iteration, outcome);
            executions += 1;
        }
        iteration += 1;
    };
    drop(quiet);
    let wall = start.elapsed().as_secs_f64();
    for fig in &mut figures {
        fig.executions_per_busy_sec = per_sec(fig.executions, fig.busy_secs);
    }
    Ok(FuzzReport {
        run: RunInfo::now(),
        seed,
        first_iteration: args.from,
        corpus_files: lab.corpus.len(),
        corpus_events: lab.corpus.events.len(),
        stopped_by,
        wall_secs: wall,
        executions,
        executions_per_sec: per_sec(executions, wall),
        panics: figures.iter().map(|f| f.panics).sum(),
        invariant_failures: figures.iter().map(|f| f.invariant_failures).sum(),
        generator_panics: findings.generator_panics,
        targets: figures,
        findings: findings.list,
    })
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Short enough to type back in.
    (nanos % 1_000_000_000_000) as u64
}

/// The RNG seed of input `iteration` of `target`: independent of every other input.
fn input_seed(seed: u64, target: Target, iteration: u64) -> u64 {
    let salt = match target {
        Target::Body => 0x0b0d,
        Target::Signature => 0x5197,
        Target::Identify => 0x1de7,
        Target::Typing => 0x7e9e,
    };
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ iteration.wrapping_mul(0xd1b5_4a32_d192_ed03) ^ salt
}

fn execute(lab: &Lab, target: Target, seed: u64, iteration: u64, quiet: &QuietPanics) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(input_seed(seed, target, iteration));
    let input = match catch_unwind(AssertUnwindSafe(|| target.generate(&mut rng, lab))) {
        Ok(input) => input,
        Err(payload) => {
            return Outcome::Found {
                kind: "generator panic",
                site: quiet.last_location(),
                message: panic_message(payload.as_ref()),
                input: None,
            }
        }
    };
    run_input(lab, input, quiet)
}

fn run_input(lab: &Lab, input: Input, quiet: &QuietPanics) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| input.execute(lab))) {
        Ok(Ok(path)) => Outcome::Passed(path),
        Ok(Err(Violation { invariant, detail })) => Outcome::Found {
            kind: "invariant",
            site: invariant.to_owned(),
            message: detail,
            input: Some(input),
        },
        Err(payload) => Outcome::Found {
            kind: "panic",
            site: quiet.last_location(),
            message: panic_message(payload.as_ref()),
            input: Some(input),
        },
    }
}

/// Runs one saved finding with the normal panic hook, so its message and backtrace show.
fn replay(lab: &Lab, path: &Path) -> Result<FuzzReport, BenchError> {
    let text = std::fs::read_to_string(path)?;
    let record: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Setup(format!("{}: not JSON: {e}", path.display())))?;
    let input: Input = serde_json::from_value(record["input"].clone())
        .map_err(|e| BenchError::Setup(format!("{}: no replayable input: {e}", path.display())))?;
    let seed = record["seed"].as_u64().unwrap_or_default();
    let iteration = record["iteration"].as_u64().unwrap_or_default();
    let target = input.target();
    let quiet = QuietPanics::recording_only();
    let start = Instant::now();
    let outcome = run_input(lab, input, &quiet);
    let took = start.elapsed().as_secs_f64();
    let mut fig = TargetFigures {
        target: target.name(),
        executions: 1,
        busy_secs: took,
        executions_per_busy_sec: per_sec(1, took),
        slowest_ms: took * 1000.0,
        slowest_iteration: iteration,
        ..TargetFigures::default()
    };
    match &outcome {
        Outcome::Passed(path) => {
            fig.paths.insert(path, 1);
        }
        Outcome::Found { kind, .. } => match *kind {
            "panic" => fig.panics = 1,
            _ => fig.invariant_failures = 1,
        },
    }
    let mut findings = Findings::new(None);
    findings.record(target, seed, iteration, outcome);
    Ok(FuzzReport {
        run: RunInfo::now(),
        seed,
        first_iteration: iteration,
        corpus_files: lab.corpus.len(),
        corpus_events: lab.corpus.events.len(),
        stopped_by: "replay",
        wall_secs: took,
        executions: 1,
        executions_per_sec: per_sec(1, took),
        panics: fig.panics,
        invariant_failures: fig.invariant_failures,
        generator_panics: 0,
        targets: vec![fig],
        findings: findings.list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: TargetChoice, executions: u64) -> FuzzArgs {
        FuzzArgs {
            seconds: None,
            executions: Some(executions),
            seed: Some(20_261_121),
            target,
            from: 0,
            crashes: None,
            replay: None,
        }
    }

    /// Two thousand executions (500 a target) find nothing (fixed seed: the same inputs each
    /// time); the 30 s run in CI and `relay-bench fuzz` itself go much further.
    #[test]
    fn every_target_runs_clean() {
        let report = run(args(TargetChoice::All, 2_000)).expect("runs");
        assert_eq!(report.executions, 2_000);
        for t in &report.targets {
            assert_eq!(t.executions, 500, "{}", t.target);
        }
        assert!(report.clean(), "{:#?}", report.findings);
    }

    /// One input regenerates from (seed, target, iteration), whatever ran before it.
    #[test]
    fn inputs_regenerate_from_their_iteration() {
        let lab = Lab::new().unwrap();
        let make = |n| {
            let mut rng = SmallRng::seed_from_u64(input_seed(9, Target::Body, n));
            Target::Body.generate(&mut rng, &lab).preview(usize::MAX)
        };
        assert_eq!(make(1234), make(1234));
        assert_ne!(make(1234), make(1235));
    }

    /// A panic is caught, located and reported with its input, and the run goes on.
    #[test]
    fn panics_are_caught_and_reported() {
        let lab = Lab::new().unwrap();
        let quiet = QuietPanics::install();
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Outcome {
            panic!("planted");
        }))
        .unwrap_or_else(|payload| Outcome::Found {
            kind: "panic",
            site: quiet.last_location(),
            message: panic_message(payload.as_ref()),
            input: Some(Target::Typing.generate(&mut SmallRng::seed_from_u64(1), &lab)),
        });
        drop(quiet);
        let mut findings = Findings::new(None);
        findings.record(Target::Typing, 1, 7, outcome);
        let f = &findings.list[0];
        assert_eq!(
            (f.kind, f.message.as_str(), f.iteration),
            ("panic", "planted", 7)
        );
        assert!(f.site.contains("fuzz.rs"), "{}", f.site);
        assert!(f.reproduce.contains("--seed 1 --from 7"));
    }

    /// A finding saved under `--crashes` replays from its file: same target, same input.
    #[test]
    fn saved_findings_replay() {
        let lab = Lab::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let input = Input::Typing(events::TypingInput {
            kind: prosperstack_relay::prosperstack::PropertyType::Date,
            value: serde_json::json!("2024-05-04"),
        });
        let mut findings = Findings::new(Some(dir.path().to_path_buf()));
        let found = Outcome::Found {
            kind: "invariant",
            site: "planted".into(),
            message: "for the test".into(),
            input: Some(input),
        };
        findings.record(Target::Typing, 3, 4, found);
        let path = findings.list[0].saved.clone().expect("saved");
        assert!(path.ends_with("typing-3-4.json"), "{path}");
        let report = replay(&lab, Path::new(&path)).unwrap();
        assert_eq!((report.executions, report.targets[0].target), (1, "typing"));
        // The relay handles this input correctly now: the replay passes.
        assert!(report.clean(), "{:#?}", report.findings);
    }
}
