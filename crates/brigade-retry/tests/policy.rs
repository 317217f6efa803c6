//! The retry loop through the public API, on tokio's paused clock: every stop reason,
//! classification, `Retry-After` hints, deadlines that count attempt time, attempt timeouts,
//! cancellation, the commit point, the hook and seeded jitter.

use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_retry::{
    Action, Attempt, Backoff, InvalidConfig, Jitter, Retry, RetryBudget, RetryCause, RetryEvent,
    StopReason,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Upstream(&'static str);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Error for Upstream {}

/// A constant 100 ms backoff, no jitter, no budget: every wait is predictable.
fn plain(max_attempts: u32) -> brigade_retry::RetryBuilder {
    Retry::builder()
        .schedule(Backoff::constant(MS * 100))
        .max_attempts(max_attempts)
        .budget(None)
}

/// Records the hook's events.
fn recorder() -> (
    Arc<Mutex<Vec<RetryEvent>>>,
    impl Fn(&RetryEvent) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    (events, move |event: &RetryEvent| {
        sink.lock().unwrap().push(*event)
    })
}

#[tokio::test(start_paused = true)]
async fn success_on_a_retry_returns_the_value() {
    let policy = plain(3).build().unwrap();
    let start = Instant::now();
    let value = policy
        .run(async |attempt| {
            if attempt.is_retry() {
                Ok(7)
            } else {
                Err(Upstream("reset"))
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 7);
    assert_eq!(start.elapsed(), MS * 100);
}

#[tokio::test(start_paused = true)]
async fn stop_exhausted_after_max_attempts() {
    let policy = plain(3).build().unwrap();
    let mut calls = 0;
    let err = policy
        .run(async |_| {
            calls += 1;
            Err::<(), _>(Upstream("reset"))
        })
        .await
        .unwrap_err();
    assert_eq!(calls, 3);
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(err.elapsed(), MS * 200);
    assert_eq!(err.error(), Some(&Upstream("reset")));
    assert!(!err.is_timed_out());
}

#[tokio::test(start_paused = true)]
async fn stop_exhausted_when_the_schedule_ends() {
    let policy = Retry::builder()
        .schedule(vec![MS * 10, MS * 20])
        .max_attempts(10)
        .budget(None)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = policy
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(start.elapsed(), MS * 30);
}

#[tokio::test(start_paused = true)]
async fn stop_not_retryable_returns_the_error_at_once() {
    let policy = plain(5).build().unwrap();
    let start = Instant::now();
    let err = policy
        .classify(|outcome: &Result<(), Upstream>| match outcome {
            Err(Upstream("bad request")) => Action::Stop,
            _ => Action::Retry,
        })
        .run(async |_| Err(Upstream("bad request")))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::NotRetryable);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.elapsed(), Duration::ZERO);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(err.into_error(), Some(Upstream("bad request")));
}

#[tokio::test(start_paused = true)]
async fn an_ok_classified_as_failure_is_retried_and_returned_in_the_error() {
    let policy = plain(2).build().unwrap();
    let err = policy
        .classify(|outcome: &Result<u16, Upstream>| match outcome {
            Ok(503) => Action::Retry,
            _ => Action::Stop,
        })
        .run(async |_| Ok(503))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.last().map(Result::as_ref), Some(Ok(&503)));
    assert_eq!(err.error(), None);
}

#[tokio::test(start_paused = true)]
async fn stop_budget_exhausted() {
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .window(SEC)
        .build()
        .unwrap();
    let policy = plain(5).budget(Some(budget.clone())).build().unwrap();
    let err = policy
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    // The floor allows one retry per second: one retry, then the budget is empty.
    assert_eq!(err.stop(), StopReason::BudgetExhausted);
    assert_eq!(err.attempts(), 2);
    assert_eq!(budget.available(), 0);
    assert_eq!(
        err.to_string(),
        "retrying stopped after 2 attempts in 100ms: retry budget exhausted"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_deadline_counts_attempt_time() {
    let policy = plain(10).deadline(SEC).build().unwrap();
    let start = Instant::now();
    let mut calls = 0;
    let err = policy
        .run(async |_| {
            calls += 1;
            sleep(MS * 400).await;
            Err::<(), _>(Upstream("slow failure"))
        })
        .await
        .unwrap_err();
    // Attempt 1: 0..400 ms, wait to 500; attempt 2: 500..900 ms. The next wait would end at
    // 1000 ms, the deadline itself: no third attempt, and no sleeping in vain either.
    assert_eq!(calls, 2);
    assert_eq!(err.stop(), StopReason::DeadlineExceeded);
    assert_eq!(err.attempts(), 2);
    assert_eq!(start.elapsed(), MS * 900);
    assert_eq!(err.elapsed(), MS * 900);
    assert!(!err.is_timed_out());
    assert_eq!(err.error(), Some(&Upstream("slow failure")));
}

#[tokio::test(start_paused = true)]
async fn stop_deadline_cuts_a_running_attempt() {
    let policy = plain(10).deadline(SEC).build().unwrap();
    let start = Instant::now();
    let err = policy
        .run(async |attempt| {
            if attempt.is_retry() {
                sleep(SEC * 60).await;
            }
            Err::<(), _>(Upstream("reset"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::DeadlineExceeded);
    assert_eq!(err.attempts(), 2);
    assert!(err.is_timed_out());
    // The deadline counts from the first failure here: the first attempt never waited.
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(err.error(), Some(&Upstream("reset")));
}

/// `Retry::run` runs the first attempt on its own path (the retry loop boxed only after a
/// failure); a first attempt that outlives the deadline ends the same way through both.
#[tokio::test(start_paused = true)]
async fn a_first_attempt_past_the_deadline_ends_alike_through_run_and_call() {
    let policy = plain(10).deadline(SEC).build().unwrap();
    for via_call in [false, true] {
        let start = Instant::now();
        let slow = async |_: &Attempt| {
            sleep(SEC * 60).await;
            Ok::<(), Upstream>(())
        };
        let err = if via_call {
            policy.call().run(slow).await
        } else {
            policy.run(slow).await
        }
        .unwrap_err();
        assert_eq!(
            err.stop(),
            StopReason::DeadlineExceeded,
            "via_call: {via_call}"
        );
        assert_eq!(err.attempts(), 1);
        assert!(err.is_timed_out());
        assert!(err.last().is_none());
        assert_eq!(start.elapsed(), SEC);
        assert_eq!(err.elapsed(), SEC);
    }
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_a_retryable_failure() {
    let (events, hook) = recorder();
    let policy = plain(3)
        .attempt_timeout(MS * 250)
        .on_retry(hook)
        .build()
        .unwrap();
    let start = Instant::now();
    let value = policy
        .run(async |attempt| {
            if attempt.number() == 1 {
                sleep(SEC * 60).await;
            }
            Ok::<_, Upstream>(attempt.number())
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    assert_eq!(start.elapsed(), MS * 350);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].cause, RetryCause::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_until_exhausted_report_timed_out() {
    let policy = plain(2).attempt_timeout(MS * 250).build().unwrap();
    let err = policy
        .run(async |_| {
            sleep(SEC).await;
            Ok::<(), Upstream>(())
        })
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert!(err.is_timed_out());
    assert!(err.last().is_none());
    assert_eq!(err.elapsed(), MS * 600);
}

#[tokio::test(start_paused = true)]
async fn stop_cancelled_during_a_wait_returns_at_once() {
    let policy = Retry::builder()
        .schedule(Backoff::constant(Duration::from_secs(3600)))
        .budget(None)
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        sleep(SEC * 5).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let err = policy
        .call()
        .cancel_on(token)
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), SEC * 5);
    assert_eq!(err.stop(), StopReason::Cancelled);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.error(), Some(&Upstream("reset")));
}

#[tokio::test(start_paused = true)]
async fn stop_cancelled_drops_a_running_attempt() {
    let policy = plain(3).build().unwrap();
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        sleep(SEC).await;
        cancel.cancel();
    });
    let start = Instant::now();
    let err = policy
        .call()
        .cancel_on(token)
        .run(async |_| {
            sleep(SEC * 60).await;
            Ok::<(), Upstream>(())
        })
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(err.stop(), StopReason::Cancelled);
    assert!(err.last().is_none());
}

#[tokio::test(start_paused = true)]
async fn stop_cancelled_before_the_first_attempt_runs_nothing() {
    let policy = plain(3).build().unwrap();
    let token = CancellationToken::new();
    token.cancel();
    let mut calls = 0;
    let err = policy
        .call()
        .cancel_on(token)
        .run(async |_| {
            calls += 1;
            Ok::<(), Upstream>(())
        })
        .await
        .unwrap_err();
    assert_eq!(calls, 0);
    assert_eq!(err.attempts(), 0);
    assert_eq!(err.stop(), StopReason::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn stop_committed_attempt_is_never_retried() {
    let policy = plain(5).build().unwrap();
    let mut streamed = Vec::new();
    let err = policy
        .run(async |attempt| {
            if attempt.number() == 1 {
                return Err(Upstream("refused")); // before the commit point: retried
            }
            streamed.push("first token");
            attempt.commit();
            Err::<(), _>(Upstream("stream broke"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::Committed);
    assert_eq!(err.attempts(), 2);
    assert_eq!(streamed, ["first token"]); // never duplicated
    assert_eq!(err.into_error(), Some(Upstream("stream broke"))); // returned as is
}

#[tokio::test(start_paused = true)]
async fn a_committed_success_is_returned() {
    let policy = plain(5).build().unwrap();
    let value = policy
        .run(async |attempt| {
            attempt.commit();
            assert!(attempt.is_committed());
            Ok::<_, Upstream>("done")
        })
        .await
        .unwrap();
    assert_eq!(value, "done");
}

fn throttled(hint: Duration) -> impl Fn(&Result<(), Upstream>) -> Action + Clone {
    move |outcome: &Result<(), Upstream>| match outcome {
        Err(_) => Action::Throttled(hint),
        Ok(()) => Action::Stop,
    }
}

/// Times the waits between attempts.
async fn waits_between_attempts(policy: &Retry, hint: Duration) -> Vec<Duration> {
    let mut times = Vec::new();
    let _ = policy
        .classify(throttled(hint))
        .run(async |_| {
            times.push(Instant::now());
            Err(Upstream("429"))
        })
        .await;
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let policy = plain(3).build().unwrap();
    assert_eq!(
        waits_between_attempts(&policy, SEC * 3).await,
        [SEC * 3, SEC * 3]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_below_the_schedule_waits_the_schedule() {
    let policy = plain(2)
        .schedule(Backoff::constant(SEC * 2))
        .build()
        .unwrap();
    assert_eq!(waits_between_attempts(&policy, SEC).await, [SEC * 2]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped() {
    let policy = plain(2).throttle_cap(SEC * 60).build().unwrap();
    assert_eq!(waits_between_attempts(&policy, SEC * 600).await, [SEC * 60]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_stops_at_once() {
    let policy = plain(5).deadline(SEC * 10).build().unwrap();
    let start = Instant::now();
    let err = policy
        .classify(throttled(SEC * 30))
        .run(async |_| Err(Upstream("429")))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::DeadlineExceeded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_retry() {
    let (events, hook) = recorder();
    let policy = plain(3).on_retry(hook).build().unwrap();
    let _ = policy
        .classify(|outcome: &Result<(), Upstream>| match outcome {
            Err(Upstream("429")) => Action::Throttled(SEC),
            _ => Action::Retry,
        })
        .run(async |attempt| {
            Err(Upstream(if attempt.number() == 1 {
                "429"
            } else {
                "reset"
            }))
        })
        .await;
    let events = events.lock().unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.attempt, e.wait, e.cause, e.elapsed))
        .collect();
    assert_eq!(
        seen,
        [
            (1, SEC, RetryCause::Throttled(SEC), Duration::ZERO),
            (2, MS * 100, RetryCause::Failed, SEC),
        ]
    );
}

async fn jittered_waits(seed: u64) -> Vec<Duration> {
    let (events, hook) = recorder();
    let policy = Retry::builder()
        .schedule(Backoff::exponential(MS * 100, 2.0).jitter(Jitter::Full))
        .max_attempts(6)
        .budget(None)
        .rng(seed)
        .on_retry(hook)
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = policy.run(async |_| Err::<(), _>(Upstream("reset"))).await;
    }
    events.lock().unwrap().iter().map(|e| e.wait).collect()
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_repeatable_and_differs_per_call() {
    let a = jittered_waits(11).await;
    assert_eq!(a.len(), 10);
    assert_eq!(a, jittered_waits(11).await);
    assert_ne!(a, jittered_waits(12).await);
    // Two calls of one policy do not share their jitter.
    assert_ne!(a[..5], a[5..]);
}

#[test]
fn invalid_config_is_rejected_at_build() {
    let err = |b: brigade_retry::RetryBuilder| b.build().unwrap_err();
    assert_eq!(
        err(Retry::builder().max_attempts(0)),
        InvalidConfig::ZeroMaxAttempts
    );
    assert_eq!(
        err(Retry::builder().deadline(Duration::ZERO)),
        InvalidConfig::ZeroDeadline
    );
    assert_eq!(
        err(Retry::builder().attempt_timeout(Duration::ZERO)),
        InvalidConfig::ZeroAttemptTimeout
    );
    let bad_factor = Retry::builder()
        .schedule(Backoff::exponential(MS, 0.5))
        .build();
    assert_eq!(bad_factor.unwrap_err(), InvalidConfig::BackoffFactor);
    assert_eq!(
        InvalidConfig::ZeroMaxAttempts.to_string(),
        "max attempts is zero"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_displays_this_level_and_sources_the_inner_error() {
    let policy = plain(1).build().unwrap();
    let err = policy
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retrying stopped after 1 attempt in 0ns: attempts exhausted"
    );
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("reset")
    );
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_budget() {
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .window(SEC)
        .build()
        .unwrap();
    let policy = plain(2).budget(Some(budget)).build().unwrap();
    let clone = policy.clone();
    let first = policy
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    let second = clone
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    assert_eq!(first.stop(), StopReason::Exhausted);
    assert_eq!(second.stop(), StopReason::BudgetExhausted);
}

#[test]
fn futures_are_send_for_spawning() {
    fn assert_send<F: Future + Send>(_: F) {}
    let policy = Retry::builder().build().unwrap();
    let token = CancellationToken::new();
    assert_send(policy.call().cancel_on(token).run(async |attempt| {
        sleep(MS).await;
        attempt.commit();
        Ok::<_, Upstream>(())
    }));
}
