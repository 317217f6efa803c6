//! A tiny seeded PRNG for jitter.
//!
//! SplitMix64 (Steele, Lea and Flood, 2014): one `u64` of state, good statistical quality for
//! jitter, no allocation, no locks. It is not a cryptographic generator and does not need to be:
//! jitter only has to decorrelate clients.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: every seed gives a full-period sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A duration drawn uniformly from `lo..=hi` (or `lo` when `hi <= lo`). Never outside the
    /// range, whatever the sizes.
    pub(crate) fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        let r = self.next_u64();
        let offset = match u64::try_from(span.as_nanos()) {
            // Multiply-shift: maps `r` onto 0..=span_nanos without modulo bias worth the name.
            Ok(nanos) => {
                let n = (u128::from(r) * (u128::from(nanos) + 1)) >> 64;
                // `n <= nanos`, so the conversion cannot fail.
                Duration::from_nanos(u64::try_from(n).unwrap_or(nanos))
            }
            // Spans longer than 584 years: a float fraction is precise enough.
            Err(_) => {
                let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
                span.mul_f64(unit).min(span)
            }
        };
        lo.saturating_add(offset).min(hi)
    }
}

/// The SplitMix64 output function, also used to derive one seed per call from a base seed.
pub(crate) const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `n`-th seed derived from `base`: distinct calls get uncorrelated jitter.
pub(crate) const fn derive(base: u64, n: u64) -> u64 {
    mix(base ^ mix(n.wrapping_mul(GOLDEN)))
}

/// A random seed from the standard library's per-process hash keys.
pub(crate) fn random_seed() -> u64 {
    RandomState::new().hash_one(GOLDEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SplitMix64::new(7).next_u64(), SplitMix64::new(8).next_u64());
    }

    #[test]
    fn between_covers_both_ends_of_a_small_range() {
        let mut rng = SplitMix64::new(1);
        let lo = Duration::from_nanos(10);
        let hi = Duration::from_nanos(12);
        let seen: std::collections::HashSet<_> = (0..1000).map(|_| rng.between(lo, hi)).collect();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|d| (lo..=hi).contains(d)));
    }

    #[test]
    fn between_handles_the_largest_range() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..1000 {
            let d = rng.between(Duration::ZERO, Duration::MAX);
            assert!(d <= Duration::MAX);
        }
        assert_eq!(rng.between(Duration::MAX, Duration::ZERO), Duration::MAX);
    }
}
