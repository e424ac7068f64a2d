//! Delivery: due jobs from the store in, subscriber updates to ProsperStack out.
//!
//! In: [`Job`]s (every queued event for one email), oldest first, as they fall due.
//! Out: one `PUT /v1/subscribers/{id}` per subscriber whose properties change, then a
//! [`JobResult`] back to the store: delivered (events leave the queue, applied timestamps
//! recorded), retry at a time (events stay), or dead letter.
//!
//! Stays true:
//! - all events queued for one subscriber go out as one update (coalescing), with the latest
//!   value per property ([`mapping::plan`]);
//! - every upstream request passes the shared budget inside the client;
//! - an update that would change nothing the relay knows of is not sent;
//! - a property ProsperStack refuses becomes a dead letter and the rest of the update still goes;
//! - an email with no subscriber yet waits on a growing schedule for `subscriber_wait`, then
//!   becomes a dead letter; other failures retry (5xx, timeouts: backoff; 429: the window)
//!   until `retry_window`, except refusals, which are dead letters at once;
//! - on shutdown the current job finishes or is left queued: nothing is lost either way;
//! - it delivers only while this process holds the delivery lease ([`Leadership`]), and
//!   records each job under the lease it was sent under: a write the store refuses
//!   (`LeaseLost`) stops delivery at once, the job's events still queued.
//!
//! Configured by [`DeliverySettings`], the `[delivery]` section, used as the configuration
//! deserialises it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, millis, SharedClock};
use crate::config::ConfigError;
use crate::identify::platform_id_in;
use crate::leader::Leadership;
use crate::mapping::{self, Catalogue, CatalogueCache, MappingSettings, Plan, Rules};
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, Client, NewProperty, PropertyType};
use crate::resolve::{Known, Resolution, Resolver};
use crate::retry::{self, Backoff, Decision};
use crate::status::Activity;
use crate::store::{
    DeadLetterCause, Job, JobOutcome, JobResult, Lane, Lease, RejectedProperty, Store, StoreError,
};

/// Longest pause of the whole worker after a failed round, and its pause while the key is
/// refused.
const WORKER_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Jobs read from the store at a time.
const BATCH: usize = 200;

/// A standby looks at its leadership at least this often (the leader task also wakes it).
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The `[delivery]` section: how long things wait, and how retries back off.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// How long an update waits for a subscriber that does not exist yet.
    #[serde(with = "humantime_serde")]
    pub subscriber_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub waiting_retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub waiting_retry_max: Duration,
    /// How long failures (5xx, timeouts, 429) are retried before a dead letter.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long messageIds are remembered for dedupe.
    #[serde(with = "humantime_serde")]
    pub dedupe_retention: Duration,
    /// On shutdown, time allowed to finish in-flight delivery.
    #[serde(with = "humantime_serde")]
    pub drain_deadline: Duration,
    /// A new subscriber's first event waits this long to gather its neighbours.
    #[serde(with = "humantime_serde")]
    pub coalesce_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub subscriber_cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// While a backlog exists, a progress line (what is left, the rate, the ETA) this often.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        DeliverySettings {
            subscriber_wait: 24 * HOUR,
            waiting_retry_min: MINUTE,
            waiting_retry_max: HOUR,
            retry_window: 24 * HOUR,
            retry_backoff_min: Duration::from_secs(1),
            retry_backoff_max: 10 * MINUTE,
            dedupe_retention: 7 * 24 * HOUR,
            drain_deadline: Duration::from_secs(20),
            coalesce_delay: Duration::from_millis(500),
            subscriber_cache_ttl: HOUR,
            negative_cache_ttl: MINUTE,
            progress_interval: MINUTE,
        }
    }
}

impl DeliverySettings {
    /// The schedules must be able to run: a zero backoff would retry in a tight loop.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.progress_interval.is_zero() {
            return Err(ConfigError::at(
                "delivery.progress_interval",
                "must be more than 0",
            ));
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            return Err(ConfigError::at(
                "delivery.retry_backoff_min",
                "must be more than 0 and not more than delivery.retry_backoff_max",
            ));
        }
        if self.waiting_retry_min > self.waiting_retry_max {
            return Err(ConfigError::at(
                "delivery.waiting_retry_min",
                "must not be more than delivery.waiting_retry_max",
            ));
        }
        Ok(())
    }

    /// The backoff between retries of failed updates.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_backoff_min,
            cap: self.retry_backoff_max,
        }
    }
}

