//! The generic cell rate algorithm (GCRA), governor's formulation, over plain integers.
//!
//! A limit with a replenish interval `t` and a burst `b` keeps one number per key: the
//! *theoretical arrival time* (TAT) of the next cell, in nanoseconds since the limiter's
//! clock started. A fresh key has a TAT of 0, which is never later than now. `n` cells
//! conform at `now` when `now >= tat + t × (n - 1) - τ`, with the tolerance `τ = t × (b - 1)`;
//! admitting them moves the TAT to `max(tat, now) + t × n`. So the burst is the most cells
//! admitted at once and one cell comes back every `t`, exactly as in governor (a property test
//! checks the decisions against governor's own).
//!
//! A key whose TAT is not after now is *idle*: its state is a fresh key's, so forgetting it
//! changes no decision. That is what lets the keyed store evict without a background thread.
//!
//! Everything here is pure: the callers hold the lock of the state they pass in.

use std::time::Duration;

use crate::{InvalidConfig, Quota};

/// One limit's constants, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// The replenish interval, at least 1.
    pub(crate) t: u64,
    /// The tolerance `t × (burst - 1)`.
    pub(crate) tau: u64,
    pub(crate) burst: u32,
}

impl Gcra {
    pub(crate) fn new(quota: Quota) -> Result<Self, InvalidConfig> {
        let t = u64::try_from(quota.replenish_interval().as_nanos())
            .map_err(|_| InvalidConfig::QuotaTooLong)?
            .max(1);
        let burst = quota.burst().get();
        // `t × burst` must fit, so that no charge up to the burst overflows.
        t.checked_mul(u64::from(burst))
            .ok_or(InvalidConfig::QuotaTooLong)?;
        Ok(Self {
            t,
            tau: t * u64::from(burst - 1),
            burst,
        })
    }

    /// The earliest time `n >= 1` cells conform, given `tat`.
    #[inline]
    pub(crate) fn earliest(&self, tat: u64, n: u32) -> u64 {
        tat.saturating_add(self.t * u64::from(n - 1))
            .saturating_sub(self.tau)
    }

    /// The TAT after charging `n` cells at `now` (no conformance check).
    #[inline]
    pub(crate) fn charge(&self, tat: u64, now: u64, n: u64) -> u64 {
        tat.max(now).saturating_add(self.t.saturating_mul(n))
    }

    /// The TAT after refunding `n` cells of a charge that left the TAT at `until`.
    ///
    /// Cells come back in the order they were charged, so by `now` the charge has already
    /// come back up to `now`: only its part after `now` (`until - now`) is still owed, and a
    /// refund gives back at most that. Refunding more would hand back cells that later
    /// charges took (a long stream settled after its reservation's cells came back). Never
    /// before `now` either: a refund cannot bank cells.
    #[inline]
    pub(crate) fn refund(&self, tat: u64, now: u64, n: u64, until: u64) -> u64 {
        let owed = until.saturating_sub(now);
        tat.saturating_sub(self.t.saturating_mul(n).min(owed))
            .max(now.min(tat))
    }

    /// Cells that would conform at `now`: `0..=burst`.
    #[inline]
    pub(crate) fn remaining(&self, tat: u64, now: u64) -> u32 {
        // `tau + t = t × burst` fits (checked by `new`); `now + tau + t` may not.
        let free = (self.tau + self.t).saturating_sub(tat.saturating_sub(now));
        (free / self.t).min(u64::from(self.burst)) as u32
    }

    /// The time until the key is back to a full burst.
    #[inline]
    pub(crate) fn reset(tat: u64, now: u64) -> Duration {
        Duration::from_nanos(tat.saturating_sub(now))
    }

    /// Rescales the debt `tat - now` from this limit's interval to `new`'s, so the cells a key
    /// has used stay used when the quota changes.
    pub(crate) fn rescale(&self, new: &Self, tat: u64, now: u64) -> u64 {
        if tat <= now {
            return tat;
        }
        let debt = u128::from(tat - now) * u128::from(new.t) / u128::from(self.t);
        now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
    }

