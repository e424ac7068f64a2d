//! Resolve: email in, ProsperStack subscriber (id and, when known, current property values) out.
//!
//! In: the emails of the jobs delivery is about to send (or their platform-ID keys, for
//! subscribers known only by platform ID, looked up by `GET /v1/subscribers?platform_id=…`),
//! and the size of the whole backlog.
//! Out: [`Resolution`] per email, from a moka cache (positive entries for `subscriber_ttl`,
//! negative "no such subscriber" entries for the short `negative_ttl`), filled either by one
//! look-up per email (`GET /v1/subscribers?email=…`) or by paging the whole subscriber list
//! 100 at a time (the directory warm-up) when that is cheaper.
//!
//! Which to use is a ski-rental choice made with what is known (see [`should_warm`] and
//! [`walking_pays`]), so that resolving costs about the better of the two, the account's size
//! unknown in advance. With a directory size known from a complete walk, page it when more
//! emails are unresolved than it has pages. Without one, fetch a first page once at least
//! [`MIN_PROBE`] emails are unresolved, then after each page estimate the directory's size from
//! how many of the batch's emails the pages held so far ([`estimated_pages`]), and walk on
//! only while the estimated pages left cost less than looking up the backlog emails still
//! missing (the batch is a sample of the backlog: its misses are scaled up). A walk also ends
//! once it found every email of a batch that is the whole backlog. A walk that stopped records
//! its estimate, so another waits until the backlog outgrows it.
//! After a complete walk, emails it did not find are cached as missing. A walk indexes every
//! subscriber by its platform ID too, so it finds platform-ID keys as it finds emails.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::identify::{email_key, platform_id_in, platform_id_key};
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, Client, Subscriber};

/// Subscribers a list page returns.
pub const PAGE_SIZE: u64 = 100;
/// Fewer unresolved emails than this are looked up without a walk: a probe page would cost
/// more than a fifth of their look-ups.
pub const MIN_PROBE: u64 = 5;
/// A walk whose size is unknown pages at least this share of the backlog's look-ups before it
/// judges: when look-ups win, such a probe costs at most a twentieth more; when walking wins, it
/// keeps one unlucky page that held none of the emails from sending them all to look-ups (100
/// emails in a 25-page directory cost 101 requests for 25 when a single empty page decided).
pub const PROBE_SHARE: f64 = 0.05;

/// A subscriber as the relay knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    pub id: String,
    /// Current property values by key, when the relay has seen them (from a list page or the
    /// answer to its last update); lets delivery skip updates that would change nothing.
    pub values: Option<Arc<Map<String, Value>>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    Found(Known),
    /// ProsperStack has no subscriber with this email (yet).
    Missing,
}

/// What a directory walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkReport {
    pub pages: u64,
    pub found: u64,
    pub complete: bool,
}

pub struct Resolver {
    found: TtlCache<Known>,
    missing: TtlCache<()>,
    /// Email → the platform-ID key that found its subscriber when the email found no one.
    aliases: TtlCache<String>,
    /// The directory's size in pages: exact after a complete walk, estimated after one that
    /// stopped (0: never walked).
    directory_pages: AtomicU64,
    /// Whether `directory_pages` is a complete walk's count.
    directory_exact: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A moka cache by email key ([`email_key`]: any case finds the same entry) whose entries
/// expire on the relay's clock. Moka's own time-to-live (on its
/// internal clock) only reclaims memory; whether an entry is still good is decided here, so a
/// test on a paused clock sees a TTL pass exactly when the relay would.
struct TtlCache<T> {
    entries: Cache<String, (T, Instant)>,
    ttl: Duration,
    clock: SharedClock,
}

impl<T: Clone + Send + Sync + 'static> TtlCache<T> {
    fn new(ttl: Duration, clock: SharedClock) -> TtlCache<T> {
        TtlCache {
            entries: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(ttl)
                .build(),
            ttl,
            clock,
        }
    }

    async fn get(&self, email: &str) -> Option<T> {
        let key = email_key(email);
        let (value, expires) = self.entries.get(&key).await?;
        if expires > self.clock.now() {
            return Some(value);
        }
        self.entries.invalidate(&key).await;
        None
    }

    async fn insert(&self, email: &str, value: T) {
        let expires = self.clock.now() + self.ttl;
        self.entries
            .insert(email_key(email), (value, expires))
            .await;
    }

    async fn invalidate(&self, email: &str) {
        self.entries.invalidate(&email_key(email)).await;
    }
}

