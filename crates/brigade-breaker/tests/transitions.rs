//! Every automatic transition, on tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_breaker::{
    CircuitBreaker, Error, Listener, OpenDuration, Outcome, State, Transition, Trigger, Window,
};
use tokio::time::{advance, sleep};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Transition>>>);

impl Listener for Log {
    fn on_transition(&self, transition: &Transition) {
        self.0.lock().unwrap().push(*transition);
    }
}

impl Log {
    fn take(&self) -> Vec<(State, State, Trigger)> {
        self.0
            .lock()
            .unwrap()
            .drain(..)
            .map(|t| (t.from, t.to, t.trigger))
            .collect()
    }

    fn open_durations(&self) -> Vec<Duration> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|t| t.open_for)
            .collect()
    }
}

fn record(breaker: &CircuitBreaker, outcome: Outcome) {
    breaker
        .try_acquire()
        .expect("breaker should let the call through")
        .record(outcome);
}

fn retry_after(breaker: &CircuitBreaker) -> Duration {
    breaker
        .try_acquire()
        .expect_err("breaker should reject")
        .retry_after()
}

#[tokio::test(start_paused = true)]
async fn closed_trips_on_failure_rate_once_minimum_calls_are_in() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .window(Window::count(10))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .listener(log.clone())
        .build()
        .unwrap();
    // Three failures: 100 % but under the minimum.
    for _ in 0..3 {
        record(&breaker, Outcome::FAILURE);
    }
    assert_eq!(breaker.state(), State::Closed);
    // A success brings the window to its minimum at 75 % failures: it trips.
    record(&breaker, Outcome::Success);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        log.take(),
        [(State::Closed, State::Open, Trigger::FailureRate)]
    );
}

#[tokio::test(start_paused = true)]
async fn closed_stays_closed_under_the_failure_rate() {
    let breaker = CircuitBreaker::builder()
        .window(Window::count(10))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    for i in 0..100 {
        // 40 % failures.
        let outcome = if i % 5 < 2 {
            Outcome::FAILURE
        } else {
            Outcome::Success
        };
        record(&breaker, outcome);
    }
    assert_eq!(breaker.state(), State::Closed);
    let metrics = breaker.metrics();
    assert_eq!((metrics.calls, metrics.failed_calls), (10, 4));
    assert!((metrics.failure_rate - 40.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn closed_trips_on_slow_call_rate() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .window(Window::count(4))
        .minimum_calls(4)
        .slow_calls(2 * SEC, 50.0)
        .listener(log.clone())
        .build()
        .unwrap();
    for slow in [false, true, false, true] {
        let permit = breaker.try_acquire().unwrap();
        advance(if slow { 2 * SEC } else { SEC }).await;
        permit.success();
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        log.take(),
        [(State::Closed, State::Open, Trigger::SlowCallRate)]
    );
}

#[tokio::test(start_paused = true)]
async fn closed_trips_on_consecutive_failures() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .window(Window::count(20))
        .minimum_calls(5)
        .failure_rate_threshold(100.0)
        .consecutive_failures(3)
        .listener(log.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        record(&breaker, Outcome::Success);
    }
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::Success); // breaks the run
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::FAILURE);
    assert_eq!(breaker.state(), State::Closed);
    record(&breaker, Outcome::FAILURE);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        log.take(),
        [(State::Closed, State::Open, Trigger::ConsecutiveFailures)]
    );
}