    pub(crate) fn quota(&self) -> Quota {
        Quota::with_period(Duration::from_nanos(self.t))
            .unwrap_or_else(|_| unreachable!("t is at least 1 ns"))
            .allow_burst(std::num::NonZeroU32::new(self.burst).unwrap_or(std::num::NonZeroU32::MIN))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn gcra(per_second: u32) -> Gcra {
        Gcra::new(Quota::per_second(NonZeroU32::new(per_second).unwrap())).unwrap()
    }

    #[test]
    fn a_fresh_key_admits_the_whole_burst_and_no_more() {
        let g = gcra(10);
        let mut tat = 0;
        let now = 5_000;
        for _ in 0..10 {
            assert!(now >= g.earliest(tat, 1));
            tat = g.charge(tat, now, 1);
        }
        assert!(now < g.earliest(tat, 1));
        assert_eq!(g.remaining(tat, now), 0);
        // One cell comes back every 100 ms.
        assert_eq!(g.earliest(tat, 1) - now, 100_000_000);
    }

    #[test]
    fn remaining_counts_down_from_the_burst() {
        let g = gcra(4);
        assert_eq!(g.remaining(0, 1), 4);
        let tat = g.charge(0, 1, 3);
        assert_eq!(g.remaining(tat, 1), 1);
    }

    #[test]
    fn a_refund_never_goes_before_now() {
        let g = gcra(10);
        let tat = g.charge(0, 1_000, 5);
        assert_eq!(g.refund(tat, 1_000, 100, tat), 1_000);
        assert_eq!(g.refund(tat, 1_000, 2, tat), tat - 2 * g.t);
    }

    #[test]
    fn a_refund_gives_back_only_what_the_charge_still_owes() {
        let g = gcra(10); // one cell per 100 ms
        let start = 1_000;
        let until = g.charge(0, start, 5); // 5 cells, back at start + 500 ms
        // 400 ms later, 4 of them are back: refunding 3 gives back only the 1 still owed.
        let now = start + 4 * g.t;
        let later = g.charge(until, now, 2); // another caller's 2 cells
        assert_eq!(g.refund(later, now, 3, until), later - g.t);
        // All of it came back: nothing to refund, the other caller's cells stay charged.
        let now = until;
        let later = g.charge(until, now, 2);
        assert_eq!(g.refund(later, now, 3, until), later);
    }

    #[test]
    fn a_quota_that_overflows_is_rejected() {
        let q = Quota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::MAX);
        assert_eq!(Gcra::new(q), Err(InvalidConfig::QuotaTooLong));
    }

    mod bounds {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// Whatever the arrivals: `remaining` stays within the burst, and the cells admitted
            /// by time `T` never exceed `burst + T / interval` (the quota's promise).
            #[test]
            fn admissions_never_exceed_burst_plus_replenishment(
                per_second in 1u32..1000,
                burst in 1u32..50,
                steps in proptest::collection::vec((0u64..50_000_000, 0u32..10), 1..100),
            ) {
                let g = Gcra::new(
                    Quota::per_second(NonZeroU32::new(per_second).unwrap())
                        .allow_burst(NonZeroU32::new(burst).unwrap()),
                ).unwrap();
                let (mut tat, mut now, mut admitted) = (0u64, 0u64, 0u64);
                for (advance, n) in steps {
                    now += advance;
                    prop_assert!(g.remaining(tat, now) <= burst);
                    if n == 0 || n > burst {
                        continue;
                    }
                    if now >= g.earliest(tat, n) {
                        prop_assert!(g.remaining(tat, now) >= n);
                        tat = g.charge(tat, now, u64::from(n));
                        admitted += u64::from(n);
                    } else {
                        prop_assert!(g.remaining(tat, now) < n);
                    }
                    prop_assert!(admitted <= u64::from(burst) + now / g.t);
                }
            }
        }
    }

    mod against_governor {
        use governor::clock::FakeRelativeClock;
        use governor::{Quota as GQuota, RateLimiter};
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// The same quota, the same arrivals: the same decisions as governor's `check_n`.
            #[test]
            fn decisions_match_governor(
                per_second in 1u32..50,
                burst in 1u32..20,
                steps in proptest::collection::vec((0u64..200_000_000, 1u32..5), 1..60),
            ) {
                let burst = NonZeroU32::new(burst).unwrap();
                let ours = Gcra::new(Quota::per_second(NonZeroU32::new(per_second).unwrap()).allow_burst(burst)).unwrap();
                let theirs_quota = GQuota::per_second(NonZeroU32::new(per_second).unwrap()).allow_burst(burst);
                let clock = FakeRelativeClock::default();
                let theirs = RateLimiter::direct_with_clock(theirs_quota, clock.clone());
                let mut tat = 0u64;
                let mut now = 0u64;
                for (advance, n) in steps {
                    clock.advance(std::time::Duration::from_nanos(advance));
                    now += advance;
                    let governor_says = theirs.check_n(NonZeroU32::new(n).unwrap());
                    if n > burst.get() {
                        prop_assert!(governor_says.is_err());
                        continue;
                    }
                    let earliest = ours.earliest(tat, n);
                    let admitted = now >= earliest;
                    if admitted {
                        tat = ours.charge(tat, now, u64::from(n));
                    }
                    prop_assert_eq!(admitted, matches!(governor_says, Ok(Ok(()))));
                    // The same wait, to the nanosecond.
                    if let Ok(Err(not_until)) = governor_says {
                        use governor::clock::Clock as _;
                        prop_assert_eq!(
                            not_until.wait_time_from(clock.now()),
                            std::time::Duration::from_nanos(earliest - now)
                        );
                    }
                }
            }
        }
    }
}
