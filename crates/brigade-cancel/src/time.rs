//! Adding durations to instants without overflow.
//!
//! `Instant + Duration` panics when the sum does not fit (`Duration::MAX`, for one). Every
//! deadline this crate computes goes through [`deadline_after`], which caps the duration at
//! [`FAR_FUTURE`] (about 30 years, tokio's own "far future") and never panics.

use std::time::Duration;

use tokio::time::Instant;

/// The longest time to a deadline: about 30 years, as tokio's `Instant::far_future`. A longer
/// timeout is taken as this one; no process runs long enough to tell the difference.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `start + after`, with `after` capped at [`FAR_FUTURE`]; if even that does not fit in an
/// `Instant` on this platform, the furthest instant a halving search finds. Never panics.
pub(crate) fn deadline_after(start: Instant, after: Duration) -> Instant {
    let mut after = after.min(FAR_FUTURE);
    loop {
        if let Some(deadline) = start.checked_add(after) {
            return deadline;
        }
        // Ends: `start + 0` always fits.
        after /= 2;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_long_to_add_saturates_at_the_far_future() {
        let start = Instant::now();
        assert_eq!(deadline_after(start, Duration::MAX), start + FAR_FUTURE);
        assert_eq!(
            deadline_after(start, FAR_FUTURE + Duration::from_secs(1)),
            start + FAR_FUTURE
        );
        assert_eq!(
            deadline_after(start, Duration::from_secs(5)),
            start + Duration::from_secs(5)
        );
        assert_eq!(deadline_after(start, Duration::ZERO), start);
    }
}
