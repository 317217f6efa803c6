//! Concurrency limits (bulkheads): at most N calls in flight, a bounded queue, and permits
//! that live as long as the response body.
//!
//! # Why reject when the queue is full?
//!
//! A queue without a bound turns overload into latency for everyone, and then into timeouts
//! that waste the work already done. A full queue says *no* at once (503 with
//! `Retry-After`), and a caller that did queue waits at most the queue timeout.
//!
//! # Why a permit in the body?
//!
//! For a streamed LLM response the expensive part starts after the headers are sent. A permit
//! released when the handler returns bounds nothing. A
//! [`ConcurrencyPermit`] is an owned value: move it into a [`PermitBody`] and it is released
//! when the stream ends, fails, or is dropped by a disconnecting client.
//!
//! Waiting callers are served first come, first served (tokio's semaphore is fair), unless
//! the queue is keyed (below).
//!
//! # Why a queue fair across keys?
//!
//! One FIFO queue is fair to calls, not to callers: a client that sends a hundred requests at
//! once takes a hundred places, and everyone behind it waits for its work. With
//! [`max_queue_per_key`](ConcurrencyLimitBuilder::max_queue_per_key), the queue is keyed: a
//! caller queues through [`acquire_as`](ConcurrencyLimit::acquire_as) with its key (an API
//! key, an address), and
//!
//! - waiting callers are served **round-robin across keys, first come first served within a
//!   key**: each release serves the oldest waiter of the next key in the rotation, and a key
//!   that starts waiting joins the end of the rotation (it leaves when its last waiter is
//!   served or gone). A client that floods the queue is served once per turn, like a client
//!   that asked once; callers of [`acquire`](ConcurrencyLimit::acquire) take their turns as
//!   one key of their own;
//! - a key holds at most that many places; beyond them a caller is refused at once
//!   ([`OverloadReason::KeyQueueFull`]), and the queue stays open to everyone else.
//!
//! A caller takes a free permit without a lock (a compare-and-swap) while no one waits; while
//! someone waits, a newcomer queues rather than overtake. The per-key queues sit under a lock
//! taken when a call queues, when it leaves the queue, and by a release that finds callers
//! waiting, never when a permit is free and no one waits; they hold only keys with a waiter,
//! so at most `max_queue` keys, hashed with a seed of the limit's own so a client cannot pick
//! keys that share another's turn. Without `max_queue_per_key`, the queue is tokio's FIFO and
//! the keyed queue costs a branch.
//!
//! # Why refuse a wait that would time out?
//!
//! A caller who joins the queue behind so many others that it would wait past the queue
//! timeout gets a 503 either way; made to wait first, it holds a connection and a task for the
//! whole timeout, and a surge fills the queue with callers who will all time out. So the limit
//! predicts the wait from the time permits are held (a moving average of the permits released
//! so far, by Little's law: the `q`th caller in line waits about `q` × hold time ÷
//! `max_in_flight`) and refuses at once, with [`OverloadReason::PredictedTimeout`] and the
//! predicted wait as its `Retry-After`, a caller whose predicted wait exceeds the timeout
//! ([`refuse_predicted_timeouts`](ConcurrencyLimitBuilder::refuse_predicted_timeouts), on by
//! default). Until a permit has been released there is no prediction, and callers queue. In
//! a keyed queue the prediction is the same, from the caller's place in the whole queue: a
//! key's later waiters may be served later than predicted (each waits its turn across the
//! keys), and a new key's first waiter sooner.
//! [`ConcurrencyLimit::would_refuse`] asks the same question without joining the queue, so a
//! server can refuse before it reads a request's body.
//!
//! # Fixed or adaptive?
//!
//! A [`ConcurrencyLimit`] holds the number it is given: right for a resource whose capacity
//! is known (a pool, this server's own streams). An [`AdaptiveLimit`](adaptive::AdaptiveLimit)
//! finds an upstream's capacity from its latency and drops, and follows it when it moves
//! ([`adaptive`]). Both refuse with [`Overloaded`], and both permits go into a
//! [`PermitBody`].

pub mod adaptive;
mod body;
mod fair;
mod slots;

use std::error::Error;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use self::body::PermitBody;
use self::fair::{FairQueue, Lane, Refused};
use self::slots::Slots;
use crate::InvalidConfig;

