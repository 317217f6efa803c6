//! Hedged calls through the public API, on tokio's paused clock: when a hedge starts (after its
//! delay, and not before a percentile has data), how the loser is stopped (its token cancelled
//! and its future dropped, at the winner's commit), the budget hedges share with retries,
//! nothing after a commit, the in-flight cap, the percentile following its samples within its
//! clamp, and the counts a failed call reports.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brigade_retry::hedge::Stopped;
use brigade_retry::{
    Action, Backoff, Hedge, HedgeAttempt, InvalidConfig, LatencyPercentile, Retry, RetryBudget,
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

impl std::error::Error for Upstream {}

/// A retry policy with a constant 100 ms backoff and no budget.
fn retry(max_attempts: u32) -> Retry {
    Retry::builder()
        .schedule(Backoff::constant(MS * 100))
        .max_attempts(max_attempts)
        .budget(None)
        .build()
        .unwrap()
}

fn fixed(delay: Duration, max_in_flight: u32) -> Hedge {
    Hedge::builder()
        .delay(delay)
        .max_in_flight(max_in_flight)
        .build()
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start,
    Commit,
    Failed,
    Finished,
    /// The request's future was dropped before it finished, with `stopped()` at that moment.
    Dropped(Option<Stopped>),
}

/// What happened to a call's requests, in milliseconds since the trace began.
struct Trace {
    start: Instant,
    events: Mutex<Vec<(u64, u32, Event)>>,
}

impl Trace {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    fn log(&self, request: u32, event: Event) {
        let at = self.start.elapsed().as_millis() as u64;
        self.events.lock().unwrap().push((at, request, event));
    }

    fn take(&self) -> Vec<(u64, u32, Event)> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Requests started, by number, with when.
    fn starts(&self) -> Vec<(u64, u32)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(_, _, e)| *e == Event::Start)
            .map(|(at, n, _)| (*at, *n))
            .collect()
    }
}

/// Logs `Dropped` when the request's future is dropped before it finished.
struct Watch<'a> {
    attempt: &'a HedgeAttempt<'a>,
    trace: &'a Trace,
    finished: bool,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let stopped = self.attempt.stopped();
            self.trace
                .log(self.attempt.number(), Event::Dropped(stopped));
        }
    }
}

