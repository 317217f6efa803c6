use std::time::Duration;

/// What to do with the outcome of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A transient failure: retry after the schedule's next delay.
    Retry,
    /// The upstream asked to slow down and said for how long (a `Retry-After`, gRPC's
    /// pushback): retry after at least that long, and at least the schedule's next delay. The
    /// hint is capped by [`throttle_cap`](crate::RetryBuilder::throttle_cap).
    Throttled(Duration),
    /// Return the outcome as it is: an `Ok` becomes the call's `Ok`, an `Err` a
    /// [`RetryError`](crate::RetryError) with [`NotRetryable`](crate::StopReason::NotRetryable).
    Stop,
}

/// Decides, per outcome, whether to retry.
///
/// Implemented by every `Fn(&Result<T, E>) -> Action` closure, and by [`RetryOnError`], the
/// default. An `Ok` can be a failure too: an HTTP 503 is an `Ok` to hyper.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Action, Classify};
///
/// struct Response { status: u16, retry_after: Option<Duration> }
///
/// let classify = |outcome: &Result<Response, std::io::Error>| match outcome {
///     Ok(r) if r.status == 429 || r.status == 503 => match r.retry_after {
///         Some(hint) => Action::Throttled(hint),
///         None => Action::Retry,
///     },
///     Ok(r) if r.status >= 500 => Action::Retry,
///     Ok(_) => Action::Stop,
///     Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Action::Retry,
///     Err(_) => Action::Stop,
/// };
/// let busy = Ok(Response { status: 503, retry_after: Some(Duration::from_secs(2)) });
/// assert_eq!(classify.classify(&busy), Action::Throttled(Duration::from_secs(2)));
/// ```
pub trait Classify<T, E> {
    /// The action for one outcome.
    fn classify(&self, outcome: &Result<T, E>) -> Action;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Action,
{
    fn classify(&self, outcome: &Result<T, E>) -> Action {
        self(outcome)
    }
}

/// The default classifier: retry every `Err`, return every `Ok`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOnError;

impl<T, E> Classify<T, E> for RetryOnError {
    fn classify(&self, outcome: &Result<T, E>) -> Action {
        match outcome {
            Ok(_) => Action::Stop,
            Err(_) => Action::Retry,
        }
    }
}
