//! A circuit breaker in front of a mock upstream that goes down and comes back.
//!
//! The upstream fails every call between 0.3 s and 1.2 s. The breaker trips on the failure
//! rate, rejects calls at once while open (with a `Retry-After`), lets a single probe through
//! when the open period ends, reopens for longer while the upstream is still down, and closes
//! once probes succeed again. Every transition is printed by a listener.
//!
//! Run: `cargo run --example circuit_breaker`

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brigade_breaker::{CircuitBreaker, Error, Listener, OpenDuration, State, Transition, Window};
use tokio::time::{Instant, sleep};

/// Prints each transition.
struct Printer {
    start: Instant,
}

impl Listener for Printer {
    fn on_transition(&self, t: &Transition) {
        let open_for = t
            .open_for
            .map(|d| format!(", open for {} ms", d.as_millis()))
            .unwrap_or_default();
        println!(
            "{:>5} ms  breaker {} -> {} ({:?}{open_for})",
            self.start.elapsed().as_millis(),
            t.from,
            t.to,
            t.trigger
        );
    }
}

/// The mock upstream: a model server that is down between 300 and 1200 ms.
async fn upstream(start: Instant, calls: &AtomicU32) -> Result<&'static str, &'static str> {
    calls.fetch_add(1, Ordering::Relaxed);
    sleep(Duration::from_millis(5)).await;
    let now = start.elapsed();
    if now >= Duration::from_millis(300) && now < Duration::from_millis(1200) {
        Err("503 service unavailable")
    } else {
        Ok("tokens")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let start = Instant::now();
    let breaker = CircuitBreaker::builder()
        .window(Window::count(10))
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .open_duration(
            OpenDuration::escalating(Duration::from_millis(200), Duration::from_secs(2))
                .jitter(0.1),
        )
        .jitter_seed(42)
        .half_open_probes(1)
        .half_open_successes(2)
        .listener(Printer { start })
        .build()
        .expect("a valid configuration");

    let calls = AtomicU32::new(0);
    let (mut ok, mut failed, mut rejected) = (0, 0, 0);
    while start.elapsed() < Duration::from_millis(2500) {
        match breaker.call(upstream(start, &calls)).await {
            Ok(_) => ok += 1,
            Err(Error::Inner(_)) => failed += 1,
            Err(Error::Rejected(_)) => rejected += 1,
            Err(_) => unreachable!("no other error"),
        }
        sleep(Duration::from_millis(20)).await;
    }

    let metrics = breaker.metrics();
    println!(
        "\n{ok} succeeded, {failed} failed, {rejected} rejected without reaching the upstream \
         ({} upstream calls); final state {}, failure rate {:.0} % of the last {} calls",
        calls.load(Ordering::Relaxed),
        metrics.state,
        metrics.failure_rate,
        metrics.calls
    );
    assert_eq!(metrics.state, State::Closed);
}