/// One modelled request: starts, waits `first_byte`, commits (or fails, when `fail`), then
/// streams for `stream` before it finishes.
async fn upstream(
    attempt: &HedgeAttempt<'_>,
    trace: &Trace,
    first_byte: Duration,
    stream: Duration,
    fail: bool,
) -> Result<u32, Upstream> {
    let n = attempt.number();
    trace.log(n, Event::Start);
    let mut watch = Watch {
        attempt,
        trace,
        finished: false,
    };
    sleep(first_byte).await;
    if fail {
        trace.log(n, Event::Failed);
        watch.finished = true;
        return Err(Upstream("reset"));
    }
    attempt.commit();
    trace.log(n, Event::Commit);
    sleep(stream).await;
    trace.log(n, Event::Finished);
    watch.finished = true;
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn a_hedge_starts_only_after_its_delay() {
    let retry = retry(1);
    let hedge = fixed(MS * 100, 2);

    // The first request answers at 99 ms: no hedge.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| upstream(attempt, &trace, MS * 99, MS, false).await)
        .await;
    assert_eq!(answer.unwrap(), 1);
    assert_eq!(trace.starts(), [(0, 1)]);

    // The first is slow: the hedge starts at 100 ms, not a tick before, and wins.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let first_byte = if attempt.is_hedge() { MS * 10 } else { SEC };
            upstream(attempt, &trace, first_byte, MS, false).await
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(trace.starts(), [(0, 1), (100, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_percentile_hedge_waits_for_data_then_follows_it() {
    let retry = retry(1);
    let hedge = Hedge::builder()
        .delay(LatencyPercentile::new(50.0).window(8).min_samples(5))
        .build()
        .unwrap();
    let slow_first = async |attempt: &HedgeAttempt<'_>, trace: &Trace| {
        let first_byte = if attempt.is_hedge() { MS * 10 } else { SEC };
        upstream(attempt, trace, first_byte, MS, false).await
    };

    // No samples: the slow request runs alone for its whole second.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| slow_first(attempt, &trace).await)
        .await;
    assert_eq!(answer.unwrap(), 1);
    assert_eq!(trace.starts(), [(0, 1)]);
    assert_eq!(hedge.current_delay(), None);

    // Four calls at 200 ms to the first byte: five samples, median 200 ms.
    for _ in 0..4 {
        assert_eq!(hedge.current_delay(), None);
        let trace = Trace::new();
        let answer = retry
            .hedge(&hedge)
            .run(async |attempt| upstream(attempt, &trace, MS * 200, MS, false).await)
            .await;
        assert_eq!(trace.starts(), [(0, 1)]);
        answer.unwrap();
    }
    assert_eq!(hedge.current_delay(), Some(MS * 200));

    // Now a slow request is hedged at the median.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| slow_first(attempt, &trace).await)
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(trace.starts(), [(0, 1), (200, 2)]);
}

#[tokio::test(start_paused = true)]
async fn the_loser_is_cancelled_at_the_winners_commit() {
    let retry = retry(1);
    let hedge = fixed(MS * 100, 2);
    let trace = Trace::new();
    let tokens = Mutex::new(Vec::new());
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            tokens.lock().unwrap().push(attempt.token());
            // The hedge commits at 130 ms and then streams for half a second.
            let (first_byte, stream) = if attempt.is_hedge() {
                (MS * 30, MS * 500)
            } else {
                (SEC * 10, MS)
            };
            upstream(attempt, &trace, first_byte, stream, false).await
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(
        trace.take(),
        [
            (0, 1, Event::Start),
            (100, 2, Event::Start),
            (130, 2, Event::Commit),
            // Dropped at the commit, not when the winner finished.
            (130, 1, Event::Dropped(Some(Stopped::Lost))),
            (630, 2, Event::Finished),
        ]
    );
    let tokens = tokens.into_inner().unwrap();
    assert!(tokens[0].is_cancelled(), "the loser's token is cancelled");
    assert!(
        !tokens[1].is_cancelled(),
        "the winner's token is left alone"
    );
}

#[tokio::test(start_paused = true)]
async fn the_losers_token_is_cancelled_at_once_for_work_spawned_for_it() {
    let retry = retry(1);
    let hedge = fixed(MS * 100, 2);
    let cancelled_at = std::sync::Arc::new(Mutex::new(None));
    let start = Instant::now();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            if !attempt.is_hedge() {
                let token = attempt.token();
                let cancelled_at = std::sync::Arc::clone(&cancelled_at);
                tokio::spawn(async move {
                    token.cancelled().await;
                    *cancelled_at.lock().unwrap() = Some(start.elapsed());
                });
                sleep(SEC * 10).await;
            } else {
                sleep(MS * 30).await;
            }
            attempt.commit();
            sleep(MS * 500).await;
            Ok::<_, Upstream>(attempt.number())
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(*cancelled_at.lock().unwrap(), Some(MS * 130));
}

#[tokio::test(start_paused = true)]
async fn an_accepted_outcome_wins_without_a_commit() {
    let retry = retry(1);
    let hedge = fixed(MS * 100, 2);
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let n = attempt.number();
            trace.log(n, Event::Start);
            let _watch = Watch {
                attempt,
                trace: &trace,
                finished: false,
            };
            sleep(if attempt.is_hedge() { MS * 20 } else { SEC }).await;
            Ok::<_, Upstream>(n) // a whole answer, no stream: no commit needed
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    let events = trace.take();
    assert!(events.contains(&(120, 1, Event::Dropped(Some(Stopped::Lost)))));
}

#[tokio::test(start_paused = true)]
async fn a_failed_request_leaves_the_others_running() {
    let retry = retry(3);
    let hedge = fixed(MS * 100, 2);
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            if attempt.is_hedge() {
                upstream(attempt, &trace, MS * 80, MS, false).await // commits at 180 ms
            } else {
                upstream(attempt, &trace, MS * 150, MS, true).await // fails at 150 ms
            }
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    // No retry round started at the failure: the hedge was still in flight.
    assert_eq!(trace.starts(), [(0, 1), (100, 2)]);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_the_classifier_retries_does_not_win() {
    let retry = retry(2);
    let hedge = fixed(MS * 100, 2);
    let statuses = Mutex::new(Vec::new());
    // A 503 is an `Ok` to hyper, and a failure to the classifier: the hedge goes on.
    let answer = retry
        .classify(|outcome: &Result<u16, Upstream>| match outcome {
            Ok(503) | Err(_) => Action::Retry,
            Ok(_) => Action::Stop,
        })
        .hedge(&hedge)
        .run(async |attempt| {
            let (wait, status) = if attempt.is_hedge() {
                (MS * 60, 200)
            } else {
                (MS * 120, 503)
            };
            sleep(wait).await;
            statuses.lock().unwrap().push((attempt.number(), status));
            Ok(status)
        })
        .await;
    assert_eq!(answer.unwrap(), 200);
    assert_eq!(statuses.into_inner().unwrap(), [(1, 503), (2, 200)]);
}

#[tokio::test(start_paused = true)]
async fn hedges_and_retries_share_one_budget() {
    // One extra request per second of the window, whatever the traffic.
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .window(SEC * 60)
        .build()
        .unwrap();
    let retry = Retry::builder()
        .schedule(Backoff::constant(MS * 10))
        .max_attempts(3)
        .budget(Some(budget.clone()))
        .build()
        .unwrap();
    let hedge = fixed(MS * 100, 2);
    assert_eq!(budget.available(), 60);
    // Drain the floor down to two extra requests.
    for _ in 0..58 {
        assert!(budget.try_withdraw());
    }
    assert_eq!(budget.available(), 2);

    // A hedge takes one.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let first_byte = if attempt.is_hedge() { MS * 10 } else { SEC };
            upstream(attempt, &trace, first_byte, MS, false).await
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(budget.available(), 1);

    // A retry takes the last; the next round's hedge is refused, so its slow request runs
    // alone.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let fail = attempt.round() == 1;
            let first_byte = if fail { MS } else { SEC };
            upstream(attempt, &trace, first_byte, MS, fail).await
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(trace.starts(), [(0, 1), (11, 2)]);
    assert_eq!(budget.available(), 0);

    // Nothing left: no retry either.
    let err = retry
        .hedge(&hedge)
        .run(async |_| Err::<(), _>(Upstream("reset")))
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::BudgetExhausted);
    assert_eq!(err.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_after_a_commit() {
    let retry = retry(5);
    let hedge = fixed(MS * 100, 3);
    let trace = Trace::new();
    // Commits at 50 ms, streams for a second, then breaks.
    let err = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let n = attempt.number();
            trace.log(n, Event::Start);
            sleep(MS * 50).await;
            attempt.commit();
            sleep(SEC).await;
            Err::<(), _>(Upstream("stream broke"))
        })
        .await
        .unwrap_err();
    assert_eq!(trace.starts(), [(0, 1)]); // no hedge during the stream, no retry after it
    assert_eq!(err.stop(), StopReason::Committed);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.into_error(), Some(Upstream("stream broke")));
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight_at_once() {
    let retry = Retry::builder()
        .max_attempts(1)
        .attempt_timeout(SEC)
        .budget(None)
        .build()
        .unwrap();
    let hedge = fixed(MS * 10, 3);
    let trace = Trace::new();
    let in_flight = AtomicU32::new(0);
    let most = AtomicU32::new(0);
    let err = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let result = upstream(attempt, &trace, SEC * 60, MS, false).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
        .await
        .unwrap_err();
    assert_eq!(most.into_inner(), 3);
    assert_eq!(trace.starts(), [(0, 1), (10, 2), (20, 3)]);
    assert_eq!(err.attempts(), 3);
    assert!(err.is_timed_out());
    // The attempt timeout let the round go: every request is dropped, as abandoned.
    let dropped: Vec<_> = trace
        .take()
        .into_iter()
        .filter(|(_, _, e)| matches!(e, Event::Dropped(_)))
        .collect();
    assert_eq!(dropped.len(), 3);
    assert!(
        dropped
            .iter()
            .all(|e| *e == (1000, e.1, Event::Dropped(Some(Stopped::Abandoned))))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_is_replaced_a_delay_after_the_latest_start() {
    let retry = retry(1);
    let hedge = fixed(MS * 100, 2);
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| match attempt.number() {
            1 => upstream(attempt, &trace, SEC * 60, MS, false).await,
            2 => upstream(attempt, &trace, MS * 20, MS, true).await, // fails at 120 ms
            _ => upstream(attempt, &trace, MS * 10, MS, false).await,
        })
        .await;
    assert_eq!(answer.unwrap(), 3);
    // Two in flight until 120 ms; the third starts 100 ms after the latest start.
    assert_eq!(trace.starts(), [(0, 1), (100, 2), (200, 3)]);
}

#[tokio::test(start_paused = true)]
async fn one_in_flight_never_hedges() {
    let retry = retry(1);
    let hedge = fixed(MS, 1);
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| upstream(attempt, &trace, SEC, MS, false).await)
        .await;
    assert_eq!(answer.unwrap(), 1);
    assert_eq!(trace.starts(), [(0, 1)]);
}

#[tokio::test(start_paused = true)]
async fn the_percentile_follows_recorded_latencies_within_its_clamp() {
    let hedge = Hedge::builder()
        .delay(
            LatencyPercentile::new(90.0)
                .window(16)
                .min_samples(8)
                .clamp(MS * 20, MS * 500),
        )
        .build()
        .unwrap();
    for (latency, delay) in [
        (MS * 100, MS * 100),
        (MS * 300, MS * 300),
        (MS * 5, MS * 20),   // under the floor
        (SEC * 2, MS * 500), // over the ceiling
    ] {
        (0..16).for_each(|_| hedge.record(latency));
        assert_eq!(hedge.current_delay(), Some(delay), "after {latency:?}");
    }

    // Calls record their own first-byte latencies: sixteen at 50 ms...
    let retry = retry(1);
    for _ in 0..16 {
        let trace = Trace::new();
        retry
            .hedge(&hedge)
            .run(async |attempt| upstream(attempt, &trace, MS * 50, MS * 400, false).await)
            .await
            .unwrap();
    }
    assert_eq!(hedge.current_delay(), Some(MS * 50));
    // ...and a slow one is hedged at 50 ms.
    let trace = Trace::new();
    let answer = retry
        .hedge(&hedge)
        .run(async |attempt| {
            let first_byte = if attempt.is_hedge() { MS * 10 } else { SEC };
            upstream(attempt, &trace, first_byte, MS, false).await
        })
        .await;
    assert_eq!(answer.unwrap(), 2);
    assert_eq!(trace.starts(), [(0, 1), (50, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_loser_counts_the_time_it_ran() {
    // The slowest of the last two samples; 100 ms until there is one.
    let hedge = Hedge::builder()
        .delay(
            LatencyPercentile::new(100.0)
                .window(2)
                .min_samples(1)
                .fallback(MS * 100),
        )
        .build()
        .unwrap();
    let retry = retry(1);
    let trace = Trace::new();
    retry
        .hedge(&hedge)
        .run(async |attempt| {
            let first_byte = if attempt.is_hedge() {
                MS * 10
            } else {
                SEC * 60
            };
            upstream(attempt, &trace, first_byte, MS, false).await
        })
        .await
        .unwrap();
    // The winner took 10 ms; the loser had run 110 ms when it lost, and would have run
    // longer: without it, the estimate would be 10 ms.
    assert_eq!(hedge.current_delay(), Some(MS * 110));
}

#[tokio::test(start_paused = true)]
async fn requests_are_numbered_across_rounds_and_the_error_counts_them_all() {
    let retry = retry(2);
    let hedge = fixed(MS * 100, 2);
    let seen = Mutex::new(Vec::new());
    let err = retry
        .hedge(&hedge)
        .run(async |attempt| {
            seen.lock()
                .unwrap()
                .push((attempt.number(), attempt.round(), attempt.is_hedge()));
            sleep(if attempt.is_hedge() {
                MS * 10
            } else {
                MS * 150
            })
            .await;
            Err::<(), _>(Upstream("reset"))
        })
        .await
        .unwrap_err();
    assert_eq!(
        seen.into_inner().unwrap(),
        [(1, 1, false), (2, 1, true), (3, 2, false), (4, 2, true)]
    );
    assert_eq!(err.attempts(), 4); // the requests the upstreams saw
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(err.error(), Some(&Upstream("reset")));
}

#[tokio::test(start_paused = true)]
async fn the_calls_token_cancels_every_request() {
    let retry = retry(3);
    let hedge = fixed(MS * 100, 2);
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        sleep(MS * 150).await;
        cancel.cancel();
    });
    let trace = Trace::new();
    let tokens = Mutex::new(Vec::new());
    let err = retry
        .hedge(&hedge)
        .cancel_on(token)
        .run(async |attempt| {
            tokens.lock().unwrap().push(attempt.token());
            upstream(attempt, &trace, SEC, MS, false).await
        })
        .await
        .unwrap_err();
    assert_eq!(err.stop(), StopReason::Cancelled);
    assert_eq!(err.attempts(), 2);
    let events = trace.take();
    assert!(events.contains(&(150, 1, Event::Dropped(Some(Stopped::Cancelled)))));
    assert!(events.contains(&(150, 2, Event::Dropped(Some(Stopped::Cancelled)))));
    assert!(
        tokens
            .into_inner()
            .unwrap()
            .iter()
            .all(|t| t.is_cancelled())
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_drops_every_request() {
    let retry = retry(3);
    let hedge = fixed(MS * 100, 2);
    let trace = Trace::new();
    let tokens = Mutex::new(Vec::new());
    let call = retry.hedge(&hedge).run(async |attempt| {
        tokens.lock().unwrap().push(attempt.token());
        upstream(attempt, &trace, SEC, MS, false).await
    });
    assert!(tokio::time::timeout(MS * 150, call).await.is_err());
    let events = trace.take();
    assert!(events.contains(&(150, 1, Event::Dropped(Some(Stopped::Abandoned)))));
    assert!(events.contains(&(150, 2, Event::Dropped(Some(Stopped::Abandoned)))));
    assert!(
        tokens
            .into_inner()
            .unwrap()
            .iter()
            .all(|t| t.is_cancelled())
    );
}

#[test]
fn invalid_config_is_rejected_at_build() {
    let build = |delay: LatencyPercentile| Hedge::builder().delay(delay).build().unwrap_err();
    assert_eq!(
        Hedge::builder().max_in_flight(0).build().unwrap_err(),
        InvalidConfig::ZeroMaxInFlight
    );
    for p in [0.0, -1.0, 100.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            build(LatencyPercentile::new(p)),
            InvalidConfig::HedgePercentile
        );
    }
    assert_eq!(
        build(LatencyPercentile::new(95.0).clamp(SEC, MS)),
        InvalidConfig::HedgeClamp
    );
    for (window, min) in [(0, 1), (513, 20), (16, 0), (16, 17)] {
        assert_eq!(
            build(LatencyPercentile::new(95.0).window(window).min_samples(min)),
            InvalidConfig::HedgeWindow
        );
    }
    assert!(Hedge::builder().delay(Duration::ZERO).build().is_ok());
}

#[test]
fn hedged_futures_are_send_for_spawning() {
    fn assert_send<F: Future + Send>(_: F) {}
    let retry = Retry::builder().build().unwrap();
    let hedge = Hedge::builder().build().unwrap();
    let token = CancellationToken::new();
    assert_send(retry.hedge(&hedge).cancel_on(token).run(async |attempt| {
        sleep(MS).await;
        attempt.commit();
        Ok::<_, Upstream>(attempt.token())
    }));
}
