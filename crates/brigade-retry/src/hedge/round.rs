//! A round of hedged requests: one retry attempt of a hedged call.
//!
//! The first request runs in the round's own future; hedges are boxed, one allocation each, so
//! a round that never hedges allocates nothing. Every request in flight is polled on every
//! wake of the round (a round runs a handful at most).
//!
//! Invariants:
//! - `decided` is set once a request has won; from then on exactly one request is in flight
//!   (the winner) and none starts.
//! - A request is dropped (its token cancelled, its future dropped) as soon as it loses: in the
//!   same poll as the winner's commit or accepted outcome, after the winner is recorded in the
//!   [`Race`], so a loser's drop guards read [`Stopped::Lost`](super::Stopped::Lost).
//! - A hedge starts only while nothing has won, fewer than `max_in_flight` requests are in
//!   flight, the latest started at least the delay ago, the call's token is not cancelled, and
//!   the budget grants it; a refusal ends hedging for the round.
//! - The round's future, dropped before it ends, marks the [`Race`] abandoned before it drops
//!   the requests (the guard is declared after them, so it is dropped first).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;

use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::attempt::{HedgeAttempt, Race, Start};
use crate::{Action, Attempt, Classify, RetryBudget};

/// What every round of a hedged call shares.
pub(crate) struct Ctx<'a, F, C> {
    pub(crate) hedge: &'a Inner,
    pub(crate) op: &'a F,
    pub(crate) classify: &'a C,
    pub(crate) cancel: Option<&'a CancellationToken>,
    pub(crate) budget: Option<&'a RetryBudget>,
    /// Requests the call has started, every round's.
    pub(crate) requests: &'a AtomicU32,
}

impl<F, C> Ctx<'_, F, C> {
    fn next_number(&self) -> u32 {
        self.requests
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }
}

/// One request: the operation, run with its [`HedgeAttempt`], which it hands back.
async fn request<'a, T, E, F>(
    op: &'a F,
    attempt: HedgeAttempt<'a>,
) -> (HedgeAttempt<'a>, Result<T, E>)
where
    F: AsyncFn(&HedgeAttempt<'_>) -> Result<T, E>,
{
    let outcome = op(&attempt).await;
    (attempt, outcome)
}

/// Marks its [`Race`] abandoned when dropped armed: the round's future went away unfinished.
struct Abandon<'a>(Option<&'a Race>);

impl Abandon<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(race) = self.0 {
            race.abandon();
        }
    }
}

/// Drops the requests that lost: the first, if given with its start and still in flight, and
/// every hedge. With a percentile delay, the time each had run is recorded as a latency sample:
/// a lower bound of its own, which keeps the slow requests that hedging cuts short in the
/// estimate.
fn lose<Fut>(
    hedge: &Inner,
    first: Option<(Pin<&mut Option<Fut>>, Instant)>,
    hedges: &mut Vec<(Instant, Pin<Box<Fut>>)>,
) {
    let now = hedge.is_tracked().then(Instant::now);
    let record = |started: Instant| {
        if let Some(now) = now {
            hedge.record(now.saturating_duration_since(started));
        }
    };
    if let Some((mut first, started)) = first
        && first.is_some()
    {
        record(started);
        first.set(None);
    }
    for (started, loser) in hedges.drain(..) {
        record(started);
        drop(loser);
    }
}

/// An empty list of hedges, of the first request's type.
const fn hedges_like<Fut>(_first: &Pin<&mut Option<Fut>>) -> Vec<(Instant, Pin<Box<Fut>>)> {
    Vec::new()
}

/// Which request a poll was about.
#[derive(Clone, Copy)]
enum Which {
    First,
    Hedge(usize),
}

