//! One endpoint of a pool: the caller's handle, its configuration, and the counters the pick
//! path reads.
//!
//! # Invariants
//!
//! - `in_flight` counts the live [`Pick`](crate::Pick)s of this endpoint: incremented when a
//!   pick is granted, decremented exactly once when it is dropped (whatever it reported).
//! - Times are nanoseconds since the pool's epoch (a tokio `Instant` taken when the pool was
//!   built), so they fit an `AtomicU64`; 0 in `cooldown_until` and `breaker_until` means
//!   "not blocked".
//! - The latency estimate is two atomics (`estimate`, `updated`) written together under
//!   `sample_lock` and read without it. A read racing a write may pair the old estimate with
//!   the new time or the reverse; either is a value the estimate held a moment ago, decayed a
//!   little more or less, which is all a load heuristic needs. No lock is taken on the pick
//!   path.

use std::sync::Arc;
use std::time::Duration;

use brigade_breaker::CircuitBreaker;
use brigade_limit::AdaptiveLimit;
use tokio::time::Instant;

use crate::loom::{AtomicU64, AtomicUsize, Mutex, Ordering, lock};

/// The pool-wide settings an endpoint needs after the pick (for samples and cooldowns).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub(crate) epoch: Instant,
    /// The latency decay time, in nanoseconds.
    pub(crate) decay_ns: f64,
    pub(crate) default_cooldown: Duration,
    pub(crate) max_cooldown: Duration,
}

impl Clock {
    /// Nanoseconds from the epoch to `now`, plus one, so that 0 can mean "never" and
    /// differences stay exact.
    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

#[derive(Debug)]
pub(crate) struct Endpoint<E> {
    pub(crate) id: Arc<str>,
    pub(crate) endpoint: E,
    pub(crate) weight: f64,
    pub(crate) tier: u32,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) limit: Option<AdaptiveLimit>,
    pub(crate) clock: Clock,
    pub(crate) state: State,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) picks: AtomicU64,
    pub(crate) cooldown_until: AtomicU64,
    /// Throttles reported: each starts or extends a cooldown.
    pub(crate) cooldowns: AtomicU64,
    pub(crate) breaker_until: AtomicU64,
    /// The latency estimate in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// When `estimate` was last written, in nanoseconds since the epoch.
    updated: AtomicU64,
    /// Whether a sample was recorded: the first one replaces the default estimate.
    sample_lock: Mutex<bool>,
}

impl State {
    pub(crate) fn new(default_latency: Duration, now_ns: u64) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            cooldowns: AtomicU64::new(0),
            breaker_until: AtomicU64::new(0),
            estimate: AtomicU64::new(duration_ns(default_latency).to_bits()),
            updated: AtomicU64::new(now_ns),
            sample_lock: Mutex::new(false),
        }
    }

    /// The latency estimate at `now_ns`: the stored estimate decayed toward zero for the time
    /// since it was written, `estimate × e^(−elapsed / decay)`. An endpoint left alone looks
    /// cheaper as time passes, so a slow one is tried again now and then.
    #[inline]
    pub(crate) fn latency_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let estimate = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let updated = self.updated.load(Ordering::Relaxed);
        decayed(estimate, now_ns.saturating_sub(updated), decay_ns)
    }

    /// Records that a call waited `waited` at `now_ns` without a first byte (it was dropped
    /// unreported: a hedge lost, the client left): the endpoint's latency is at least that.
    /// When that is above the current estimate it becomes the estimate, as a peak sample would;
    /// below it, it says nothing and changes nothing. Before the first real sample it is
    /// ignored (the default estimate stands).
    pub(crate) fn at_least(&self, waited: Duration, now_ns: u64, decay_ns: f64) {
        let waited = duration_ns(waited);
        let sampled = lock(&self.sample_lock);
        if !*sampled {
            return;
        }
        let stored = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let elapsed = now_ns.saturating_sub(self.updated.load(Ordering::Relaxed));
        if waited > decayed(stored, elapsed, decay_ns) {
            self.estimate.store(waited.to_bits(), Ordering::Relaxed);
            self.updated.store(now_ns, Ordering::Relaxed);
        }
        drop(sampled);
    }

    /// Records a latency sample taken at `now_ns`. The first sample, and a sample above the
    /// current estimate, replaces it (the peak); one below it moves the estimate toward it with
    /// the weight `1 − e^(−elapsed / decay)`, `elapsed` being the time since the last write.
    pub(crate) fn sample(&self, sample: Duration, now_ns: u64, decay_ns: f64) {
        let sample = duration_ns(sample);
        let mut sampled = lock(&self.sample_lock);
        if !*sampled {
            *sampled = true;
            self.estimate.store(sample.to_bits(), Ordering::Relaxed);
            self.updated.store(now_ns, Ordering::Relaxed);
            return;
        }
        let stored = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let elapsed = now_ns.saturating_sub(self.updated.load(Ordering::Relaxed));
        let current = decayed(stored, elapsed, decay_ns);
        let next = if sample >= current {
            sample
        } else {
            let keep = keep(elapsed, decay_ns);
            current.mul_add(keep, sample * (1.0 - keep))
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(now_ns, Ordering::Relaxed);
    }

    /// Pushes the cooldown to at least `until_ns`.
    pub(crate) fn cool_down_until(&self, until_ns: u64) {
        self.cooldown_until.fetch_max(until_ns, Ordering::Relaxed);
        self.cooldowns.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(clippy::cast_precision_loss)] // nanoseconds up to 2^53 (104 days) are exact
fn duration_ns(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[allow(clippy::cast_precision_loss)] // as duration_ns
fn keep(elapsed_ns: u64, decay_ns: f64) -> f64 {
    if elapsed_ns == 0 {
        1.0
    } else {
        (-(elapsed_ns as f64) / decay_ns).exp()
    }
}

#[inline]
fn decayed(estimate: f64, elapsed_ns: u64, decay_ns: f64) -> f64 {
    estimate * keep(elapsed_ns, decay_ns)
}

pub(crate) fn ns_to_duration(ns: f64) -> Duration {
    Duration::from_secs_f64((ns / 1e9).max(0.0))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const DECAY: f64 = 10e9;

    #[test]
    fn a_higher_sample_replaces_the_estimate_and_a_lower_one_moves_it_with_time() {
        let state = State::new(Duration::from_secs(1), 1);
        // The first sample replaces the default, lower or not.
        state.sample(Duration::from_millis(200), 1, DECAY);
        assert_eq!(state.latency_ns(1, DECAY), 200e6);
        state.sample(Duration::from_millis(500), 1, DECAY);
        assert_eq!(state.latency_ns(1, DECAY), 500e6);
        // At once, a lower sample barely moves it (no time has passed to weigh it).
        state.sample(Duration::from_millis(100), 1, DECAY);
        assert_eq!(state.latency_ns(1, DECAY), 500e6);
        // One decay time later, the estimate has decayed to 500/e, and the sample pulls it.
        let later = 1 + 10_000_000_000;
        let before = state.latency_ns(later, DECAY);
        assert!(
            (before - 500e6 / std::f64::consts::E).abs() < 1e3,
            "{before}"
        );
        state.sample(Duration::from_millis(100), later, DECAY);
        let after = state.latency_ns(later, DECAY);
        assert!(after < before && after > 100e6, "{after}");
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let state = State::new(Duration::from_secs(1), 1);
        let a = state.latency_ns(1, DECAY);
        let b = state.latency_ns(20_000_000_001, DECAY);
        assert!(b < a / 7.0 && b > 0.0);
    }
}
