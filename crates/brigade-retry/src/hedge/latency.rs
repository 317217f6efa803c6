//! The first-byte latency estimator behind a [percentile delay](super::LatencyPercentile).
//!
//! A ring of the last `window` samples, each an `AtomicU64` of nanoseconds, and a counter of the
//! samples recorded so far: recording a sample is one `fetch_add` (which slot) and one store.
//! The percentile over the ring is computed by the recording thread, every `refresh` samples
//! (a sixteenth of the window, at least 1) and when the count first reaches `min_samples`, and
//! kept in one `AtomicU64` that every call reads. No lock, no allocation after the ring's.
//!
//! # Invariants
//!
//! - A slot holds [`EMPTY`] until its first sample is stored, and a sample is never `EMPTY`
//!   (latencies are capped one below it): a slot claimed but not yet written reads as empty and
//!   is skipped, never read as a zero latency.
//! - The estimate is `EMPTY` until `min_samples` samples were recorded, and a sample (one that
//!   was recorded, at some point in the window) afterwards: computations racing each other may
//!   store out of order, so the estimate may lag by one refresh, never hold a value nobody
//!   recorded.

use std::time::Duration;

use crate::loom::{AtomicU64, Ordering};

/// A slot or an estimate with no sample.
const EMPTY: u64 = u64::MAX;
/// The largest window: the computation copies the ring to the stack (4 KiB).
pub(crate) const MAX_WINDOW: u32 = 512;

/// Recent first-byte latencies and their percentile.
pub(crate) struct Latencies {
    slots: Box<[AtomicU64]>,
    /// Samples recorded so far; sample `n` goes to slot `n % window`.
    recorded: AtomicU64,
    /// The percentile of the ring at the last computation, in nanoseconds, or [`EMPTY`].
    estimate: AtomicU64,
    percentile: f64,
    min_samples: u64,
    refresh: u64,
}

impl Latencies {
    /// A ring of `window` samples (1 to [`MAX_WINDOW`]) giving the `percentile` (above 0, at
    /// most 100) once `min_samples` (1 to `window`) were recorded. The caller validates.
    pub(crate) fn new(window: u32, percentile: f64, min_samples: u32) -> Self {
        let window = window.clamp(1, MAX_WINDOW);
        Self {
            slots: (0..window).map(|_| AtomicU64::new(EMPTY)).collect(),
            recorded: AtomicU64::new(0),
            estimate: AtomicU64::new(EMPTY),
            percentile,
            min_samples: u64::from(min_samples.clamp(1, window)),
            refresh: u64::from((window / 16).max(1)),
        }
    }

