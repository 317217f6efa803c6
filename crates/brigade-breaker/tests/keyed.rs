//! Keyed breakers at capacity: eviction never forgets an open, forced-open or busy breaker, and a
//! new key that finds no room gets the shared overflow breaker.

use std::time::Duration;

use brigade_breaker::{CircuitBreaker, KeyedCircuitBreaker, OpenDuration, State};
use tokio::time::advance;

const SEC: Duration = Duration::from_secs(1);

fn keyed(max_keys: usize) -> KeyedCircuitBreaker<String> {
    let template = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(30 * SEC))
        .half_open_probes(1)
        .half_open_successes(1);
    KeyedCircuitBreaker::new(template, max_keys, 600 * SEC).unwrap()
}

fn flood(keyed: &KeyedCircuitBreaker<String>, round: &str, keys: usize) {
    for i in 0..keys {
        let breaker = keyed.get(&format!("{round}-{i}"));
        breaker.try_acquire().unwrap().success();
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_survives_a_flood_of_new_keys_until_its_open_time_ends() {
    let keyed = keyed(8);
    keyed.get("sick").try_acquire().unwrap().failure();
    assert_eq!(keyed.get("sick").state(), State::Open);

    flood(&keyed, "flood", 10_000);
    assert_eq!(keyed.len(), 8);
    let rejected = keyed.get("sick").try_acquire().unwrap_err();
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), 30 * SEC);

    advance(29 * SEC).await;
    flood(&keyed, "later", 10_000);
    let rejected = keyed.get("sick").try_acquire().unwrap_err();
    assert_eq!(
        rejected.retry_after(),
        SEC,
        "the same open period, not a new breaker"
    );

    advance(SEC).await;
    // The open period is over: the same breaker probes the upstream (a fresh one would be closed).
    let sick = keyed.get("sick");
    assert_eq!(sick.state(), State::HalfOpen);
    let probe = sick.try_acquire().unwrap();
    assert!(sick.try_acquire().is_err(), "one probe at a time");
    probe.success();
    assert_eq!(sick.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_breaker_is_never_evicted() {
    let keyed = keyed(4);
    keyed.get("maintenance").handle().force_open();
    flood(&keyed, "flood", 1_000);
    advance(3600 * SEC).await;
    flood(&keyed, "later", 1_000);
    assert_eq!(keyed.get("maintenance").state(), State::ForcedOpen);
    assert!(keyed.get("maintenance").try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_breaker_in_use_is_not_evicted() {
    let keyed = keyed(4);
    // A stream holds a permit of its key's breaker while new keys come and go.
    let permit = keyed.get("stream").try_acquire_owned().unwrap();
    advance(SEC).await; // the least recently used key from now on
    flood(&keyed, "flood", 1_000);
    permit.failure();
    assert_eq!(
        keyed.get("stream").state(),
        State::Open,
        "the outcome landed in the breaker the map still holds"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_key_shares_the_overflow_breaker_while_every_breaker_is_open() {
    let keyed = keyed(2);
    keyed.get("a").try_acquire().unwrap().failure();
    keyed.get("b").try_acquire().unwrap().failure();

    let c = keyed.get("c");
    assert_eq!(keyed.len(), 2, "no open breaker made room");
    assert!(
        keyed.metrics("c").is_none(),
        "the overflow is not stored under the key"
    );
    c.try_acquire().unwrap().success();
    assert_eq!(keyed.overflow().metrics().calls, 1);
    assert_eq!(keyed.get("a").state(), State::Open);
    assert_eq!(keyed.get("b").state(), State::Open);

    // Once an open period ends, the key gets a breaker of its own.
    advance(30 * SEC).await;
    keyed.get("c").try_acquire().unwrap().success();
    assert_eq!(keyed.metrics("c").unwrap().calls, 1);
    assert_eq!(keyed.len(), 2);
    assert_eq!(keyed.overflow().metrics().calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_keeps_a_key_from_eviction_longest() {
    let keyed = keyed(3);
    keyed.get("a");
    keyed.get("b");
    keyed.get("c");
    keyed.get("a"); // b is now the least recently used
    keyed.get("d");
    assert!(keyed.metrics("b").is_none());
    assert!(keyed.metrics("a").is_some() && keyed.metrics("c").is_some());
    keyed.get("e"); // then c
    assert!(keyed.metrics("c").is_none());
    assert!(keyed.metrics("a").is_some() && keyed.metrics("d").is_some());
}
