//! Retries whose every attempt is a round of hedged requests.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_util::sync::CancellationToken;

use super::{Call, Retry, RetryLoop, RetryOnError, RunAttempt};
use crate::hedge::round::{Ctx, round};
use crate::{Action, Attempt, Classify, Hedge, HedgeAttempt, RetryError, Schedule};

impl<S: Schedule> Retry<S> {
    /// A call whose every attempt hedges through `hedge`, with the default classifier
    /// ([`RetryOnError`]); [`HedgedCall::classify`] and [`HedgedCall::cancel_on`] add the rest.
    ///
    /// Hedges draw on this policy's budget, as its retries do. The [`hedge`](crate::hedge)
    /// module explains how a round runs.
    pub const fn hedge<'a>(&'a self, hedge: &'a Hedge) -> HedgedCall<'a, S> {
        HedgedCall {
            policy: self,
            hedge,
            classify: RetryOnError,
            cancel: None,
        }
    }
}

impl<'a, S: Schedule, C> Call<'a, S, C> {
    /// Hedges every attempt of this call through `hedge`, keeping its classifier and token.
    pub fn hedge(self, hedge: &'a Hedge) -> HedgedCall<'a, S, C> {
        HedgedCall {
            policy: self.policy,
            hedge,
            classify: self.classify,
            cancel: self.cancel,
        }
    }
}

/// A call through a [`Retry`] policy whose every attempt is a round of hedged requests: made
/// by [`Retry::hedge`] or [`Call::hedge`], then [`run`](Self::run).
///
/// A *round* starts one request, and another (a hedge) when none in flight has committed for
/// the [hedge's delay](crate::HedgeDelay), up to the hedge's `max_in_flight` at once; the first
/// request to [commit](HedgeAttempt::commit) (or to finish with an outcome the classifier
/// accepts) wins, and the others are cancelled at once. A round whose every request failed
/// is the attempt's failure, and the policy retries it as it would any other: after its
/// backoff, within its budget, attempts, deadline. The [`hedge`](crate::hedge) module says more.
///
/// How the policy's settings apply:
///
/// - [`max_attempts`](crate::RetryBuilder::max_attempts) counts rounds; 1 hedges without
///   retrying.
/// - The [budget](crate::RetryBuilder::budget) takes one deposit per call, and one withdrawal
///   per retry **and per hedge**: a hedge the budget refuses is not started.
/// - The [attempt timeout](crate::RetryBuilder::attempt_timeout) bounds a round, hedges
///   included; the [deadline](crate::RetryBuilder::deadline) bounds the call.
/// - A round whose winner committed is never retried: its failure ends the call with
///   [`StopReason::Committed`](crate::StopReason::Committed).
///
/// # Examples
///
/// A gateway's call: each request goes to the next upstream, retries and hedges share one
/// budget, and the client's disconnect cancels everything.
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Backoff, Hedge, LatencyPercentile, Retry};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstreams = ["a.internal", "b.internal", "c.internal"];
/// let retry = Retry::builder()
///     .schedule(Backoff::constant(Duration::from_millis(50)))
///     .max_attempts(3)
///     .build()
///     .unwrap();
/// let hedge = Hedge::builder()
///     .delay(
///         LatencyPercentile::new(95.0)
///             .clamp(Duration::from_millis(10), Duration::from_secs(2))
///             .fallback(Duration::from_millis(200)),
///     )
///     .max_in_flight(2)
///     .build()
///     .unwrap();
/// let client = CancellationToken::new();
///
/// let reply = retry
///     .hedge(&hedge)
///     .cancel_on(client.clone())
///     .run(async |attempt| {
///         let upstream = upstreams[(attempt.number() as usize - 1) % upstreams.len()];
///         if upstream == "a.internal" {
///             return Err("connection refused"); // retried after 50 ms, on the next upstream
///         }
///         tokio::time::sleep(Duration::from_millis(30)).await;
///         attempt.commit(); // the first token
///         Ok(upstream)
///     })
///     .await
///     .unwrap();
/// assert_eq!(reply, "b.internal");
/// # }
/// ```
#[must_use = "a call does nothing until `run`"]
pub struct HedgedCall<'a, S, C = RetryOnError> {
    policy: &'a Retry<S>,
    hedge: &'a Hedge,
    classify: C,
    cancel: Option<CancellationToken>,
}

