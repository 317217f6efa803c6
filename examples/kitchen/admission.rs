//! The one admission path of an answer, for HTTP chat, completions and embeddings and for
//! WebSocket chat alike: rate limits (the token estimate reserved) → a bulkhead slot (waited
//! for within the request's scope) → the mock's breaker permit → retries (and hedges, with
//! `--hedge-after-ms`) until the line cook's first chunk (the commit point), each request on an
//! upstream picked from the pool among those it has not tried (`pool.rs`).
//!
//! What it hands back is a [`Ticket`] (the reservation, the slot, the permit or the upstream's
//! pick), which the answer holds until it ends, and the opened answer: a stream up to its first
//! chunk, or a whole answer.
//!
//! A request refused before its first chunk (the bulkhead or the breaker full, the line cook
//! failing every attempt, the deadline, the client gone, the shutdown) gets its whole token
//! estimate back: nothing of it was served. Only the request itself stays counted. The
//! refund is the ticket's drop, so no refusal can forget it.
//!
//! The breaker outcome and the retry decision of an attempt's error are decided once, by
//! [`Verdict`]: an upstream's 4xx (not 429) is the request's fault, passed to the client at once
//! and ignored by the breaker; a 5xx, a 429, no answer or a timeout is the upstream's, retried
//! after its `Retry-After` (when the request's deadline leaves room for it), and, when no
//! attempt is left, answered with the upstream's own answer, or 504 (timed out) or 502.

use std::borrow::Borrow;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use brigade_breaker::{Outcome, OwnedPermit};
use brigade_cancel::{CancelReason, CancelScope};
use brigade_retry::{Action, Attempt, HedgeAttempt, RetryError, StopReason};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::api::Order;
use crate::cook::{Call, Chunks, CookError, Cooked, LineCook, Whole};
use crate::error::ApiError;
use crate::ids::RequestId;
use crate::limits::{Reserved, Slot};
use crate::pool::UpstreamPick;
use crate::routes::App;
use crate::upstream::Upstream;

/// What an attempt of the line cook opens.
pub(crate) trait Dish: Sized + Send {
    /// Runs one attempt up to the commit point, on `upstream` (or the mock).
    fn open<R: Order>(
        cook: &LineCook,
        upstream: Option<&Upstream>,
        request: &R,
        call: &Call,
    ) -> impl Future<Output = Result<Self, CookError>> + Send;
}

/// A streamed answer, opened: its first item (the commit point) and the rest.
pub(crate) struct Streamed {
    pub(crate) first: Cooked,
    pub(crate) rest: Chunks,
}

impl Dish for Streamed {
    async fn open<R: Order>(
        cook: &LineCook,
        upstream: Option<&Upstream>,
        request: &R,
        call: &Call,
    ) -> Result<Self, CookError> {
        let mut chunks = cook.stream(upstream, request, call).await?;
        match chunks.next().await {
            Some(Ok(first)) => Ok(Self {
                first,
                rest: chunks,
            }),
            Some(Err(error)) => Err(error),
            None => Err(CookError::failed(
                "the line cook's stream ended before its first chunk",
            )),
        }
    }
}

impl Dish for Whole {
    fn open<R: Order>(
        cook: &LineCook,
        upstream: Option<&Upstream>,
        request: &R,
        call: &Call,
    ) -> impl Future<Output = Result<Self, CookError>> + Send {
        cook.whole(upstream, request, call)
    }
}

/// An admitted answer: its ticket, what the line cook opened, and the rate-limit fields for
/// the answer's headers.
pub(crate) struct Admitted<D> {
    pub(crate) ticket: Ticket,
    pub(crate) dish: D,
    pub(crate) headers: HeaderMap,
}

/// Why an answer was not admitted.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Refused: the error says why.
    Refused(ApiError),
    /// The request's scope was cancelled first (the client, the deadline, the shutdown).
    Cancelled(CancelReason),
}

impl Refusal {
    /// The HTTP answer (a cancel is counted in the metrics here).
    pub(crate) fn into_error(self, app: &App) -> ApiError {
        let reason = match self {
            Self::Refused(error) => return error,
            Self::Cancelled(reason) => reason,
        };
        app.metrics.cancel(reason.as_str());
        match reason {
            CancelReason::DeadlineExceeded => ApiError::deadline(),
            CancelReason::Shutdown => ApiError::shutting_down(app.config.grace()),
            // Nobody reads this answer: the client is gone (logged as 499, nginx's convention).
            _ => ApiError::new(
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                "client_disconnected",
                "client disconnected",
            ),
        }
    }
}

