//! Property tests of the backoff schedules: every delay stays within its bounds and under the
//! cap for any parameters (zero, huge, NaN factors), jitter stays in its range, and the cap
//! holds after jitter without collapsing it.

use std::time::Duration;

use brigade_retry::schedule::{self, Schedule};
use brigade_retry::{Backoff, Jitter};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..10_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn factor() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(1.0),
        Just(2.0),
        1.0f64..10.0,
        any::<f64>(),
        Just(f64::INFINITY),
        Just(f64::NAN),
    ]
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

fn growth() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        duration().prop_map(Backoff::constant),
        (duration(), duration()).prop_map(|(i, s)| Backoff::linear(i, s)),
        (duration(), factor()).prop_map(|(i, f)| Backoff::exponential(i, f)),
    ]
}

fn backoff() -> impl Strategy<Value = Backoff> {
    (growth(), prop::option::of(duration()), jitter()).prop_map(|(b, cap, j)| {
        let b = b.jitter(j);
        match cap {
            Some(cap) => b.max_delay(cap),
            None => b,
        }
    })
}

proptest! {
    #[test]
    fn every_delay_is_under_the_cap(backoff in backoff(), seed in any::<u64>()) {
        for delay in backoff.delays(seed).take(100) {
            prop_assert!(delay <= backoff.cap());
        }
    }

    #[test]
    fn jitter_stays_in_its_range(backoff in growth(), cap in duration(), seed in any::<u64>()) {
        let plain: Vec<_> = backoff.max_delay(cap).delays(0).take(64).collect();
        let first = plain[0];
        let full: Vec<_> = backoff.max_delay(cap).jitter(Jitter::Full).delays(seed).take(64).collect();
        let equal: Vec<_> = backoff.max_delay(cap).jitter(Jitter::Equal).delays(seed).take(64).collect();
        let decorrelated: Vec<_> =
            backoff.max_delay(cap).jitter(Jitter::Decorrelated).delays(seed).take(64).collect();
        for i in 0..64 {
            prop_assert!(full[i] <= plain[i]);
            prop_assert!(equal[i] >= plain[i] / 2 && equal[i] <= plain[i]);
            prop_assert!(decorrelated[i] >= first && decorrelated[i] <= cap);
            if i > 0 {
                let ceiling = decorrelated[i - 1].saturating_mul(3).min(cap).max(first);
                prop_assert!(decorrelated[i] <= ceiling);
            }
        }
    }

    #[test]
    fn growth_without_jitter_never_shrinks(backoff in growth(), cap in duration()) {
        let delays: Vec<_> = backoff.max_delay(cap).delays(0).take(200).collect();
        prop_assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn exponential_multiplies_until_the_cap(initial_ms in 1u64..1000, factor in 1.0f64..4.0, cap_ms in 1u64..100_000) {
        let initial = Duration::from_millis(initial_ms);
        let cap = Duration::from_millis(cap_ms);
        let delays: Vec<_> = Backoff::exponential(initial, factor).max_delay(cap).delays(0).take(30).collect();
        for (n, delay) in delays.iter().enumerate() {
            let exact = initial.as_secs_f64() * factor.powi(n as i32);
            let expected = exact.min(cap.as_secs_f64());
            prop_assert!((delay.as_secs_f64() - expected).abs() < 1e-6, "n={n}: {delay:?} vs {expected}");
        }
    }

    #[test]
    fn same_seed_same_delays(backoff in backoff(), seed in any::<u64>()) {
        let a: Vec<_> = backoff.delays(seed).take(20).collect();
        let b: Vec<_> = backoff.delays(seed).take(20).collect();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn full_jitter_at_the_cap_stays_spread(cap_ms in 10u64..100_000, seed in any::<u64>()) {
        let cap = Duration::from_millis(cap_ms);
        let backoff = Backoff::exponential(Duration::from_millis(1), 2.0).max_delay(cap).jitter(Jitter::Full);
        // Far past the point where growth reaches the cap.
        let at_cap: Vec<_> = backoff.delays(seed).skip(64).take(64).collect();
        prop_assert!(at_cap.iter().all(|d| *d <= cap));
        // Not collapsed onto the cap (tower's jitter vanishes there).
        prop_assert!(at_cap.iter().filter(|d| **d == cap).count() < 8);
        prop_assert!(at_cap.iter().any(|d| *d < cap / 2));
    }
}

#[test]
fn a_long_schedule_saturates_without_panicking() {
    let backoff = Backoff::exponential(Duration::from_secs(1), 10.0).jitter(Jitter::Equal);
    let late = backoff.delays(5).nth(100_000).unwrap();
    assert!(late >= Duration::MAX / 2);
    let linear = Backoff::linear(Duration::MAX, Duration::MAX);
    assert_eq!(linear.delays(0).nth(10), Some(Duration::MAX));
}

#[test]
fn iterators_and_closures_are_schedules() {
    let fixed = vec![Duration::from_millis(5); 2];
    assert_eq!(fixed.delays(1).count(), 2);
    let built = schedule::from_fn(|| std::iter::repeat_n(Duration::from_secs(1), 3));
    assert_eq!(built.delays(0).count(), 3);
    assert_eq!(built.delays(0).count(), 3); // a fresh iterator per call
}

#[test]
fn backon_builders_plug_in() {
    use backon::BackoffBuilder;
    let backon = schedule::from_fn(|| {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_times(4)
            .build()
    });
    let delays: Vec<_> = backon.delays(0).collect();
    let expected = [10, 20, 40, 80].map(Duration::from_millis);
    assert_eq!(delays.len(), expected.len());
    for (got, want) in delays.iter().zip(expected) {
        // backon computes in f32: allow its rounding.
        assert!(
            got.abs_diff(want) < Duration::from_micros(10),
            "{got:?} vs {want:?}"
        );
    }
}
