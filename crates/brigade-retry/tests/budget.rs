//! The retry budget through the public API: a retry storm stays within the budget, the budget
//! refills as the window moves, and concurrent use never over-allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brigade_retry::{Backoff, Retry, RetryBudget, StopReason};
use tokio::task::JoinSet;
use tokio::time::{advance, sleep};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Down;

/// 1,000 concurrent calls, 3 attempts each, against an upstream that always fails after 10 ms.
/// Returns the upstream's call count and how the calls stopped.
async fn storm(policy: &Retry) -> (usize, Vec<StopReason>) {
    let upstream_calls = Arc::new(AtomicUsize::new(0));
    let mut calls = JoinSet::new();
    for _ in 0..1000 {
        let policy = policy.clone();
        let upstream_calls = Arc::clone(&upstream_calls);
        calls.spawn(async move {
            policy
                .run(async move |attempt| {
                    attempt.is_retry();
                    upstream_calls.fetch_add(1, Ordering::Relaxed);
                    sleep(MS * 10).await;
                    Err::<(), _>(Down)
                })
                .await
                .unwrap_err()
                .stop()
        });
    }
    let stops = calls.join_all().await;
    (upstream_calls.load(Ordering::Relaxed), stops)
}

fn storm_policy(budget: Option<RetryBudget>) -> Retry {
    Retry::builder()
        .schedule(Backoff::constant(MS * 100))
        .max_attempts(3)
        .budget(budget)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_retry_storm_makes_no_more_retries_than_the_budget_allows() {
    // Defaults: 10 s window, 10 retries per second, ratio 0.2.
    let budget = RetryBudget::default();
    let policy = storm_policy(Some(budget.clone()));

    let (upstream_calls, stops) = storm(&policy).await;
    // 1,000 calls earn 0.2 × 1,000 = 200 retries, plus the floor of 10/s × 10 s = 100.
    assert_eq!(upstream_calls, 1000 + 300);
    assert!(stops.iter().all(|s| *s == StopReason::BudgetExhausted));
    assert_eq!(budget.available(), 0);

    // Without a budget the same storm triples the load.
    let (unbudgeted, _) = storm(&storm_policy(None)).await;
    assert_eq!(unbudgeted, 3000);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_as_the_window_moves() {
    let budget = RetryBudget::default();
    let policy = storm_policy(Some(budget.clone()));
    let (upstream_calls, _) = storm(&policy).await;
    assert_eq!(upstream_calls, 1300);

    // Still within the window: nothing back yet.
    advance(SEC * 9).await;
    assert_eq!(budget.available(), 0);

    // Past it: the storm's calls and retries have aged out; the floor is back.
    advance(SEC).await;
    assert_eq!(budget.available(), 100);
    let err = policy.run(async |_| Err::<(), _>(Down)).await.unwrap_err();
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(err.attempts(), 3);
    assert_eq!(budget.available(), 98);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_slot_by_slot() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(SEC * 10)
        .build()
        .unwrap();
    (0..10).for_each(|_| budget.deposit());
    advance(SEC * 5).await;
    // Deposits are stamped with a cached tick that withdrawals (and every full batch of
    // deposits) refresh from the clock; `available` refreshes it here, as a failure would, and
    // adds this thread's pending batch to the window first.
    assert_eq!(budget.available(), 10);
    (0..10).for_each(|_| budget.deposit());
    assert_eq!(budget.available(), 20);
    advance(SEC * 5).await; // the first ten have left the window
    assert_eq!(budget.available(), 10);
    advance(SEC * 5).await;
    assert_eq!(budget.available(), 0);
}

#[test]
fn concurrent_withdrawals_never_over_allow() {
    let budget = RetryBudget::builder()
        .ratio(0.25)
        .min_per_sec(1)
        .window(Duration::from_secs(3600))
        .build()
        .unwrap();
    let granted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let budget = budget.clone();
            let granted = Arc::clone(&granted);
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    budget.deposit();
                    if budget.try_withdraw() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // 40,000 calls × 0.25 + 3,600 s × 1/s: the most that may be granted.
    let granted = granted.load(Ordering::Relaxed);
    assert!(granted <= 10_000 + 3_600, "granted {granted}");
    assert!(granted >= 10_000, "granted only {granted}");
}