#[tokio::test(start_paused = true)]
async fn open_rejects_until_its_duration_ends_then_half_opens() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(10 * SEC))
        .listener(log.clone())
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    assert_eq!(retry_after(&breaker), 10 * SEC);
    advance(4 * SEC).await;
    assert_eq!(retry_after(&breaker), 6 * SEC);
    advance(6 * SEC - MS).await;
    assert_eq!(retry_after(&breaker), MS);
    advance(MS).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().rejections, 3);
    assert_eq!(
        log.take(),
        [
            (State::Closed, State::Open, Trigger::FailureRate),
            (State::Open, State::HalfOpen, Trigger::OpenElapsed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_enough_successes_with_an_empty_window() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(SEC))
        .half_open_probes(1)
        .half_open_successes(3)
        .listener(log.clone())
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    advance(SEC).await;
    for _ in 0..2 {
        record(&breaker, Outcome::Success);
        assert_eq!(breaker.state(), State::HalfOpen);
    }
    record(&breaker, Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
    // The failures that tripped it are forgotten.
    assert_eq!(breaker.metrics().calls, 0);
    assert_eq!(
        log.take(),
        [
            (State::Closed, State::Open, Trigger::FailureRate),
            (State::Open, State::HalfOpen, Trigger::OpenElapsed),
            (State::HalfOpen, State::Closed, Trigger::ProbesSucceeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_on_a_failed_probe() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(SEC))
        .half_open_probes(2)
        .listener(log.clone())
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    advance(SEC).await;
    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    first.success();
    second.failure();
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(retry_after(&breaker), SEC);
    assert_eq!(
        log.take()[2..],
        [(State::HalfOpen, State::Open, Trigger::ProbeFailed)]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_on_a_slow_probe() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .slow_calls(SEC, 100.0)
        .open_duration(OpenDuration::fixed(SEC))
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    advance(SEC).await;
    let probe = breaker.try_acquire().unwrap();
    advance(SEC).await;
    probe.success();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn regression_open_durations_under_a_second_work() {
    // failsafe-rs panics on backoffs under a second.
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(Duration::from_millis(20)))
        .half_open_successes(1)
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    assert_eq!(retry_after(&breaker), Duration::from_millis(20));
    sleep(Duration::from_millis(20)).await;
    record(&breaker, Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

/// Trips, then fails the probe each time the breaker half-opens, `trips` times in all.
async fn trip_repeatedly(breaker: &CircuitBreaker, trips: usize) -> Vec<Duration> {
    let mut durations = Vec::new();
    record(breaker, Outcome::FAILURE);
    for _ in 0..trips {
        let open_for = retry_after(breaker);
        durations.push(open_for);
        advance(open_for).await;
        record(breaker, Outcome::FAILURE);
    }
    durations
}

#[tokio::test(start_paused = true)]
async fn escalating_open_duration_grows_to_its_cap_and_resets_on_close() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::escalating(SEC, 10 * SEC))
        .half_open_successes(1)
        .build()
        .unwrap();
    let durations = trip_repeatedly(&breaker, 5).await;
    assert_eq!(durations, [SEC, 2 * SEC, 4 * SEC, 8 * SEC, 10 * SEC]);
    // Close, then trip again: back to the base.
    advance(10 * SEC).await;
    record(&breaker, Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
    record(&breaker, Outcome::FAILURE);
    assert_eq!(retry_after(&breaker), SEC);
}

#[tokio::test(start_paused = true)]
async fn escalating_jitter_is_seeded_spread_and_capped() {
    let build = |seed| {
        let log = Log::default();
        let breaker = CircuitBreaker::builder()
            .minimum_calls(1)
            .open_duration(
                OpenDuration::escalating(SEC, 6 * SEC)
                    .multiplier(3.0)
                    .jitter(0.5),
            )
            .jitter_seed(seed)
            .listener(log.clone())
            .build()
            .unwrap();
        (breaker, log)
    };
    let (a, log_a) = build(7);
    let (b, log_b) = build(7);
    let (c, log_c) = build(8);
    trip_repeatedly(&a, 4).await;
    trip_repeatedly(&b, 4).await;
    trip_repeatedly(&c, 4).await;
    let (a, b, c) = (
        log_a.open_durations(),
        log_b.open_durations(),
        log_c.open_durations(),
    );
    assert_eq!(a.len(), 5);
    assert_eq!(a, b, "same seed, same durations");
    assert_ne!(a, c, "another seed, other durations");
    // Trip k: 3^k seconds, scaled by [0.5, 1.5], capped at 6 s.
    for (k, duration) in a.iter().enumerate() {
        let nominal = 3f64.powi(k as i32);
        assert!(
            duration.as_secs_f64() >= (nominal * 0.5).min(6.0) - 1e-6,
            "{k}: {duration:?}"
        );
        assert!(*duration <= 6 * SEC, "{k}: {duration:?}");
    }
    assert!(a[0] != SEC, "jitter moved the first duration");
}

#[tokio::test(start_paused = true)]
async fn a_longer_retry_after_hint_extends_the_open_period_up_to_its_cap() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(5 * SEC))
        .max_retry_after(60 * SEC)
        .build()
        .unwrap();
    // Shorter than the open duration: ignored.
    record(&breaker, Outcome::failure_retry_after(SEC));
    assert_eq!(retry_after(&breaker), 5 * SEC);

    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(5 * SEC))
        .max_retry_after(60 * SEC)
        .build()
        .unwrap();
    record(&breaker, Outcome::failure_retry_after(30 * SEC));
    assert_eq!(retry_after(&breaker), 30 * SEC);
    // A failed probe with an absurd hint is capped.
    advance(30 * SEC).await;
    record(&breaker, Outcome::failure_retry_after(3600 * SEC));
    assert_eq!(retry_after(&breaker), 60 * SEC);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_failures_older_than_its_length() {
    let breaker = CircuitBreaker::builder()
        .window(Window::time(10 * SEC))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::FAILURE);
    assert_eq!(breaker.metrics().failed_calls, 3);
    // The failures age out: the next calls see only themselves.
    advance(10 * SEC).await;
    assert_eq!(breaker.metrics().calls, 0);
    for _ in 0..4 {
        record(&breaker, Outcome::Success);
    }
    record(&breaker, Outcome::FAILURE);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 5);
    // Within the window, failures add up.
    advance(5 * SEC).await;
    record(&breaker, Outcome::FAILURE);
    record(&breaker, Outcome::FAILURE); // 3 of 7
    assert_eq!(breaker.state(), State::Closed);
    record(&breaker, Outcome::FAILURE); // 4 of 8: 50 %
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn call_returns_the_inner_error_and_rejects_without_running() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    let result = breaker.call(async { Err::<(), _>("boom") }).await;
    assert_eq!(result, Err(Error::Inner("boom")));
    let mut ran = false;
    let result = breaker
        .call(async {
            ran = true;
            Ok::<_, &str>(())
        })
        .await;
    assert!(result.unwrap_err().is_rejected());
    assert!(!ran, "a rejected call is never run");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_call_carries_the_whole_rejection() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(10 * SEC))
        .half_open_probes(1)
        .build()
        .unwrap();
    let _ = breaker.call(async { Err::<(), _>("boom") }).await;
    advance(4 * SEC).await;
    let Err(Error::Rejected(rejected)) = breaker.call(async { Ok::<_, &str>(()) }).await else {
        panic!("an open breaker rejects");
    };
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), 6 * SEC);
    assert_eq!(rejected, breaker.try_acquire().unwrap_err());

    // Half-open with its one probe slot taken: the state says so.
    advance(6 * SEC).await;
    let _probe = breaker.try_acquire().unwrap();
    let Err(Error::Rejected(rejected)) = breaker.call(async { Ok::<_, &str>(()) }).await else {
        panic!("every probe slot is taken");
    };
    assert_eq!(rejected.state(), State::HalfOpen);
    assert_eq!(rejected.retry_after(), SEC);
}

