use std::fmt;
use std::hash::Hash;

use super::{Admitted, RateLimiter, lock};
use crate::MAX_LIMITS;

/// Cells charged on an estimate, to settle with the actual cost.
///
/// [`settle`](Self::settle) refunds the unused part or charges the extra. Dropping a
/// reservation without settling keeps the whole estimate charged: a call that failed
/// half-way has still used the upstream, and the safe error for a limit is to over-count.
/// Per-request limits are charged one cell at reservation time and untouched by a settle.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let tokens = RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(1000).unwrap())).unwrap();
/// let reservation = tokens.try_reserve(&"alice", 100).unwrap();
/// reservation.settle(400); // the model wrote more than estimated: 300 more are charged
/// assert_eq!(tokens.try_acquire(&"alice", 0).unwrap().tightest().remaining(), 600);
/// # }
/// ```
#[must_use = "dropping a reservation keeps its whole estimate charged; settle it with the actual cost"]
pub struct Reservation<K> {
    limiter: RateLimiter<K>,
    key: K,
    estimate: u32,
    admitted: Admitted,
}

impl<K> Reservation<K> {
    pub(crate) fn new(limiter: RateLimiter<K>, key: K, estimate: u32, admitted: Admitted) -> Self {
        Self {
            limiter,
            key,
            estimate,
            admitted,
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

    /// Settles with the actual cost: refunds `estimate - actual` cells, or charges
    /// `actual - estimate` more (even past the burst: they were spent, and the key waits them
    /// off). A refund may admit waiting callers sooner, so it wakes them.
    ///
    /// Cells come back in the order they were charged, so a reservation's cells come back
    /// over time whether or not it is settled: a refund gives back only the unused cells that
    /// have not come back yet (none, once the whole estimate is back), never cells that later
    /// calls took. After a [reconfiguration](RateLimiter::set_quota) that bound is measured
    /// on the old interval.
    ///
    /// In shadow mode, a reservation that was admitted over quota was never charged, and its
    /// settle charges nothing either.
    pub fn settle(self, actual: u32)
    where
        K: Hash + Eq,
    {
        if self.admitted.shadow.is_some() || actual == self.estimate {
            return;
        }
        let mut until = [0; MAX_LIMITS];
        for (i, tat) in until.iter_mut().enumerate().take(self.limiter.inner.len) {
            *tat = self.admitted.snapshot.tat(i);
        }
        self.limiter.settle(self.key, self.estimate, actual, until);
    }
}

impl<K: fmt::Debug> fmt::Debug for Reservation<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("estimate", &self.estimate)
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    // Indexing: limit `i` lives at `i` of parallel arrays (flags, limits, TATs).
    #[allow(clippy::needless_range_loop)]
    /// `until`: each limit's TAT right after the reservation's charge.
    fn settle(&self, key: K, estimate: u32, actual: u32, until: [u64; MAX_LIMITS]) {
        let now = self.now();
        let hash = self.hash(&key);
        let mut shard = lock(self.shard(hash));
        let shard = &mut *shard;
        let limits = shard.limits;
        let inner = &*self.inner;
        let adjust = |tats: &mut [u64; MAX_LIMITS]| {
            for i in 0..inner.len {
                if inner.per_request[i] {
                    continue;
                }
                let g = &limits.gcra[i];
                tats[i] = if actual > estimate {
                    g.charge(tats[i], now, u64::from(actual - estimate))
                } else {
                    g.refund(tats[i], now, u64::from(estimate - actual), until[i])
                };
            }
        };
        if let Some(entry) = shard.table.find_mut(hash, |e| e.key == key) {
            self.update_tats(entry, adjust);
            if let Some(queue) = entry.queue() {
                queue.wake_head();
            }
            // A refund makes the key idle sooner than the eviction order may know.
            if actual < estimate {
                let idle_at = entry.idle_at();
                shard.note(hash, idle_at);
            }
        } else if let Some(direct) = &inner.direct {
            direct.update(adjust);
        } else if actual > estimate {
            // The key was evicted (idle, or forgotten to make room): it is a fresh key,
            // charged the extra. If the table has no room and the limiter refuses new keys,
            // the extra is dropped (every held key is still limited).
            let mut tats = [0; MAX_LIMITS];
            adjust(&mut tats);
            let entry = super::Entry::new(key, tats);
            let _ = shard.insert(hash, entry, now, inner.cap, inner.evict, |k| inner.hash(k));
        }
    }
}