/// The delivery worker and everything it talks to.
pub struct Delivery {
    pub store: Arc<dyn Store>,
    pub client: Client,
    pub resolver: Resolver,
    pub catalogue: CatalogueCache,
    pub rules: Rules,
    pub metrics: Arc<Metrics>,
    pub settings: DeliverySettings,
    /// Read for `create_audience_properties`.
    pub mapping: MappingSettings,
    /// Ingest pokes this after storing, so new work does not wait for a timer.
    pub wake: Arc<Notify>,
    /// What "now" is for due times, expiry and every wait.
    pub clock: SharedClock,
    /// What was delivered and left out, for status and progress.
    pub activity: Arc<Activity>,
    /// Whether this process may deliver, and the lease its writes carry.
    pub leadership: Arc<Leadership>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ProsperStack: {0}")]
    Api(#[from] ApiError),
}

impl Delivery {
    /// Runs until `shutdown` is cancelled; returns between jobs, never in the middle of
    /// recording one.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            if self.leadership.current().is_none() {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.leadership.changed(STANDBY_POLL) => {}
                }
                continue;
            }
            match self.run_once(&shutdown).await {
                Ok(0) => {
                    failures = 0;
                    self.idle(&shutdown).await
                }
                Ok(_) => failures = 0,
                // Not the leader any more: wait for the lease above, no backoff.
                Err(DeliveryError::Store(StoreError::LeaseLost)) => {}
                Err(e) => {
                    let delay = self.pause_after(&e, failures);
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = clock::sleep(self.clock.as_ref(), delay) => {}
                    }
                }
            }
        }
    }

    /// How long the whole worker waits after a failed round. Probing a ProsperStack that is
    /// down costs a request: back off, but probe at least every minute so recovery is noticed
    /// soon. A refused key fails every request the same way until an operator fixes it, so
    /// the worker just probes once a minute instead of spending the budget on 401s.
    fn pause_after(&self, error: &DeliveryError, failures: u32) -> Duration {
        if self.client.observed().key_refused() {
            tracing::debug!(error = %error, "key refused; delivery paused");
            return WORKER_BACKOFF_CAP;
        }
        tracing::warn!(error = %error, "delivery round failed; retrying");
        let policy = Backoff {
            base: self.settings.retry_backoff_min,
            cap: self.settings.retry_backoff_max.min(WORKER_BACKOFF_CAP),
        };
        retry::backoff(&policy, failures, rand::random())
    }

    /// Sleeps until the next job is due, ingest wakes us, or shutdown.
    async fn idle(&self, shutdown: &CancellationToken) {
        let wait = match self.store.next_due_ms().await {
            Ok(Some(due)) => {
                Duration::from_millis((due - self.clock.wall_ms()).clamp(1, 1000) as u64)
            }
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.wake.notified() => {}
            _ = clock::sleep(self.clock.as_ref(), wait) => {}
        }
    }

    /// Delivers one batch of due jobs; answers how many were handled.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<usize, DeliveryError> {
        let emails = self.store.due_emails(self.clock.wall_ms(), BATCH).await?;
        if emails.is_empty() {
            return Ok(0);
        }
        let catalogue = self.catalogue.get(&self.client).await?;
        let backlog = self.store.stats().await?.subscribers;
        if let Some(walk) = self
            .resolver
            .prepare(&self.client, &emails, backlog)
            .await?
        {
            tracing::info!(
                pages = walk.pages,
                found = walk.found,
                complete = walk.complete,
                "walked the subscriber directory"
            );
        }
        // One job at a time: a job waiting at the budget would hold a snapshot of its events,
        // and events arriving meanwhile would need a second update.
        let mut handled = 0;
        for email in &emails {
            if shutdown.is_cancelled() {
                break;
            }
            // Checked before each job: the lease may have lapsed while the last one waited.
            let Some(lease) = self.leadership.current() else {
                break;
            };
            let (trouble, lane) = self.deliver_current(email, &catalogue, &lease).await?;
            handled += 1;
            if let Some(error) = trouble {
                // ProsperStack itself is failing: the other jobs would fail the same way and
                // spend the budget doing it. Stop the round and let the worker back off.
                return Err(DeliveryError::Api(error));
            }
            // Imported history gives way: once a live job is due, the round ends after this
            // job and the next one lists the live job first. A live change waits for at most
            // one imported update, not for the rest of a batch.
            if lane == Some(Lane::Background) && self.store.live_due(self.clock.wall_ms()).await? {
                break;
            }
        }
        Ok(handled)
    }

    /// Delivers one email's job as it is now and records the result. Sending a batch takes
    /// minutes at 100 requests a minute, so the job is re-read: events queued since it was
    /// listed join its update instead of needing another. The result is recorded under the
    /// lease the job was sent under: if that tenure ended meanwhile, nothing is recorded and
    /// the next leader sends the job again. Also answers the job's lane.
    async fn deliver_current(
        &self,
        email: &str,
        catalogue: &Arc<Catalogue>,
        lease: &Lease,
    ) -> Result<(Option<ApiError>, Option<Lane>), StoreError> {
        let Some(job) = self.store.job(email).await? else {
            return Ok((None, None));
        };
        let (result, trouble) = self.deliver(&job, catalogue).await;
        let now = self.clock.wall_ms();
        let ids = match self.store.finish(lease, vec![result.clone()], now).await {
            Err(StoreError::LeaseLost) => {
                self.leadership.lost(lease);
                return Err(StoreError::LeaseLost);
            }
            other => other?,
        };
        self.report_dead_letters(&result, &ids);
        if matches!(result.outcome, JobOutcome::Delivered { .. }) {
            self.activity.delivered(now);
        }
        Ok((trouble, Some(job.lane)))
    }

    /// One job: plan, resolve, send; never fails, every failure is an outcome.
    /// Also answers the error when it concerns ProsperStack as a whole (5xx, timeouts, auth),
    /// not just this job.
    async fn deliver(
        &self,
        job: &Job,
        catalogue: &Arc<Catalogue>,
    ) -> (JobResult, Option<ApiError>) {
        let attempts = job.attempts + 1;
        let (outcome, trouble) = match self.attempt(job, catalogue).await {
            Ok(outcome) => (outcome, None),
            Err(Failure::Api(e)) => {
                let outcome = self.after_failure(job, attempts, &e);
                let upstream_wide = matches!(
                    e,
                    ApiError::Retryable { .. } | ApiError::Unauthorized { .. }
                );
                (outcome, upstream_wide.then_some(e))
            }
            Err(Failure::NoSubscriber) => (self.wait_for_subscriber(job, attempts), None),
        };
        let result = JobResult {
            email: job.email.clone(),
            up_to_event_id: job.up_to_event_id(),
            outcome,
        };
        (result, trouble)
    }

    async fn attempt(&self, job: &Job, catalogue: &Arc<Catalogue>) -> Result<JobOutcome, Failure> {
        let mut plan = mapping::plan(job, catalogue, &self.rules);
        if self.mapping.create_audience_properties && !plan.missing_audiences.is_empty() {
            let fresh = self
                .create_audience_properties(&plan.missing_audiences)
                .await?;
            plan = mapping::plan(job, &fresh, &self.rules);
        }
        self.count_left_out(&plan);
        if plan.properties.is_empty() {
            return Ok(delivered(&plan, Vec::new(), job.attempts + 1));
        }
        let known = match self.resolve(job).await? {
            Resolution::Found(known) => known,
            Resolution::Missing => return Err(Failure::NoSubscriber),
        };
        let changes = changed_properties(&plan.properties, &known);
        if changes.is_empty() {
            self.metrics.update_skipped();
            return Ok(delivered(&plan, Vec::new(), job.attempts + 1));
        }
        let rejected = self.send(job, &known, changes).await?;
        Ok(delivered(&plan, rejected, job.attempts + 1))
    }

    /// The job's subscriber, by its key (an email, or a platform ID for a subscriber known only
    /// by one); an email that finds none falls back to the platform ID its latest event
    /// carries, when `mapping.platform_id_trait` says where that is.
    async fn resolve(&self, job: &Job) -> Result<Resolution, ApiError> {
        if let Some(alias) = self.resolver.alias_of(&job.email).await {
            let by_alias = self.resolver.resolve(&self.client, &alias, &[]).await?;
            if matches!(by_alias, Resolution::Found(_)) {
                self.activity.resolved(true);
                return Ok(by_alias);
            }
        }
        let by_key = self
            .resolver
            .resolve(&self.client, &job.email, &job.spellings)
            .await?;
        let fallback = match (&by_key, self.mapping.platform_ids()) {
            (Resolution::Missing, Some(source)) if platform_id_in(&job.email).is_none() => job
                .events
                .iter()
                .rev()
                .find_map(|e| source.of(e.user_id.as_deref(), &e.traits)),
            _ => None,
        };
        let Some(platform_id) = fallback else {
            if matches!(by_key, Resolution::Found(_)) {
                self.activity.resolved(platform_id_in(&job.email).is_some());
            }
            return Ok(by_key);
        };
        let subscriber = crate::telemetry::email_tag(&job.email);
        tracing::debug!(%subscriber, "no subscriber with this email; trying its platform ID");
        let by_platform_id = self
            .resolver
            .resolve_platform_id_for(&self.client, &job.email, &platform_id)
            .await?;
        if matches!(by_platform_id, Resolution::Found(_)) {
            self.activity.resolved(true);
        }
        Ok(by_platform_id)
    }

    /// Sends the update; a property ProsperStack refuses is taken out and the rest re-sent.
    async fn send(
        &self,
        job: &Job,
        known: &Known,
        mut changes: Map<String, Value>,
    ) -> Result<Vec<RejectedProperty>, Failure> {
        let mut rejected = Vec::new();
        while !changes.is_empty() {
            match self.client.update_subscriber(&known.id, &changes).await {
                Ok(subscriber) => {
                    self.metrics.update_sent(job.events.len() as u64);
                    self.resolver.remember(&job.email, &subscriber).await;
                    break;
                }
                Err(ApiError::NotFound { .. }) => {
                    self.resolver.forget(&job.email).await;
                    return Err(Failure::NoSubscriber);
                }
                Err(ApiError::Rejected { status, message }) => {
                    let culprit = culprit(&message, &changes);
                    tracing::warn!(status, message = %crate::telemetry::redact_emails(&message), property = culprit.as_deref().unwrap_or("?"), "ProsperStack refused an update");
                    let key = match culprit {
                        Some(key) => key,
                        // Nothing names a property: isolate by sending one at a time.
                        None if changes.len() > 1 => {
                            return self.send_singly(job, known, changes, rejected).await
                        }
                        None => changes.keys().next().cloned().unwrap_or_default(),
                    };
                    if let Some(value) = changes.remove(&key) {
                        rejected.push(RejectedProperty {
                            key,
                            value,
                            reason: format!("{status}: {message}"),
                        });
                    }
                    self.catalogue.invalidate().await;
                }
                Err(e) => return Err(Failure::Api(e)),
            }
        }
        Ok(rejected)
    }

    async fn send_singly(
        &self,
        job: &Job,
        known: &Known,
        changes: Map<String, Value>,
        mut rejected: Vec<RejectedProperty>,
    ) -> Result<Vec<RejectedProperty>, Failure> {
        for (key, value) in changes {
            let mut one = Map::new();
            one.insert(key.clone(), value.clone());
            match self.client.update_subscriber(&known.id, &one).await {
                Ok(subscriber) => {
                    self.metrics.update_sent(job.events.len() as u64);
                    self.resolver.remember(&job.email, &subscriber).await;
                }
                Err(ApiError::Rejected { status, message }) => rejected.push(RejectedProperty {
                    key,
                    value,
                    reason: format!("{status}: {message}"),
                }),
                Err(e) => return Err(Failure::Api(e)),
            }
        }
        Ok(rejected)
    }

    async fn create_audience_properties(&self, keys: &[String]) -> Result<Arc<Catalogue>, Failure> {
        for key in keys {
            let new = NewProperty {
                key: key.clone(),
                name: mapping::readable_name(key),
                entity: "subscriber".into(),
                kind: PropertyType::Boolean,
            };
            match self.client.create_property(&new).await {
                Ok(_) => {
                    tracing::info!(property = %key, "created a property for an Engage audience")
                }
                // Someone else created it meanwhile: the catalogue refresh will show it.
                Err(ApiError::Rejected { status: 409, .. }) => {}
                Err(e) => return Err(Failure::Api(e)),
            }
        }
        self.catalogue.invalidate().await;
        Ok(self.catalogue.get(&self.client).await?)
    }

    fn count_left_out(&self, plan: &Plan) {
        for name in plan.unmatched.iter().chain(&plan.missing_audiences) {
            self.metrics.trait_unmatched();
            self.activity.unmatched(name);
            tracing::debug!(r#trait = %name, "trait matches no ProsperStack property; not sent");
        }
        for (key, reason) in &plan.dropped {
            self.metrics.value_dropped();
            // The reason quotes the value, which could be personal data: no emails at info.
            let reason = crate::telemetry::redact_emails(reason);
            tracing::info!(property = %key, %reason, "value dropped");
        }
    }

    /// Counts and logs, once each, the dead letters a recorded result created (`ids` in the
    /// store's order: refused properties first, then a whole update).
    fn report_dead_letters(&self, result: &JobResult, ids: &[i64]) {
        let subscriber = crate::telemetry::email_tag(&result.email);
        let letters = dead_letters_of(&result.outcome);
        for ((cause, property, reason), id) in letters.into_iter().zip(ids) {
            self.metrics.dead_lettered(cause.as_str());
            let reason = crate::telemetry::redact_emails(reason);
            let property = property.unwrap_or("(whole update)");
            tracing::warn!(dead_letter = id, cause = cause.as_str(), %subscriber, property, %reason, "became a dead letter; `prosperstack-relay dead-letters replay --id {id}` once the cause is fixed");
        }
    }

    fn after_failure(&self, job: &Job, attempts: u32, error: &ApiError) -> JobOutcome {
        let now = self.clock.wall_ms();
        let expired = now - job.first_queued_ms > millis(self.settings.retry_window);
        match retry::decide(error, attempts, &self.settings.backoff(), rand::random()) {
            Decision::GiveUp => JobOutcome::DeadLetter {
                reason: error.to_string(),
                attempts,
                cause: DeadLetterCause::Rejected,
            },
            Decision::RetryAfter(_) | Decision::WaitForWindow(_) if expired => {
                JobOutcome::DeadLetter {
                    reason: format!(
                        "still failing after {}: {error}",
                        humantime::format_duration(self.settings.retry_window)
                    ),
                    attempts,
                    cause: DeadLetterCause::RetriesExhausted,
                }
            }
            Decision::RetryAfter(delay) | Decision::WaitForWindow(delay) => {
                self.metrics.retry_scheduled();
                tracing::warn!(error = %error, attempts, delay_ms = delay.as_millis() as u64, "delivery will be retried");
                JobOutcome::RetryAt {
                    at_ms: now + millis(delay),
                    attempts,
                    waiting_since_ms: job.waiting_since_ms,
                    error: error.to_string(),
                }
            }
        }
    }

    fn wait_for_subscriber(&self, job: &Job, attempts: u32) -> JobOutcome {
        let now = self.clock.wall_ms();
        let since = job.waiting_since_ms.unwrap_or(now);
        if now - since >= millis(self.settings.subscriber_wait) {
            return JobOutcome::DeadLetter {
                reason: format!(
                    "no ProsperStack subscriber with this email after {}",
                    humantime::format_duration(self.settings.subscriber_wait)
                ),
                attempts,
                cause: DeadLetterCause::NoSubscriber,
            };
        }
        let delay = retry::waiting_subscriber_delay(
            attempts.saturating_sub(1),
            self.settings.waiting_retry_min,
            self.settings.waiting_retry_max,
        );
        let subscriber = crate::telemetry::email_tag(&job.email);
        let delay_ms = delay.as_millis() as u64;
        if job.waiting_since_ms.is_none() {
            // Said once per wait at info: an update that waits hours must not wait in silence.
            let wait = humantime::format_duration(self.settings.subscriber_wait).to_string();
            tracing::info!(%subscriber, delay_ms, %wait, "no ProsperStack subscriber with this email yet; waiting for one (it may not be imported yet)");
        } else {
            tracing::debug!(%subscriber, delay_ms, attempts, "still no subscriber; waiting");
        }
        JobOutcome::RetryAt {
            at_ms: now + millis(delay),
            attempts,
            waiting_since_ms: Some(since),
            error: "no subscriber with this email yet".into(),
        }
    }
}