/// At most `max_in_flight` calls at once, up to `max_queue` more waiting at most
/// `queue_timeout` each.
///
/// Cloning is cheap and shares the limit.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_limit::{ConcurrencyLimit, OverloadReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let bulkhead = ConcurrencyLimit::builder()
///     .max_in_flight(1)
///     .max_queue(0)
///     .build()
///     .unwrap();
/// let permit = bulkhead.acquire().await.unwrap();
/// let overloaded = bulkhead.acquire().await.unwrap_err();
/// assert_eq!(overloaded.reason(), OverloadReason::QueueFull);
/// drop(permit);
/// assert!(bulkhead.acquire().await.is_ok());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    semaphore: Arc<Semaphore>,
    max_in_flight: usize,
    queue: Slots,
    queue_timeout: Duration,
    retry_after: Duration,
    /// The moving average of the time permits are held, in nanoseconds; 0 before the first
    /// release, or when predictions are off.
    hold_nanos: AtomicU64,
    predict: bool,
    /// The keyed mode's queue (with `max_queue_per_key`): round-robin across keys. Without
    /// it, callers wait in the semaphore's own FIFO.
    fair: Option<FairQueue<Arc<Semaphore>>>,
}

/// Builds a [`ConcurrencyLimit`]; each setter documents its default.
#[derive(Clone, Debug)]
#[must_use]
pub struct ConcurrencyLimitBuilder {
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
    retry_after: Duration,
    predict: bool,
    max_queue_per_key: Option<usize>,
}

impl ConcurrencyLimitBuilder {
    /// The most calls in flight. Default: 64.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The most calls waiting for a permit; 0 rejects at once when all are taken.
    /// Default: 64.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// The longest a call waits in the queue. Default: 5 s.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The `Retry-After` an overloaded caller is given while the limit has no prediction of
    /// the wait (see [`Overloaded::retry_after`]). Default: 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Makes the queue fair across keys, with at most `n` places per key: callers that queue
    /// through [`ConcurrencyLimit::acquire_as`] are served round-robin across their keys and
    /// first come, first served within a key, and a key that already holds `n` places is
    /// refused at once with [`OverloadReason::KeyQueueFull`]. Callers of
    /// [`ConcurrencyLimit::acquire`] wait as one key of their own, not bounded by `n` (only by
    /// `max_queue`). Default: off: one first-come-first-served queue for every caller, bounded
    /// only by `max_queue`.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_limit::ConcurrencyLimit;
    /// use futures::FutureExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let bulkhead = ConcurrencyLimit::builder()
    ///     .max_in_flight(1)
    ///     .max_queue_per_key(8)
    ///     .build()
    ///     .unwrap();
    /// let held = bulkhead.acquire().await.unwrap();
    /// // alice floods the queue, then bob asks once.
    /// let mut alice_1 = Box::pin(bulkhead.acquire_as("alice"));
    /// let mut alice_2 = Box::pin(bulkhead.acquire_as("alice"));
    /// let mut bob = Box::pin(bulkhead.acquire_as("bob"));
    /// assert!(alice_1.as_mut().now_or_never().is_none());
    /// assert!(alice_2.as_mut().now_or_never().is_none());
    /// assert!(bob.as_mut().now_or_never().is_none());
    /// // Each release serves the next key in turn: alice, then bob, then alice again.
    /// drop(held);
    /// let held = alice_1.now_or_never().unwrap().unwrap();
    /// drop(held);
    /// assert!(alice_2.as_mut().now_or_never().is_none());
    /// let held = bob.now_or_never().unwrap().unwrap();
    /// drop(held);
    /// assert!(alice_2.now_or_never().unwrap().is_ok());
    /// # }
    /// ```
    pub fn max_queue_per_key(mut self, n: usize) -> Self {
        self.max_queue_per_key = Some(n);
        self
    }

    /// Whether a caller whose predicted wait in the queue exceeds the queue timeout is refused
    /// at once ([`OverloadReason::PredictedTimeout`]) instead of waiting to time out, and
    /// refusals carry the predicted wait as their `Retry-After`. The prediction costs two clock
    /// readings per permit (at acquire and at release). Default: on.
    pub fn refuse_predicted_timeouts(mut self, on: bool) -> Self {
        self.predict = on;
        self
    }