/// Admits `request` (whose id is `id`) for `key` within `scope`, up to the line cook's first
/// chunk (or whole answer).
///
/// # Errors
///
/// [`Refusal::Refused`] with a 429 (rate limited), a 400 (an estimate no quota can hold), a
/// 503 (bulkhead full, breaker open), the upstream's own error answer (a 4xx at once; a 5xx or
/// 429 when no attempt is left), a 504 (every attempt timed out) or a 502 (every attempt
/// failed otherwise); [`Refusal::Cancelled`] if the scope is cancelled first. Every refusal
/// after the reservation refunds it.
///
/// # Cancel safety
///
/// Dropping the future drops the ticket taken so far: the estimate is refunded, the slot and
/// the permit (which records nothing) go back.
pub(crate) async fn admit<D: Dish, R: Order>(
    app: &Arc<App>,
    key: &str,
    scope: &CancelScope,
    request: &Arc<R>,
    id: &RequestId,
) -> Result<Admitted<D>, Refusal> {
    // Rate limits: the estimate, with the default for a request that sets no maximum.
    let head = request.head();
    let max_tokens = head.max_tokens.unwrap_or(app.config.default_max_tokens);
    let estimate = head
        .prompt_tokens
        .saturating_add(max_tokens.saturating_mul(head.choices));
    let (reserved, headers) = app
        .limits
        .reserve(key, estimate)
        .await
        .map_err(Refusal::Refused)?;
    let mut ticket = Ticket {
        reserved: Some(reserved),
        spent: None,
        slot: None,
        permit: None,
        pick: None,
    };

    // Bulkhead: a slot for the whole answer, waited for within the request's scope.
    ticket.slot = match scope.run_until_cancelled(app.limits.slot(key)).await {
        Ok(slot) => Some(slot.map_err(Refusal::Refused)?),
        Err(cancelled) => return Err(Refusal::Cancelled(cancelled.into_reason())),
    };

    // Breaker: the mock's, one permit per answer, recorded when the answer ends. (Each
    // upstream of a pool has its own, which its pick holds.)
    if app.cook.upstreams.is_none() {
        ticket.permit = Some(app.breaker.try_acquire_owned().map_err(|rejected| {
            Refusal::Refused(ApiError::unavailable(
                "circuit_open",
                format!("the upstream is unavailable ({})", rejected.state()),
                rejected.retry_after(),
            ))
        })?);
    }

    // Retries (and hedges, when on), until the first chunk only: from there on the answer is
    // never retried. Each request picks an upstream the request has not tried yet. (The
    // attempts own what they use: an async closure that borrows them trips rustc's "`Send` is
    // not general enough" in a spawned task.)
    let (cook, order) = (Arc::clone(app), Arc::clone(request));
    let call = Call {
        id: id.clone(),
        deadline: scope.deadline(),
    };
    let verdict = Verdict {
        deadline: call.deadline,
        elsewhere: app
            .cook
            .upstreams
            .as_ref()
            .is_some_and(|upstreams| upstreams.list().len() > 1),
    };
    let tried = Mutex::new(Vec::new());
    let opened = match &app.cook.hedge {
        None => {
            app.retry
                .classify(verdict)
                .cancel_on(scope.token())
                .run(async move |attempt: &Attempt| {
                    let opened = open::<D, R>(&cook, &order, &call, &tried, false).await?;
                    attempt.commit();
                    Ok(opened)
                })
                .await
        }
        Some(hedge) => {
            app.retry
                .hedge(hedge)
                .classify(verdict)
                .cancel_on(scope.token())
                .run(async move |attempt: &HedgeAttempt<'_>| {
                    let is_hedge = attempt.is_hedge();
                    if is_hedge {
                        cook.metrics.hedges.inc();
                    }
                    let opened = open::<D, R>(&cook, &order, &call, &tried, is_hedge).await?;
                    attempt.commit();
                    Ok(opened)
                })
                .await
        }
    };
    match opened {
        Ok((dish, pick)) => {
            // Served from here on: until the answer says what it used, it used it all.
            ticket.spent = Some(estimate);
            ticket.pick = pick;
            Ok(Admitted {
                ticket,
                dish,
                headers,
            })
        }
        Err(error) => Err(attempts_failed(scope, &mut ticket, error)),
    }
}

/// One request to the line cook, up to its first chunk: an upstream picked among those not
/// `tried` yet (and added to them), the dish opened, the first byte recorded on the pick; a
/// failure is reported on the pick. A hedge that finds no upstream fails as an attempt would,
/// leaving the request it hedges running.
async fn open<D: Dish, R: Order>(
    app: &App,
    order: &R,
    call: &Call,
    tried: &Mutex<Vec<Arc<Upstream>>>,
    is_hedge: bool,
) -> Result<(D, Option<UpstreamPick>), CookError> {
    let picked = {
        let mut tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
        let picked = if tried.is_empty() {
            app.cook.pick(&[])
        } else {
            let ids: Vec<&str> = tried.iter().map(|upstream| upstream.id.as_str()).collect();
            app.cook.pick(&ids)
        };
        if let Ok(Some(pick)) = &picked {
            tried.push(Arc::clone(pick.endpoint()));
        }
        picked
    };
    let mut pick = match picked {
        Ok(pick) => pick,
        Err(CookError::Unavailable(_)) if is_hedge => {
            return Err(CookError::failed("no upstream left to hedge on"));
        }
        Err(error) => return Err(error),
    };
    let upstream = pick.as_ref().map(|pick| Arc::clone(pick.endpoint()));
    match D::open(&app.cook, upstream.as_deref(), order, call).await {
        Ok(dish) => {
            if let Some(pick) = &mut pick {
                pick.first_byte();
            }
            Ok((dish, pick))
        }
        Err(error) => {
            if let Some(pick) = pick {
                crate::pool::report(pick, &error);
            }
            Err(error)
        }
    }
}

