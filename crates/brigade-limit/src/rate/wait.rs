//! Async acquire: a FIFO wait queue per key.
//!
//! The head of a key's queue sleeps until the time its cost would conform, then decides
//! again; the others sleep on their own `Notify` until they become the head. Whoever changes
//! the head (an admission, a cancelled or timed-out waiter, a refund, a reconfiguration)
//! notifies it. A waiter is removed from its queue by a guard's `Drop`, so a dropped
//! `acquire` future leaves the queue and has charged nothing. There is no background task.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::store::{Ahead, Entry, Queue, Shard, Waiter};
use super::{Admitted, Outcome, RateLimiter, lock};
use crate::MAX_LIMITS;
use crate::loom::Ordering;
use crate::{AcquireError, Reservation};

// Lives for one call on the stack; boxing the decision would cost an allocation per wake.
#[allow(clippy::large_enum_variant)]
enum Step {
    Done(Result<Admitted, AcquireError>),
    /// Still waiting; `Some` is the head's wait until its cost conforms.
    Wait(Option<Duration>),
}

/// Removes a waiter from its key's queue when the wait ends, however it ends.
struct Enqueued<'a, K: Hash + Eq + Borrow<Q>, Q: Hash + Eq + ?Sized> {
    limiter: &'a RateLimiter<K>,
    key: &'a Q,
    hash: u64,
    id: u64,
    notify: Arc<Notify>,
    /// Already out of the queue (admitted, or failed under the lock).
    left: bool,
}