    /// Builds the limit.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroConcurrency`] for `max_in_flight(0)` (or more than tokio's
    /// semaphore holds).
    pub fn build(self) -> Result<ConcurrencyLimit, InvalidConfig> {
        if self.max_in_flight == 0 || self.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(InvalidConfig::ZeroConcurrency);
        }
        let semaphore = Arc::new(Semaphore::new(self.max_in_flight));
        let fair = self
            .max_queue_per_key
            .map(|max| FairQueue::new(Arc::clone(&semaphore), max));
        Ok(ConcurrencyLimit {
            inner: Arc::new(Inner {
                semaphore,
                max_in_flight: self.max_in_flight,
                queue: Slots::new(self.max_queue),
                queue_timeout: self.queue_timeout,
                retry_after: self.retry_after,
                hold_nanos: AtomicU64::new(0),
                predict: self.predict,
                fair,
            }),
        })
    }
}

impl ConcurrencyLimit {
    /// A builder: 64 in flight, 64 queued, 5 s queue timeout, 1 s `Retry-After`, predicted
    /// timeouts refused.
    pub fn builder() -> ConcurrencyLimitBuilder {
        ConcurrencyLimitBuilder {
            max_in_flight: 64,
            max_queue: 64,
            queue_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            predict: true,
            max_queue_per_key: None,
        }
    }

    /// A permit now, if one is free (and, in the keyed mode, no one waits: a caller does not
    /// overtake the queue).
    ///
    /// # Errors
    ///
    /// [`Overloaded`] with [`OverloadReason::QueueFull`] when every permit is taken.
    pub fn try_acquire(&self) -> Result<ConcurrencyPermit, Overloaded> {
        let permit = match &self.inner.fair {
            None => Arc::clone(&self.inner.semaphore).try_acquire_owned().ok(),
            Some(fair) => fair.try_take(),
        };
        permit
            .map(|permit| self.permit(permit))
            .ok_or_else(|| self.overloaded(OverloadReason::QueueFull, self.inner.queue.taken() + 1))
    }

    /// A permit, waiting in the queue if all are taken.
    ///
    /// # Errors
    ///
    /// [`Overloaded`]: [`OverloadReason::QueueFull`] at once when `max_queue` callers
    /// already wait, [`OverloadReason::QueueTimeout`] after waiting `queue_timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves the queue, and holds no permit.
    pub async fn acquire(&self) -> Result<ConcurrencyPermit, Overloaded> {
        if let Ok(permit) = self.try_acquire() {
            return Ok(permit);
        }
        match &self.inner.fair {
            None => self.queue().await,
            // The callers without a key: one lane of the rotation.
            Some(fair) => self.queue_fair(fair, None).await,
        }
    }

    /// A permit for the caller `key`, waiting in the queue if all are taken. With
    /// [`max_queue_per_key`](ConcurrencyLimitBuilder::max_queue_per_key), waiting callers are
    /// served round-robin across keys (first come, first served within a key), and `key`
    /// holds at most that many places. Without it, the same as [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), and [`OverloadReason::KeyQueueFull`] at once when `key`
    /// already holds its places.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future gives back its places, and holds no permit.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_limit::{ConcurrencyLimit, OverloadReason};
    /// use futures::FutureExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let bulkhead = ConcurrencyLimit::builder()
    ///     .max_in_flight(1)
    ///     .max_queue(8)
    ///     .max_queue_per_key(1)
    ///     .build()
    ///     .unwrap();
    /// let _held = bulkhead.acquire_as("alice").await.unwrap();
    /// // alice waits in line once; her second waiting call is refused, bob's is not.
    /// let mut first = std::pin::pin!(bulkhead.acquire_as("alice"));
    /// assert!(first.as_mut().now_or_never().is_none());
    /// let refused = bulkhead.acquire_as("alice").await.unwrap_err();
    /// assert_eq!(refused.reason(), OverloadReason::KeyQueueFull);
    /// let mut bob = std::pin::pin!(bulkhead.acquire_as("bob"));
    /// assert!(bob.as_mut().now_or_never().is_none());
    /// # }
    /// ```
    pub async fn acquire_as<Q: Hash + ?Sized>(
        &self,
        key: &Q,
    ) -> Result<ConcurrencyPermit, Overloaded> {
        if let Ok(permit) = self.try_acquire() {
            return Ok(permit);
        }
        match &self.inner.fair {
            None => self.queue().await,
            Some(fair) => self.queue_fair(fair, fair.lane(key)).await,
        }
    }

