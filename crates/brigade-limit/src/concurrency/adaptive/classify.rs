//! What a call through an adaptive limit showed about the upstream.

use std::time::Duration;

use http::{Response, StatusCode};

/// What a call showed about the upstream's capacity, recorded on its
/// [`AdaptivePermit`](super::AdaptivePermit).
///
/// A permit dropped without one records nothing: a cancelled call says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream answered; the latency sample is the time since the permit was granted
    /// (record it at the first byte for time to first byte).
    Success,
    /// The upstream answered; the latency sample is this one, by the caller's own measure
    /// (time to first token, time per output token, ...).
    Latency(Duration),
    /// The upstream refused the call or did not answer in time: a 429, a 503, a timeout.
    /// Never a latency sample, however long or short the call took.
    Dropped,
    /// The call says nothing about capacity (a 4xx the client caused, an error of the
    /// caller's own): not recorded.
    Ignored,
}

/// Classifies a call's result as an [`Outcome`].
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`, so a closure will do:
///
/// ```
/// use brigade_limit::concurrency::adaptive::{Classify, Outcome};
///
/// #[derive(Debug)]
/// enum UpstreamError { Timeout, Refused }
///
/// let classify = |result: &Result<u16, UpstreamError>| match result {
///     Ok(429 | 503) | Err(UpstreamError::Timeout) => Outcome::Dropped,
///     Ok(_) => Outcome::Success,
///     Err(UpstreamError::Refused) => Outcome::Ignored,
/// };
/// assert_eq!(classify.classify(&Ok(503)), Outcome::Dropped);
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

/// The default classification of HTTP responses: 429, 503 and 504 are drops, and so is an
/// error (a timeout, a refused connection); other 5xx are ignored (an error fast or slow
/// says nothing about latency); every other response is a success, its latency the time
/// to its headers.
///
/// # Examples
///
/// ```
/// use brigade_limit::concurrency::adaptive::{Classify, HttpClassifier, Outcome};
/// use http::{Response, StatusCode};
///
/// let response = |status| {
///     let mut response = Response::new(());
///     *response.status_mut() = status;
///     Ok::<_, std::io::Error>(response)
/// };
/// let classify = HttpClassifier;
/// assert_eq!(classify.classify(&response(StatusCode::OK)), Outcome::Success);
/// assert_eq!(classify.classify(&response(StatusCode::NOT_FOUND)), Outcome::Success);
/// assert_eq!(classify.classify(&response(StatusCode::TOO_MANY_REQUESTS)), Outcome::Dropped);
/// assert_eq!(classify.classify(&response(StatusCode::BAD_GATEWAY)), Outcome::Ignored);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => match response.status() {
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => Outcome::Dropped,
                status if status.is_server_error() => Outcome::Ignored,
                _ => Outcome::Success,
            },
            Err(_) => Outcome::Dropped,
        }
    }
}
