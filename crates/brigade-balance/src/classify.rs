//! What a finished call means to the pool.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::headers;

/// How a call went, reported on its [`Pick`](crate::Pick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint did its job: a success for the breaker.
    Success,
    /// The endpoint failed (an error, a 5xx, a timeout): a failure for the breaker.
    Failure,
    /// The endpoint is throttling: it cools down for this long, or the pool's default cooldown
    /// when `None`; nothing for the breaker.
    Throttled(Option<Duration>),
    /// The call says nothing about the endpoint (a 4xx the client caused): nothing recorded.
    Ignored,
}

/// Classifies a call's result as an [`Outcome`].
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`, so a closure will do:
///
/// ```
/// use brigade_balance::{Classify, Outcome};
///
/// let classify = |result: &Result<u16, ()>| match result {
///     Ok(429) => Outcome::Throttled(None),
///     Ok(500..) | Err(()) => Outcome::Failure,
///     Ok(_) => Outcome::Success,
/// };
/// assert_eq!(classify.classify(&Ok(429)), Outcome::Throttled(None));
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

/// The default classification of HTTP responses:
///
/// - an error (no response) is a [failure](Outcome::Failure);
/// - a 429, or a 503 whose headers say when to come back ([`headers::cooldown`]), is a
///   [throttle](Outcome::Throttled) for that long (a 429 without a hint: the pool's default
///   cooldown);
/// - any other 5xx is a failure;
/// - everything else, 4xx included, is a [success](Outcome::Success): the endpoint answered.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_balance::{Classify, HttpClassifier, Outcome};
/// use http::{Response, StatusCode};
///
/// let response = |status: u16, retry_after: Option<&str>| {
///     let mut response = Response::builder().status(status);
///     if let Some(value) = retry_after {
///         response = response.header("retry-after", value);
///     }
///     Ok::<_, std::io::Error>(response.body(()).unwrap())
/// };
/// let classify = HttpClassifier;
/// assert_eq!(classify.classify(&response(200, None)), Outcome::Success);
/// assert_eq!(classify.classify(&response(429, None)), Outcome::Throttled(None));
/// let in_two = Outcome::Throttled(Some(Duration::from_secs(2)));
/// assert_eq!(classify.classify(&response(503, Some("2"))), in_two);
/// assert_eq!(classify.classify(&response(503, None)), Outcome::Failure);
/// assert_eq!(classify.classify(&response(404, None)), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        let Ok(response) = result else {
            return Outcome::Failure;
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Outcome::Throttled(headers::cooldown(response.headers()));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            && let Some(after) = headers::cooldown(response.headers())
        {
            return Outcome::Throttled(Some(after));
        }
        if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}
