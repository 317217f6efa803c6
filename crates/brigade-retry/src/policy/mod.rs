//! The retry policy and the retry loop.

mod attempt;
mod classify;
mod event;
mod hedged;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pub use self::attempt::Attempt;
pub use self::classify::{Action, Classify, RetryOnError};
pub use self::event::{RetryCause, RetryEvent};
pub use self::hedged::HedgedCall;

use crate::rng;
use crate::{Backoff, InvalidConfig, RetryBudget, RetryError, Schedule, StopReason};

type Hook = Box<dyn Fn(&RetryEvent) + Send + Sync>;

/// A retry policy: a schedule, limits, a shared budget and a hook.
///
/// Build one with [`Retry::builder`], then run operations through it with [`run`](Self::run),
/// or [`classify`](Self::classify) / [`call`](Self::call) to choose which outcomes are retried
/// and to pass a cancellation token. Cloning is cheap (an `Arc`) and clones share the budget, so
/// build one policy per upstream and clone it into every request.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Action, Backoff, Retry};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Retry::builder()
///     .schedule(Backoff::exponential(Duration::from_millis(50), 2.0).max_delay(Duration::from_secs(1)))
///     .max_attempts(4)
///     .deadline(Duration::from_secs(5))
///     .build()
///     .unwrap();
///
/// let reply = policy
///     .classify(|outcome: &Result<u16, ()>| match outcome {
///         Ok(503) => Action::Retry, // an `Ok` can be a failure
///         Ok(_) => Action::Stop,
///         Err(()) => Action::Retry,
///     })
///     .run(async |attempt| if attempt.number() < 3 { Ok(503) } else { Ok(200) })
///     .await;
/// assert_eq!(reply.unwrap(), 200);
/// # }
/// ```
pub struct Retry<S = Backoff> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    schedule: S,
    max_attempts: u32,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    throttle_cap: Duration,
    budget: Option<RetryBudget>,
    on_retry: Option<Hook>,
    seed: u64,
    /// Calls that have needed a schedule so far: each gets its own jitter seed.
    seeded: AtomicU64,
}

