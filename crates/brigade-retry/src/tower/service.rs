use std::fmt;
use std::future::poll_fn;
use std::mem;
use std::task::{Context, Poll};

use tower_service::Service;

use super::RetryOnErrorOrThrottle;
use super::future::ResponseFuture;
use crate::{Attempt, Backoff, Classify, RetryError, Schedule};

/// Retries requests to the inner service through a [`Retry`](crate::Retry) policy; built by
/// [`RetryLayer`](super::RetryLayer).
///
/// [`poll_ready`](Service::poll_ready) is the inner service's. [`call`](Service::call) hands
/// the instance it polled ready to the call, for the first attempt, and keeps a clone of it
/// for the next `poll_ready`; each retry waits for that instance to be ready again, and a
/// readiness error there counts as the attempt's error. Each attempt gets a clone of the
/// request.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::tower::Retry;
/// use brigade_retry::{Backoff, RetryOnError};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = brigade_retry::Retry::builder()
///     .schedule(Backoff::constant(Duration::from_millis(100)))
///     .build()
///     .unwrap();
/// let mut failures = 2;
/// let flaky = service_fn(move |prompt: &'static str| {
///     failures -= 1;
///     let answer = if failures >= 0 { Err("connection reset") } else { Ok(prompt.len()) };
///     async move { answer }
/// });
/// // Not an `http` service: retry every error.
/// let service = Retry::new(flaky, policy).classify(RetryOnError);
/// assert_eq!(service.oneshot("hello").await.unwrap(), 5);
/// # }
/// ```
pub struct Retry<S, P = Backoff, C = RetryOnErrorOrThrottle> {
    inner: S,
    policy: crate::Retry<P>,
    classify: C,
}

impl<S, P> Retry<S, P> {
    /// Wraps `inner` with `policy` and the default classifier, [`RetryOnErrorOrThrottle`].
    pub const fn new(inner: S, policy: crate::Retry<P>) -> Self {
        Self {
            inner,
            policy,
            classify: RetryOnErrorOrThrottle,
        }
    }
}

impl<S, P, C> Retry<S, P, C> {
    /// Replaces the classifier: which outcomes to retry, stop on or treat as throttled.
    pub fn classify<C2>(self, classify: C2) -> Retry<S, P, C2> {
        Retry {
            inner: self.inner,
            policy: self.policy,
            classify,
        }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the inner service out.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The policy.
    pub const fn policy(&self) -> &crate::Retry<P> {
        &self.policy
    }
}

impl<S: Clone, P, C: Clone> Clone for Retry<S, P, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug, C> fmt::Debug for Retry<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, P, C, Req> Service<Req> for Retry<S, P, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + 'static,
    P: Schedule + Send + Sync + 'static,
    P::Delays: Send,
    C: Classify<S::Response, S::Error> + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = RetryError<S::Response, S::Error>;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::not_ready)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The instance polled ready may hold what its readiness reserved (a permit, a slot):
        // it makes the first attempt, and a clone waits here for the next `poll_ready`.
        let clone = self.inner.clone();
        let mut attempts = Attempts {
            service: mem::replace(&mut self.inner, clone),
            request,
            ready: true,
        };
        let policy = self.policy.clone();
        let classify = self.classify.clone();
        ResponseFuture::new(Box::pin(async move {
            policy
                .classify(classify)
                .run(async move |_: &Attempt| attempts.next().await)
                .await
        }))
    }
}

/// The attempts of one call: the service that makes them, and the request each one clones.
struct Attempts<S, Req> {
    service: S,
    request: Req,
    /// Whether `service` was polled ready and not called since.
    ready: bool,
}

impl<S: Service<Req>, Req: Clone> Attempts<S, Req> {
    /// One attempt: waits for the service to be ready (unless it is), and calls it.
    ///
    /// Takes `&mut self`, not `&self`, so the attempt's future is `Send` when the request is
    /// `Send` (not only when it is `Sync`).
    async fn next(&mut self) -> Result<S::Response, S::Error> {
        if !mem::replace(&mut self.ready, false) {
            poll_fn(|cx| self.service.poll_ready(cx)).await?;
        }
        self.service.call(self.request.clone()).await
    }
}
