//! What a decision reports: per limit, the quota, what remains and when it resets.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use super::store::Ahead;
use crate::MAX_LIMITS;
use crate::gcra::Gcra;

/// Every limit's state at the moment of one decision, numbers computed on demand.
///
/// Kept small and flat (parallel arrays, no padding): it is built on every decision.
#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    now: u64,
    tats: [u64; MAX_LIMITS],
    t: [u64; MAX_LIMITS],
    burst: [u32; MAX_LIMITS],
    names: [&'static str; MAX_LIMITS],
    len: u8,
    /// Bit `i`: limit `i` charges one cell per call.
    per_request: u8,
    /// How many callers were waiting on the key, ahead of any later caller (saturating;
    /// `u32` keeps the snapshot within its padding).
    waiters: u32,
    /// The sum of their costs.
    ahead_cells: u64,
}

impl Snapshot {
    #[inline(always)]
    pub(crate) const fn new(now: u64) -> Self {
        Self {
            now,
            tats: [0; MAX_LIMITS],
            t: [1; MAX_LIMITS],
            burst: [1; MAX_LIMITS],
            names: [""; MAX_LIMITS],
            len: 0,
            per_request: 0,
            waiters: 0,
            ahead_cells: 0,
        }
    }

    /// Records the callers waiting on the key: the reported state counts their cells as
    /// taken, since a later caller finds them ahead. `per_request` has bit `i` set for a
    /// per-request limit `i`.
    #[inline(always)]
    pub(crate) fn set_ahead(&mut self, ahead: Ahead, per_request: u8) {
        self.waiters = u32::try_from(ahead.waiters).unwrap_or(u32::MAX);
        self.ahead_cells = ahead.cells;
        self.per_request = per_request;
    }

    /// Limit `i`'s TAT right after this decision (before the callers ahead).
    #[inline]
    pub(crate) fn tat(&self, i: usize) -> u64 {
        self.tats[i]
    }

    // Inlined so the decision is built in the caller's return slot, not copied.
    #[inline(always)]
    pub(crate) fn push(&mut self, name: &'static str, gcra: Gcra, tat: u64) {
        let i = usize::from(self.len);
        self.names[i] = name;
        self.t[i] = gcra.t;
        self.burst[i] = gcra.burst;
        self.tats[i] = tat;
        self.len += 1;
    }

    fn status(&self, i: usize) -> LimitStatus {
        let (t, burst, tat) = (self.t[i], self.burst[i], self.tats[i]);
        let gcra = Gcra {
            t,
            tau: t * u64::from(burst - 1),
            burst,
        };
        // What a later caller finds: the callers ahead charged first.
        let tat = if self.waiters == 0 {
            tat
        } else if self.per_request & (1 << i) != 0 {
            gcra.charge(tat, self.now, u64::from(self.waiters))
        } else {
            gcra.charge(tat, self.now, self.ahead_cells)
        };
        LimitStatus {
            name: self.names[i],
            limit: burst,
            remaining: gcra.remaining(tat, self.now),
            reset: Gcra::reset(tat, self.now),
            window: Duration::from_nanos(t.saturating_mul(u64::from(burst))),
        }
    }

    fn statuses(&self) -> impl ExactSizeIterator<Item = LimitStatus> + '_ {
        (0..usize::from(self.len)).map(|i| self.status(i))
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.statuses()).finish()
    }
}

/// One limit as a decision left it: the numbers of the `RateLimit-Policy` and `RateLimit`
/// header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    name: &'static str,
    limit: u32,
    remaining: u32,
    reset: Duration,
    window: Duration,
}

impl LimitStatus {
    /// The limit's name (`"requests"`, `"tokens"`, or `"default"` for a single limit).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The burst: the most cells admitted at once (`q` of `RateLimit-Policy`).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// Cells that would be admitted right now (`r` of `RateLimit`): after this call's
    /// charge, and after the callers already waiting on the key, who come first.
    pub const fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the whole burst is back (`t` of `RateLimit`), the waiting callers'
    /// cells included.
    pub const fn reset(&self) -> Duration {
        self.reset
    }

    /// Time for the whole burst to come back from empty (`w` of `RateLimit-Policy`).
    pub const fn window(&self) -> Duration {
        self.window
    }
}

/// A call the limiter admitted, and charged.
///
/// In [shadow mode](crate::RateLimiterBuilder::shadow) a call over quota is admitted too, not
/// charged, and [`shadow_rejection`](Self::shadow_rejection) says what enforcing would have done.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub(crate) snapshot: Snapshot,
    pub(crate) shadow: Option<Box<Rejected>>,
}

impl Admitted {
    /// Each limit's state after the charge, in the order the limits were declared.
    pub fn limits(&self) -> impl ExactSizeIterator<Item = LimitStatus> + '_ {
        self.snapshot.statuses()
    }

    /// The limit with the fewest cells left relative to its burst.
    pub fn tightest(&self) -> LimitStatus {
        self.limits()
            .min_by_key(|s| u64::from(s.remaining) * 1_000_000 / u64::from(s.limit.max(1)))
            .unwrap_or_else(|| unreachable!("a limiter has at least one limit"))
    }

    /// In shadow mode, the rejection an enforcing limiter would have returned.
    pub fn shadow_rejection(&self) -> Option<&Rejected> {
        self.shadow.as_deref()
    }
}

/// A call over quota: nothing was charged, on any limit.
///
/// [`retry_after`](Self::retry_after) is the wait until every limit would admit it, as of the
/// decision; [`limit`](Self::limit) names the most restrictive limit, the one that needs it.
#[derive(Clone)]
pub struct Rejected {
    // Boxed: keeps `Result<Admitted, AcquireError>` small; rejections are the rarer path.
    pub(crate) snapshot: Box<Snapshot>,
    pub(crate) retry_after: Duration,
    pub(crate) limit: u8,
}

impl Rejected {
    /// How long until the call would be admitted (if nothing else is admitted meanwhile).
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The most restrictive limit: the one with the longest wait.
    pub fn limit(&self) -> LimitStatus {
        self.snapshot.status(usize::from(self.limit))
    }

    /// Each limit's state (unchanged by this call), in the order the limits were declared.
    pub fn limits(&self) -> impl ExactSizeIterator<Item = LimitStatus> + '_ {
        self.snapshot.statuses()
    }
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("retry_after", &self.retry_after)
            .field("limit", &self.limit().name)
            .field("limits", &self.snapshot)
            .finish()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited by {:?}, retry after {:?}",
            self.limit().name,
            self.retry_after
        )
    }
}

impl Error for Rejected {}
