//! The delivery lease in PostgreSQL: the one row of `lease`, judged by the server's clock.
//!
//! In: a holder and a TTL, a lease to check or release, a budget to keep. Out: the granted
//! [`Lease`], [`StoreError::LeaseLost`] for a tenure that is over, the budget.
//! Stays true:
//! - Expiry is `clock_timestamp()` on the server, never a replica's clock, so replicas whose
//!   clocks disagree still agree on who holds the lease.
//! - Taking the lease is one statement on the row (insert, or an update whose condition is
//!   re-checked under the row's lock), so two standbys asking at once cannot both get it.
//! - A deliverer-only write checks its tenure with `FOR SHARE` on the row inside its own
//!   transaction: a takeover (an update of the row) waits until that write has committed or
//!   rolled back, so the new holder never reads the queue from before an old holder's last
//!   write, and the old holder's write after the takeover is refused.
//! - A released lease expires at `-infinity`; the budget columns outlive tenures.

use deadpool_postgres::GenericClient;

use super::{exec, rows, text};
use crate::clock::millis;
use crate::store::{BudgetSnapshot, Lease, StoreError};

/// Takes the lease for `holder` if it is free or lapsed, or renews it if `holder` has it; the
/// epoch stays only on a renewal before expiry. `None` while another holder has it.
pub(super) async fn acquire(
    c: &impl GenericClient,
    holder: &str,
    ttl_ms: i64,
) -> Result<Option<Lease>, StoreError> {
    let granted = rows(
        c,
        "INSERT INTO lease (id, holder, epoch, expires_at)
         VALUES (1, $1, 1, clock_timestamp() + $2::bigint * interval '1 millisecond')
         ON CONFLICT (id) DO UPDATE SET
             epoch = CASE WHEN lease.holder = excluded.holder
                               AND lease.expires_at > clock_timestamp()
                          THEN lease.epoch ELSE lease.epoch + 1 END,
             holder = excluded.holder,
             expires_at = excluded.expires_at
         WHERE lease.holder = excluded.holder OR lease.expires_at <= clock_timestamp()
         RETURNING epoch",
        &[&text(holder), &ttl_ms],
    )
    .await?;
    let epoch: Option<i64> = granted.first().map(|r| r.try_get(0)).transpose()?;
    Ok(epoch.map(|epoch| Lease::granted(holder, epoch)))
}

/// Refuses with [`StoreError::LeaseLost`] unless `lease`'s tenure is current; holds the row
/// against a takeover until the caller's transaction ends.
pub(super) async fn check(c: &impl GenericClient, lease: &Lease) -> Result<(), StoreError> {
    let current = rows(
        c,
        "SELECT 1 FROM lease WHERE id = 1 AND holder = $1 AND epoch = $2
         AND expires_at > clock_timestamp() FOR SHARE",
        &[&text(lease.holder()), &lease.epoch()],
    )
    .await?;
    if current.is_empty() {
        Err(StoreError::LeaseLost)
    } else {
        Ok(())
    }
}

/// Ends `lease`'s tenure; false when it had already ended.
pub(super) async fn release(c: &impl GenericClient, lease: &Lease) -> Result<bool, StoreError> {
    let released = exec(
        c,
        "UPDATE lease SET expires_at = '-infinity'
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
        &[&text(lease.holder()), &lease.epoch()],
    )
    .await?;
    Ok(released == 1)
}

/// Keeps the budget if `lease` is current (one statement: the check and the write are one).
pub(super) async fn save_budget(
    c: &impl GenericClient,
    lease: &Lease,
    budget: BudgetSnapshot,
) -> Result<(), StoreError> {
    let saved = exec(
        c,
        "UPDATE lease SET budget_remaining = $3,
             budget_reset_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
        &[
            &text(lease.holder()),
            &lease.epoch(),
            &i64::from(budget.remaining),
            &millis(budget.reset_in),
        ],
    )
    .await?;
    if saved == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

pub(super) async fn load_budget(
    c: &impl GenericClient,
) -> Result<Option<BudgetSnapshot>, StoreError> {
    let found = rows(
        c,
        "SELECT budget_remaining,
             ceil(extract(epoch FROM budget_reset_at - clock_timestamp()) * 1000)::bigint
         FROM lease WHERE id = 1 AND budget_reset_at > clock_timestamp()",
        &[],
    )
    .await?;
    found
        .first()
        .map(|r| BudgetSnapshot::stored(r.try_get(0)?, r.try_get(1)?))
        .transpose()
}
