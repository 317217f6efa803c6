//! Backoff schedules: how long to wait before each retry.
//!
//! A [`Schedule`] hands out one iterator of delays per call: the first item is the wait before
//! the second attempt, and so on. When the iterator ends, retrying stops
//! ([`StopReason::Exhausted`](crate::StopReason::Exhausted)).
//!
//! [`Backoff`] is this crate's schedule: constant, linear or exponential growth, a cap, and one
//! of the jitter variants from AWS's "Exponential Backoff And Jitter". Two properties hold for
//! every parameter, however large or small, and are property-tested:
//!
//! - **No panics, no overflow**: growth saturates at the cap (or at [`Duration::MAX`]).
//! - **The cap holds after jitter**: jitter is drawn *inside* `0..=cap`, never added on top of
//!   it (backon's jitter can exceed `max_delay`), and it does not vanish once the schedule has
//!   reached its cap (tower's jittered delays collapse onto its maximum).
//!
//! Anything that is `IntoIterator<Item = Duration> + Clone` is a schedule too (a `Vec`, an
//! array, an iterator chain), and [`from_fn`] turns a closure that builds an iterator into one,
//! which is how backon's builders plug in:
//!
//! ```
//! use std::time::Duration;
//! use brigade_retry::{Retry, schedule};
//!
//! let fixed = Retry::builder()
//!     .schedule([Duration::from_millis(10), Duration::from_millis(50)])
//!     .build()
//!     .unwrap();
//! let from_backon = Retry::builder()
//!     .schedule(schedule::from_fn(|| {
//!         use backon::BackoffBuilder;
//!         backon::ExponentialBuilder::default().build()
//!     }))
//!     .build()
//!     .unwrap();
//! # let _ = (fixed, from_backon);
//! ```

#[cfg(feature = "backoff")]
mod legacy;

use std::fmt;
use std::time::Duration;

use crate::InvalidConfig;
use crate::rng::SplitMix64;

#[cfg(feature = "backoff")]
pub use self::legacy::{FromBackoff, LegacyDelays, from_backoff};

/// A source of backoff delays: one iterator per call.
///
/// Implemented by [`Backoff`], by every `IntoIterator<Item = Duration> + Clone` (the seed is
/// ignored), and by [`FromFn`].
pub trait Schedule {
    /// The delays of one call, in order: the first is the wait before the second attempt.
    type Delays: Iterator<Item = Duration>;

    /// Starts the delays of one call. `seed` feeds the jitter, if the schedule has any; the
    /// retry policy derives a different seed for each call from its
    /// [`rng`](crate::RetryBuilder::rng) seed.
    fn delays(&self, seed: u64) -> Self::Delays;

    /// Checks the schedule's parameters; called by [`RetryBuilder::build`](crate::RetryBuilder::build).
    ///
    /// # Errors
    ///
    /// The reason the schedule cannot work. The default accepts everything.
    fn validate(&self) -> Result<(), InvalidConfig> {
        Ok(())
    }
}

impl<I> Schedule for I
where
    I: IntoIterator<Item = Duration> + Clone,
{
    type Delays = I::IntoIter;

    fn delays(&self, _seed: u64) -> Self::Delays {
        self.clone().into_iter()
    }
}

/// A schedule built by a closure, once per call: the bridge for iterators that are not `Clone`,
/// such as backon's backoffs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::schedule::{self, Schedule};
///
/// let halves = schedule::from_fn(|| (1..=3).map(|n| Duration::from_millis(500 * n)));
/// let delays: Vec<_> = halves.delays(0).collect();
/// assert_eq!(delays, [500, 1000, 1500].map(Duration::from_millis));
/// ```
pub const fn from_fn<F, I>(build: F) -> FromFn<F>
where
    F: Fn() -> I,
    I: IntoIterator<Item = Duration>,
{
    FromFn { build }
}

