//! The adaptive limit's permits: a tokio semaphore whose size follows the limit, and a debt
//! that shrinks it while the permits to take away are held.
//!
//! # Invariants
//!
//! With `A` the semaphore's available permits, `H` the permits taken from it and not yet
//! given back, `D` the debt and `L` the limit, every step keeps `A + H - D = L`:
//!
//! - a caller takes a permit (`A - 1`, `H + 1`); if it then finds a debt, it pays one unit
//!   with that permit (`H - 1`, `D - 1`) and tries again, so a permit is *granted* only while
//!   the debt is zero, that is while `H <= L`;
//! - a permit given back pays one unit of debt if there is any (`H - 1`, `D - 1`), and goes
//!   back to the semaphore otherwise (`H - 1`, `A + 1`);
//! - a smaller limit forgets the available permits it can (`A - f`) and owes the rest
//!   (`D + k - f`); a larger one pays the debt first (`D - p`) and adds the rest (`A + k - p`).
//!
//! Limit changes are serialized by the caller (the adaptive limit's state lock); takes and
//! gives back run concurrently with them and with each other. The semaphore's own operations
//! are each atomic (tokio's). Model-checked with loom: once every permit is back, exactly `L`
//! can be granted.
//!
//! # The epoch of a grant
//!
//! The controller's epoch (odd while a probe runs) is stored here after the limit it goes
//! with (release), and a grant reads it after taking a semaphore permit and before checking
//! the debt (acquire). So a grant that reads a probe's epoch checked the debt after the
//! probe's limit was set: it was granted within the probe's limit. A caller that queued
//! before the probe and is served during it counts as the probe's.

use tokio::sync::{AcquireError, Semaphore};

use crate::loom::{AtomicU32, AtomicUsize, Ordering};

#[derive(Debug)]
pub(super) struct Capacity {
    semaphore: Semaphore,
    debt: AtomicUsize,
    limit: AtomicUsize,
    epoch: AtomicU32,
}

