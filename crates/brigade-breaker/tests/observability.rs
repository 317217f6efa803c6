//! The listener, the metrics snapshot and the keyed breakers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_breaker::{
    CircuitBreaker, KeyedCircuitBreaker, Listener, OpenDuration, State, Transition,
};
use tokio::time::advance;

const SEC: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Listener for Events {
    fn on_transition(&self, t: &Transition) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} -> {} ({:?})", t.from, t.to, t.trigger));
    }

    fn on_rejected(&self, state: State, retry_after: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("rejected {state} {retry_after:?}"));
    }
}

#[tokio::test(start_paused = true)]
async fn the_listener_hears_transitions_and_rejections_in_order() {
    let events = Events::default();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(2 * SEC))
        .half_open_successes(1)
        .listener(events.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let _ = breaker.try_acquire();
    advance(2 * SEC).await;
    breaker.try_acquire().unwrap().success();
    breaker.handle().disable();
    assert_eq!(
        *events.0.lock().unwrap(),
        [
            "closed -> open (FailureRate)",
            "rejected open 2s",
            "open -> half-open (OpenElapsed)",
            "half-open -> closed (ProbesSucceeded)",
            "closed -> disabled (Manual)",
        ]
    );
}

#[test]
fn a_listener_with_no_methods_compiles_to_no_ops() {
    struct Quiet;
    impl Listener for Quiet {}
    let breaker = CircuitBreaker::builder().listener(Quiet).build().unwrap();
    breaker.handle().force_open();
    assert!(breaker.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_reports_state_rates_calls_and_rejections() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(10)
        .slow_calls(SEC, 100.0)
        .build()
        .unwrap();
    for i in 0..8 {
        let permit = breaker.try_acquire().unwrap();
        if i < 2 {
            advance(SEC).await;
        }
        if i % 4 == 0 {
            permit.failure()
        } else {
            permit.success()
        }
    }
    let _probe_of_nothing = breaker.try_acquire().unwrap(); // in flight, not recorded
    let metrics = breaker.metrics();
    assert_eq!(metrics.state, State::Closed);
    assert_eq!(
        (metrics.calls, metrics.failed_calls, metrics.slow_calls),
        (8, 2, 2)
    );
    assert!((metrics.failure_rate - 25.0).abs() < 1e-9);
    assert!((metrics.slow_call_rate - 25.0).abs() < 1e-9);
    assert_eq!(metrics.rejections, 0);
    breaker.handle().force_open();
    let _ = breaker.try_acquire();
    let _ = breaker.try_acquire();
    assert_eq!(breaker.metrics().rejections, 2);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_independent_per_key() {
    let keyed =
        KeyedCircuitBreaker::new(CircuitBreaker::builder().minimum_calls(1), 10, SEC).unwrap();
    let _ = keyed.call("a", async { Err::<(), _>(()) }).await;
    keyed.call("b", async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(keyed.get("a").state(), State::Open);
    assert_eq!(keyed.get("b").state(), State::Closed);
    assert!(
        keyed
            .call("a", async { Ok::<_, ()>(()) })
            .await
            .unwrap_err()
            .is_rejected()
    );
    assert_eq!(keyed.len(), 2);
    assert_eq!(keyed.metrics("b").unwrap().calls, 1);
    assert!(keyed.remove("a"));
    assert_eq!(
        keyed.get("a").state(),
        State::Closed,
        "a removed key starts afresh"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_evict_idle_keys_then_the_least_recently_used() {
    let keyed: KeyedCircuitBreaker<String> =
        KeyedCircuitBreaker::new(CircuitBreaker::builder(), 2, 10 * SEC).unwrap();
    keyed.get("a");
    advance(SEC).await;
    keyed.get("b");
    advance(SEC).await;
    keyed.get("a"); // a is now the most recently used
    keyed.get("c"); // full, nothing idle: b, the least recently used, goes
    assert_eq!(keyed.len(), 2);
    assert!(keyed.metrics("b").is_none());
    assert!(keyed.metrics("a").is_some() && keyed.metrics("c").is_some());
    advance(10 * SEC).await;
    keyed.evict_idle();
    assert!(keyed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_seeded_template_gives_each_key_its_own_jitter() {
    let template = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::escalating(10 * SEC, 60 * SEC).jitter(0.5))
        .jitter_seed(1);
    let keyed = KeyedCircuitBreaker::new(template, 10, SEC).unwrap();
    let mut durations = Vec::new();
    for key in ["a", "b", "c"] {
        keyed.get(key).try_acquire().unwrap().failure();
        durations.push(keyed.get(key).try_acquire().unwrap_err().retry_after());
    }
    durations.dedup();
    assert_eq!(durations.len(), 3, "{durations:?}");
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_evict_every_idle_key_before_any_recent_one() {
    let keyed: KeyedCircuitBreaker<String> =
        KeyedCircuitBreaker::new(CircuitBreaker::builder(), 3, 10 * SEC).unwrap();
    keyed.get("a");
    keyed.get("b");
    advance(11 * SEC).await;
    keyed.get("c");
    // Full: both idle keys go, not just the least recently used one; the recent one stays.
    keyed.get("d");
    assert_eq!(keyed.len(), 2);
    assert!(keyed.metrics("a").is_none() && keyed.metrics("b").is_none());
    assert!(keyed.metrics("c").is_some() && keyed.metrics("d").is_some());
    // Below the cap, nothing is evicted however idle.
    advance(60 * SEC).await;
    keyed.get("e");
    assert_eq!(keyed.len(), 3);
}