/// The warm-up rule: page the directory when `unresolved` emails would cost more look-ups than
/// the listing costs pages. `known_pages` is the size of the last complete walk, if any.
pub fn should_warm(unresolved: u64, known_pages: Option<u64>) -> bool {
    match known_pages {
        Some(pages) => unresolved > pages,
        // Unknown size: a first page is worth a look once it costs at most a fifth of the
        // look-ups it may save; the walk itself stops as soon as it stops paying off.
        None => unresolved >= MIN_PROBE,
    }
}

impl Resolver {
    pub fn new(
        ttl: Duration,
        negative_ttl: Duration,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Resolver {
        Resolver {
            found: TtlCache::new(ttl, clock.clone()),
            aliases: TtlCache::new(ttl, clock.clone()),
            missing: TtlCache::new(negative_ttl, clock),
            directory_pages: AtomicU64::new(0),
            directory_exact: AtomicBool::new(false),
            metrics,
        }
    }

    /// The cached answer for an email, if any.
    pub async fn cached(&self, email: &str) -> Option<Resolution> {
        if let Some(known) = self.found.get(email).await {
            self.metrics.cache_lookup("subscriber", true);
            return Some(Resolution::Found(known));
        }
        if self.missing.get(email).await.is_some() {
            self.metrics.cache_lookup("subscriber", true);
            return Some(Resolution::Missing);
        }
        self.metrics.cache_lookup("subscriber", false);
        None
    }

    /// Cached answer, else look-ups by email (cached either way): its key first, then each
    /// other spelling it was sent with, since ProsperStack's email filter may compare exactly
    /// and a subscriber is stored in whatever case the payment processor had.
    pub async fn resolve(
        &self,
        client: &Client,
        email: &str,
        spellings: &[String],
    ) -> Result<Resolution, ApiError> {
        if let Some(r) = self.cached(email).await {
            return Ok(r);
        }
        if let Some(platform_id) = platform_id_in(email) {
            return self.look_up_platform_id(client, email, platform_id).await;
        }
        let key = email_key(email);
        let others = spellings.iter().filter(|s| s.as_str() != key);
        for spelling in std::iter::once(&key).chain(others) {
            if let Some(subscriber) = client.find_subscriber_by_email(spelling).await? {
                self.metrics.subscriber_resolved("lookup");
                return Ok(Resolution::Found(self.remember(email, &subscriber).await));
            }
        }
        self.missing.insert(email, ()).await;
        Ok(Resolution::Missing)
    }

    /// `GET /v1/subscribers?platform_id=…` for the queue key `key`, cached like an email.
    async fn look_up_platform_id(
        &self,
        client: &Client,
        key: &str,
        platform_id: &str,
    ) -> Result<Resolution, ApiError> {
        match client.find_subscriber_by_platform_id(platform_id).await? {
            Some(subscriber) => {
                self.metrics.subscriber_resolved("platform_id");
                Ok(Resolution::Found(self.remember(key, &subscriber).await))
            }
            None => {
                self.missing.insert(key, ()).await;
                Ok(Resolution::Missing)
            }
        }
    }

    /// For an email that finds no subscriber: the subscriber with `platform_id`, if any; the
    /// email is then remembered as an alias of that platform ID ([`Resolver::alias_of`]).
    pub async fn resolve_platform_id_for(
        &self,
        client: &Client,
        email: &str,
        platform_id: &str,
    ) -> Result<Resolution, ApiError> {
        let key = platform_id_key(platform_id);
        let resolution = self.resolve(client, &key, &[]).await?;
        if let Resolution::Found(_) = &resolution {
            self.aliases.insert(email, key).await;
        }
        Ok(resolution)
    }

    /// The platform-ID key that found the subscriber of an email that found no one, if any.
    pub async fn alias_of(&self, email: &str) -> Option<String> {
        self.aliases.get(email).await
    }

    /// Records a subscriber's current state (from a list page or an update's answer), under
    /// `email` (a queue key) and under its platform ID's key too.
    pub async fn remember(&self, email: &str, subscriber: &Subscriber) -> Known {
        let known = Known {
            id: subscriber.id.clone(),
            values: Some(Arc::new(subscriber.values())),
        };
        self.missing.invalidate(email).await;
        self.found.insert(email, known.clone()).await;
        if let Some(platform_id) = subscriber.platform_id.as_deref() {
            let key = platform_id_key(platform_id);
            if key != email {
                self.missing.invalidate(&key).await;
                self.found.insert(&key, known.clone()).await;
            }
        }
        known
    }

    /// Forgets an email (its subscriber was deleted, or an update answered 404).
    pub async fn forget(&self, email: &str) {
        // An email resolved through a platform ID forgets that subscriber too: it is the same.
        if let Some(alias) = self.aliases.get(email).await {
            self.found.invalidate(&alias).await;
            self.aliases.invalidate(email).await;
        }
        self.found.invalidate(email).await;
        self.missing.invalidate(email).await;
    }

    /// Before a batch: warms the cache by paging the directory when the rule says it is
    /// cheaper than looking up each email. `sample` is the batch's emails, `backlog` the number
    /// of emails queued in all (the batch's unresolved share is extrapolated to it).
    pub async fn prepare(
        &self,
        client: &Client,
        sample: &[String],
        backlog: u64,
    ) -> Result<Option<WalkReport>, ApiError> {
        let mut wanted = HashSet::new();
        for email in sample {
            if self.found.get(email).await.is_none() && self.missing.get(email).await.is_none() {
                wanted.insert(email_key(email));
            }
        }
        if sample.is_empty() || wanted.is_empty() {
            return Ok(None);
        }
        let unresolved =
            (wanted.len() as u64 * backlog.max(sample.len() as u64)) / sample.len() as u64;
        let known_pages = match self.directory_pages.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        };
        if !should_warm(unresolved, known_pages) {
            return Ok(None);
        }
        let plan = WalkPlan {
            // The sample stands for the whole backlog: finding all of it ends the walk early
            // only when it is the whole backlog.
            stop_when_found: backlog <= sample.len() as u64,
            scale: unresolved as f64 / wanted.len() as f64,
            // A complete walk's count is exact: no need to judge as it goes.
            judge: !self.directory_exact.load(Ordering::Relaxed),
        };
        let report = self.walk(client, &wanted, sample, &plan).await?;
        if !report.complete && !plan.stop_when_found {
            // Stopped because looking up the rest is cheaper: remember the directory's
            // estimated size, so no walk starts again until the backlog outgrows it.
            let estimate = estimated_pages(report.pages, wanted.len() as u64, report.found);
            self.directory_pages
                .store(estimate.max(unresolved + 1), Ordering::Relaxed);
            self.directory_exact.store(false, Ordering::Relaxed);
        }
        Ok(Some(report))
    }

