//! The memory budget of request bodies (`[hq] body_budget`): the one bound on how many bytes
//! of `POST /v1/batches` bodies the receiver holds at once, however many clients post.
//!
//! The budget has two halves, so that no request ever waits for room while holding room
//! another waiter needs (which would deadlock):
//! - **sent**: before a body is read, a request reserves its size as sent (`Content-Length`,
//!   or `max_body` when no length is declared, trimmed to the real size once read). It holds
//!   nothing else while it waits for this.
//! - **plain**: before inflating, it reserves the decompressed size the body states plus room
//!   for its parsed records' index; this is the only wait while holding something (its sent
//!   bytes), and what it waits for is only ever held by requests that wait for nothing more.
//!   A body that inflates beyond what it stated, or whose records need more index than
//!   estimated, may grow its plain share only if there is room right away. Once inflated,
//!   the sent share is given back.
//!
//! Everything is given back when the request is answered. A request that finds no room waits
//! up to [`WAIT`] (queued fairly, first come first served) and then gets a 503 with
//! `Retry-After`, which gateways retry: nothing is lost, the batch just comes again. Refusals
//! are counted in `posgw_hq_body_budget_refused_total`; the bytes reserved now are
//! `posgw_hq_body_budget_bytes`.
//!
//! Each half holds at least one `max_body` (the budget is at least twice `max_body`), so any
//! body `max_body` admits can get through alone. Besides the budget the receiver holds the one
//! batch the writer is turning into a sled batch (a copy of its new records) and sled's cache.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::HqMetrics;

/// Reservations are counted in units of this many bytes (a semaphore counts in `u32`).
const UNIT: u64 = 1024;
/// How long a request waits for room in the budget before it gets a 503.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// One half of the budget.
#[derive(Clone)]
struct Half {
    /// One permit per [`UNIT`].
    semaphore: Arc<Semaphore>,
    /// Permits in this half.
    units: u32,
}

impl Half {
    fn new(bytes: u64) -> Half {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        Half {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Permits for `bytes`: rounded up, and never more than the half (a request asking for
    /// more waits for all of it rather than forever).
    fn units_of(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units)
    }

    /// Units held now.
    fn used(&self) -> u64 {
        u64::from(self.units).saturating_sub(self.semaphore.available_permits() as u64)
    }
}

/// The budget; cheap to clone.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    /// Bodies as sent.
    sent: Half,
    /// Decompressed bodies and their parsed records.
    plain: Half,
    /// How long a reservation may wait.
    wait: Duration,
    /// `body_budget_bytes` and `body_budget_refused`.
    metrics: HqMetrics,
}

/// There was no room in the budget within the wait (503, `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

/// Bytes one request holds of the budget; given back when dropped.
pub(crate) struct Reservation {
    /// Of the sent half.
    sent: Option<OwnedSemaphorePermit>,
    /// Of the plain half.
    plain: Option<OwnedSemaphorePermit>,
    /// The budget they come from.
    budget: BodyBudget,
}

impl BodyBudget {
    /// A budget of `bytes`, half for bodies as sent and half for decompressed ones.
    pub(crate) fn new(bytes: u64, wait: Duration, metrics: HqMetrics) -> BodyBudget {
        metrics.body_budget_bytes.set(0);
        BodyBudget {
            sent: Half::new(bytes / 2),
            plain: Half::new(bytes - bytes / 2),
            wait,
            metrics,
        }
    }

    /// An empty reservation, to grow later.
    pub(crate) fn empty(&self) -> Reservation {
        Reservation {
            sent: None,
            plain: None,
            budget: self.clone(),
        }
    }

