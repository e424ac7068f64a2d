//! The delivery lease in SQLite: one row of the `lease` table, read and written inside the
//! writer's transaction.
//!
//! In: a holder and a TTL, a lease to check or release, a budget to keep; the caller's `now_ms`.
//! Out: the granted [`Lease`], [`StoreError::LeaseLost`] for a tenure that is over, the budget.
//! Stays true: expiry is judged by the callers' `now_ms` (processes sharing the file are on one
//! machine, one clock). A released lease has expired at the beginning of time, so anyone may
//! take it, under a new epoch. The budget columns outlive tenures: they are the handover.

use rusqlite::{params, Connection, OptionalExtension};

use crate::clock::millis;
use crate::store::{BudgetSnapshot, Lease, StoreError};

/// Takes the lease for `holder` if it is free or lapsed, or renews it if `holder` has it; the
/// epoch stays only on a renewal before expiry. `None` while another holder has it.
pub(super) fn acquire(
    c: &Connection,
    holder: &str,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<Option<Lease>, StoreError> {
    let epoch: Option<i64> = c
        .prepare_cached(
            "INSERT INTO lease (id, holder, epoch, expires_ms) VALUES (1, ?1, 1, ?3)
             ON CONFLICT(id) DO UPDATE SET
                 epoch = CASE WHEN holder = excluded.holder AND expires_ms > ?2
                              THEN epoch ELSE epoch + 1 END,
                 holder = excluded.holder,
                 expires_ms = excluded.expires_ms
             WHERE holder = excluded.holder OR expires_ms <= ?2
             RETURNING epoch",
        )?
        .query_row(
            params![holder, now_ms, now_ms.saturating_add(ttl_ms)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(epoch.map(|epoch| Lease::granted(holder, epoch)))
}

/// Refuses with [`StoreError::LeaseLost`] unless `lease`'s tenure is current at `now_ms`. Run
/// inside the write's transaction, which no other process can interleave with (SQLite has one
/// writer at a time), so the check holds until the commit.
pub(super) fn check(c: &Connection, lease: &Lease, now_ms: i64) -> Result<(), StoreError> {
    let current = c
        .prepare_cached(
            "SELECT 1 FROM lease WHERE id = 1 AND holder = ?1 AND epoch = ?2 AND expires_ms > ?3",
        )?
        .query_row(params![lease.holder(), lease.epoch(), now_ms], |_| Ok(()))
        .optional()?;
    current.ok_or(StoreError::LeaseLost)
}

/// Ends `lease`'s tenure; false when it had already ended.
pub(super) fn release(c: &Connection, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
    let released = c
        .prepare_cached(
            "UPDATE lease SET expires_ms = ?4
             WHERE id = 1 AND holder = ?1 AND epoch = ?2 AND expires_ms > ?3",
        )?
        .execute(params![lease.holder(), lease.epoch(), now_ms, i64::MIN])?;
    Ok(released == 1)
}

pub(super) fn save_budget(
    c: &Connection,
    lease: &Lease,
    budget: BudgetSnapshot,
    now_ms: i64,
) -> Result<(), StoreError> {
    let reset_ms = now_ms.saturating_add(millis(budget.reset_in));
    let saved = c
        .prepare_cached(
            "UPDATE lease SET budget_remaining = ?4, budget_reset_ms = ?5
             WHERE id = 1 AND holder = ?1 AND epoch = ?2 AND expires_ms > ?3",
        )?
        .execute(params![
            lease.holder(),
            lease.epoch(),
            now_ms,
            budget.remaining,
            reset_ms
        ])?;
    if saved == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

pub(super) fn load_budget(
    c: &Connection,
    now_ms: i64,
) -> Result<Option<BudgetSnapshot>, StoreError> {
    let row: Option<(i64, i64)> = c
        .prepare_cached(
            "SELECT budget_remaining, budget_reset_ms - ?1 FROM lease
             WHERE id = 1 AND budget_reset_ms > ?1",
        )?
        .query_row([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(remaining, reset_in_ms)| BudgetSnapshot::stored(remaining, reset_in_ms))
        .transpose()
}
