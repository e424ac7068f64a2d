//! The fuzz report: figures per target and in all, and the findings with what reproduces them.
//!
//! In: each execution's [`Outcome`]. Out: [`Finding`]s, one per distinct (target, kind, site),
//! printed to stderr when first seen (a long run shows them as they come) and saved as JSON
//! `--replay` reads when `--crashes` is given; the [`FuzzReport`] as text or JSON.
//! Stays true: a finding keeps its first input, escaped and truncated for people, exact in the
//! saved file; later executions at the same site only count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::targets::{truncate, Input, Target};
use crate::measure::RunInfo;
use crate::Report;

/// Characters of an input shown in a finding.
const PREVIEW_CHARS: usize = 1_500;

/// What a run did, and what it found.
#[derive(Debug, Serialize)]
pub struct FuzzReport {
    pub run: RunInfo,
    pub seed: u64,
    pub first_iteration: u64,
    pub corpus_files: usize,
    pub corpus_events: usize,
    /// `executions`, `seconds`, or `replay`.
    pub stopped_by: &'static str,
    pub wall_secs: f64,
    pub executions: u64,
    pub executions_per_sec: f64,
    pub panics: u64,
    pub invariant_failures: u64,
    /// Panics in the bench's own generators (a bug here, not in the relay).
    pub generator_panics: u64,
    pub targets: Vec<TargetFigures>,
    /// One entry per distinct finding (target, kind, where), with its first input.
    pub findings: Vec<Finding>,
}

impl FuzzReport {
    /// True when nothing was found: the exit code is 0.
    pub fn clean(&self) -> bool {
        self.panics == 0 && self.invariant_failures == 0 && self.generator_panics == 0
    }
}

#[derive(Debug, Default, Serialize)]
pub struct TargetFigures {
    pub target: &'static str,
    pub executions: u64,
    /// Time spent inside this target's executions (generation included).
    pub busy_secs: f64,
    pub executions_per_busy_sec: f64,
    pub panics: u64,
    pub invariant_failures: u64,
    pub slowest_ms: f64,
    pub slowest_iteration: u64,
    /// Executions by the path they took through the relay (accepted, refused, …): whether the
    /// inputs get past the error paths, which is all stable Rust lets us see of coverage.
    pub paths: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub target: &'static str,
    /// `panic`, `invariant` or `generator panic`.
    pub kind: &'static str,
    /// The panic's location, or the invariant's name.
    pub site: String,
    /// The panic message, or what the invariant saw.
    pub message: String,
    /// Executions that ended at this same site.
    pub count: u64,
    pub seed: u64,
    pub iteration: u64,
    pub input: String,
    pub reproduce: String,
    pub saved: Option<String>,
}

/// How one execution ended.
pub enum Outcome {
    Passed(&'static str),
    Found {
        kind: &'static str,
        site: String,
        message: String,
        input: Option<Input>,
    },
}

/// Distinct findings, the first input of each printed at once (a long run shows them as they
/// come) and saved when asked.
pub struct Findings {
    dir: Option<PathBuf>,
    by_site: BTreeMap<(&'static str, &'static str, String), usize>,
    pub list: Vec<Finding>,
    pub generator_panics: u64,
}

impl Findings {
    pub fn new(dir: Option<PathBuf>) -> Findings {
        Findings {
            dir,
            by_site: BTreeMap::new(),
            list: Vec::new(),
            generator_panics: 0,
        }
    }