impl<K: Hash + Eq + Borrow<Q>, Q: Hash + Eq + ?Sized> Drop for Enqueued<'_, K, Q> {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut shard = lock(self.limiter.shard(self.hash));
        self.limiter.leave(&mut shard, self.hash, self.key, self.id);
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// Takes waiter `id` out of its entry's queue, drops an empty queue, and wakes a new
    /// head. An entry whose queue empties can be evicted again once idle: `next_sweep` (the
    /// shard's, which counted it as never idle) is brought forward to that time, and the
    /// eviction order learns of it.
    fn leave<Q>(&self, shard: &mut Shard<K>, hash: u64, key: &Q, id: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(entry) = shard.table.find_mut(hash, |e| e.key.borrow() == key) else {
            return;
        };
        let queue = entry.queue_slot();
        let Some(q) = queue else {
            return;
        };
        if let Some(was_head) = q.remove(id) {
            if let Some(direct) = &self.inner.direct {
                direct.queued.fetch_sub(1, Ordering::AcqRel);
            }
            if was_head {
                q.wake_head();
            }
        }
        if q.waiters.is_empty() {
            *queue = None;
            let idle_at = entry.idle_at();
            shard.next_sweep = shard.next_sweep.min(idle_at);
            shard.note(hash, idle_at);
        }
    }

    /// Waits in the key's FIFO queue until `cost` cells are admitted, `cancel` fires or
    /// `deadline` passes.
    ///
    /// Callers of a key are admitted in arrival order: a large cost at the head is not
    /// overtaken by later small ones. A caller admitted at once does not queue. The head
    /// waiter fails early with [`AcquireError::DeadlineExceeded`] once it knows its cost
    /// cannot conform before `deadline`. The key is looked up by any borrowed form, as in
    /// [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// [`AcquireError::QueueFull`] (with an estimate of the wait) when the key already has
    /// `max_queue` waiters, [`AcquireError::Cancelled`], [`AcquireError::DeadlineExceeded`],
    /// [`AcquireError::Unsatisfiable`] for a cost over a burst (also if a reconfiguration
    /// shrinks the burst under a waiter), [`AcquireError::KeysExhausted`] for a new key that
    /// finds no room.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future removes the caller from the queue, charges nothing,
    /// and wakes the next waiter if it was the head.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use brigade_limit::{Quota, RateLimiter};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = RateLimiter::direct(Quota::per_second(NonZeroU32::new(10).unwrap())).unwrap();
    /// limiter.try_acquire(&(), 10).unwrap();
    /// let start = tokio::time::Instant::now();
    /// let cancel = CancellationToken::new();
    /// limiter.acquire(&(), 5, &cancel, None).await.unwrap();
    /// assert_eq!(start.elapsed(), Duration::from_millis(500));
    /// # }
    /// ```
    pub async fn acquire<Q>(
        &self,
        key: &Q,
        cost: u32,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<Admitted, AcquireError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let hash = self.hash(key);
        let mut waiter = match self.enqueue(key, hash, cost) {
            Ok(waiter) => waiter,
            Err(done) => return done,
        };
        loop {
            let wait = match self.step(&mut waiter, cost, deadline) {
                Step::Done(result) => return result,
                Step::Wait(wait) => wait,
            };
            let notify = Arc::clone(&waiter.notify);
            let notified = notify.notified();
            // The deadline comes last: a head whose wait ends exactly at its deadline decides
            // once more (and is admitted) rather than failing; `step` fails it when it is late.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(AcquireError::Cancelled),
                () = notified => {}
                () = sleep_opt(wait) => {}
                () = sleep_until_opt(deadline) => return Err(AcquireError::DeadlineExceeded),
            }
        }
    }

    /// [`acquire`](Self::acquire), returning a [`Reservation`] to settle with the actual
    /// cost. The reservation owns a copy of the key (`to_owned`), to find it again when
    /// settled.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire): a dropped future charges nothing.
    pub async fn reserve<Q>(
        &self,
        key: &Q,
        estimate: u32,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<Reservation<K>, AcquireError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let admitted = self.acquire(key, estimate, cancel, deadline).await?;
        Ok(Reservation::new(
            self.clone(),
            key.to_owned(),
            estimate,
            admitted,
        ))
    }

    /// Decides at once if the caller fits; otherwise joins the queue.
    // `Err` is the final answer, returned once per call; boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    fn enqueue<'a, Q>(
        &'a self,
        key: &'a Q,
        hash: u64,
        cost: u32,
    ) -> Result<Enqueued<'a, K, Q>, Result<Admitted, AcquireError>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.now();
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        let limits = shard.limits;
        let hasher = |k: &K| self.inner.hash(k);
        let entry = match shard.table.find_mut(hash, |e| e.key.borrow() == key) {
            Some(entry) => entry,
            // A direct limiter's TAT is not in the table; its entry holds only the queue.
            None if self.inner.direct.is_some() => shard
                .table
                .insert_unique(hash, Entry::new(key.to_owned(), [0; MAX_LIMITS]), |e| {
                    hasher(&e.key)
                })
                .into_mut(),
            None => {
                drop(guard);
                // A fresh key is never over quota: decide like `try_acquire`.
                return Err(self.try_acquire(key, cost));
            }
        };
        let ahead = entry.ahead();
        let outcome = self.update_tats(entry, |tats| self.decide(&limits, tats, ahead, now, cost));
        let rejected = match outcome {
            Outcome::Reject(rejected) if !self.is_shadow() => rejected,
            outcome => return Err(self.finish(outcome)),
        };
        if entry.queue().map_or(0, |q| q.waiters.len()) >= self.inner.max_queue {
            return Err(Err(AcquireError::QueueFull(rejected)));
        }
        let queue = entry.queue_slot().get_or_insert_with(Queue::default);
        let id = shard.next_waiter;
        shard.next_waiter += 1;
        let notify = Arc::new(Notify::new());
        queue.waiters.push_back(Waiter {
            id,
            cost,
            notify: Arc::clone(&notify),
        });
        queue.cells += u64::from(cost);
        if let Some(direct) = &self.inner.direct {
            direct.queued.fetch_add(1, Ordering::AcqRel);
        }
        Ok(Enqueued {
            limiter: self,
            key,
            hash,
            id,
            notify,
            left: false,
        })
    }

    /// One look at the queue: the head decides, the others keep waiting.
    fn step<Q>(&self, waiter: &mut Enqueued<'_, K, Q>, cost: u32, deadline: Option<Instant>) -> Step
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.now();
        let mut shard = lock(self.shard(waiter.hash));
        let shard = &mut *shard;
        let limits = shard.limits;
        let Some(entry) = shard
            .table
            .find_mut(waiter.hash, |e| e.key.borrow() == waiter.key)
        else {
            unreachable!("an entry with waiters is never evicted")
        };
        let is_head = entry
            .queue()
            .and_then(|q| q.waiters.front())
            .is_some_and(|w| w.id == waiter.id);
        if !is_head {
            return Step::Wait(None);
        }
        let outcome = self.update_tats(entry, |tats| {
            self.decide(&limits, tats, Ahead::default(), now, cost)
        });
        let result = match outcome {
            // Shadow mode (perhaps switched on while this caller waited) never rejects.
            Outcome::Reject(rejected) if !self.is_shadow() => {
                let wait = rejected.retry_after;
                let at = (self.inner.start + Duration::from_nanos(now)).checked_add(wait);
                let late = deadline.is_some_and(|d| at.is_none_or(|at| at > d));
                if !late {
                    return Step::Wait(Some(wait));
                }
                Err(AcquireError::DeadlineExceeded)
            }
            outcome => self.finish(outcome),
        };
        self.leave(shard, waiter.hash, waiter.key, waiter.id);
        waiter.left = true;
        Step::Done(result)
    }
}

async fn sleep_opt(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
