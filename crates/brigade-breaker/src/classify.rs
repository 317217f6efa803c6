//! What a finished call means to the breaker.
//!
//! The caller decides. A timeout or a 5xx from the upstream is a [`Failure`](Outcome::Failure);
//! a client that went away, or a 4xx the client caused, says nothing about the upstream's health
//! and is [`Ignored`](Outcome::Ignored). A call that never finishes (its future dropped, its
//! permit dropped) is never recorded at all: a cancelled call is never a failure.

use std::time::Duration;

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream did its job.
    Success,
    /// The upstream failed. `retry_after` is the upstream's own hint (an HTTP `Retry-After`),
    /// honoured when this failure opens the breaker (a trip, or a failed probe) and the hint
    /// asks for a longer open period than the breaker's own, up to
    /// [`max_retry_after`](crate::CircuitBreakerBuilder::max_retry_after). A hint on a failure
    /// that opens nothing is not remembered.
    Failure {
        /// The upstream's hint of when to come back, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The call says nothing about the upstream (a client's cancel, a 4xx): not recorded, and a
    /// half-open probe slot is handed back.
    Ignored,
}

impl Outcome {
    /// A failure without a hint.
    pub const FAILURE: Self = Self::Failure { retry_after: None };

    /// A failure carrying the upstream's `Retry-After`.
    pub const fn failure_retry_after(retry_after: Duration) -> Self {
        Self::Failure {
            retry_after: Some(retry_after),
        }
    }
}

/// Classifies a call's result as an [`Outcome`].
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`, so a closure will do:
///
/// ```
/// use brigade_breaker::{Classify, Outcome};
///
/// #[derive(Debug)]
/// enum UpstreamError { ClientGone, BadRequest, Unavailable }
///
/// let classify = |result: &Result<(), UpstreamError>| match result {
///     Ok(()) => Outcome::Success,
///     Err(UpstreamError::ClientGone | UpstreamError::BadRequest) => Outcome::Ignored,
///     Err(UpstreamError::Unavailable) => Outcome::FAILURE,
/// };
/// assert_eq!(classify.classify(&Err(UpstreamError::ClientGone)), Outcome::Ignored);
/// ```
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classification: `Ok` is a success, `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreFailures;

impl<T, E> Classify<T, E> for ErrorsAreFailures {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::FAILURE,
        }
    }
}
