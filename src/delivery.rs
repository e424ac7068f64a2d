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
//! - on shutdown the current job finishes or is left queued: nothing is lost either way.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, millis, SharedClock};
use crate::mapping::{self, Catalogue, CatalogueCache, Plan, Rules};
use crate::metrics::Metrics;
use crate::prosperstack::{ApiError, Client, NewProperty, PropertyType};
use crate::resolve::{Known, Resolution, Resolver};
use crate::retry::{self, Backoff, Decision};
use crate::store::{Job, JobOutcome, JobResult, RejectedProperty, Store, StoreError};

/// Longest pause of the whole worker after a failed round.
const WORKER_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Jobs read from the store at a time.
const BATCH: usize = 200;

/// Delivery's tunables, from configuration.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub subscriber_wait: Duration,
    pub waiting_retry_min: Duration,
    pub waiting_retry_max: Duration,
    pub retry_window: Duration,
    pub create_audience_properties: bool,
    pub backoff: Backoff,
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
    /// Ingest pokes this after storing, so new work does not wait for a timer.
    pub wake: Arc<Notify>,
    /// What "now" is for due times, expiry and every wait.
    pub clock: SharedClock,
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
            match self.run_once(&shutdown).await {
                Ok(0) => {
                    failures = 0;
                    self.idle(&shutdown).await
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery round failed; retrying");
                    // Probing a ProsperStack that is down costs a request: back off, but keep
                    // probing at least every minute so recovery is noticed soon.
                    let policy = Backoff {
                        base: self.settings.backoff.base,
                        cap: self.settings.backoff.cap.min(WORKER_BACKOFF_CAP),
                    };
                    let delay = retry::backoff(&policy, failures, rand::random());
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = clock::sleep(self.clock.as_ref(), delay) => {}
                    }
                }
            }
        }
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
            let trouble = self.deliver_current(email, &catalogue).await?;
            handled += 1;
            if let Some(error) = trouble {
                // ProsperStack itself is failing: the other jobs would fail the same way and
                // spend the budget doing it. Stop the round and let the worker back off.
                return Err(DeliveryError::Api(error));
            }
        }
        Ok(handled)
    }

    /// Delivers one email's job as it is now and records the result. Sending a batch takes
    /// minutes at 100 requests a minute, so the job is re-read: events queued since it was
    /// listed join its update instead of needing another.
    async fn deliver_current(
        &self,
        email: &str,
        catalogue: &Arc<Catalogue>,
    ) -> Result<Option<ApiError>, StoreError> {
        let Some(job) = self.store.job(email).await? else {
            return Ok(None);
        };
        let (result, trouble) = self.deliver(&job, catalogue).await;
        let lease =
            crate::store::sole_deliverer_lease(self.store.as_ref(), self.clock.wall_ms()).await?;
        self.store
            .finish(&lease, vec![result], self.clock.wall_ms())
            .await?;
        Ok(trouble)
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
        if self.settings.create_audience_properties && !plan.missing_audiences.is_empty() {
            let fresh = self
                .create_audience_properties(&plan.missing_audiences)
                .await?;
            plan = mapping::plan(job, &fresh, &self.rules);
        }
        self.count_left_out(&plan);
        if plan.properties.is_empty() {
            return Ok(delivered(&plan, Vec::new(), job.attempts + 1));
        }
        let known = match self.resolver.resolve(&self.client, &job.email).await? {
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
            tracing::debug!(r#trait = %name, "trait matches no ProsperStack property; not sent");
        }
        for (key, reason) in &plan.dropped {
            self.metrics.value_dropped();
            // The reason quotes the value, which could be personal data: no emails at info.
            let reason = crate::telemetry::redact_emails(reason);
            tracing::info!(property = %key, %reason, "value dropped");
        }
    }

    fn after_failure(&self, job: &Job, attempts: u32, error: &ApiError) -> JobOutcome {
        let now = self.clock.wall_ms();
        let expired = now - job.first_queued_ms > millis(self.settings.retry_window);
        match retry::decide(error, attempts, &self.settings.backoff, rand::random()) {
            Decision::GiveUp => JobOutcome::DeadLetter {
                reason: error.to_string(),
                attempts,
            },
            Decision::RetryAfter(_) | Decision::WaitForWindow(_) if expired => {
                JobOutcome::DeadLetter {
                    reason: format!(
                        "still failing after {}: {error}",
                        humantime::format_duration(self.settings.retry_window)
                    ),
                    attempts,
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
            };
        }
        let delay = retry::waiting_subscriber_delay(
            attempts.saturating_sub(1),
            self.settings.waiting_retry_min,
            self.settings.waiting_retry_max,
        );
        let subscriber = crate::telemetry::email_tag(&job.email);
        tracing::debug!(%subscriber, delay_ms = delay.as_millis() as u64, "no subscriber yet; waiting");
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