#[tokio::test(start_paused = true)]
async fn regression_a_time_window_keeps_tripping_after_closing_late_in_its_life() {
    // 1 ms buckets. A window emptied when the breaker closed used to stop counting once the
    // breaker had lived 2^23 bucket lengths (2.3 hours here), so it could never trip again.
    let breaker = CircuitBreaker::builder()
        .window(Window::time_with_buckets(100 * MS, 100))
        .minimum_calls(2)
        .open_duration(OpenDuration::fixed(SEC))
        .half_open_probes(1)
        .half_open_successes(1)
        .build()
        .unwrap();
    for hours in [3, 3, 48] {
        advance(Duration::from_secs(hours * 3600)).await;
        record(&breaker, Outcome::FAILURE);
        assert_eq!(breaker.metrics().calls, 1, "after {hours} more hours");
        record(&breaker, Outcome::FAILURE);
        assert_eq!(breaker.state(), State::Open, "after {hours} more hours");
        advance(SEC).await;
        record(&breaker, Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.metrics().calls, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn state_reads_half_open_once_the_open_period_ends() {
    let log = Log::default();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(10 * SEC))
        .listener(log.clone())
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    advance(10 * SEC - MS).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.handle().state(), State::Open);
    advance(MS).await;
    // Nobody has asked yet, but the next caller will be a probe: that is half-open.
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.metrics().state, State::HalfOpen);
    assert_eq!(breaker.metrics().probes_in_flight, 0);
    // The transition itself is made, and heard, when that caller asks.
    assert_eq!(
        log.take(),
        [(State::Closed, State::Open, Trigger::FailureRate)]
    );
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(
        log.take(),
        [(State::Open, State::HalfOpen, Trigger::OpenElapsed)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_half_open_asks_callers_back_soon_not_after_a_whole_open_period() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(30 * SEC))
        .half_open_probes(1)
        .build()
        .unwrap();
    record(&breaker, Outcome::FAILURE);
    advance(30 * SEC).await;
    let _probe = breaker.try_acquire().unwrap();
    let rejected = breaker.try_acquire().unwrap_err();
    assert_eq!(rejected.state(), State::HalfOpen);
    assert_eq!(rejected.retry_after(), SEC);

    // A base open duration under a second is the shorter hint.
    let quick = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(200 * MS))
        .half_open_probes(1)
        .build()
        .unwrap();
    record(&quick, Outcome::FAILURE);
    advance(200 * MS).await;
    let _probe = quick.try_acquire().unwrap();
    assert_eq!(retry_after(&quick), 200 * MS);
}