impl<S> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Retry")
            .field("schedule", &inner.schedule)
            .field("max_attempts", &inner.max_attempts)
            .field("deadline", &inner.deadline)
            .field("attempt_timeout", &inner.attempt_timeout)
            .field("throttle_cap", &inner.throttle_cap)
            .field("budget", &inner.budget)
            .field("on_retry", &inner.on_retry.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Retry`] policy. Every setter documents its default.
#[must_use = "a builder does nothing until `build`"]
pub struct RetryBuilder<S = Backoff> {
    schedule: S,
    max_attempts: u32,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    throttle_cap: Duration,
    budget: Option<RetryBudget>,
    on_retry: Option<Hook>,
    seed: Option<u64>,
}

impl<S: fmt::Debug> fmt::Debug for RetryBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("schedule", &self.schedule)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("throttle_cap", &self.throttle_cap)
            .field("budget", &self.budget)
            .field("on_retry", &self.on_retry.is_some())
            .field("seed", &self.seed)
            .finish()
    }
}

impl Default for RetryBuilder {
    fn default() -> Self {
        Self {
            schedule: Backoff::default(),
            max_attempts: 3,
            deadline: None,
            attempt_timeout: None,
            throttle_cap: Duration::from_secs(60),
            budget: Some(RetryBudget::default()),
            on_retry: None,
            seed: None,
        }
    }
}

impl<S> RetryBuilder<S> {
    /// The waits between attempts: a [`Backoff`], any `IntoIterator<Item = Duration> + Clone`,
    /// or any other [`Schedule`]. When the schedule ends, retrying stops.
    ///
    /// Default: [`Backoff::default()`]: exponential from 100 ms, doubling, capped at 10 s, full
    /// jitter.
    pub fn schedule<S2: Schedule>(self, schedule: S2) -> RetryBuilder<S2> {
        RetryBuilder {
            schedule,
            max_attempts: self.max_attempts,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            throttle_cap: self.throttle_cap,
            budget: self.budget,
            on_retry: self.on_retry,
            seed: self.seed,
        }
    }

    /// Attempts per call, the first included; at least 1 (1 means never retry).
    ///
    /// Default: 3.
    pub const fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The longest a call may take, attempts and waits together. An attempt still running at
    /// the deadline is dropped, and no attempt starts when the wait before it would end at or
    /// past the deadline: the call stops with
    /// [`DeadlineExceeded`](StopReason::DeadlineExceeded) at once instead of sleeping in vain.
    ///
    /// Counted on tokio's clock from the moment the first attempt first waits, or fails if it
    /// never waited (an attempt that completes without waiting takes no measurable time).
    ///
    /// Default: none.
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The longest one attempt may take. An attempt that runs longer is dropped and counts as
    /// a retryable failure ([`RetryCause::TimedOut`]).
    ///
    /// Default: none.
    pub const fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The longest wait an [`Action::Throttled`] hint can impose: a larger hint is cut to this.
    ///
    /// Default: 60 seconds.
    pub const fn throttle_cap(mut self, cap: Duration) -> Self {
        self.throttle_cap = cap;
        self
    }

    /// The retry budget shared by all calls of this policy and its clones; `None` turns
    /// budgeting off (not recommended: see [why budgets](crate::budget)).
    ///
    /// Default: a new [`RetryBudget::default()`] (10 s window, 10 retries per second, ratio 0.2).
    pub fn budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// A hook called before each retry, after the `tracing` event, with what is about to
    /// happen. Keep it quick: it runs inside the call.
    ///
    /// Default: none.
    pub fn on_retry<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RetryEvent) + Send + Sync + 'static,
    {
        self.on_retry = Some(Box::new(hook));
        self
    }

    /// Seeds the jitter, for repeatable tests. Each call still gets its own seed, derived from
    /// this one and the number of calls that needed a retry before it.
    ///
    /// Default: a random seed.
    pub const fn rng(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the policy.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroMaxAttempts`], [`InvalidConfig::ZeroDeadline`],
    /// [`InvalidConfig::ZeroAttemptTimeout`], or the schedule's own complaint (such as
    /// [`InvalidConfig::BackoffFactor`]).
    pub fn build(self) -> Result<Retry<S>, InvalidConfig>
    where
        S: Schedule,
    {
        if self.max_attempts == 0 {
            return Err(InvalidConfig::ZeroMaxAttempts);
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(InvalidConfig::ZeroDeadline);
        }
        if self.attempt_timeout.is_some_and(|d| d.is_zero()) {
            return Err(InvalidConfig::ZeroAttemptTimeout);
        }
        self.schedule.validate()?;
        Ok(Retry {
            inner: Arc::new(Inner {
                schedule: self.schedule,
                max_attempts: self.max_attempts,
                deadline: self.deadline,
                attempt_timeout: self.attempt_timeout,
                throttle_cap: self.throttle_cap,
                budget: self.budget,
                on_retry: self.on_retry,
                seed: self.seed.unwrap_or_else(rng::random_seed),
                seeded: AtomicU64::new(0),
            }),
        })
    }
}

impl Retry {
    /// A builder with the defaults: 3 attempts, [`Backoff::default()`], a default
    /// [`RetryBudget`], no deadline, no attempt timeout.
    pub fn builder() -> RetryBuilder {
        RetryBuilder::default()
    }
}