/// A schedule built by a closure once per call; see [`from_fn`].
#[derive(Clone, Copy)]
pub struct FromFn<F> {
    build: F,
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

impl<F, I> Schedule for FromFn<F>
where
    F: Fn() -> I,
    I: IntoIterator<Item = Duration>,
{
    type Delays = I::IntoIter;

    fn delays(&self, _seed: u64) -> Self::Delays {
        (self.build)().into_iter()
    }
}

/// How randomness spreads the delays of many clients apart (AWS's "Exponential Backoff And
/// Jitter" variants). Every variant stays within the schedule's cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: the delay the growth gives.
    #[default]
    None,
    /// Uniform in `0..=delay`. The best spread; a wait can be zero.
    Full,
    /// Uniform in `delay/2..=delay`: never shorter than half the delay.
    Equal,
    /// AWS's decorrelated jitter: uniform in `base..=min(cap, 3 × previous wait)`, where `base`
    /// is the schedule's first delay. It replaces the schedule's own growth.
    Decorrelated,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Growth {
    Constant(Duration),
    Linear { initial: Duration, step: Duration },
    Exponential { initial: Duration, factor: f64 },
}

/// A backoff schedule: constant, linear or exponential growth, a cap and a [`Jitter`].
///
/// A small value type: build it with a named constructor and chain [`max_delay`](Self::max_delay)
/// and [`jitter`](Self::jitter). The schedule never ends by itself; the retry policy's
/// [`max_attempts`](crate::RetryBuilder::max_attempts) and deadline bound it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Backoff, Jitter};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0)
///     .max_delay(Duration::from_millis(500));
/// let delays: Vec<_> = backoff.delays(0).take(5).collect();
/// assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
///
/// // With full jitter each wait is drawn from 0..=that delay; the seed makes it repeatable.
/// let jittered = backoff.jitter(Jitter::Full);
/// let a: Vec<_> = jittered.delays(42).take(5).collect();
/// assert_eq!(a, jittered.delays(42).take(5).collect::<Vec<_>>());
/// assert!(a.iter().zip(&delays).all(|(j, d)| j <= d));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    growth: Growth,
    max_delay: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// Exponential from 100 ms, doubling, capped at 10 s, with [`Jitter::Full`]: AWS's
    /// recommendation, and the retry policy's default schedule.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), 2.0)
            .max_delay(Duration::from_secs(10))
            .jitter(Jitter::Full)
    }
}

impl Backoff {
    /// The same delay before every retry.
    ///
    /// No cap (a constant needs none) and no jitter until set.
    pub const fn constant(delay: Duration) -> Self {
        Self::with_growth(Growth::Constant(delay))
    }

    /// `initial`, then `initial + step`, `initial + 2 × step`, ...
    ///
    /// No cap and no jitter until set.
    pub const fn linear(initial: Duration, step: Duration) -> Self {
        Self::with_growth(Growth::Linear { initial, step })
    }

    /// `initial`, then `initial × factor`, `initial × factor²`, ... (not `initial^n`).
    ///
    /// `factor` must be finite and at least 1: [`RetryBuilder::build`](crate::RetryBuilder::build)
    /// rejects anything else with [`InvalidConfig::BackoffFactor`]; iterated directly, such a
    /// factor counts as 1. No cap and no jitter until set.
    pub const fn exponential(initial: Duration, factor: f64) -> Self {
        Self::with_growth(Growth::Exponential { initial, factor })
    }

    const fn with_growth(growth: Growth) -> Self {
        Self {
            growth,
            max_delay: Duration::MAX,
            jitter: Jitter::None,
        }
    }

    /// The longest wait, after jitter too.
    ///
    /// Default: no cap ([`Duration::MAX`]).
    #[must_use]
    pub const fn max_delay(mut self, cap: Duration) -> Self {
        self.max_delay = cap;
        self
    }

    /// How the delays are randomised.
    ///
    /// Default: [`Jitter::None`].
    #[must_use]
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The cap set by [`max_delay`](Self::max_delay).
    pub const fn cap(&self) -> Duration {
        self.max_delay
    }

    /// The jitter set by [`jitter`](Self::jitter).
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The delays of one call, jittered from `seed`: the same seed gives the same delays.
    ///
    /// The iterator never ends.
    pub fn delays(&self, seed: u64) -> Delays {
        Delays {
            backoff: *self,
            n: 0,
            prev: Duration::ZERO,
            rng: SplitMix64::new(seed),
        }
    }

