//! Bad configuration is rejected when it is built, with a typed reason.

use std::time::Duration;

use brigade_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, InvalidConfig, KeyedCircuitBreaker, OpenDuration, Window,
};

const SEC: Duration = Duration::from_secs(1);

fn error(builder: CircuitBreakerBuilder) -> InvalidConfig {
    builder.build().unwrap_err()
}

#[test]
fn thresholds_outside_zero_to_a_hundred_are_rejected() {
    for rate in [0.0, -1.0, 100.5, f64::NAN] {
        let builder = CircuitBreaker::builder().failure_rate_threshold(rate);
        assert_eq!(
            error(builder),
            InvalidConfig::FailureRateThreshold,
            "{rate}"
        );
        let builder = CircuitBreaker::builder().slow_calls(SEC, rate);
        assert_eq!(
            error(builder),
            InvalidConfig::SlowCallRateThreshold,
            "{rate}"
        );
    }
    assert!(
        CircuitBreaker::builder()
            .failure_rate_threshold(100.0)
            .build()
            .is_ok()
    );
    assert_eq!(
        error(CircuitBreaker::builder().slow_calls(Duration::ZERO, 50.0)),
        InvalidConfig::ZeroSlowCallDuration
    );
}

#[test]
fn empty_windows_and_impossible_minimums_are_rejected() {
    let with = |window| CircuitBreaker::builder().window(window).minimum_calls(1);
    assert_eq!(error(with(Window::count(0))), InvalidConfig::ZeroWindow);
    assert_eq!(
        error(with(Window::time(Duration::ZERO))),
        InvalidConfig::ZeroWindow
    );
    assert_eq!(
        error(with(Window::time_with_buckets(SEC, 0))),
        InvalidConfig::BucketTooShort
    );
    assert_eq!(
        error(with(Window::time_with_buckets(SEC, 2000))),
        InvalidConfig::BucketTooShort
    );
    // Windows that would allocate gigabytes are refused rather than aborting the process.
    assert_eq!(
        error(with(Window::count(Window::MAX_CALLS + 1))),
        InvalidConfig::WindowTooLarge
    );
    assert!(with(Window::count(Window::MAX_CALLS)).build().is_ok());
    assert_eq!(
        error(with(Window::time_with_buckets(
            Duration::from_secs(1 << 30),
            Window::MAX_BUCKETS + 1
        ))),
        InvalidConfig::WindowTooLarge
    );
    // A very long `Window::time` gets longer buckets instead of one per second.
    assert!(
        with(Window::time(Duration::from_secs(u64::from(u32::MAX))))
            .build()
            .is_ok()
    );
    assert_eq!(
        error(
            CircuitBreaker::builder()
                .window(Window::count(10))
                .minimum_calls(11)
        ),
        InvalidConfig::MinimumCalls
    );
    assert_eq!(
        error(CircuitBreaker::builder().minimum_calls(0)),
        InvalidConfig::MinimumCalls
    );
    assert_eq!(
        error(CircuitBreaker::builder().consecutive_failures(0)),
        InvalidConfig::ZeroConsecutiveFailures
    );
}