impl<S: Schedule> Retry<S> {
    /// Runs `op` until it succeeds or retrying stops, retrying every `Err`
    /// ([`RetryOnError`]).
    ///
    /// `op` is called once per attempt with the attempt's [`Attempt`]; write it as an async
    /// closure (`async |attempt| ...`) to borrow the attempt and call
    /// [`commit`](Attempt::commit). Inside a spawned task, prefer `async move |attempt| ...`:
    /// an async closure that borrows locals of the task trips a compiler limitation on `Send`
    /// ("implementation of `Send` is not general enough"). A plain closure returning a future
    /// (`|attempt| async move { ... }`) works too, when the future need not borrow the attempt.
    ///
    /// Does what `self.call().run(op)` does, on a shorter path: the first attempt runs in this
    /// future, and only a call whose first attempt fails allocates, once, for the retry loop
    /// (its schedule, last outcome and wait would otherwise widen every call's future and
    /// cost its drop). `call().run` keeps the loop in place and never allocates.
    ///
    /// # Errors
    ///
    /// A [`RetryError`] with the attempts made, the time spent, the [`StopReason`] and the
    /// last outcome.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the running attempt or wait; nothing else is left behind. A
    /// retry taken from the budget stays taken.
    pub async fn run<T, E, F>(&self, mut op: F) -> Result<T, RetryError<T, E>>
    where
        F: AsyncFnMut(&Attempt) -> Result<T, E>,
    {
        let inner = &*self.inner;
        if let Some(budget) = &inner.budget {
            budget.deposit();
        }
        let attempt = Attempt::new();
        // Read lazily: on the first wait of an attempt, or on the first failure.
        let mut start: Option<Instant> = None;
        // The first attempt runs in this future, built in place; no token, so it watches at
        // most a timer, armed only if it waits.
        let first = if inner.has_timers() {
            let mut fut = pin!(op(&attempt));
            let mut timer = pin!(None::<Sleep>);
            let mut armed = Timer::Unarmed;
            poll_fn(|cx| {
                if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Ok(output));
                }
                poll_timer(cx, timer.as_mut(), &mut armed, inner, &mut start)
            })
            .await
        } else {
            let mut fut = pin!(op(&attempt));
            Ok(poll_fn(|cx| {
                let poll = fut.as_mut().poll(cx);
                if poll.is_pending() && start.is_none() {
                    start = Some(Instant::now());
                }
                poll
            })
            .await)
        };
        let first = match first {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => Ok((Err(e), Action::Retry)),
            Err(interrupted) => Err(interrupted),
        };
        // The rest of a call whose first attempt failed runs in one boxed future: its state
        // (the schedule, the last outcome, the wait's timer) would otherwise widen this
        // future, and its drop glue would cost every call that succeeds at once.
        let rest = RetryLoop {
            inner,
            classify: RetryOnError,
            cancel: None,
            attempt,
            start,
        };
        Box::pin(rest.run(op, Some(first))).await
    }

    /// A call with a classifier: which outcomes to retry, stop on or treat as throttled.
    pub const fn classify<C>(&self, classify: C) -> Call<'_, S, C> {
        Call {
            policy: self,
            classify,
            cancel: None,
        }
    }

    /// A call with the default classifier ([`RetryOnError`]), to add a cancellation token to.
    pub const fn call(&self) -> Call<'_, S> {
        self.classify(RetryOnError)
    }

    /// The budget this policy draws on, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.inner.budget.as_ref()
    }
}

/// One call through a [`Retry`] policy: a classifier and an optional cancellation token, then
/// [`run`](Self::run).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Backoff, Retry, StopReason};
/// use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Retry::builder()
///     .schedule(Backoff::constant(Duration::from_secs(30)))
///     .build()
///     .unwrap();
/// let token = CancellationToken::new();
/// let stop = token.clone();
/// tokio::spawn(async move {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     stop.cancel(); // the client went away
/// });
/// let start = tokio::time::Instant::now();
/// let err = policy
///     .call()
///     .cancel_on(token)
///     .run(async |_| Err::<(), _>("busy"))
///     .await
///     .unwrap_err();
/// assert_eq!(err.stop(), StopReason::Cancelled);
/// assert_eq!(start.elapsed(), Duration::from_secs(1)); // not 30
/// # }
/// ```
#[must_use = "a call does nothing until `run`"]
pub struct Call<'a, S, C = RetryOnError> {
    policy: &'a Retry<S>,
    classify: C,
    cancel: Option<CancellationToken>,
}

impl<S: fmt::Debug, C> fmt::Debug for Call<'_, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("policy", self.policy)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

/// How an attempt ended: its outcome and the classifier's action, or why it was interrupted.
type AttemptEnd<T, E> = Result<(Result<T, E>, Action), Interrupted>;

/// Why an attempt ended without an outcome.
enum Interrupted {
    TimedOut,
    DeadlineExceeded,
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Not armed yet: the attempt has not waited.
    Unarmed,
    /// Nothing to time.
    Never,
    Attempt,
    Deadline,
}

