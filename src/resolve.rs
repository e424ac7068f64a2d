//! Resolve: email in, ProsperStack subscriber (id and, when known, current property values) out.
//!
//! In: the emails of the jobs delivery is about to send, and the size of the whole backlog.
//! Out: [`Resolution`] per email, from a moka cache (positive entries for `subscriber_ttl`,
//! negative "no such subscriber" entries for the short `negative_ttl`), filled either by one
//! look-up per email (`GET /v1/subscribers?email=…`) or by paging the whole subscriber list
//! 100 at a time (the directory warm-up) when that is cheaper.
//!
//! The warm-up rule (see [`should_warm`]): page the directory when the backlog holds more
//! unresolved emails than the listing would cost in requests. The cost is known once a full
//! listing has been seen (pages of the last complete walk); before that it is estimated as one
//! page per 100 unresolved emails. The batch delivery is about to send is a sample of the
//! backlog; a walk stops early once it has found every email it was after (when the batch is the
//! whole backlog), or when its pages are resolving fewer than one backlog email each (the
//! sample's hits scaled up to the backlog; judged after three pages, or later for a small sample,
//! once a paying walk would have found about three of its emails): the directory is much larger
//! than the backlog and look-ups are cheaper. Such a walk records the directory as at least twice the
//! backlog's size, so another walk waits until the backlog has grown that large.
//! After a complete walk, emails it did not find are cached as missing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::identify::email_key;
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, Client, Subscriber};

/// Subscribers a list page returns.
pub const PAGE_SIZE: u64 = 100;
/// Pages a walk fetches before it judges whether paging is paying off.
const PAGES_BEFORE_JUDGING: u64 = 3;

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
    /// Pages of the last complete directory walk (0: never walked).
    directory_pages: AtomicU64,
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
        // Unknown size: worth a try once a full page's worth of emails is waiting; the walk
        // itself stops when it stops paying off.
        None => unresolved >= PAGE_SIZE,
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
            missing: TtlCache::new(negative_ttl, clock),
            directory_pages: AtomicU64::new(0),
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

    /// Records a subscriber's current state (from a list page or an update's answer).
    pub async fn remember(&self, email: &str, subscriber: &Subscriber) -> Known {
        let known = Known {
            id: subscriber.id.clone(),
            values: Some(Arc::new(subscriber.values())),
        };
        self.missing.invalidate(email).await;
        self.found.insert(email, known.clone()).await;
        known
    }

    /// Forgets an email (its subscriber was deleted, or an update answered 404).
    pub async fn forget(&self, email: &str) {
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
        // The sample stands for the whole backlog: finding all of it ends the walk early
        // only when it is the whole backlog.
        let whole_backlog = backlog <= sample.len() as u64;
        let scale = unresolved as f64 / wanted.len() as f64;
        let report = self
            .walk(client, &wanted, sample, whole_backlog, scale)
            .await?;
        if !report.complete && !whole_backlog {
            // The walk stopped paying: remember how large the directory looks (at least
            // twice today's backlog), so no walk starts again until the backlog outgrows it.
            let estimate = report.pages * wanted.len() as u64 / report.found.max(1);
            self.directory_pages
                .store(estimate.max(2 * unresolved), Ordering::Relaxed);
        }
        Ok(Some(report))
    }

    /// Pages the subscriber list, caching everyone it sees.
    async fn walk(
        &self,
        client: &Client,
        wanted: &HashSet<String>,
        sample: &[String],
        stop_when_found: bool,
        scale: f64,
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
                if remaining.remove(&email_key(&subscriber.email)) {
                    report.found += 1;
                    self.metrics.subscriber_resolved("directory");
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                report.complete = true;
                break;
            }
            // Each page must resolve at least one backlog email (the sample's hits scaled up to
            // the backlog) to beat looking emails up one by one. A small sample says little:
            // judge only once a paying walk would have found about three of its emails.
            let judge_after = (3.0 * scale).max(PAGES_BEFORE_JUDGING as f64);
            let not_paying = report.pages as f64 >= judge_after
                && (report.found as f64 * scale) < report.pages as f64;
            if (stop_when_found && remaining.is_empty()) || not_paying {
                break;
            }
        }
        if report.complete {
            // A complete walk is proof: whoever it did not list does not exist yet.
            for email in sample.iter().filter(|e| remaining.contains(&email_key(e))) {
                self.missing.insert(email, ()).await;
            }
        }
        if report.complete {
            self.directory_pages.store(report.pages, Ordering::Relaxed);
        }
        Ok(report)
    }
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

    /// Unknown directory size: try once a page's worth is waiting.
    #[test]
    fn warm_rule_unknown_size() {
        assert!(!should_warm(99, None));
        assert!(should_warm(100, None));
    }
}