#[test]
fn bad_open_durations_and_probe_counts_are_rejected() {
    let open = |open| CircuitBreaker::builder().open_duration(open);
    assert_eq!(
        error(open(OpenDuration::fixed(Duration::ZERO))),
        InvalidConfig::ZeroOpenDuration
    );
    assert_eq!(
        error(open(OpenDuration::escalating(2 * SEC, SEC))),
        InvalidConfig::Escalation
    );
    assert_eq!(
        error(open(OpenDuration::escalating(SEC, 2 * SEC).multiplier(0.5))),
        InvalidConfig::Escalation
    );
    for multiplier in [f64::NAN, f64::INFINITY, -1.0] {
        assert_eq!(
            error(open(
                OpenDuration::escalating(SEC, 2 * SEC).multiplier(multiplier)
            )),
            InvalidConfig::Escalation,
            "{multiplier}"
        );
    }
    for jitter in [1.5, -0.1, f64::NAN] {
        assert_eq!(
            error(open(OpenDuration::escalating(SEC, 2 * SEC).jitter(jitter))),
            InvalidConfig::Escalation,
            "{jitter}"
        );
    }
    assert_eq!(
        error(CircuitBreaker::builder().half_open_probes(0)),
        InvalidConfig::HalfOpenProbes
    );
    assert_eq!(
        error(CircuitBreaker::builder().half_open_probes(70_000)),
        InvalidConfig::HalfOpenProbes
    );
    assert_eq!(
        error(CircuitBreaker::builder().half_open_successes(0)),
        InvalidConfig::HalfOpenSuccesses
    );
    // The probe counters are 16 bits wide in the state word: one more would spill.
    assert_eq!(
        error(CircuitBreaker::builder().half_open_successes(65_536)),
        InvalidConfig::HalfOpenSuccesses
    );
    assert!(
        CircuitBreaker::builder()
            .half_open_probes(65_535)
            .half_open_successes(65_535)
            .build()
            .is_ok()
    );
    assert_eq!(
        KeyedCircuitBreaker::<String>::new(CircuitBreaker::builder().minimum_calls(0), 10, SEC)
            .unwrap_err(),
        InvalidConfig::MinimumCalls
    );
    assert_eq!(
        KeyedCircuitBreaker::<String>::new(CircuitBreaker::builder(), 0, SEC).unwrap_err(),
        InvalidConfig::ZeroMaxKeys
    );
}

#[test]
fn errors_read_as_lowercase_phrases() {
    let message = InvalidConfig::HalfOpenProbes.to_string();
    assert!(message.starts_with("half-open"));
    assert!(!message.ends_with('.'));
    let breaker = CircuitBreaker::builder()
        .open_duration(OpenDuration::fixed(SEC))
        .build()
        .unwrap();
    breaker.handle().force_open();
    let rejected =
        brigade_breaker::Error::<std::io::Error>::from(breaker.try_acquire().unwrap_err());
    assert_eq!(
        rejected.to_string(),
        "circuit breaker forced open: retry after 1000 ms"
    );
    assert!(std::error::Error::source(&rejected).is_none());
    let inner = brigade_breaker::Error::Inner(std::io::Error::other("reset"));
    assert_eq!(
        std::error::Error::source(&inner).unwrap().to_string(),
        "reset"
    );
}

#[tokio::test(start_paused = true)]
async fn extreme_durations_build_and_run_without_panicking() {
    // Durations are user input: every sum and product on them saturates.
    let breaker = CircuitBreaker::builder()
        .window(Window::time(Duration::MAX))
        .minimum_calls(1)
        .slow_calls(Duration::MAX, 100.0)
        .open_duration(OpenDuration::escalating(Duration::MAX, Duration::MAX).jitter(1.0))
        .max_retry_after(Duration::MAX)
        .build()
        .unwrap();
    breaker
        .try_acquire()
        .unwrap()
        .record(brigade_breaker::Outcome::failure_retry_after(Duration::MAX));
    let rejected = breaker.try_acquire().unwrap_err();
    // Open for as long as the clock can say (`u64` nanoseconds: about 584 years).
    assert!(rejected.retry_after() > Duration::from_secs(500 * 365 * 24 * 3600));

    // Escalation past the largest `f64` power, with full jitter, stays capped.
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(
            OpenDuration::escalating(Duration::from_millis(1), 10 * SEC)
                .multiplier(f64::MAX)
                .jitter(1.0),
        )
        .half_open_probes(1)
        .build()
        .unwrap();
    for _ in 0..70 {
        breaker.try_acquire().unwrap().failure();
        let open_for = breaker.try_acquire().unwrap_err().retry_after();
        assert!(open_for <= 10 * SEC, "{open_for:?}");
        tokio::time::advance(open_for).await;
    }
}
