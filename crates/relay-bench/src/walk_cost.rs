//! `relay-bench walk-cost`: what finding subscribers costs, against the better of looking each
//! one up and paging the whole directory, when the relay does not know the account's size.
//!
//! In: [`WalkArgs`]: numbers of distinct emails and account sizes. Out: a [`WalkReport`] with,
//! for each (emails, account) pair, the requests spent finding subscribers (look-ups + list
//! pages) against `min(emails, pages)`, and all requests against the floor (that, plus one
//! update each and the catalogue).
//!
//! How: for each pair, a fresh in-process sandbox holds the account (subscribers in creation
//! order, the wanted ones spread at random among them) with a scaled limit (100 per 1 s by
//! default), and a fresh relay (`app::run`, default settings) receives one Identify per wanted
//! email as Webhooks (Actions) batches of 500, all at once: a burst, as Segment sends one. The
//! run ends when the sandbox has applied every update.

use std::time::{Duration, Instant};

use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};

use super::harness::{relay_settings, start_sandbox, temp_dir, RunningRelay};
use super::measure::{RunInfo, Target};
use super::recorder::RequestKind;
use super::{BenchError, Report};

#[derive(Debug, Clone, Args)]
pub struct WalkArgs {
    /// Distinct emails in the burst (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [30, 300, 3000])]
    pub emails: Vec<usize>,
    /// Subscribers in the account (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [250, 2500, 25000])]
    pub accounts: Vec<usize>,
    /// Requests per window (the sandbox's and the relay's limit).
    #[arg(long, default_value_t = 100)]
    pub requests: u32,
    /// Window length in seconds (scaled: 1 s instead of ProsperStack's minute).
    #[arg(long, default_value_t = 1.0)]
    pub window_secs: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give up on one pair after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct WalkReport {
    pub run: RunInfo,
    pub cases: Vec<Case>,
    pub targets: Vec<Target>,
}

/// One (emails, account) pair.
#[derive(Debug, Serialize)]
pub struct Case {
    pub emails: usize,
    pub account: usize,
    pub pages_in_account: usize,
    pub lookups: usize,
    pub list_pages: usize,
    pub updates: usize,
    pub catalogue: usize,
    /// `min(emails, pages_in_account)`: the better of the two ways, known in hindsight.
    pub better_choice: usize,
    /// (look-ups + list pages) ÷ the better choice.
    pub finding_ratio: f64,
    /// All requests ÷ (the better choice + one update per email + the catalogue).
    pub total_ratio: f64,
    pub rate_limited: u64,
    pub seconds: f64,
}

pub async fn run(args: WalkArgs) -> Result<WalkReport, BenchError> {
    let mut cases = Vec::new();
    for &account in &args.accounts {
        for &emails in args.emails.iter().filter(|e| **e <= account) {
            cases.push(run_case(&args, emails, account).await?);
        }
    }
    let worst = |ratio: fn(&Case) -> f64| cases.iter().map(ratio).fold(0.0, f64::max);
    // The measure ("1.8 × the requests needed") counts every request, updates
    // included; finding alone is the stricter view of the same choice.
    let targets = vec![
        Target::at_most(
            "all requests ÷ the requests needed, worst case",
            worst(|c| c.total_ratio),
            1.2,
            "",
        ),
        Target::at_most(
            "finding subscribers ÷ the better of look-ups and pages, worst case",
            worst(|c| c.finding_ratio),
            1.25,
            "",
        ),
    ];
    Ok(WalkReport {
        run: RunInfo::now(),
        cases,
        targets,
    })
}

async fn run_case(args: &WalkArgs, emails: usize, account: usize) -> Result<Case, BenchError> {
    let window = Duration::from_secs_f64(args.window_secs);
    let sb = start_sandbox(args.requests, window, Instant::now()).await?;
    sb.sandbox
        .create_property("plan", "Plan", "subscriber", "text")
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let all: Vec<String> = (0..account)
        .map(|i| format!("member{i}@walk.example"))
        .collect();
    for email in &all {
        sb.sandbox.create_subscriber(email, "Member");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let wanted: Vec<String> = all.choose_multiple(&mut rng, emails).cloned().collect();

    let dir = temp_dir("walk", None)?;
    let settings = relay_settings(&sb.url, dir.path(), (args.requests, window), &[])?;
    let relay = RunningRelay::start(settings).await?;
    let started = Instant::now();
    post_burst(&relay.url, &wanted).await?;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    while sb.sandbox.stats().subscriber_updates < emails as u64 {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{emails} emails in {account}: not delivered in {} s",
                args.timeout_secs
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    relay.stop().await;
    let count = |kind| {
        sb.recorder
            .snapshot()
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    };
    let (lookups, list_pages) = (count(RequestKind::Lookup), count(RequestKind::ListPage));
    let (updates, catalogue) = (count(RequestKind::Update), count(RequestKind::Catalogue));
    let pages_in_account = account.div_ceil(100);
    let better_choice = emails.min(pages_in_account);
    let floor = better_choice + emails + 1;
    let total = lookups + list_pages + updates + catalogue;
    Ok(Case {
        emails,
        account,
        pages_in_account,
        lookups,
        list_pages,
        updates,
        catalogue,
        better_choice,
        finding_ratio: (lookups + list_pages) as f64 / better_choice as f64,
        total_ratio: total as f64 / floor as f64,
        rate_limited: sb.sandbox.stats().rate_limited_total,
        seconds,
    })
}

/// One Identify per email, as Webhooks (Actions) arrays of 500, posted at once.
async fn post_burst(relay_url: &str, emails: &[String]) -> Result<(), BenchError> {
    let http = reqwest::Client::new();
    for (chunk_no, chunk) in emails.chunks(500).enumerate() {
        let events: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, email)| {
                json!({"type": "identify", "userId": email, "messageId": format!("walk-{chunk_no}-{i}"),
                       "timestamp": "2026-01-01T00:00:00Z", "traits": {"email": email, "plan": "Pro"}})
            })
            .collect();
        let answer = http
            .post(format!("{relay_url}/v1/segment"))
            .json(&events)
            .send()
            .await?;
        if !answer.status().is_success() {
            return Err(BenchError::Setup(format!(
                "the relay answered {}",
                answer.status()
            )));
        }
    }
    Ok(())
}

impl Report for WalkReport {
    fn print_text(&self) {
        self.run.print("relay-bench walk-cost");
        println!();
        println!(
            "{:>7} {:>8} {:>6} | {:>8} {:>6} {:>8} | {:>7} {:>14} | {:>12} {:>5} {:>7}",
            "emails",
            "account",
            "pages",
            "look-ups",
            "pages",
            "updates",
            "better",
            "finding ÷ best",
            "total ÷ floor",
            "429s",
            "secs"
        );
        for c in &self.cases {
            println!(
                "{:>7} {:>8} {:>6} | {:>8} {:>6} {:>8} | {:>7} {:>14.2} | {:>12.3} {:>5} {:>7.1}",
                c.emails,
                c.account,
                c.pages_in_account,
                c.lookups,
                c.list_pages,
                c.updates,
                c.better_choice,
                c.finding_ratio,
                c.total_ratio,
                c.rate_limited,
                c.seconds
            );
        }
        println!();
        Target::print(&self.targets);
    }
}