    /// Records one sample.
    pub(crate) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).map_or(EMPTY - 1, |n| n.min(EMPTY - 1));
        let n = self.recorded.fetch_add(1, Ordering::Relaxed);
        let window = self.slots.len() as u64;
        self.slots[(n % window) as usize].store(nanos, Ordering::Relaxed);
        let count = n.saturating_add(1);
        if count == self.min_samples
            || (count > self.min_samples && count.is_multiple_of(self.refresh))
        {
            self.compute(count);
        }
    }

    /// The percentile of the recent samples, or `None` before `min_samples` were recorded.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        let nanos = self.estimate.load(Ordering::Relaxed);
        (nanos != EMPTY).then(|| Duration::from_nanos(nanos))
    }

    /// Samples recorded so far (not only those still in the window).
    pub(crate) fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// The percentile this estimator gives.
    pub(crate) const fn percentile(&self) -> f64 {
        self.percentile
    }

    /// Computes the percentile of the first `count` slots (all of them once the ring is full)
    /// and stores it as the estimate: the nearest-rank method, so the estimate is one of the
    /// samples.
    fn compute(&self, count: u64) {
        let filled = usize::try_from(count).map_or(self.slots.len(), |c| c.min(self.slots.len()));
        let mut buf = [0_u64; MAX_WINDOW as usize];
        let mut len = 0;
        for slot in &self.slots[..filled] {
            let nanos = slot.load(Ordering::Relaxed);
            if nanos != EMPTY {
                buf[len] = nanos;
                len += 1;
            }
        }
        if len == 0 {
            return;
        }
        // Nearest rank: the smallest sample with at least `percentile` % of them at or below it.
        let rank = (self.percentile / 100.0 * len as f64).ceil() as usize;
        let (_, nanos, _) = buf[..len].select_nth_unstable(rank.clamp(1, len) - 1);
        self.estimate.store(*nanos, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_estimate_before_min_samples() {
        let latencies = Latencies::new(16, 50.0, 4);
        for _ in 0..3 {
            latencies.record(MS * 10);
            assert_eq!(latencies.estimate(), None);
        }
        latencies.record(MS * 10);
        assert_eq!(latencies.estimate(), Some(MS * 10));
    }

    #[test]
    fn nearest_rank_percentile() {
        // 1..=100 ms: the 95th percentile by nearest rank is 95 ms, the median 50 ms.
        for (percentile, expected) in [(95.0, 95), (50.0, 50), (100.0, 100), (0.5, 1)] {
            let latencies = Latencies::new(128, percentile, 100);
            (1..=100).for_each(|ms| latencies.record(MS * ms));
            assert_eq!(latencies.estimate(), Some(MS * expected), "p{percentile}");
        }
    }

    #[test]
    fn the_ring_forgets_old_samples() {
        let latencies = Latencies::new(32, 90.0, 8);
        (0..32).for_each(|_| latencies.record(MS * 500));
        assert_eq!(latencies.estimate(), Some(MS * 500));
        // A full window of faster samples replaces the slow ones.
        (0..32).for_each(|_| latencies.record(MS * 20));
        assert_eq!(latencies.estimate(), Some(MS * 20));
    }

    #[test]
    fn refreshes_every_sixteenth_of_the_window() {
        let latencies = Latencies::new(64, 50.0, 1);
        latencies.record(MS);
        assert_eq!(latencies.estimate(), Some(MS));
        // Refreshed every 4 samples: at the 4th, not at the 2nd or 3rd.
        (0..2).for_each(|_| latencies.record(MS * 9));
        assert_eq!(latencies.estimate(), Some(MS));
        latencies.record(MS * 9);
        assert_eq!(latencies.estimate(), Some(MS * 9));
    }

    #[test]
    fn huge_latencies_saturate() {
        let latencies = Latencies::new(1, 50.0, 1);
        latencies.record(Duration::MAX);
        assert_eq!(latencies.estimate(), Some(Duration::from_nanos(EMPTY - 1)));
    }

    proptest! {
        /// The estimate is always one of the samples in the window, and the right one.
        #[test]
        fn the_estimate_is_the_nearest_rank_of_the_window(
            samples in proptest::collection::vec(0_u64..10_000, 1..200),
            window in 1_u32..64,
            percentile in 1_u32..=100,
        ) {
            let latencies = Latencies::new(window, f64::from(percentile), 1);
            for &s in &samples {
                latencies.record(Duration::from_nanos(s));
            }
            let refresh = u64::from((window / 16).max(1));
            // The last computation saw the samples up to the last multiple of `refresh`.
            let seen = if samples.len() as u64 >= refresh {
                (samples.len() as u64 / refresh * refresh) as usize
            } else {
                1
            };
            let from = seen.saturating_sub(window as usize);
            let mut ring = samples[from..seen].to_vec();
            ring.sort_unstable();
            let rank = (f64::from(percentile) / 100.0 * ring.len() as f64).ceil() as usize;
            let expected = ring[rank.clamp(1, ring.len()) - 1];
            prop_assert_eq!(latencies.estimate(), Some(Duration::from_nanos(expected)));
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Two threads record while a third reads: the estimate is never a slot that was claimed
    /// but not yet written, and never a value nobody recorded.
    #[test]
    fn loom_racing_records_never_read_an_empty_slot() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let latencies = loom::sync::Arc::new(Latencies::new(2, 100.0, 1));
            let other = loom::sync::Arc::clone(&latencies);
            let thread = loom::thread::spawn(move || other.record(Duration::from_nanos(7)));
            latencies.record(Duration::from_nanos(3));
            let seen = latencies.estimate();
            thread.join().unwrap();
            assert!(
                matches!(seen.map(|d| d.as_nanos()), Some(3 | 7)),
                "{seen:?}"
            );
            // Both samples are in the ring once both threads are done.
            latencies.compute(latencies.recorded());
            assert_eq!(latencies.estimate(), Some(Duration::from_nanos(7)));
        });
    }
}
