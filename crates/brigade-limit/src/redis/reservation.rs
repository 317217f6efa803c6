use std::fmt::{self, Display};
use std::hash::Hash;

use super::{Backend, Decided, RedisRateLimiter, RedisUnavailable};
use crate::{Admitted, MAX_LIMITS, Reservation};

/// Cells charged on an estimate, to settle with the actual cost: the Redis counterpart of
/// [`Reservation`].
///
/// [`settle`](Self::settle) refunds the unused part or charges the extra, where the
/// reservation was charged: in Redis, or in the local fallback if Redis was down. Dropping a
/// reservation without settling keeps the whole estimate charged.
///
/// # Examples
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use brigade_limit::redis::RedisRateLimiter;
/// use brigade_limit::{Limit, Quota};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens: RedisRateLimiter<&str> = RedisRateLimiter::builder()
///     .limit(Limit::new("tokens", Quota::per_minute(NonZeroU32::new(1000).unwrap())))
///     .build("redis://127.0.0.1/")?;
/// let reservation = tokens.try_reserve(&"alice", 800).await?; // max_tokens
/// reservation.settle(300).await?; // the stream ended after 300 tokens: 500 come back
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a reservation keeps its whole estimate charged; settle it with the actual cost"]
pub struct RedisReservation<K> {
    limiter: RedisRateLimiter<K>,
    key: K,
    estimate: u32,
    admitted: Admitted,
    held: Held<K>,
}

enum Held<K> {
    /// Charged in Redis; each limit's TAT right after the charge.
    Redis([u64; MAX_LIMITS]),
    Local(Reservation<K>),
    /// Admitted by a fail-open fallback: nothing to settle.
    Nothing,
}

impl<K: Hash + Eq + Clone + Display> RedisReservation<K> {
    pub(crate) fn new(
        limiter: RedisRateLimiter<K>,
        key: K,
        estimate: u32,
        decided: Decided<K>,
    ) -> Self {
        let (admitted, held) = match decided {
            Decided::Redis(admitted, backend) => {
                let mut until = [0; MAX_LIMITS];
                if backend == Backend::Lua {
                    for (i, tat) in until.iter_mut().enumerate().take(limiter.inner.len) {
                        *tat = admitted.snapshot.tat(i);
                    }
                }
                (admitted, Held::Redis(until))
            }
            Decided::LocalReserved(r) => (r.admitted().clone(), Held::Local(r)),
            Decided::Local(admitted) | Decided::Open(admitted) => (admitted, Held::Nothing),
        };
        Self {
            limiter,
            key,
            estimate,
            admitted,
            held,
        }
    }

    /// The decision that made this reservation (for its header fields).
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }

    /// The key charged.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The cells reserved on cost limits.
    pub fn estimate(&self) -> u32 {
        self.estimate
    }

    /// Whether the reservation was charged in Redis (rather than by the fallback).
    pub fn is_on_redis(&self) -> bool {
        matches!(self.held, Held::Redis(_))
    }

    /// Settles with the actual cost: refunds `estimate - actual` cells, or charges
    /// `actual - estimate` more (even past the burst), as
    /// [`Reservation::settle`](crate::Reservation::settle) does, in one round trip bounded by
    /// the call timeout. A reservation charged by the fallback is settled there.
    ///
    /// On the native `GCRA` path a refund is impossible and an extra charge applies only if
    /// it fits the burst.
    ///
    /// # Errors
    ///
    /// [`RedisUnavailable`] if the reservation was charged in Redis and Redis is down or did
    /// not answer in time: the settle is dropped and the estimate stays charged (the safe
    /// side for a limit). A call that timed out may still have been applied.
    ///
    /// # Cancel safety
    ///
    /// Dropped before Redis answered, the settle may or may not have been applied.
    pub async fn settle(self, actual: u32) -> Result<(), RedisUnavailable> {
        if actual == self.estimate {
            return Ok(());
        }
        match self.held {
            Held::Redis(until) => {
                self.limiter
                    .settle(&self.key, self.estimate, actual, &until)
                    .await
            }
            Held::Local(reservation) => {
                reservation.settle(actual);
                Ok(())
            }
            Held::Nothing => Ok(()),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for RedisReservation<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReservation")
            .field("key", &self.key)
            .field("estimate", &self.estimate)
            .field("admitted", &self.admitted)
            .field(
                "held",
                &match self.held {
                    Held::Redis(_) => "redis",
                    Held::Local(_) => "local",
                    Held::Nothing => "nothing",
                },
            )
            .finish_non_exhaustive()
    }
}