    /// Takes `units` of `half`, waiting up to the budget's wait when `wait` says so.
    async fn acquire(
        &self,
        half: &Half,
        units: u32,
        wait: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, Busy> {
        if units == 0 {
            return Ok(None);
        }
        let acquired = match half.semaphore.clone().try_acquire_many_owned(units) {
            Ok(permit) => Some(permit),
            Err(_) if wait => {
                tokio::time::timeout(self.wait, half.semaphore.clone().acquire_many_owned(units))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        match acquired {
            Some(permit) => {
                self.publish();
                Ok(Some(permit))
            }
            None => {
                self.metrics.body_budget_refused.inc();
                Err(Busy)
            }
        }
    }

    /// Sets the gauge of reserved bytes.
    fn publish(&self) {
        let used = (self.sent.used() + self.plain.used()) * UNIT;
        self.metrics
            .body_budget_bytes
            .set(i64::try_from(used).unwrap_or(i64::MAX));
    }
}

/// Grows `slot` to `units` with `more`.
fn add(slot: &mut Option<OwnedSemaphorePermit>, more: Option<OwnedSemaphorePermit>) {
    match (slot.as_mut(), more) {
        (Some(permit), Some(more)) => permit.merge(more),
        (None, more) => *slot = more,
        (Some(_), None) => {}
    }
}

/// Units held in `slot`.
fn held(slot: &Option<OwnedSemaphorePermit>) -> u32 {
    slot.as_ref().map_or(0, |permit| {
        u32::try_from(permit.num_permits()).unwrap_or(u32::MAX)
    })
}

/// Gives back everything in `slot` beyond `keep` units.
fn trim(slot: &mut Option<OwnedSemaphorePermit>, keep: u32) {
    let Some(permit) = slot.as_mut() else {
        return;
    };
    let held = permit.num_permits();
    if keep == 0 {
        *slot = None;
    } else if (keep as usize) < held {
        // Splitting off the surplus and dropping it gives it back.
        drop(permit.split(held - keep as usize));
    }
}

impl Reservation {
    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        u64::from(held(&self.sent) + held(&self.plain)) * UNIT
    }

    /// Reserves `bytes` for the body as sent, waiting for room up to the budget's wait.
    /// Call it before holding anything else.
    pub(crate) async fn reserve_sent(&mut self, bytes: u64) -> Result<(), Busy> {
        let budget = self.budget.clone();
        let wanted = budget.sent.units_of(bytes);
        let have = held(&self.sent);
        if wanted > have {
            let more = budget.acquire(&budget.sent, wanted - have, true).await?;
            add(&mut self.sent, more);
        }
        Ok(())
    }

    /// Gives back the sent share beyond `bytes` (the body turned out smaller).
    pub(crate) fn shrink_sent_to(&mut self, bytes: u64) {
        trim(&mut self.sent, self.budget.sent.units_of(bytes));
        self.budget.publish();
    }

    /// Gives back the whole sent share (the body as sent is gone).
    pub(crate) fn release_sent(&mut self) {
        self.sent = None;
        self.budget.publish();
    }

    /// Grows the plain share to `bytes`: the first time waiting for room up to the budget's
    /// wait, later only if there is room right away (see the module doc). Runs on a blocking
    /// thread of the runtime (`spawn_blocking`).
    pub(crate) fn grow_plain_blocking(&mut self, bytes: u64) -> Result<(), Busy> {
        let budget = self.budget.clone();
        let wanted = budget.plain.units_of(bytes);
        let have = held(&self.plain);
        if wanted <= have {
            return Ok(());
        }
        let wait = self.plain.is_none();
        let more = tokio::runtime::Handle::current().block_on(budget.acquire(
            &budget.plain,
            wanted - have,
            wait,
        ))?;
        add(&mut self.plain, more);
        Ok(())
    }

    /// Gives back the plain share beyond `bytes`.
    pub(crate) fn shrink_plain_to(&mut self, bytes: u64) {
        trim(&mut self.plain, self.budget.plain.units_of(bytes));
        self.budget.publish();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.sent.is_some() || self.plain.is_some() {
            self.sent = None;
            self.plain = None;
            self.budget.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reservations_wait_then_give_up_and_give_back() {
        let metrics = HqMetrics::new();
        // 10 KiB sent, 10 KiB plain.
        let budget = BodyBudget::new(20 * UNIT, Duration::from_millis(50), metrics.clone());
        let mut first = budget.empty();
        first.reserve_sent(6 * UNIT).await.expect("room");
        assert_eq!(first.bytes(), 6 * UNIT);
        assert_eq!(metrics.body_budget_bytes.get(), 6 * UNIT as i64);
        let mut second = budget.empty();
        assert_eq!(second.reserve_sent(5 * UNIT).await, Err(Busy), "4 KiB left");
        assert_eq!(metrics.body_budget_refused.get(), 1);
        second.reserve_sent(4 * UNIT).await.expect("fits");
        first.shrink_sent_to(UNIT + 1);
        assert_eq!(first.bytes(), 2 * UNIT, "rounded up to whole units");
        second
            .reserve_sent(8 * UNIT)
            .await
            .expect("room given back");

        // The plain half: the first grant waits, growth does not.
        let (first, second) = tokio::task::spawn_blocking(move || {
            first.grow_plain_blocking(7 * UNIT).expect("room");
            assert_eq!(second.grow_plain_blocking(4 * UNIT), Err(Busy));
            first
                .grow_plain_blocking(9 * UNIT)
                .expect("room right away");
            second.grow_plain_blocking(UNIT).expect("room");
            assert_eq!(
                second.grow_plain_blocking(2 * UNIT),
                Err(Busy),
                "no waiting"
            );
            first.release_sent();
            first.shrink_plain_to(3 * UNIT);
            second
                .grow_plain_blocking(7 * UNIT)
                .expect("room given back");
            (first, second)
        })
        .await
        .expect("blocking");
        assert_eq!(first.bytes(), 3 * UNIT);
        drop(first);
        drop(second);
        assert_eq!(metrics.body_budget_bytes.get(), 0);
        // More than a half waits for all of it.
        let mut big = budget.empty();
        big.reserve_sent(100 * UNIT)
            .await
            .expect("capped at the half");
        assert_eq!(big.bytes(), 10 * UNIT);
    }
}
