//! Leader: which replica delivers. Every replica ingests; the one holding the store's delivery
//! lease delivers, and hands over its view of the rate-limit window with it.
//!
//! In: the store's lease (`acquire_lease`, `release_lease`, `save_budget`, `load_budget`), this
//! process's holder id, the lease's length, the shared [`Budget`].
//! Out: [`Leadership::current`], the lease delivery may write under, or `None`; the
//! `relay_leader` gauge; info lines when leadership is gained or lost; the budget saved for the
//! next leader while this one leads.
//!
//! Stays true:
//! - a lease counts as held only until `leader_lease` after it was *asked for*, on this
//!   process's monotonic clock, so the store (whose clock judges expiry) has never expired it
//!   while this process still thinks it holds it;
//! - the lease is renewed every third of its length: two renewals may fail before it lapses;
//!   a standby asks at least every second, so a lease released on SIGTERM is taken within one;
//! - a new leader seeds its budget from the last one saved before it publishes the lease, so
//!   it never sends a request its predecessor's window had no room for;
//! - a write refused with `LeaseLost` ([`Leadership::lost`]) stops delivery at once; the
//!   events stay queued, and the next renewal asks again;
//! - on shutdown, once delivery has stopped, [`LeaderTask::release`] saves the budget and
//!   releases the lease, so a standby takes over without waiting for the expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::clock::{self, SharedClock};
use crate::metrics::Metrics;
use crate::store::{Lease, Store, StoreError};

/// The holder a SQLite relay uses: its directory lock already makes it the only serving
/// process, and a name that outlives the process lets it deliver at once after a crash
/// instead of waiting out the lease its killed predecessor held.
pub const SOLE_HOLDER: &str = "relay";

/// The lease a SQLite relay holds: nobody else can deliver from its directory anyway, so a
/// long one only spares renewals (`leader_lease` is for replicas).
pub const SOLE_LEASE: Duration = Duration::from_secs(60);

/// A standby asks for the lease at least this often, so a released lease is taken within it
/// (one single-row statement a second per standby).
const STANDBY_ASKS_EVERY: Duration = Duration::from_secs(1);

/// A holder id unique to this process: host, process id and a random part (a pid can be
/// reused by a restarted container on the same host).
pub fn unique_holder() -> String {
    format!(
        "{}/{:08x}",
        crate::status::replica_name(),
        rand::random::<u32>()
    )
}

/// One tenure as this process sees it: the lease, and until when it may count on it.
#[derive(Clone, Debug)]
struct Tenure {
    lease: Lease,
    valid_until: Instant,
}

/// Who leads, shared by the leader task, delivery and status.
pub struct Leadership {
    holder: String,
    ttl: Duration,
    clock: SharedClock,
    tenure: watch::Sender<Option<Tenure>>,
}