    /// Pages the subscriber list, caching everyone it sees; with `plan.judge`, stops as soon
    /// as the estimated rest of the walk costs more than looking up the emails still missing.
    async fn walk(
        &self,
        client: &Client,
        wanted: &HashSet<String>,
        sample: &[String],
        plan: &WalkPlan,
    ) -> Result<WalkReport, ApiError> {
        let mut report = WalkReport::default();
        let mut remaining = wanted.clone();
        let mut cursor: Option<String> = None;
        loop {
            let page = client.list_subscribers(cursor.as_deref()).await?;
            report.pages += 1;
            self.metrics.directory_page();
            for subscriber in &page.data {
                // Cached by key, so the queue's email finds it whatever case either side used.
                self.remember(&subscriber.email, subscriber).await;
                let by_email = remaining.remove(&email_key(&subscriber.email));
                let platform_key = subscriber.platform_id.as_deref().map(platform_id_key);
                let by_platform_id = platform_key.is_some_and(|k| remaining.remove(&k));
                if by_email || by_platform_id {
                    report.found += 1;
                    self.metrics.subscriber_resolved("directory");
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                report.complete = true;
                break;
            }
            let found_all = plan.stop_when_found && remaining.is_empty();
            let wanted = wanted.len() as u64;
            if found_all || (plan.judge && !walking_pays(&report, wanted, plan.scale)) {
                break;
            }
        }
        if report.complete {
            // A complete walk is proof: whoever it did not list does not exist yet.
            for email in sample.iter().filter(|e| remaining.contains(&email_key(e))) {
                self.missing.insert(email, ()).await;
            }
            self.directory_pages.store(report.pages, Ordering::Relaxed);
            self.directory_exact.store(true, Ordering::Relaxed);
        }
        Ok(report)
    }
}

/// How a walk goes: when it may stop, and how the sample stands for the backlog.
struct WalkPlan {
    stop_when_found: bool,
    /// Backlog emails each sample email stands for.
    scale: f64,
    /// Whether to judge after each page if walking on still pays (the size is unknown).
    judge: bool,
}

/// The directory's size in pages, estimated from a walk so far: `pages` pages held `found`
/// of the `wanted` sample emails, so the whole directory holds them all in about
/// `pages · wanted / found` pages. Smoothed by one on both sides, so no hit yet reads as
/// "large", not "infinite", and a single lucky hit does not read as "tiny".
pub fn estimated_pages(pages: u64, wanted: u64, found: u64) -> u64 {
    pages * (wanted + 1) / (found + 1)
}

/// Whether walking on is cheaper than looking up what is still missing: the estimated pages
/// left against the backlog emails not found yet (the sample's misses scaled up). This is the
/// ski-rental choice made with what the walk has seen: buying (walking) pays while it costs
/// less than renting (looking up) the rest. Once a sample standing for a larger backlog is all
/// found it says nothing of what is left; then walking on pays while each page so far found at
/// least one backlog email. Before any of that, a walk pages [`PROBE_SHARE`] of the backlog's
/// look-ups, so that an estimate is never made from too few pages.
pub fn walking_pays(report: &WalkReport, wanted: u64, scale: f64) -> bool {
    if (report.pages as f64) < (wanted as f64 * scale * PROBE_SHARE).floor() {
        return true;
    }
    if report.found >= wanted {
        return report.found as f64 * scale >= report.pages as f64;
    }
    let total = estimated_pages(report.pages, wanted, report.found).max(report.pages);
    let pages_left = (total - report.pages) as f64;
    pages_left < (wanted - report.found) as f64 * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known directory size: page when more emails are unresolved than pages cost.
    #[test]
    fn warm_rule_with_known_size() {
        assert!(should_warm(51, Some(50)));
        assert!(!should_warm(50, Some(50)));
        assert!(should_warm(3, Some(1)));
    }

    /// Unknown directory size: a first page once enough emails wait for it to cost at most a
    /// fifth of their look-ups.
    #[test]
    fn warm_rule_unknown_size() {
        assert!(!should_warm(MIN_PROBE - 1, None));
        assert!(should_warm(MIN_PROBE, None));
    }

    /// The estimate reads "large" from no hits, and the walk's size from steady hits.
    #[test]
    fn estimated_pages_table() {
        assert_eq!(estimated_pages(1, 30, 0), 31);
        assert_eq!(estimated_pages(1, 30, 11), 2);
        assert_eq!(estimated_pages(4, 200, 39), 20);
    }

    /// Resolving costs: the decision as a walk makes it (pages in creation order, the wanted
    /// emails at random among them), then look-ups for what the walk did not find.
    fn simulated_cost(wanted: u64, account: u64, rng: &mut impl rand::Rng) -> u64 {
        let spots = rand::seq::index::sample(rng, account as usize, wanted as usize).into_vec();
        let pages_in_account = account.div_ceil(PAGE_SIZE);
        let sample_size = wanted.min(200);
        let in_sample = |i: usize| (i as u64) < sample_size;
        let scale = wanted as f64 / sample_size as f64;
        if !should_warm(wanted, None) {
            return wanted;
        }
        let mut report = WalkReport::default();
        loop {
            report.pages += 1;
            let upto = (report.pages * PAGE_SIZE) as usize;
            let seen: Vec<usize> = (0..spots.len()).filter(|&i| spots[i] < upto).collect();
            let found_all = seen.len() as u64;
            report.found = seen.iter().filter(|&&i| in_sample(i)).count() as u64;
            if report.pages >= pages_in_account {
                return report.pages;
            }
            let whole = wanted <= 200 && report.found == sample_size;
            if whole || !walking_pays(&report, sample_size, scale) {
                return report.pages + (wanted - found_all);
            }
        }
    }

    /// One page that held none of a large backlog's emails is too little to judge by (100
    /// emails in a 25-page directory miss a given page one time in fifty); for a small backlog
    /// the first page may decide.
    #[test]
    fn one_empty_page_does_not_decide_for_a_large_backlog() {
        let first = WalkReport {
            pages: 1,
            found: 0,
            complete: false,
        };
        assert!(walking_pays(&first, 100, 1.0));
        assert!(walking_pays(&first, 50, 2.0));
        assert!(!walking_pays(&first, 10, 1.0));
    }

    /// Across account sizes unknown in advance, finding subscribers costs about the better of
    /// looking each up and paging the directory (at most 1.25 ×, over 40 placements each).
    #[test]
    fn walking_pays_stays_near_the_better_choice() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (wanted, account) in [
            (30u64, 250u64),
            (30, 2500),
            (30, 25000),
            (100, 2500),
            (300, 2500),
            (300, 25000),
            (3000, 25000),
        ] {
            let better = wanted.min(account.div_ceil(PAGE_SIZE));
            let worst = (0..40)
                .map(|_| simulated_cost(wanted, account, &mut rng))
                .max()
                .unwrap_or(0);
            let ratio = worst as f64 / better as f64;
            assert!(
                ratio <= 1.25,
                "{wanted} emails in {account}: {worst} requests for {better}"
            );
        }
    }
}