impl<'a, S: Schedule, C> Call<'a, S, C> {
    /// Replaces the classifier.
    pub fn classify<C2>(self, classify: C2) -> Call<'a, S, C2> {
        Call {
            policy: self.policy,
            classify,
            cancel: self.cancel,
        }
    }

    /// Stops the call when `token` is cancelled: a wait is cut short at once, a running
    /// attempt is dropped, and the call ends with [`StopReason::Cancelled`].
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Runs `op` until the classifier accepts an outcome or retrying stops.
    ///
    /// `op` is called once per attempt with the attempt's [`Attempt`].
    ///
    /// The classifier is called once per finished attempt. The path of a call that succeeds at
    /// once allocates nothing, takes no lock and, on a busy thread, reads no clock (one deposit
    /// into the budget, a thread-local increment; a thread that makes many calls adds them to
    /// the shared window and reads the clock once per 32 calls: see
    /// [batching](crate::budget#deposits-are-batched-per-thread)); the clock is read when an
    /// attempt first waits, and on failures. It never allocates, retries included: the retry
    /// loop and its wait live in this future.
    ///
    /// # Errors
    ///
    /// A [`RetryError`] with the attempts made, the time spent, the [`StopReason`] and the
    /// last outcome.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the running attempt or wait; nothing else is left behind. A
    /// retry taken from the budget stays taken.
    pub async fn run<T, E, F>(self, op: F) -> Result<T, RetryError<T, E>>
    where
        F: AsyncFnMut(&Attempt) -> Result<T, E>,
        C: Classify<T, E>,
    {
        let Self {
            policy,
            classify,
            cancel,
        } = self;
        let inner = &*policy.inner;
        if let Some(budget) = &inner.budget {
            budget.deposit();
        }
        let rest = RetryLoop {
            inner,
            classify,
            cancel,
            attempt: Attempt::new(),
            start: None,
        };
        rest.run(op, None).await
    }
}

/// The outcome the classifier accepted: the value, or the error that is not retried.
fn stop<T, E>(
    outcome: Result<T, E>,
    attempt: &Attempt,
    start: Option<Instant>,
) -> Result<T, RetryError<T, E>> {
    outcome.map_err(|e| RetryError {
        attempts: attempt.number(),
        elapsed: start.map_or(Duration::ZERO, |s| s.elapsed()),
        stop: StopReason::NotRetryable,
        last: Some(Err(e)),
        timed_out: false,
    })
}

/// What the retry loop runs for each attempt: the caller's operation (every
/// `AsyncFnMut(&Attempt)`), or a round of hedged requests.
///
/// A trait of its own rather than the `AsyncFnMut` bound: the hedged rounds borrow the call's
/// locals, and an async closure that does makes the call's future fail the compiler's `Send`
/// check ("implementation of `AsyncFnMut` is not general enough"); a struct implementing this
/// trait passes it. For an `AsyncFnMut`, it compiles to the direct call.
pub(crate) trait RunAttempt<T, E> {
    /// Starts the attempt.
    fn run_attempt<'a>(&'a mut self, attempt: &'a Attempt) -> impl Future<Output = Result<T, E>>;
}

impl<T, E, F> RunAttempt<T, E> for F
where
    F: AsyncFnMut(&Attempt) -> Result<T, E>,
{
    #[inline(always)]
    fn run_attempt<'a>(&'a mut self, attempt: &'a Attempt) -> impl Future<Output = Result<T, E>> {
        self(attempt)
    }
}

/// The retry loop: a call's attempts and waits, from the first attempt or after it.
struct RetryLoop<'a, S, C> {
    inner: &'a Inner<S>,
    classify: C,
    cancel: Option<CancellationToken>,
    attempt: Attempt,
    start: Option<Instant>,
}

