//! The retry budget through the public API: a retry storm stays within the budget, the budget
//! refills as the window moves, concurrent use never over-allows, stale counts never read as
//! current after any idle spell, and calls made slowly count in the window they belong to.

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
    // Deposits are stamped with the tick their thread's batch started in; `available` adds
    // this thread's open batch to the window first, as a withdrawal would.
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

/// Ticks of the old slot stamps' half range: a stamp was 24 bits, and one more than 2^23 ticks
/// behind was taken for a newer one.
const OLD_WRAP: u64 = 1 << 23;

/// Deposits `per_tick` calls in each of the window's ten ticks (the clock ends on the last).
async fn fill(budget: &RetryBudget, per_tick: usize) {
    let tick = budget.window() / 10;
    for k in 0..10 {
        if k > 0 {
            advance(tick).await;
        }
        (0..per_tick).for_each(|_| budget.deposit());
    }
}

/// A window full of calls and retries, then the clock jumps by any number of ticks past the
/// window (around and on the multiples of where 24-bit stamps wrapped): the stale counts
/// never read as current (no credit out of nothing), and fresh calls count in full.
#[tokio::test(start_paused = true)]
async fn stale_counts_never_read_as_current_after_any_idle_spell() {
    // 1 ms ticks: 2^23 ticks is 2.3 hours.
    let budget = RetryBudget::builder()
        .ratio(0.5)
        .min_per_sec(0)
        .window(MS * 10)
        .build()
        .unwrap();
    let idles = [
        OLD_WRAP + 3,
        OLD_WRAP,
        2 * OLD_WRAP,
        2 * OLD_WRAP + 5,
        3 * OLD_WRAP + 1,
        4 * OLD_WRAP,
        (1 << 32) + 7,
        10,
        11,
    ];
    for idle in idles {
        fill(&budget, 4).await;
        assert_eq!(
            budget.available(),
            20,
            "before an idle spell of {idle} ticks"
        );
        (0..5).for_each(|_| assert!(budget.try_withdraw()));
        assert_eq!(budget.available(), 15);

        advance(Duration::from_millis(idle)).await;
        assert_eq!(
            budget.available(),
            0,
            "after {idle} idle ticks, stale calls read as current"
        );
        assert!(
            !budget.try_withdraw(),
            "after {idle} idle ticks, a retry without credit was granted"
        );
        (0..10).for_each(|_| budget.deposit());
        assert_eq!(
            budget.available(),
            5,
            "after {idle} idle ticks, fresh calls were not counted"
        );
        (0..5).for_each(|_| assert!(budget.try_withdraw()));
        assert!(!budget.try_withdraw());
        advance(MS * 10).await;
    }
}

/// The default budget (1 s ticks) after an idle spell of 2^24 ticks (194 days): only the
/// floor is left.
#[tokio::test(start_paused = true)]
async fn the_default_budget_holds_only_its_floor_after_a_long_idle_spell() {
    let budget = RetryBudget::default();
    fill(&budget, 50).await;
    // 500 calls × 0.2 + the floor of 10/s × 10 s.
    assert_eq!(budget.available(), 200);
    advance(Duration::from_secs(2 * OLD_WRAP)).await;
    assert_eq!(budget.available(), 100);
}

/// Calls made after the clock moved on, with no withdrawal in between to notice it, count in
/// the tick they were made in: they stay in the window as long as they should.
#[tokio::test(start_paused = true)]
async fn calls_after_an_idle_spell_count_in_their_own_window() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(SEC * 10)
        .build()
        .unwrap();
    advance(SEC * 5).await;
    (0..3).for_each(|_| budget.deposit());
    advance(SEC * 6).await; // 11 s: the calls made at 5 s are still in the window
    assert_eq!(budget.available(), 3);
    advance(SEC * 4).await; // 15 s: they have left it
    assert_eq!(budget.available(), 0);
}

/// One call per second, on one thread, with no withdrawal: when a retry is asked for, the
/// window holds exactly the calls of the last ten seconds.
#[tokio::test(start_paused = true)]
async fn slow_calls_count_in_the_window_they_belong_to() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(SEC * 10)
        .build()
        .unwrap();
    for _ in 0..30 {
        advance(SEC).await;
        budget.deposit();
    }
    assert_eq!(budget.available(), 10);
    advance(SEC * 5).await;
    assert_eq!(budget.available(), 5);
}

/// Another thread's calls, made slowly, are in the window at once: a thread that deposits
/// less than twice per tick adds each call to the window as it is made.
#[tokio::test(start_paused = true)]
async fn another_threads_slow_calls_are_counted_at_once() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(SEC * 10)
        .build()
        .unwrap();
    let (call, calls) = std::sync::mpsc::channel::<()>();
    let (done, dones) = std::sync::mpsc::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    // Not scoped: its batches must not be added by its exit, only by its calls.
    let thread = std::thread::spawn({
        let budget = budget.clone();
        move || {
            let _entered = runtime.enter();
            while calls.recv().is_ok() {
                budget.deposit();
                done.send(()).unwrap();
            }
        }
    });
    for n in 1..=15 {
        advance(SEC).await;
        call.send(()).unwrap();
        dones.recv().unwrap();
        assert_eq!(budget.available(), n.min(10), "after {n} calls");
    }
    drop(call);
    thread.join().unwrap();
}

/// A batch that a thread keeps adding to after the clock moved on (nobody read the clock in
/// between) is stamped with the tick it started in: its later calls expire early, so the
/// budget is stricter, never looser.
#[tokio::test(start_paused = true)]
async fn a_batch_that_spans_ticks_expires_early_never_late() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(SEC * 10)
        .build()
        .unwrap();
    // Many calls in one tick: the thread's batches grow.
    (0..8).for_each(|_| budget.deposit());
    advance(SEC * 9).await;
    // Nobody has read the clock since: these join the open batch, stamped 0 s.
    (0..5).for_each(|_| budget.deposit());
    advance(SEC).await;
    // 10 s: the batch's tick has left the window, and its calls with it.
    assert!(budget.available() <= 5, "a call counted past its window");
    assert_eq!(budget.available(), 0);
}
