//! A small seedable random generator shared by the picks of one pool, without a lock.
//!
//! SplitMix64 over an atomic counter: each draw adds the golden gamma to the state with one
//! `fetch_add` and mixes the result. Concurrent draws get distinct states; a single thread
//! with a fixed seed gets a repeatable sequence.

use crate::loom::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float uniform in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        // The 53 high bits: every value a multiple of 2^-53.
        #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64's mantissa exactly
        let mantissa = (self.next_u64() >> 11) as f64;
        mantissa * (1.0 / (1_u64 << 53) as f64)
    }
}

pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0xba1a_u64)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_floats_in_unit_interval() {
        let (a, b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x.to_bits(), b.next_f64().to_bits());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