impl<S: fmt::Debug, C> fmt::Debug for HedgedCall<'_, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgedCall")
            .field("policy", self.policy)
            .field("hedge", self.hedge)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

impl<'a, S: Schedule, C> HedgedCall<'a, S, C> {
    /// Replaces the classifier: which outcomes a request wins with
    /// ([`Action::Stop`](crate::Action::Stop)) and which are failures, and then, for a round's
    /// failure, whether to retry, stop, or wait for a throttle hint.
    pub fn classify<C2>(self, classify: C2) -> HedgedCall<'a, S, C2> {
        HedgedCall {
            policy: self.policy,
            hedge: self.hedge,
            classify,
            cancel: self.cancel,
        }
    }

    /// Stops the call when `token` is cancelled, as [`Call::cancel_on`] does; each request's
    /// own [token](HedgeAttempt::token) is a child of it, and no hedge starts once it is
    /// cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Runs `op` in hedged rounds until a request wins or retrying stops.
    ///
    /// `op` is called once per request with the request's [`HedgeAttempt`], and runs for
    /// several requests at once: it is an `AsyncFn` (it borrows what it captures, never
    /// mutably; count with atomics or cells). Write it as an async closure
    /// (`async |attempt| ...`), which borrows the attempt to call
    /// [`commit`](HedgeAttempt::commit).
    ///
    /// The classifier is called for every request that finishes, and once more for the
    /// outcome of a round that failed. A round that never hedges allocates nothing (its
    /// first request runs in this future, its timer is armed in place, and a request's token
    /// is made only when asked for); a round that hedges allocates each hedge's future, and
    /// the list that holds them once.
    ///
    /// # Errors
    ///
    /// A [`RetryError`] as [`Call::run`] gives, except that
    /// [`attempts`](RetryError::attempts) counts every request started, hedges included: the
    /// requests the upstreams saw. Its last outcome is the last round's last failure.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops every request in flight (their tokens are cancelled, and
    /// read [`Stopped::Abandoned`](crate::hedge::Stopped::Abandoned)) and any wait; nothing
    /// else is left behind. Retries and hedges taken from the budget stay taken.
    pub async fn run<T, E, F>(self, op: F) -> Result<T, RetryError<T, E>>
    where
        F: AsyncFn(&HedgeAttempt<'_>) -> Result<T, E>,
        C: Classify<T, E>,
    {
        let Self {
            policy,
            hedge,
            classify,
            cancel,
        } = self;
        let inner = &*policy.inner;
        if let Some(budget) = &inner.budget {
            budget.deposit();
        }
        let requests = AtomicU32::new(0);
        let ctx = Ctx {
            hedge: &hedge.inner,
            op: &op,
            classify: &classify,
            cancel: cancel.as_ref(),
            budget: inner.budget.as_ref(),
            requests: &requests,
        };
        let rounds = RetryLoop {
            inner,
            classify: ByRef(&classify),
            cancel: cancel.clone(),
            attempt: Attempt::new(),
            start: None,
        };
        let result = rounds.run(Rounds(&ctx), None).await;
        result.map_err(|mut err| {
            err.attempts = requests.load(Ordering::Relaxed);
            err
        })
    }
}

/// The rounds of a hedged call, as the retry loop runs them.
///
/// A struct, not an async closure: a closure that borrows the call's locals makes the call's
/// future fail the compiler's `Send` check ("implementation of `AsyncFnMut` is not general
/// enough").
struct Rounds<'a, F, C>(&'a Ctx<'a, F, C>);

impl<T, E, F, C> RunAttempt<T, E> for Rounds<'_, F, C>
where
    F: AsyncFn(&HedgeAttempt<'_>) -> Result<T, E>,
    C: Classify<T, E>,
{
    fn run_attempt<'a>(&'a mut self, attempt: &'a Attempt) -> impl Future<Output = Result<T, E>> {
        round(self.0, attempt)
    }
}

/// A classifier used by reference: the rounds and the retry loop share one.
struct ByRef<'a, C>(&'a C);

impl<T, E, C: Classify<T, E>> Classify<T, E> for ByRef<'_, C> {
    fn classify(&self, outcome: &Result<T, E>) -> Action {
        self.0.classify(outcome)
    }
}