/// Why an attempt did not deliver.
enum Failure {
    Api(ApiError),
    NoSubscriber,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

/// The dead letters an outcome makes, in the store's order: (cause, property, reason).
fn dead_letters_of(outcome: &JobOutcome) -> Vec<(DeadLetterCause, Option<&str>, &str)> {
    match outcome {
        JobOutcome::Delivered { rejected, .. } => rejected
            .iter()
            .map(|r| {
                let cause = DeadLetterCause::PropertyRefused;
                (cause, Some(r.key.as_str()), r.reason.as_str())
            })
            .collect(),
        JobOutcome::DeadLetter { reason, cause, .. } => vec![(*cause, None, reason.as_str())],
        JobOutcome::RetryAt { .. } => Vec::new(),
    }
}

fn delivered(plan: &Plan, rejected: Vec<RejectedProperty>, attempts: u32) -> JobOutcome {
    let applied = plan
        .timestamps
        .iter()
        .filter(|(k, _)| !rejected.iter().any(|r| &r.key == *k))
        .map(|(k, t)| (k.clone(), *t))
        .collect();
    JobOutcome::Delivered {
        applied,
        rejected,
        attempts,
    }
}

/// The properties whose value differs from what the subscriber is known to hold (all of them
/// when the relay does not know its values).
fn changed_properties(properties: &Map<String, Value>, known: &Known) -> Map<String, Value> {
    let Some(current) = &known.values else {
        return properties.clone();
    };
    properties
        .iter()
        .filter(|(k, v)| !same_value(current.get(*k), v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// ProsperStack answers numbers as numbers and a deleted value as absent or null.
fn same_value(current: Option<&Value>, wanted: &Value) -> bool {
    match (current, wanted) {
        (None | Some(Value::Null), Value::Null) => true,
        (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}

/// The property key an error message names, if exactly one of the sent keys appears in it
/// (quoted keys first, as ProsperStack-style messages quote them).
fn culprit(message: &str, changes: &Map<String, Value>) -> Option<String> {
    let quoted: Vec<&String> = changes
        .keys()
        .filter(|k| message.contains(&format!("\"{k}\"")))
        .collect();
    if quoted.len() == 1 {
        return Some(quoted[0].clone());
    }
    let bare: Vec<&String> = changes
        .keys()
        .filter(|k| message.contains(k.as_str()))
        .collect();
    (bare.len() == 1).then(|| bare[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The error message's quoted key names the refused property.
    #[test]
    fn culprit_from_message() {
        let changes: Map<String, Value> = json!({"number_of_contacts": "x", "number": 1})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(
            culprit(
                "Invalid value for property \"number_of_contacts\": expected a number",
                &changes
            )
            .as_deref(),
            Some("number_of_contacts")
        );
        assert_eq!(culprit("something went wrong", &changes), None);
    }

    /// Only properties whose values differ are changes; unknown values are all changes.
    #[test]
    fn changes_against_known_values() {
        let props: Map<String, Value> = json!({"a": 1, "b": "x", "c": null})
            .as_object()
            .cloned()
            .unwrap();
        let known = Known {
            id: "s".into(),
            values: Some(Arc::new(
                json!({"a": 1.0, "b": "y"}).as_object().cloned().unwrap(),
            )),
        };
        assert_eq!(json!(changed_properties(&props, &known)), json!({"b": "x"}));
        let unknown = Known {
            id: "s".into(),
            values: None,
        };
        assert_eq!(changed_properties(&props, &unknown).len(), 3);
    }
}