    /// Waits in the queue for a permit (none was free).
    async fn queue(&self) -> Result<ConcurrencyPermit, Overloaded> {
        let inner = &*self.inner;
        // The queue slot is given back when this future ends or is dropped.
        let Some(slot) = inner.queue.try_take() else {
            return Err(self.overloaded(OverloadReason::QueueFull, inner.queue.taken() + 1));
        };
        let place = slot.place();
        if self
            .predicted_wait(place)
            .is_some_and(|wait| wait > inner.queue_timeout)
        {
            return Err(self.overloaded(OverloadReason::PredictedTimeout, place));
        }
        let acquire = Arc::clone(&inner.semaphore).acquire_owned();
        match tokio::time::timeout(inner.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(self.permit(permit)),
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => Err(self.overloaded(OverloadReason::QueueTimeout, place)),
        }
    }

    /// Waits in the keyed mode's queue, in `lane`, for a permit (none was free, or others
    /// wait).
    async fn queue_fair(
        &self,
        fair: &FairQueue<Arc<Semaphore>>,
        lane: Lane,
    ) -> Result<ConcurrencyPermit, Overloaded> {
        let inner = &*self.inner;
        // Checked under the queue's lock once the key has a place: the queue bound (a slot
        // held while this call waits), then the predicted wait.
        let admit = || {
            let Some(slot) = inner.queue.try_take() else {
                return Err((OverloadReason::QueueFull, inner.queue.taken() + 1));
            };
            let place = slot.place();
            if self
                .predicted_wait(place)
                .is_some_and(|wait| wait > inner.queue_timeout)
            {
                return Err((OverloadReason::PredictedTimeout, place));
            }
            Ok(slot)
        };
        let (mut waiting, slot) = match fair.join(lane, admit) {
            Ok(joined) => joined,
            Err(Refused::KeyFull) => {
                return Err(self.overloaded(OverloadReason::KeyQueueFull, inner.queue.taken() + 1));
            }
            Err(Refused::Admit((reason, place))) => return Err(self.overloaded(reason, place)),
        };
        match tokio::time::timeout(inner.queue_timeout, waiting.permit()).await {
            Ok(Some(permit)) => Ok(self.permit(permit)),
            // Out of the queue when `waiting` drops, passing on a permit sent meanwhile.
            Ok(None) | Err(_) => Err(self.overloaded(OverloadReason::QueueTimeout, slot.place())),
        }
    }

    /// Whether [`acquire`](Self::acquire) would be refused at once if called now: every permit
    /// taken and the queue full, or (with
    /// [`refuse_predicted_timeouts`](ConcurrencyLimitBuilder::refuse_predicted_timeouts)) a
    /// wait predicted past the queue timeout. The refusal it would get, if so.
    ///
    /// Lock-free and allocation-free: a few atomic loads, for a server that refuses before it
    /// reads a request. It is a snapshot: a permit may free up, or the queue fill, right
    /// after, so the caller still acquires for real when this says no refusal.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_limit::{ConcurrencyLimit, OverloadReason};
    ///
    /// let bulkhead = ConcurrencyLimit::builder().max_in_flight(1).max_queue(0).build().unwrap();
    /// assert!(bulkhead.would_refuse().is_none());
    /// let _permit = bulkhead.try_acquire().unwrap();
    /// let refusal = bulkhead.would_refuse().unwrap();
    /// assert_eq!(refusal.reason(), OverloadReason::QueueFull);
    /// ```
    pub fn would_refuse(&self) -> Option<Overloaded> {
        let inner = &*self.inner;
        // A permit free while callers wait in the keyed queue is on its way to one of them.
        if inner.semaphore.available_permits() > 0
            && inner.fair.as_ref().is_none_or(|fair| fair.waiting() == 0)
        {
            return None;
        }
        let queued = inner.queue.taken();
        if queued >= inner.queue.max() {
            return Some(self.overloaded(OverloadReason::QueueFull, queued + 1));
        }
        self.predicted_wait(queued + 1)
            .filter(|wait| *wait > inner.queue_timeout)
            .map(|_| self.overloaded(OverloadReason::PredictedTimeout, queued + 1))
    }