impl Capacity {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            semaphore: Semaphore::new(limit),
            debt: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            epoch: AtomicU32::new(0),
        }
    }

    /// One permit now, if the limit has room, and the epoch it was granted in; the caller
    /// owns it until [`give_back`].
    ///
    /// [`give_back`]: Self::give_back
    pub(super) fn try_take(&self) -> Option<u32> {
        while let Ok(permit) = self.semaphore.try_acquire() {
            permit.forget();
            let epoch = self.epoch.load(Ordering::Acquire);
            if !self.pay_debt() {
                return Some(epoch);
            }
        }
        None
    }

    /// One permit, waiting first come, first served, and the epoch it was granted in.
    ///
    /// Cancel safe: dropped while waiting, it holds nothing.
    pub(super) async fn take(&self) -> u32 {
        loop {
            match self.semaphore.acquire().await {
                Ok(permit) => permit.forget(),
                // Never closed.
                Err(AcquireError { .. }) => continue,
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            if !self.pay_debt() {
                return epoch;
            }
        }
    }

    /// Gives back a permit taken by [`try_take`](Self::try_take) or [`take`](Self::take).
    pub(super) fn give_back(&self) {
        if !self.pay_debt() {
            self.semaphore.add_permits(1);
        }
    }

    /// Pays one unit of debt with a permit the caller holds, if there is a debt.
    fn pay_debt(&self) -> bool {
        // The common case, no debt, is one load.
        self.debt.load(Ordering::Acquire) != 0
            && self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok()
    }

    /// Moves the limit to `new`. Callers serialize their calls (one lock).
    pub(super) fn set_limit(&self, new: usize) {
        let old = self.limit.load(Ordering::Acquire);
        if new > old {
            let more = new - old;
            let paid = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(more))
                })
                .map_or(0, |d| d.min(more));
            if more > paid {
                self.semaphore.add_permits(more - paid);
            }
        } else if new < old {
            let fewer = old - new;
            let forgotten = self.semaphore.forget_permits(fewer);
            if fewer > forgotten {
                self.debt.fetch_add(fewer - forgotten, Ordering::AcqRel);
            }
        }
        self.limit.store(new, Ordering::Release);
    }

    pub(super) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Sets the epoch, after the limit that goes with it. Callers serialize their calls.
    pub(super) fn set_epoch(&self, epoch: u32) {
        self.epoch.store(epoch, Ordering::Release);
    }

    pub(super) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Permits held now (`L + D - A`); exact when nothing moves, off by the steps in
    /// progress otherwise.
    pub(super) fn in_flight(&self) -> usize {
        let limit = self.limit.load(Ordering::Acquire);
        let debt = self.debt.load(Ordering::Acquire);
        (limit + debt).saturating_sub(self.semaphore.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::Capacity;

    fn drain(capacity: &Capacity) -> usize {
        let mut n = 0;
        while capacity.try_take().is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_smaller_limit_is_paid_by_the_permits_given_back() {
        let capacity = Capacity::new(3);
        assert_eq!(drain(&capacity), 3);
        capacity.set_limit(1);
        assert_eq!(capacity.in_flight(), 3);
        capacity.give_back();
        capacity.give_back();
        assert_eq!(capacity.try_take(), None, "two permits were owed");
        capacity.give_back();
        assert_eq!(capacity.in_flight(), 0);
        assert_eq!(drain(&capacity), 1);
    }

    #[test]
    fn a_larger_limit_pays_the_debt_before_adding_permits() {
        let capacity = Capacity::new(4);
        assert_eq!(drain(&capacity), 4);
        capacity.set_limit(1); // owes 3
        capacity.set_limit(3); // owes 1
        capacity.give_back(); // pays it
        assert_eq!(capacity.try_take(), None);
        capacity.give_back();
        assert_eq!(capacity.try_take(), Some(0));
        assert_eq!(capacity.in_flight(), 3);
    }

    #[test]
    fn available_permits_are_forgotten_at_once() {
        let capacity = Capacity::new(5);
        capacity.set_limit(2);
        assert_eq!(drain(&capacity), 2);
        capacity.set_limit(6);
        assert_eq!(drain(&capacity), 4);
        assert_eq!(capacity.in_flight(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_served_when_the_limit_grows() {
        let capacity = std::sync::Arc::new(Capacity::new(1));
        assert!(capacity.try_take().is_some());
        let waiter = tokio::spawn({
            let capacity = std::sync::Arc::clone(&capacity);
            async move { capacity.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        capacity.set_limit(2);
        waiter.await.unwrap();
        assert_eq!(capacity.in_flight(), 2);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p brigade-limit --release --lib loom`
    //!
    //! tokio's semaphore is not loom's: each of its operations is one step of the model, and
    //! loom explores the debt's interleavings around them.

    use std::sync::Arc;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::Capacity;

    fn drain(capacity: &Capacity) -> usize {
        let mut n = 0;
        while capacity.try_take().is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn loom_a_smaller_limit_racing_gives_back_and_takes_leaves_exactly_the_limit() {
        loom::model(|| {
            let capacity = Arc::new(Capacity::new(3));
            assert_eq!(drain(&capacity), 3);
            // Counted down before each give back, up after a take: never below the truth.
            let held = Arc::new(AtomicUsize::new(3));
            let giver = {
                let (capacity, held) = (Arc::clone(&capacity), Arc::clone(&held));
                thread::spawn(move || {
                    for _ in 0..2 {
                        held.fetch_sub(1, Ordering::SeqCst);
                        capacity.give_back();
                    }
                })
            };
            let taker = {
                let (capacity, held) = (Arc::clone(&capacity), Arc::clone(&held));
                thread::spawn(move || {
                    let took = capacity.try_take().is_some();
                    if took {
                        // Never more than the larger of the two limits granted.
                        assert!(held.fetch_add(1, Ordering::SeqCst) < 3);
                    }
                    took
                })
            };
            capacity.set_limit(1);
            giver.join().unwrap();
            if taker.join().unwrap() {
                capacity.give_back();
            }
            capacity.give_back();
            assert_eq!(capacity.in_flight(), 0);
            assert_eq!(drain(&capacity), 1, "exactly the limit once all is back");
        });
    }

    #[test]
    fn loom_a_larger_limit_racing_gives_back_pays_its_debt_once() {
        loom::model(|| {
            let capacity = Arc::new(Capacity::new(2));
            assert_eq!(drain(&capacity), 2);
            capacity.set_limit(1); // owes one
            let giver = {
                let capacity = Arc::clone(&capacity);
                thread::spawn(move || capacity.give_back())
            };
            capacity.set_limit(3);
            giver.join().unwrap();
            capacity.give_back();
            assert_eq!(drain(&capacity), 3);
        });
    }
}
