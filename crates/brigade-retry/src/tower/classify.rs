use http::header::RETRY_AFTER;
use http::{Response, StatusCode};

use crate::{Action, Classify, RetryAfter};

/// The tower middleware's default classifier, for HTTP services: retries every error, and a
/// `429 Too Many Requests` or `503 Service Unavailable` response after the wait its
/// `Retry-After` asks for; returns every other response as it is.
///
/// A 429 or 503 with a readable `Retry-After` ([`RetryAfter::parse`]) is
/// [`Action::Throttled`] with its delay (an HTTP-date is counted from the system clock): the
/// next attempt waits at least that long, and at least the schedule's next delay, within the
/// policy's [`throttle_cap`](crate::RetryBuilder::throttle_cap). Without one, or with one that
/// cannot be read, it is a plain [`Action::Retry`]. Other statuses, 5xx included, are
/// [`Action::Stop`]: the caller gets the response, as with [`RetryOnError`](crate::RetryOnError).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::tower::RetryOnErrorOrThrottle;
/// use brigade_retry::{Action, Classify};
/// use http::Response;
///
/// let classify = |response: Response<()>| RetryOnErrorOrThrottle.classify(&Ok::<_, ()>(response));
/// let busy = Response::builder().status(503).header("retry-after", "30").body(()).unwrap();
/// assert_eq!(classify(busy), Action::Throttled(Duration::from_secs(30)));
/// let limited = Response::builder().status(429).body(()).unwrap();
/// assert_eq!(classify(limited), Action::Retry);
/// let broken = Response::builder().status(500).body(()).unwrap();
/// assert_eq!(classify(broken), Action::Stop);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryOnErrorOrThrottle;

impl<B, E> Classify<Response<B>, E> for RetryOnErrorOrThrottle {
    fn classify(&self, outcome: &Result<Response<B>, E>) -> Action {
        match outcome {
            Err(_) => Action::Retry,
            Ok(response) => match response.status() {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(RetryAfter::parse)
                    .map_or(Action::Retry, |hint| Action::Throttled(hint.delay())),
                _ => Action::Stop,
            },
        }
    }
}
