//! The time the stores keep: milliseconds since the Unix epoch, read through tokio's clock.
//!
//! Each [`Jobs`](crate::Jobs) reads the system time once, when it opens, and from then on
//! adds the time tokio's clock has moved: a paused clock pauses the stores' time too. Every
//! statement gets its `now` from here as a parameter (no statement reads the database's own
//! clock), so a store-level test can run the same statements at any instant it likes, and
//! replicas compare leases by their own clocks: they must agree to well within a lease, as
//! NTP keeps them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, on tokio's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    wall_ms: i64,
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            wall_ms: millis(wall),
            base: Instant::now(),
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        self.wall_ms
            .saturating_add(millis(Instant::now().saturating_duration_since(self.base)))
    }

    /// When `ms` (milliseconds since the epoch) comes, on tokio's clock.
    pub(crate) fn instant_of(&self, ms: i64) -> Instant {
        let ahead = ms.saturating_sub(self.now_ms());
        let ahead = Duration::from_millis(u64::try_from(ahead).unwrap_or(0));
        let now = Instant::now();
        now.checked_add(ahead).unwrap_or(now + FAR)
    }
}

/// About 30 years: tokio's "far future".
pub(crate) const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch as a `SystemTime` (the epoch for anything before it).
pub(crate) fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A `SystemTime` as milliseconds since the epoch (0 before it, saturating after).
pub(crate) fn epoch_ms(time: SystemTime) -> i64 {
    millis(time.duration_since(UNIX_EPOCH).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_stores_time_follows_tokios_clock() {
        let clock = Clock::new();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms() - start, 1_500);
        let at = clock.instant_of(start + 2_000);
        assert_eq!(at - Instant::now(), Duration::from_millis(500));
        assert_eq!(clock.instant_of(start), Instant::now());
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(epoch_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(system_time(-5), UNIX_EPOCH);
        assert_eq!(epoch_ms(system_time(1_234)), 1_234);
    }
}
