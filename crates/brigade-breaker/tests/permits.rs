//! Probe permits and cancellation: the regressions other breakers are known for.

use std::time::Duration;

use brigade_breaker::{CircuitBreaker, OpenDuration, Outcome, State};
use tokio::time::{advance, sleep, timeout};

const SEC: Duration = Duration::from_secs(1);

/// A breaker that has just become ready to half-open.
async fn ready_to_probe(probes: u32, successes: u32) -> CircuitBreaker {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(SEC))
        .half_open_probes(probes)
        .half_open_successes(successes)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    advance(SEC).await;
    breaker
}

#[tokio::test(start_paused = true)]
async fn regression_half_open_does_not_flood() {
    // failsafe-rs lets every call through once the open period ends.
    let breaker = ready_to_probe(2, 5).await;
    let attempts: Vec<_> = (0..100).map(|_| breaker.try_acquire()).collect();
    let granted = attempts.iter().filter(|a| a.is_ok()).count();
    assert_eq!(granted, 2);
    assert_eq!(breaker.metrics().probes_in_flight, 2);
    let rejected = attempts.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert_eq!(rejected.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn regression_a_cancelled_probe_returns_its_slot_and_records_nothing() {
    let breaker = ready_to_probe(1, 1).await;
    // The probing call is cancelled by a timeout: its future, and permit, are dropped.
    let cancelled = timeout(
        SEC,
        breaker.call(async {
            sleep(10 * SEC).await;
            Ok::<_, ()>(())
        }),
    )
    .await;
    assert!(cancelled.is_err());
    // Not stuck half-open: the slot is free, and nothing was recorded.
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().probes_in_flight, 0);
    breaker.call(async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn regression_a_cancelled_call_never_counts_as_a_failure() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    for _ in 0..10 {
        let cancelled = timeout(
            SEC,
            breaker.call(async {
                sleep(10 * SEC).await;
                Err::<(), _>("would have failed")
            }),
        )
        .await;
        assert!(cancelled.is_err());
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_outcome_records_nothing_and_frees_the_probe() {
    let breaker = ready_to_probe(1, 1).await;
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().probes_in_flight, 0);

    let closed = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    closed
        .call_classified(async { Err::<(), u16>(400) }, |_: &Result<(), u16>| {
            Outcome::Ignored
        })
        .await
        .unwrap_err();
    assert_eq!(closed.state(), State::Closed);
    assert_eq!(closed.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn an_owned_permit_travels_with_a_stream_and_records_when_it_ends() {
    let breaker = ready_to_probe(1, 1).await;
    let permit = breaker.try_acquire_owned().unwrap();
    assert!(permit.is_probe());
    let stream = tokio::spawn(async move {
        sleep(5 * SEC).await; // tokens flowing
        permit.success();
    });
    assert!(
        breaker.try_acquire().is_err(),
        "the stream holds the only probe"
    );
    stream.await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn probe_outcomes_from_an_earlier_half_open_period_are_dropped() {
    let breaker = ready_to_probe(3, 1).await;
    let stale = breaker.try_acquire().unwrap();
    let stale_cancelled = breaker.try_acquire().unwrap();
    breaker.try_acquire().unwrap().failure(); // reopens
    advance(SEC).await;
    let fresh = breaker.try_acquire().unwrap();
    assert_eq!(breaker.metrics().probes_in_flight, 1);
    // Both belong to the previous half-open period: the cancelled one hands back no slot of
    // this one, and the success does not close it.
    drop(stale_cancelled);
    assert_eq!(breaker.metrics().probes_in_flight, 1);
    stale.success();
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().probes_in_flight, 1);
    fresh.success();
    assert_eq!(breaker.state(), State::Closed);
}
