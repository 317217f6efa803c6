//! Property: the failure and slow-call rates the windows report equal a naive model's, over
//! random call sequences, for count and time windows.

use std::time::Duration;

use brigade_breaker::{CircuitBreaker, Window};
use proptest::prelude::*;
use tokio::time::advance;

/// One call: whether it fails, whether it is slow, and the pause before the next one (ms).
#[derive(Clone, Copy, Debug)]
struct Call {
    failed: bool,
    slow: bool,
    gap_ms: u64,
}

fn calls() -> impl Strategy<Value = Vec<Call>> {
    prop::collection::vec(
        (any::<bool>(), prop::bool::weighted(0.3), gaps()).prop_map(|(failed, slow, gap_ms)| {
            Call {
                failed,
                slow,
                gap_ms,
            }
        }),
        0..300,
    )
}

/// Mostly short pauses, and now and then hours of idleness: long enough for a time window's
/// bucket tags to run through half their range, which once made it stop counting.
fn gaps() -> impl Strategy<Value = u64> {
    prop_oneof![
        40 => 0..700u64,
        1 => (2..60u64).prop_map(|hours| hours * 3_600_000),
    ]
}

const SLOW: Duration = Duration::from_millis(100);

/// A breaker that never trips, so every call is recorded: thresholds at 100 % and a minimum
/// over the window are replaced by metrics-only mode.
fn breaker(window: Window) -> CircuitBreaker {
    let breaker = CircuitBreaker::builder()
        .window(window)
        .minimum_calls(1)
        .slow_calls(SLOW, 100.0)
        .build()
        .unwrap();
    breaker.handle().metrics_only();
    breaker
}

async fn run(breaker: &CircuitBreaker, call: Call) {
    let permit = breaker.try_acquire().unwrap();
    advance(if call.slow { SLOW } else { SLOW / 2 }).await;
    if call.failed {
        permit.failure();
    } else {
        permit.success();
    }
    advance(Duration::from_millis(call.gap_ms)).await;
}

fn assert_rates(breaker: &CircuitBreaker, model: &[Call]) {
    let metrics = breaker.metrics();
    let calls = model.len() as u64;
    let failed = model.iter().filter(|c| c.failed).count() as u64;
    let slow = model.iter().filter(|c| c.slow).count() as u64;
    assert_eq!(
        (metrics.calls, metrics.failed_calls, metrics.slow_calls),
        (calls, failed, slow)
    );
    let rate = |n: u64| {
        if calls == 0 {
            0.0
        } else {
            n as f64 * 100.0 / calls as f64
        }
    };
    assert!((metrics.failure_rate - rate(failed)).abs() < 1e-9);
    assert!((metrics.slow_call_rate - rate(slow)).abs() < 1e-9);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #[test]
    fn count_window_rates_match_a_naive_model(size in 1..70u32, sequence in calls()) {
        paused_runtime().block_on(async {
            let breaker = breaker(Window::count(size));
            let mut history = Vec::new();
            for call in sequence {
                run(&breaker, call).await;
                history.push(call);
                let start = history.len().saturating_sub(size as usize);
                assert_rates(&breaker, &history[start..]);
            }
        });
    }

    #[test]
    fn time_window_rates_match_a_naive_model(
        buckets in 1..8u32,
        bucket_ms in 1..500u64,
        sequence in calls(),
    ) {
        paused_runtime().block_on(async {
            let bucket = Duration::from_millis(bucket_ms);
            let breaker = breaker(Window::time_with_buckets(bucket * buckets, buckets));
            let start = tokio::time::Instant::now();
            let index = |at: tokio::time::Instant| (at - start).as_nanos() / bucket.as_nanos();
            // Each call with the bucket it ended in; the window holds the calls of the
            // current bucket and the `buckets - 1` before it.
            let mut history: Vec<(u128, Call)> = Vec::new();
            for call in sequence {
                let permit = breaker.try_acquire().unwrap();
                advance(if call.slow { SLOW } else { SLOW / 2 }).await;
                let ended = index(tokio::time::Instant::now());
                if call.failed { permit.failure() } else { permit.success() }
                history.push((ended, call));
                advance(Duration::from_millis(call.gap_ms)).await;
                let now = index(tokio::time::Instant::now());
                let in_window: Vec<Call> = history
                    .iter()
                    .filter(|(at, _)| at + u128::from(buckets) > now)
                    .map(|&(_, call)| call)
                    .collect();
                assert_rates(&breaker, &in_window);
            }
        });
    }
}
