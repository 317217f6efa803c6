//! Quotas: how many cells a limit admits at once, and how fast they come back.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::InvalidConfig;

/// How many cells a limit admits at once (its burst), and how often one cell comes back.
///
/// The meaning is governor's [`Quota`](https://docs.rs/governor/latest/governor/struct.Quota.html),
/// constructor for constructor: `Quota::per_minute(100)` admits a burst of 100 cells, then one
/// cell every 600 ms; [`allow_burst`](Self::allow_burst) changes the burst and keeps the rate.
///
/// A cell is whatever a limit counts: a request, or an LLM token.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use brigade_limit::Quota;
///
/// let rpm = Quota::per_minute(NonZeroU32::new(100).unwrap());
/// assert_eq!(rpm.burst().get(), 100);
/// assert_eq!(rpm.replenish_interval(), Duration::from_millis(600));
///
/// // 100 per minute on average, but never more than 10 at once.
/// let smooth = rpm.allow_burst(NonZeroU32::new(10).unwrap());
/// assert_eq!(smooth.replenish_interval(), Duration::from_millis(600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    burst: NonZeroU32,
    period: Duration,
}

impl Quota {
    /// `burst` cells per second: a burst of `burst`, then one cell every `1 s / burst`.
    pub const fn per_second(burst: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(1), burst)
    }

    /// `burst` cells per minute: a burst of `burst`, then one cell every `60 s / burst`.
    pub const fn per_minute(burst: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(60), burst)
    }

    /// `burst` cells per hour: a burst of `burst`, then one cell every `3600 s / burst`.
    pub const fn per_hour(burst: NonZeroU32) -> Self {
        Self::spread(Duration::from_secs(3600), burst)
    }

    const fn spread(window: Duration, burst: NonZeroU32) -> Self {
        // governor's arithmetic: whole nanoseconds, rounded down; never below 1 ns.
        let mut nanos = (window.as_nanos() / burst.get() as u128) as u64;
        if nanos == 0 {
            nanos = 1;
        }
        Self {
            burst,
            period: Duration::from_nanos(nanos),
        }
    }

    /// One cell every `period`, with a burst of one (raise it with [`allow_burst`](Self::allow_burst)).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroPeriod`] if `period` is shorter than a nanosecond.
    pub fn with_period(period: Duration) -> Result<Self, InvalidConfig> {
        if period.as_nanos() == 0 {
            return Err(InvalidConfig::ZeroPeriod);
        }
        Ok(Self {
            burst: NonZeroU32::MIN,
            period,
        })
    }

    /// The same rate with a burst of `burst` cells.
    #[must_use]
    pub const fn allow_burst(self, burst: NonZeroU32) -> Self {
        Self {
            burst,
            period: self.period,
        }
    }

    /// The most cells admitted at once.
    pub const fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// How long one cell takes to come back.
    pub const fn replenish_interval(&self) -> Duration {
        self.period
    }

    /// How long the whole burst takes to come back: `burst × replenish_interval`.
    ///
    /// This is the window `w` of the `RateLimit-Policy` header field.
    pub fn window(&self) -> Duration {
        self.period.saturating_mul(self.burst.get())
    }
}