    /// The delay before retry `n + 1` (zero-based), before jitter, capped.
    fn base(&self, n: u32) -> Duration {
        let cap = self.max_delay;
        match self.growth {
            Growth::Constant(delay) => delay.min(cap),
            Growth::Linear { initial, step } => {
                initial.saturating_add(step.saturating_mul(n)).min(cap)
            }
            Growth::Exponential { initial, factor } => {
                if n == 0 || initial.is_zero() {
                    return initial.min(cap);
                }
                // NaN and factors below 1 count as 1; infinity saturates at the cap.
                let factor = if factor >= 1.0 { factor } else { 1.0 };
                let exponent = i32::try_from(n).unwrap_or(i32::MAX);
                let nanos = initial.as_nanos() as f64 * factor.powi(exponent);
                if nanos < cap.as_nanos() as f64 {
                    // Float rounding must not take a huge initial delay below itself.
                    from_nanos_saturating(nanos.round() as u128)
                        .max(initial)
                        .min(cap)
                } else {
                    cap
                }
            }
        }
    }

    /// The first delay, the floor of decorrelated jitter.
    fn first(&self) -> Duration {
        self.base(0)
    }
}

impl Schedule for Backoff {
    type Delays = Delays;

    fn delays(&self, seed: u64) -> Delays {
        Self::delays(self, seed)
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        match self.growth {
            Growth::Exponential { factor, .. } if !(factor.is_finite() && factor >= 1.0) => {
                Err(InvalidConfig::BackoffFactor)
            }
            _ => Ok(()),
        }
    }
}

/// The delays of one call of a [`Backoff`], from [`Backoff::delays`]. Never ends.
#[derive(Clone, Debug)]
pub struct Delays {
    backoff: Backoff,
    n: u32,
    prev: Duration,
    rng: SplitMix64,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let backoff = &self.backoff;
        let cap = backoff.max_delay;
        let delay = match backoff.jitter {
            Jitter::None => backoff.base(self.n),
            Jitter::Full => self.rng.between(Duration::ZERO, backoff.base(self.n)),
            Jitter::Equal => {
                let delay = backoff.base(self.n);
                let half = delay / 2;
                self.rng.between(half, delay)
            }
            Jitter::Decorrelated => {
                let floor = backoff.first();
                let ceiling = self.prev.saturating_mul(3).min(cap).max(floor);
                let delay = self.rng.between(floor, ceiling);
                self.prev = delay;
                delay
            }
        };
        self.n = self.n.saturating_add(1);
        Some(delay.min(cap))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

fn from_nanos_saturating(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits in a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_multiplies_from_initial_not_powers_of_the_base() {
        let delays: Vec<_> = Backoff::exponential(MS * 100, 3.0)
            .delays(0)
            .take(4)
            .collect();
        assert_eq!(delays, [MS * 100, MS * 300, MS * 900, MS * 2700]);
    }

    #[test]
    fn linear_and_constant() {
        let linear: Vec<_> = Backoff::linear(MS * 10, MS * 5).delays(0).take(3).collect();
        assert_eq!(linear, [MS * 10, MS * 15, MS * 20]);
        let constant: Vec<_> = Backoff::constant(MS * 7).delays(0).take(3).collect();
        assert_eq!(constant, [MS * 7; 3]);
    }

    #[test]
    fn exponential_saturates_at_the_cap_after_many_steps() {
        let backoff = Backoff::exponential(MS, 2.0).max_delay(Duration::from_secs(60));
        let mut delays = backoff.delays(0);
        let last = delays.by_ref().take(10_000).last().unwrap();
        assert_eq!(last, Duration::from_secs(60));
        let uncapped = Backoff::exponential(Duration::MAX, f64::INFINITY);
        assert_eq!(uncapped.delays(0).nth(3), Some(Duration::MAX));
    }

    #[test]
    fn jitter_does_not_vanish_at_the_cap() {
        let cap = Duration::from_secs(1);
        let backoff = Backoff::exponential(MS * 100, 2.0)
            .max_delay(cap)
            .jitter(Jitter::Full);
        let at_cap: Vec<_> = backoff.delays(9).skip(10).take(50).collect();
        assert!(at_cap.iter().all(|d| *d <= cap));
        let distinct: std::collections::HashSet<_> = at_cap.iter().collect();
        assert!(
            distinct.len() > 40,
            "jitter collapsed at the cap: {distinct:?}"
        );
    }

    #[test]
    fn validate_rejects_bad_factors() {
        for factor in [0.5, f64::NAN, f64::INFINITY, -1.0] {
            let backoff = Backoff::exponential(MS, factor);
            assert_eq!(
                Schedule::validate(&backoff),
                Err(InvalidConfig::BackoffFactor)
            );
        }
        assert_eq!(Schedule::validate(&Backoff::exponential(MS, 1.0)), Ok(()));
    }
}