    pub fn record(&mut self, target: Target, seed: u64, iteration: u64, outcome: Outcome) {
        let Outcome::Found {
            kind,
            site,
            message,
            input,
        } = outcome
        else {
            return;
        };
        if kind == "generator panic" {
            self.generator_panics += 1;
        }
        let key = (target.name(), kind, site.clone());
        if let Some(&i) = self.by_site.get(&key) {
            self.list[i].count += 1;
            return;
        }
        let mut finding = Finding {
            target: target.name(),
            kind,
            site,
            message: truncate(&message, PREVIEW_CHARS),
            count: 1,
            seed,
            iteration,
            input: input
                .as_ref()
                .map(|i| i.preview(PREVIEW_CHARS))
                .unwrap_or_else(|| "(not generated)".into()),
            reproduce: format!(
                "relay-bench fuzz --target {} --seed {seed} --from {iteration} --executions 1",
                target.name()
            ),
            saved: None,
        };
        if let (Some(dir), Some(input)) = (&self.dir, &input) {
            finding.saved = save(dir, &finding, &message, input);
        }
        if let Some(path) = &finding.saved {
            finding.reproduce = format!(
                "relay-bench fuzz --replay {path}   (or {})",
                finding.reproduce
            );
        }
        print_finding(&finding, &mut std::io::stderr());
        self.by_site.insert(key, self.list.len());
        self.list.push(finding);
    }
}

pub fn print_finding(f: &Finding, out: &mut impl std::io::Write) {
    let _ = writeln!(
        out,
        "FOUND {} in target {}: {}\n  {}\n  seed {}, iteration {}\n  input: {}\n  reproduce: {}",
        f.kind, f.target, f.site, f.message, f.seed, f.iteration, f.input, f.reproduce
    );
}

/// Writes a finding as JSON `--replay` reads; its path, or `None` (said on stderr) when it cannot.
pub fn save(dir: &Path, finding: &Finding, message: &str, input: &Input) -> Option<String> {
    let path = dir.join(format!(
        "{}-{}-{}.json",
        finding.target, finding.seed, finding.iteration
    ));
    let record = serde_json::json!({
        "kind": finding.kind,
        "site": finding.site,
        "message": message,
        "seed": finding.seed,
        "iteration": finding.iteration,
        "preview": input.preview(PREVIEW_CHARS),
        "input": input,
    });
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&record).unwrap_or_default(),
        )
    });
    match written {
        Ok(()) => Some(path.display().to_string()),
        Err(e) => {
            eprintln!("cannot save the finding in {}: {e}", path.display());
            None
        }
    }
}

impl Report for FuzzReport {
    fn print_text(&self) {
        self.run.print("bench fuzz");
        println!(
            "seed {} (iterations from {}), corpus: {} fixture files, {} events; stopped by {}",
            self.seed, self.first_iteration, self.corpus_files, self.corpus_events, self.stopped_by
        );
        println!(
            "{:<10} {:>12} {:>16} {:>7} {:>10} {:>20}",
            "target", "executions", "exec/s (busy)", "panics", "invariant", "slowest"
        );
        for t in &self.targets {
            println!(
                "{:<10} {:>12} {:>16.0} {:>7} {:>10} {:>10.2} ms (it. {})",
                t.target,
                t.executions,
                t.executions_per_busy_sec,
                t.panics,
                t.invariant_failures,
                t.slowest_ms,
                t.slowest_iteration
            );
        }
        for t in &self.targets {
            let paths: Vec<String> = t
                .paths
                .iter()
                .map(|(path, n)| {
                    format!(
                        "{path} {:.1}%",
                        100.0 * *n as f64 / t.executions.max(1) as f64
                    )
                })
                .collect();
            println!("  {} paths: {}", t.target, paths.join(", "));
        }
        println!(
            "total: {} executions in {:.1} s = {:.0} executions/s; {} panics, {} invariant failures{}",
            self.executions,
            self.wall_secs,
            self.executions_per_sec,
            self.panics,
            self.invariant_failures,
            if self.generator_panics > 0 {
                format!(", {} panics in the bench's generators", self.generator_panics)
            } else {
                String::new()
            }
        );
        if self.findings.is_empty() {
            println!("findings: none");
        }
        for f in &self.findings {
            println!("finding ({} executions):", f.count);
            print_finding(f, &mut std::io::stdout());
        }
    }
}