/// The refusal when no attempt reached the commit point.
fn attempts_failed<D>(
    scope: &CancelScope,
    ticket: &mut Ticket,
    error: RetryError<D, CookError>,
) -> Refusal {
    let (attempts, stop) = (error.attempts(), error.stop());
    if stop == StopReason::Cancelled {
        // The client, the deadline or the shutdown: the upstream is not to blame.
        return Refusal::Cancelled(scope.reason().unwrap_or(CancelReason::ClientDisconnected));
    }
    match error.into_error() {
        Some(error) => {
            ticket.failed(&error);
            Refusal::Refused(error.into_api_error(attempts))
        }
        None => {
            ticket.record(Outcome::FAILURE);
            Refusal::Refused(ApiError::bad_gateway(format!(
                "the line cook failed ({stop})"
            )))
        }
    }
}

/// What an admitted answer holds until it ends: its token reservation, its bulkhead slot and
/// its breaker permit (the mock's), or its pick of an upstream.
///
/// Dropped, it settles the reservation with what the answer used (see [`spend`](Self::spend)),
/// or refunds it all if nothing was served; the slot goes back; a permit or pick not yet
/// recorded records nothing (a cancel is not the upstream's fault).
#[derive(Debug)]
pub(crate) struct Ticket {
    reserved: Option<Reserved>,
    /// Tokens to settle with: `None` until the first chunk (a refusal refunds everything).
    spent: Option<u32>,
    slot: Option<Slot>,
    permit: Option<OwnedPermit>,
    /// The upstream answering: in flight in the pool until the answer ends.
    pick: Option<UpstreamPick>,
}

impl Ticket {
    /// Sets the tokens the answer used (prompt and completion), to settle with.
    pub(crate) fn spend(&mut self, tokens: u32) {
        self.spent = Some(tokens);
    }

    /// The answer reached its end: a success for the breaker, and for the upstream's pick.
    pub(crate) fn succeeded(&mut self) {
        self.record(Outcome::Success);
        if let Some(pick) = self.pick.take() {
            pick.success();
        }
    }

    /// The line cook failed: the breaker hears what [`Verdict`] makes of it, the upstream's
    /// pick what [`report`](crate::pool::report) does.
    pub(crate) fn failed(&mut self, error: &CookError) {
        let verdict = Verdict {
            deadline: None,
            elsewhere: false,
        };
        let outcome = brigade_breaker::Classify::<(), _>::classify(&verdict, &Err(error));
        self.record(outcome);
        if let Some(pick) = self.pick.take() {
            crate::pool::report(pick, error);
        }
    }

    fn record(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            permit.record(outcome);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(reserved) = self.reserved.take() {
            reserved.settle(self.spent.unwrap_or(0));
        }
    }
}

/// How an attempt's outcome counts, for the breaker and for the retries of a request whose
/// deadline is `deadline`.
///
/// An error the line cook calls retryable (a 5xx, a 429 (a throttle), no answer, a timeout) is
/// the upstream's failure, carrying its `Retry-After`, and is retried after at least that long,
/// unless that wait would outlast the deadline: then the upstream's answer goes to the client
/// at once rather than a 504 later. With other upstreams to go to (`elsewhere`), a throttle is
/// retried at once: the throttled upstream cools down and the retry goes to another. Any other
/// error (a 4xx: the request's fault; no upstream available) says nothing about the upstream,
/// is ignored by the breaker and is not retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict {
    pub(crate) deadline: Option<Instant>,
    /// The pool has more than one upstream.
    pub(crate) elsewhere: bool,
}

impl<T, E: Borrow<CookError>> brigade_breaker::Classify<T, E> for Verdict {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result.as_ref().map_err(Borrow::borrow) {
            Ok(_) => Outcome::Success,
            Err(error) if error.is_retryable() => error
                .retry_after()
                .map_or(Outcome::FAILURE, Outcome::failure_retry_after),
            Err(_) => Outcome::Ignored,
        }
    }
}

impl<T> brigade_retry::Classify<T, CookError> for Verdict {
    fn classify(&self, outcome: &Result<T, CookError>) -> Action {
        let Err(error) = outcome else {
            return Action::Stop;
        };
        if !error.is_retryable() {
            return Action::Stop;
        }
        if self.elsewhere {
            return Action::Retry;
        }
        match (error.retry_after(), self.deadline) {
            (Some(wait), Some(deadline))
                if Instant::now()
                    .checked_add(wait)
                    .is_none_or(|then| then >= deadline) =>
            {
                Action::Stop
            }
            (Some(wait), _) => Action::Throttled(wait),
            (None, _) => Action::Retry,
        }
    }
}