impl<S: Schedule, C> RetryLoop<'_, S, C> {
    /// Runs attempts until the classifier accepts an outcome or retrying stops; `first` is the
    /// end of an attempt already made (its outcome and the classifier's action, or why it was
    /// interrupted), if any.
    async fn run<T, E, F>(
        self,
        mut op: F,
        mut first: Option<AttemptEnd<T, E>>,
    ) -> Result<T, RetryError<T, E>>
    where
        F: RunAttempt<T, E>,
        C: Classify<T, E>,
    {
        let Self {
            inner,
            classify,
            cancel,
            mut attempt,
            mut start,
        } = self;
        let cancel = cancel.as_ref();
        let give_up = |stop, attempt: &Attempt, start: Option<Instant>, last, timed_out| {
            Err(RetryError {
                attempts: attempt.number(),
                elapsed: start.map_or(Duration::ZERO, |s| s.elapsed()),
                stop,
                last,
                timed_out,
            })
        };

        let mut delays: Option<S::Delays> = None;
        let mut last: Option<Result<T, E>> = None;
        let mut timed_out = false;
        loop {
            let end = match first.take() {
                Some(end) => end,
                None => {
                    if cancel.is_some_and(CancellationToken::is_cancelled) {
                        // This attempt never started.
                        let mut err =
                            give_up(StopReason::Cancelled, &attempt, start, last, timed_out);
                        if let Err(e) = &mut err {
                            e.attempts -= 1;
                        }
                        return err;
                    }
                    // Built in place, and polled here rather than in a nested future: moving a
                    // just-built future costs a store-forwarding stall.
                    let mut fut = pin!(op.run_attempt(&attempt));
                    let mut cancelled = pin!(cancel.map(CancellationToken::cancelled));
                    let mut timer = pin!(None::<Sleep>);
                    let mut armed = Timer::Unarmed;
                    let end = poll_fn(|cx| {
                        if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                            return Poll::Ready(Ok(output));
                        }
                        poll_limits(
                            cx,
                            cancelled.as_mut(),
                            timer.as_mut(),
                            &mut armed,
                            inner,
                            &mut start,
                        )
                    })
                    .await;
                    end.map(|outcome| {
                        let action = classify.classify(&outcome);
                        (outcome, action)
                    })
                }
            };
            let cause = match end {
                Ok((outcome, action)) => {
                    timed_out = false;
                    let cause = match action {
                        Action::Stop => return stop(outcome, &attempt, start),
                        Action::Retry => RetryCause::Failed,
                        Action::Throttled(hint) => RetryCause::Throttled(hint),
                    };
                    last = Some(outcome);
                    cause
                }
                Err(Interrupted::TimedOut) => {
                    timed_out = true;
                    RetryCause::TimedOut
                }
                Err(Interrupted::DeadlineExceeded) => {
                    return give_up(StopReason::DeadlineExceeded, &attempt, start, last, true);
                }
                Err(Interrupted::Cancelled) => {
                    return give_up(StopReason::Cancelled, &attempt, start, last, timed_out);
                }
            };
            if attempt.is_committed() {
                return give_up(StopReason::Committed, &attempt, start, last, timed_out);
            }

            // The failure path: from here on, reading the clock is cheap by comparison.
            let now = Instant::now();
            let started = *start.get_or_insert(now);
            if attempt.number() >= inner.max_attempts {
                return give_up(StopReason::Exhausted, &attempt, start, last, timed_out);
            }
            let delays = delays.get_or_insert_with(|| inner.schedule.delays(inner.next_seed()));
            let Some(mut wait) = delays.next() else {
                return give_up(StopReason::Exhausted, &attempt, start, last, timed_out);
            };
            if let RetryCause::Throttled(hint) = cause {
                wait = wait.max(hint.min(inner.throttle_cap));
            }
            let wake = now.checked_add(wait);
            if let Some(deadline) = inner.deadline {
                let past = match (wake, started.checked_add(deadline)) {
                    (Some(wake), Some(end)) => wake >= end,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if past {
                    return give_up(
                        StopReason::DeadlineExceeded,
                        &attempt,
                        start,
                        last,
                        timed_out,
                    );
                }
            }
            if let Some(budget) = &inner.budget
                && !budget.try_withdraw()
            {
                return give_up(
                    StopReason::BudgetExhausted,
                    &attempt,
                    start,
                    last,
                    timed_out,
                );
            }

            let event = RetryEvent {
                attempt: attempt.number(),
                wait,
                cause,
                elapsed: now.saturating_duration_since(started),
            };
            tracing::debug!(
                target: "brigade_retry",
                attempt = event.attempt,
                wait = ?event.wait,
                cause = ?event.cause,
                elapsed = ?event.elapsed,
                "retrying",
            );
            if let Some(hook) = &inner.on_retry {
                hook(&event);
            }

            if wait_unless_cancelled(wake, wait, cancel).await {
                return give_up(StopReason::Cancelled, &attempt, start, last, timed_out);
            }
            attempt.advance();
        }
    }
}

