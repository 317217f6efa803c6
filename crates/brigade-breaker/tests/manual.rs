//! The manual states, switched through a cloned handle, on tokio's paused clock.

use std::time::Duration;

use brigade_breaker::{CircuitBreaker, OpenDuration, Outcome, State};
use tokio::time::advance;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .minimum_calls(2)
        .open_duration(OpenDuration::fixed(Duration::from_secs(7)))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_reset() {
    let breaker = breaker();
    let handle = breaker.handle().clone();
    handle.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    // Time does not end a forced open.
    advance(Duration::from_secs(3600)).await;
    let rejected = breaker.try_acquire().unwrap_err();
    assert_eq!(rejected.state(), State::ForcedOpen);
    assert_eq!(rejected.retry_after(), Duration::from_secs(7));
    assert_eq!(handle.metrics().rejections, 1);
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    assert!(breaker.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_records_nothing() {
    let breaker = breaker();
    breaker.handle().disable();
    for _ in 0..50 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Disabled);
    assert_eq!(breaker.metrics().calls, 0);
    assert_eq!(breaker.metrics().rejections, 0);

    // Disabling an open breaker lets calls through at once, and its permits are no probes.
    let open = self::breaker();
    for _ in 0..2 {
        open.try_acquire().unwrap().failure();
    }
    assert_eq!(open.state(), State::Open);
    open.handle().disable();
    let permit = open.try_acquire().unwrap();
    assert!(!permit.is_probe());
    permit.failure();
    assert_eq!(open.state(), State::Disabled);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_but_never_trips() {
    let breaker = breaker();
    breaker.handle().metrics_only();
    for _ in 0..10 {
        breaker.try_acquire().unwrap().failure();
    }
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, State::MetricsOnly);
    assert_eq!((metrics.calls, metrics.failed_calls), (10, 10));
    assert!((metrics.failure_rate - 100.0).abs() < 1e-9);
    // Back to closed: the window starts empty, and the next failures trip it.
    breaker.handle().reset();
    assert_eq!(breaker.metrics().calls, 0);
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn reset_closes_an_open_breaker() {
    let breaker = breaker();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    breaker.handle().reset();
    assert_eq!(breaker.state(), State::Closed);
    assert!(breaker.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn permits_granted_before_a_switch_record_nothing_after_it() {
    let breaker = breaker();
    let early = [
        breaker.try_acquire().unwrap(),
        breaker.try_acquire().unwrap(),
    ];
    breaker.handle().metrics_only();
    breaker.handle().reset();
    for permit in early {
        permit.record(Outcome::FAILURE);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn switching_to_the_current_state_is_a_no_op() {
    let breaker = breaker();
    breaker.try_acquire().unwrap().failure();
    breaker.handle().reset(); // already closed: the window is kept
    assert_eq!(breaker.metrics().calls, 1);
}
