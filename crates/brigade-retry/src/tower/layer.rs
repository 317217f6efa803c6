use std::fmt;

use tower_layer::Layer;

use super::{Retry, RetryOnErrorOrThrottle};
use crate::Backoff;

/// Wraps services in a [`Retry`] that retries through a [`Retry`](crate::Retry) policy.
///
/// Every service the layer builds shares the policy, and so its budget.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use brigade_retry::{Action, Backoff};
/// use brigade_retry::tower::RetryLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = brigade_retry::Retry::builder()
///     .schedule(Backoff::constant(Duration::from_millis(100)))
///     .build()
///     .unwrap();
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let seen = calls.clone();
/// let service = ServiceBuilder::new()
///     // Not `http` responses: a classifier of its own.
///     .layer(RetryLayer::new(policy).classify(|outcome: &Result<u16, Infallible>| match outcome {
///         Ok(503) => Action::Retry,
///         _ => Action::Stop,
///     }))
///     .service(service_fn(move |_request: &'static str| {
///         let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         async move { Ok::<_, Infallible>(if n == 0 { 503 } else { 200 }) }
///     }));
/// assert_eq!(service.oneshot("GET /").await.unwrap(), 200);
/// assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer<P = Backoff, C = RetryOnErrorOrThrottle> {
    policy: crate::Retry<P>,
    classify: C,
}

impl<P> RetryLayer<P> {
    /// A layer with the default classifier, [`RetryOnErrorOrThrottle`].
    pub const fn new(policy: crate::Retry<P>) -> Self {
        Self {
            policy,
            classify: RetryOnErrorOrThrottle,
        }
    }
}

impl<P, C> RetryLayer<P, C> {
    /// Replaces the classifier: which outcomes to retry, stop on or treat as throttled.
    pub fn classify<C2>(self, classify: C2) -> RetryLayer<P, C2> {
        RetryLayer {
            policy: self.policy,
            classify,
        }
    }
}

impl<P: fmt::Debug, C> fmt::Debug for RetryLayer<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, P, C: Clone> Layer<S> for RetryLayer<P, C> {
    type Service = Retry<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone()).classify(self.classify.clone())
    }
}
