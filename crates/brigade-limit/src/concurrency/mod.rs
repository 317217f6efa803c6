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
//! Waiting callers are served first come, first served (tokio's semaphore is fair).
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
mod slots;

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::body::PermitBody;
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
}

/// Builds a [`ConcurrencyLimit`]; each setter documents its default.
#[derive(Clone, Debug)]
#[must_use]
pub struct ConcurrencyLimitBuilder {
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
    retry_after: Duration,
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

    /// The `Retry-After` an overloaded caller is given. Default: 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
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
        Ok(ConcurrencyLimit {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(self.max_in_flight)),
                max_in_flight: self.max_in_flight,
                queue: Slots::new(self.max_queue),
                queue_timeout: self.queue_timeout,
                retry_after: self.retry_after,
            }),
        })
    }
}

impl ConcurrencyLimit {
    /// A builder: 64 in flight, 64 queued, 5 s queue timeout, 1 s `Retry-After`.
    pub fn builder() -> ConcurrencyLimitBuilder {
        ConcurrencyLimitBuilder {
            max_in_flight: 64,
            max_queue: 64,
            queue_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
        }
    }

    /// A permit now, if one is free.
    ///
    /// # Errors
    ///
    /// [`Overloaded`] with [`OverloadReason::QueueFull`] when every permit is taken.
    pub fn try_acquire(&self) -> Result<ConcurrencyPermit, Overloaded> {
        Arc::clone(&self.inner.semaphore)
            .try_acquire_owned()
            .map(|permit| ConcurrencyPermit { _permit: permit })
            .map_err(|_| self.overloaded(OverloadReason::QueueFull))
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
        let inner = &*self.inner;
        // The queue slot is given back when this future ends or is dropped.
        let Some(_slot) = inner.queue.try_take() else {
            return Err(self.overloaded(OverloadReason::QueueFull));
        };
        let acquire = Arc::clone(&inner.semaphore).acquire_owned();
        match tokio::time::timeout(inner.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(ConcurrencyPermit { _permit: permit }),
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => Err(self.overloaded(OverloadReason::QueueTimeout)),
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

    fn overloaded(&self, reason: OverloadReason) -> Overloaded {
        Overloaded {
            reason,
            retry_after: self.inner.retry_after,
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
    _permit: OwnedSemaphorePermit,
}

/// Why a [`ConcurrencyLimit`] refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadReason {
    /// Every permit taken and the queue full (or no queue): rejected at once.
    QueueFull,
    /// Waited the whole queue timeout without a permit.
    QueueTimeout,
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

    /// The configured hint for when to retry.
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
        }
    }
}

impl Error for Overloaded {}