/// Runs one round: requests until one wins or the last in flight fails; returns its outcome.
pub(crate) async fn round<T, E, F, C>(ctx: &Ctx<'_, F, C>, attempt: &Attempt) -> Result<T, E>
where
    F: AsyncFn(&HedgeAttempt<'_>) -> Result<T, E>,
    C: Classify<T, E>,
{
    let hedge = ctx.hedge;
    let race = Race::new(attempt.number());
    let start = Start {
        race: &race,
        hedge,
        cancel: ctx.cancel,
    };
    let max_in_flight = usize::try_from(hedge.max_in_flight).unwrap_or(usize::MAX);
    let started = Instant::now();
    let mut first = pin!(Some(request(
        ctx.op,
        start.request(ctx.next_number(), false, started)
    )));
    let mut hedges = hedges_like(&first);
    // When the next hedge is due; `None` once no hedge will start this round.
    let mut next = if max_in_flight > 1 {
        hedge.delay().and_then(|delay| started.checked_add(delay))
    } else {
        None
    };
    // Armed on the first wait for a hedge.
    let mut timer = pin!(None::<Sleep>);
    let mut decided = false;
    let abandon = Abandon(Some(&race));

    let outcome = poll_fn(|cx| {
        loop {
            // Poll the requests in flight until one finishes or wins.
            let mut event = None;
            if let Some(fut) = first.as_mut().as_pin_mut() {
                match fut.poll(cx) {
                    Poll::Ready(done) => {
                        first.set(None);
                        event = Some((Which::First, Some(done)));
                    }
                    Poll::Pending if !decided && race.winner() != 0 => {
                        event = Some((Which::First, None));
                    }
                    Poll::Pending => {}
                }
            }
            if event.is_none() {
                for (i, (_, fut)) in hedges.iter_mut().enumerate() {
                    match fut.as_mut().poll(cx) {
                        Poll::Ready(done) => {
                            event = Some((Which::Hedge(i), Some(done)));
                            break;
                        }
                        Poll::Pending if !decided && race.winner() != 0 => {
                            event = Some((Which::Hedge(i), None));
                            break;
                        }
                        Poll::Pending => {}
                    }
                }
                if let Some((Which::Hedge(i), Some(_))) = &event {
                    drop(hedges.swap_remove(*i));
                }
            }

            match event {
                // A request committed: the others lose, now.
                Some((which, None)) => {
                    // The round's attempt commits with it: never retried from here.
                    attempt.commit();
                    decided = true;
                    next = None;
                    timer.set(None);
                    match which {
                        Which::First => lose(hedge, None, &mut hedges),
                        Which::Hedge(i) => {
                            let winner = hedges.swap_remove(i);
                            lose(hedge, Some((first.as_mut(), started)), &mut hedges);
                            hedges.push(winner);
                        }
                    }
                    // The winner was just polled: wait for its wake.
                    return Poll::Pending;
                }
                Some((_, Some((request, outcome)))) => {
                    if race.winner() == request.number() {
                        // The committed winner is done, well or not: its outcome is final.
                        attempt.commit();
                        request.keep();
                        return Poll::Ready(outcome);
                    }
                    if let Action::Stop = ctx.classify.classify(&outcome) {
                        // Accepted without a commit: it wins all the same.
                        race.win(request.number());
                        if hedge.is_tracked() {
                            hedge.record(request.started().elapsed());
                        }
                        request.keep();
                        lose(hedge, Some((first.as_mut(), started)), &mut hedges);
                        return Poll::Ready(outcome);
                    }
                    // A failure: its token is cancelled; the others go on, if any.
                    drop(request);
                    if first.is_none() && hedges.is_empty() {
                        return Poll::Ready(outcome);
                    }
                    continue;
                }
                None => {}
            }

            // Start a hedge if one is due.
            let in_flight = usize::from(first.is_some()) + hedges.len();
            let Some(due) = next.filter(|_| in_flight < max_in_flight) else {
                return Poll::Pending;
            };
            match timer.as_mut().as_pin_mut() {
                Some(sleep) if sleep.deadline() != due => sleep.reset(due),
                Some(_) => {}
                None => timer.set(Some(sleep_until(due))),
            }
            let Some(sleep) = timer.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            if sleep.poll(cx).is_pending() {
                return Poll::Pending;
            }
            if ctx.cancel.is_some_and(CancellationToken::is_cancelled) {
                // The retry loop ends the call.
                next = None;
                return Poll::Pending;
            }
            if !ctx.budget.is_none_or(RetryBudget::try_withdraw) {
                tracing::debug!(
                    target: "brigade_retry",
                    round = attempt.number(),
                    "no hedge: retry budget exhausted",
                );
                next = None;
                return Poll::Pending;
            }
            let number = ctx.next_number();
            let now = Instant::now();
            tracing::debug!(
                target: "brigade_retry",
                request = number,
                round = attempt.number(),
                in_flight,
                "hedging",
            );
            hedges.push((
                now,
                Box::pin(request(ctx.op, start.request(number, true, now))),
            ));
            next = hedge.delay().and_then(|delay| now.checked_add(delay));
        }
    })
    .await;
    abandon.disarm();
    outcome
}
