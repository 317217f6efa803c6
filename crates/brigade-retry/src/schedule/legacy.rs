//! Adapter for the `backoff` crate (feature `backoff`), for code migrating from it.
//!
//! `backoff` is unmaintained (RUSTSEC-2025-0012); this adapter exists so that a migration can
//! keep its tuned schedules while moving the retry loop to this crate.

use std::time::Duration;

use super::Schedule;

/// Adapts a `backoff::backoff::Backoff` implementor as a [`Schedule`].
///
/// Each call clones the backoff and [`reset`](backoff::backoff::Backoff::reset)s it, then
/// follows `next_backoff` until it returns `None`. Note that `backoff`'s
/// `ExponentialBackoff::max_elapsed_time` reads the system clock, not tokio's: prefer this
/// crate's [`deadline`](crate::RetryBuilder::deadline) and set it to `None`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::schedule::{self, Schedule};
///
/// let legacy = backoff::ExponentialBackoff {
///     initial_interval: Duration::from_millis(250),
///     current_interval: Duration::from_millis(250),
///     randomization_factor: 0.0,
///     multiplier: 2.0,
///     max_elapsed_time: None,
///     ..Default::default()
/// };
/// let delays: Vec<_> = schedule::from_backoff(legacy).delays(0).take(3).collect();
/// assert_eq!(delays, [250, 500, 1000].map(Duration::from_millis));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "backoff")))]
pub const fn from_backoff<B>(backoff: B) -> FromBackoff<B>
where
    B: backoff::backoff::Backoff + Clone,
{
    FromBackoff { backoff }
}

/// A `backoff::backoff::Backoff` as a [`Schedule`]; see [`from_backoff`].
#[cfg_attr(docsrs, doc(cfg(feature = "backoff")))]
#[derive(Clone, Debug)]
pub struct FromBackoff<B> {
    backoff: B,
}

impl<B> Schedule for FromBackoff<B>
where
    B: backoff::backoff::Backoff + Clone,
{
    type Delays = LegacyDelays<B>;

    fn delays(&self, _seed: u64) -> LegacyDelays<B> {
        let mut backoff = self.backoff.clone();
        backoff.reset();
        LegacyDelays { backoff }
    }
}

/// The delays of one call of a [`FromBackoff`] schedule.
#[cfg_attr(docsrs, doc(cfg(feature = "backoff")))]
#[derive(Clone, Debug)]
pub struct LegacyDelays<B> {
    backoff: B,
}

impl<B: backoff::backoff::Backoff> Iterator for LegacyDelays<B> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.backoff.next_backoff()
    }
}
