//! A flaky upstream recovered by retries, printing the schedule the policy followed.
//!
//! The mock upstream answers 503 twice (once with a `Retry-After`), drops the connection once,
//! then answers. A second call shows the commit point: a stream that breaks after its first
//! token is not retried, so the client never sees the answer twice.
//!
//! Run: `cargo run --example retry_backoff`

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brigade_retry::{Action, Backoff, Jitter, Retry, RetryCause, RetryEvent};
use tokio::time::Instant;

/// What the mock upstream answers.
#[derive(Debug)]
struct Response {
    status: u16,
    retry_after: Option<Duration>,
    body: &'static str,
}

#[derive(Debug)]
struct ConnectionReset;

/// Fails three times in three different ways, then answers.
async fn flaky_upstream(calls: &AtomicU32) -> Result<Response, ConnectionReset> {
    tokio::time::sleep(Duration::from_millis(20)).await; // the network
    let (status, retry_after, body) = match calls.fetch_add(1, Ordering::Relaxed) {
        0 => (503, None, "overloaded"),
        1 => (
            503,
            Some(Duration::from_millis(300)),
            "overloaded, come back later",
        ),
        2 => return Err(ConnectionReset),
        _ => (200, None, "Bonjour!"),
    };
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

/// A 503 is an `Ok` to an HTTP client, but a failure to retry; a `Retry-After` is honoured.
fn classify(outcome: &Result<Response, ConnectionReset>) -> Action {
    match outcome {
        Ok(r) if r.status == 503 || r.status == 429 => {
            r.retry_after.map_or(Action::Retry, Action::Throttled)
        }
        Ok(_) => Action::Stop,
        Err(ConnectionReset) => Action::Retry,
    }
}

fn describe(event: &RetryEvent) -> String {
    let cause = match event.cause {
        RetryCause::Failed => "failed".to_owned(),
        RetryCause::Throttled(hint) => format!("throttled (Retry-After {hint:?})"),
        RetryCause::TimedOut => "timed out".to_owned(),
        other => format!("{other:?}"),
    };
    format!(
        "  attempt {} {cause} after {:?}; waiting {:?}",
        event.attempt, event.elapsed, event.wait
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let policy = Retry::builder()
        .schedule(
            Backoff::exponential(Duration::from_millis(50), 2.0)
                .max_delay(Duration::from_millis(400))
                .jitter(Jitter::Equal),
        )
        .max_attempts(6)
        .deadline(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .rng(7) // repeatable jitter for the printout
        .on_retry(|event| println!("{}", describe(event)))
        .build()
        .expect("a valid policy");

    println!("call 1: a flaky upstream");
    let calls = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let response = policy
        .classify(classify)
        .run(async |_| flaky_upstream(&calls).await)
        .await;
    match response {
        Ok(r) => println!(
            "  => {} {:?} after {} attempts in {:?}\n",
            r.status,
            r.body,
            calls.load(Ordering::Relaxed),
            start.elapsed()
        ),
        Err(e) => println!("  => gave up: {e}\n"),
    }

    println!("call 2: a stream that breaks after its first token");
    let mut sent_to_client = Vec::new();
    let streamed = policy
        .run(async |attempt| {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sent_to_client.push("Bon");
            attempt.commit(); // the client has seen output: never retry from here
            Err::<(), _>("upstream closed the stream")
        })
        .await;
    match streamed {
        Ok(()) => println!("  => done"),
        Err(e) => println!(
            "  => {e} (last error: {:?}); the client got {sent_to_client:?} once",
            e.error()
        ),
    }

    if let Some(budget) = policy.budget() {
        println!(
            "\nretry budget: {} retries available now",
            budget.available()
        );
    }
}