/// Sleeps until `wake` (or for `wait` when `wake` is out of range); `true` when `cancel` was
/// cancelled first.
async fn wait_unless_cancelled(
    wake: Option<Instant>,
    wait: Duration,
    cancel: Option<&CancellationToken>,
) -> bool {
    let sleep = match wake {
        Some(wake) => sleep_until(wake),
        None => tokio::time::sleep(wait),
    };
    match cancel {
        Some(token) => {
            tokio::select! {
                biased;
                () = token.cancelled() => true,
                () = sleep => false,
            }
        }
        None => {
            sleep.await;
            false
        }
    }
}

impl<S> Inner<S> {
    const fn has_timers(&self) -> bool {
        self.deadline.is_some() || self.attempt_timeout.is_some()
    }

    fn next_seed(&self) -> u64 {
        rng::derive(self.seed, self.seeded.fetch_add(1, Ordering::Relaxed))
    }
}

/// Polls a pending attempt's limits: the cancellation token and the timer. The timer is armed
/// only once the attempt first returns `Pending`, so an attempt that completes at once reads
/// no clock.
fn poll_limits<R, S>(
    cx: &mut Context<'_>,
    cancelled: Pin<&mut Option<WaitForCancellationFuture<'_>>>,
    timer: Pin<&mut Option<Sleep>>,
    armed: &mut Timer,
    inner: &Inner<S>,
    start: &mut Option<Instant>,
) -> Poll<Result<R, Interrupted>> {
    if let Some(cancelled) = cancelled.as_pin_mut()
        && cancelled.poll(cx).is_ready()
    {
        return Poll::Ready(Err(Interrupted::Cancelled));
    }
    poll_timer(cx, timer, armed, inner, start)
}

/// Polls a pending attempt's timer, armed on its first poll (see [`poll_limits`]).
fn poll_timer<R, S>(
    cx: &mut Context<'_>,
    mut timer: Pin<&mut Option<Sleep>>,
    armed: &mut Timer,
    inner: &Inner<S>,
    start: &mut Option<Instant>,
) -> Poll<Result<R, Interrupted>> {
    if *armed == Timer::Unarmed {
        *armed = Timer::Never;
        if start.is_none() || inner.attempt_timeout.is_some() {
            let now = Instant::now();
            let started = *start.get_or_insert(now);
            let attempt_end = inner.attempt_timeout.and_then(|t| now.checked_add(t));
            let deadline_end = inner.deadline.and_then(|d| started.checked_add(d));
            let chosen = match (attempt_end, deadline_end) {
                (Some(a), Some(d)) if a < d => Some((a, Timer::Attempt)),
                (_, Some(d)) => Some((d, Timer::Deadline)),
                (Some(a), None) => Some((a, Timer::Attempt)),
                (None, None) => None,
            };
            if let Some((at, kind)) = chosen {
                timer.set(Some(sleep_until(at)));
                *armed = kind;
            }
        } else if let Some(end) = start
            .zip(inner.deadline)
            .and_then(|(s, d)| s.checked_add(d))
        {
            timer.set(Some(sleep_until(end)));
            *armed = Timer::Deadline;
        }
    }
    if let Some(timer) = timer.as_pin_mut()
        && timer.poll(cx).is_ready()
    {
        return Poll::Ready(Err(match armed {
            Timer::Attempt => Interrupted::TimedOut,
            _ => Interrupted::DeadlineExceeded,
        }));
    }
    Poll::Pending
}