impl Leadership {
    pub fn new(holder: String, ttl: Duration, clock: SharedClock) -> Arc<Leadership> {
        Arc::new(Leadership {
            holder,
            ttl,
            clock,
            tenure: watch::Sender::new(None),
        })
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease to deliver under, while this process holds one it can still count on.
    pub fn current(&self) -> Option<Lease> {
        let now = self.clock.now();
        self.tenure
            .borrow()
            .as_ref()
            .filter(|t| t.valid_until > now)
            .map(|t| t.lease.clone())
    }

    /// Waits until leadership changes (gained, renewed, lost), or at most `limit`.
    pub async fn changed(&self, limit: Duration) {
        let mut watcher = self.tenure.subscribe();
        tokio::select! {
            _ = watcher.changed() => {}
            _ = clock::sleep(self.clock.as_ref(), limit) => {}
        }
    }

    /// A write under `lease` was refused: that tenure is over. Delivery stops until a renewal
    /// takes the lease again.
    pub fn lost(&self, lease: &Lease) {
        let ended = self.tenure.send_if_modified(|tenure| {
            let same = tenure.as_ref().is_some_and(|t| t.lease == *lease);
            if same {
                *tenure = None;
            }
            same
        });
        if ended {
            tracing::info!(holder = %self.holder, epoch = lease.epoch(), "lost leadership: the store refused a write under this lease; delivery stopped");
        }
    }

    /// The holder id and the epoch of the tenure this process holds, for status.
    pub fn held_epoch(&self) -> Option<i64> {
        self.current().map(|lease| lease.epoch())
    }

    fn set(&self, tenure: Option<Tenure>) {
        self.tenure.send_replace(tenure);
    }
}

/// Takes and keeps the lease, and keeps the budget saved while it leads.
pub struct LeaderTask {
    pub store: Arc<dyn Store>,
    pub leadership: Arc<Leadership>,
    pub budget: Arc<Budget>,
    pub metrics: Arc<Metrics>,
}

impl LeaderTask {
    /// Renews the lease every third of its length (a standby asks at least every second), and
    /// saves the budget each time it moves, until `stop`. Does not release:
    /// [`LeaderTask::release`] does, once delivery has stopped.
    pub async fn run(&self, stop: CancellationToken) {
        let renew_every = self.leadership.ttl / 3;
        let clock = self.leadership.clock.clone();
        loop {
            self.renew().await;
            let every = match self.leadership.current() {
                Some(_) => renew_every,
                None => renew_every.min(STANDBY_ASKS_EVERY),
            };
            let next = clock.now() + every;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = clock.sleep_until(next) => break,
                    _ = self.budget.changed() => self.save_budget().await,
                }
            }
        }
    }

    /// One round: asks for the lease (a renewal when this process holds it).
    async fn renew(&self) {
        let l = &self.leadership;
        let asked = l.clock.now();
        let before = l.tenure.borrow().as_ref().map(|t| t.lease.clone());
        match self
            .store
            .acquire_lease(&l.holder, l.ttl, l.clock.wall_ms())
            .await
        {
            Ok(Some(lease)) if before.as_ref() == Some(&lease) => l.set(Some(Tenure {
                lease,
                valid_until: asked + l.ttl,
            })),
            Ok(Some(lease)) => self.gained(lease, asked).await,
            Ok(None) => {
                if let Some(old) = before {
                    tracing::info!(holder = %l.holder, epoch = old.epoch(), "lost leadership: another replica holds the lease");
                }
                l.set(None);
            }
            Err(e) => self.renewal_failed(&e),
        }
        self.metrics.set_leader(l.current().is_some());
    }

    /// A new tenure: the budget starts where the last leader left it, then delivery may go.
    async fn gained(&self, lease: Lease, asked: Instant) {
        let l = &self.leadership;
        match self.store.load_budget(l.clock.wall_ms()).await {
            Ok(Some(snapshot)) => self.budget.seed(snapshot),
            Ok(None) => {}
            Err(e) => {
                // Sending without knowing what the last leader spent could cause a 429:
                // wait for the next round rather than guess.
                tracing::warn!(error = %e, "took the delivery lease but cannot read the budget handed over; not delivering yet");
                l.set(None);
                return;
            }
        }
        tracing::info!(holder = %l.holder, epoch = lease.epoch(), "gained leadership: this replica delivers");
        l.set(Some(Tenure {
            lease,
            valid_until: asked + l.ttl,
        }));
    }

    /// A renewal that could not reach the store: the tenure runs on until it would lapse.
    fn renewal_failed(&self, error: &StoreError) {
        let l = &self.leadership;
        if l.current().is_some() {
            tracing::warn!(error = %error, "cannot renew the delivery lease; delivering until it lapses");
        } else {
            tracing::debug!(error = %error, "cannot ask for the delivery lease");
            if l.tenure.borrow().is_some() {
                tracing::info!(holder = %l.holder, "lost leadership: the lease lapsed without a renewal");
                l.set(None);
            }
        }
    }

    /// Saves the budget under the current lease, if this process leads.
    async fn save_budget(&self) {
        let Some(lease) = self.leadership.current() else {
            return;
        };
        let snapshot = self.budget.snapshot();
        let now = self.leadership.clock.wall_ms();
        match self.store.save_budget(&lease, snapshot, now).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost) => self.leadership.lost(&lease),
            Err(e) => tracing::debug!(error = %e, "cannot save the budget for the next leader"),
        }
    }

    /// After delivery has stopped: hands the budget and the lease over at once.
    pub async fn release(&self) {
        let l = &self.leadership;
        let Some(lease) = l.current() else {
            return;
        };
        self.save_budget().await;
        l.set(None);
        self.metrics.set_leader(false);
        match self.store.release_lease(&lease, l.clock.wall_ms()).await {
            Ok(_) => {
                tracing::info!(holder = %l.holder, epoch = lease.epoch(), "released leadership for a standby")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the delivery lease; a standby takes over when it lapses")
            }
        }
    }
}

#[cfg(test)]
mod tests;
