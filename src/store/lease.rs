//! The delivery lease's values: what a holder gets back, and what it hands to the next holder.
//!
//! In: a holder id and a TTL for `Store::acquire_lease`; the budget a holder saw, for
//! `Store::save_budget`. Out: a [`Lease`] (the fencing token every deliverer-only write
//! carries) and a [`BudgetSnapshot`].
//! Stays true: a [`Lease`] is only ever made by a store granting it, so holding one means the
//! store granted that tenure once; whether it is still current is the store's to judge, at each
//! write (the rules are in the contract at the top of `store`).

use std::time::Duration;

use super::StoreError;

/// One tenure of the delivery lease; only a store makes one, when it grants the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    holder: String,
    epoch: i64,
}

impl Lease {
    pub(super) fn granted(holder: &str, epoch: i64) -> Lease {
        Lease {
            holder: holder.to_owned(),
            epoch,
        }
    }

    /// Who holds it: unique per process (host, pid and a random part, say).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fencing token: grows by one each time the lease is taken rather than renewed.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// What the deliverer knows of ProsperStack's rate-limit window, handed over with the lease so
/// the next deliverer does not start from a full window the old one already spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// Requests still allowed before the window resets.
    pub remaining: u32,
    /// How long until it resets. A duration, not a time of day: the replica that saves it and
    /// the one that loads it may not agree on the time, the store's clock measures it.
    pub reset_in: Duration,
}

impl BudgetSnapshot {
    /// A budget as a store keeps it; values the relay never writes are corrupt, not clamped.
    pub(super) fn stored(remaining: i64, reset_in_ms: i64) -> Result<BudgetSnapshot, StoreError> {
        let remaining = u32::try_from(remaining)
            .map_err(|_| StoreError::Corrupt(format!("a budget of {remaining} requests")))?;
        let reset_in_ms = u64::try_from(reset_in_ms)
            .map_err(|_| StoreError::Corrupt(format!("a budget reset in {reset_in_ms} ms")))?;
        Ok(BudgetSnapshot {
            remaining,
            reset_in: Duration::from_millis(reset_in_ms),
        })
    }
}