    /// The wait predicted for the caller at `place` in the queue (1 for the next one served):
    /// `place` releases, at `max_in_flight` per hold time. `None` before the first release,
    /// and always with predictions off (no permit then records its hold).
    fn predicted_wait(&self, place: usize) -> Option<Duration> {
        let inner = &*self.inner;
        let hold = inner.hold_nanos.load(Ordering::Relaxed);
        if hold == 0 {
            return None;
        }
        let nanos = u128::from(hold) * place as u128 / inner.max_in_flight as u128;
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    fn permit(&self, permit: OwnedSemaphorePermit) -> ConcurrencyPermit {
        ConcurrencyPermit {
            _hold: self.inner.predict.then(|| HoldClock {
                since: Instant::now(),
                limit: Arc::clone(&self.inner),
            }),
            _permit: permit,
            _serve: self
                .inner
                .fair
                .is_some()
                .then(|| ServeNext(Arc::clone(&self.inner))),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.semaphore.available_permits()
    }

    /// Calls waiting now.
    pub fn queued(&self) -> usize {
        self.inner.queue.taken()
    }

    /// The most calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// The refusal of the caller at `place` in the queue: its `Retry-After` is its predicted
    /// wait when there is one, else the configured hint.
    fn overloaded(&self, reason: OverloadReason, place: usize) -> Overloaded {
        Overloaded {
            reason,
            retry_after: self.predicted_wait(place).unwrap_or(self.inner.retry_after),
        }
    }
}

impl Inner {
    /// Folds a permit's hold time into the moving average (weight 1/8; the first sets it).
    fn record_hold(&self, held: Duration) {
        let held = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .hold_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    held
                } else {
                    // old + (held - old) / 8, in signed arithmetic that cannot overflow.
                    let step = (i128::from(held) - i128::from(old)) / 8;
                    u64::try_from(i128::from(old) + step).unwrap_or(1).max(1)
                })
            });
    }
}

/// When a permit was taken, to record how long it was held.
#[derive(Debug)]
struct HoldClock {
    since: Instant,
    limit: Arc<Inner>,
}

impl Drop for HoldClock {
    fn drop(&mut self) {
        self.limit.record_hold(self.since.elapsed());
    }
}

/// In the keyed mode, serves the next waiter once the permit is back in the semaphore.
#[derive(Debug)]
struct ServeNext(Arc<Inner>);

impl Drop for ServeNext {
    fn drop(&mut self) {
        if let Some(fair) = &self.0.fair {
            fair.release();
        }
    }
}

/// The right to one call in flight; released when dropped.
///
/// Owned and `'static`: move it into the response body with [`PermitBody`] so it is held
/// until the stream ends.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct ConcurrencyPermit {
    /// Dropped before the semaphore's permit (fields drop in order): the hold is recorded
    /// before the next caller can be admitted.
    _hold: Option<HoldClock>,
    _permit: OwnedSemaphorePermit,
    /// Dropped after the semaphore's permit: the keyed mode's dispatch finds it there.
    _serve: Option<ServeNext>,
}

/// Why a [`ConcurrencyLimit`] refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadReason {
    /// Every permit taken and the queue full (or no queue): rejected at once.
    QueueFull,
    /// Waited the whole queue timeout without a permit.
    QueueTimeout,
    /// Every permit taken, and the caller's predicted wait in the queue longer than the queue
    /// timeout: rejected at once rather than made to wait for a timeout.
    PredictedTimeout,
    /// Every permit taken, and the caller's key already holds its places in the queue
    /// ([`max_queue_per_key`](ConcurrencyLimitBuilder::max_queue_per_key)): rejected at once.
    KeyQueueFull,
}

/// A call refused by a [`ConcurrencyLimit`]: a 503 with `Retry-After` for HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overloaded {
    reason: OverloadReason,
    retry_after: Duration,
}

impl Overloaded {
    /// Why the call was refused.
    pub const fn reason(&self) -> OverloadReason {
        self.reason
    }

    /// When to retry: the caller's predicted wait in the queue when the limit predicts waits
    /// and has seen a permit released, else the configured hint.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            OverloadReason::QueueFull => f.write_str("overloaded: concurrency queue is full"),
            OverloadReason::QueueTimeout => {
                f.write_str("overloaded: timed out in the concurrency queue")
            }
            OverloadReason::PredictedTimeout => f.write_str(
                "overloaded: the wait in the concurrency queue would exceed its timeout",
            ),
            OverloadReason::KeyQueueFull => {
                f.write_str("overloaded: this caller's places in the concurrency queue are taken")
            }
        }
    }
}

impl Error for Overloaded {}
