//! tower middleware: [`RetryLayer`] and [`RetryService`] (feature `tower`).
//!
//! The service retries through a [`Retry`] policy. A request must be `Clone` to be replayed:
//! for `http::Request`s with a streaming body, [`buffer_request`] collects the body into
//! `Full<Bytes>` first, which makes the request cloneable.
//!
//! The service's error is the typed [`RetryError`]; convert it to a `BoxError` where a stack
//! needs one (`RetryError` is an `Error` when the response is `Debug` and the inner error an
//! `Error`).

mod body;
mod layer;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

pub use self::body::buffer_request;
pub use self::layer::RetryLayer;

use crate::{Attempt, Backoff, Classify, Retry, RetryError, RetryOnError, Schedule};

/// The future of [`RetryService::call`]: the whole call with its retries, boxed (one
/// allocation per call, as with any boxed service future).
///
/// Cancel safe in the sense of [`Retry::run`]: dropping it drops the running attempt or wait.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, RetryError<T, E>>> + Send>>;

/// Retries requests to the inner service through a [`Retry`] policy; see [`RetryLayer`].
///
/// Each attempt clones the inner service and the request, waits for the clone to be ready and
/// calls it; a readiness error counts as the attempt's error. [`poll_ready`](Service::poll_ready)
/// is therefore always ready.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use brigade_retry::{Action, Backoff, Retry};
/// use brigade_retry::tower::RetryLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Retry::builder()
///     .schedule(Backoff::constant(Duration::from_millis(100)))
///     .build()
///     .unwrap();
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let seen = calls.clone();
/// let service = ServiceBuilder::new()
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
pub struct RetryService<Svc, S = Backoff, C = RetryOnError> {
    inner: Svc,
    policy: Retry<S>,
    classify: C,
}

impl<Svc, S, C> RetryService<Svc, S, C> {
    /// Wraps `inner` with `policy`, retrying as `classify` says.
    pub const fn new(inner: Svc, policy: Retry<S>, classify: C) -> Self {
        Self {
            inner,
            policy,
            classify,
        }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// Takes the inner service out.
    pub fn into_inner(self) -> Svc {
        self.inner
    }

    /// The policy.
    pub const fn policy(&self) -> &Retry<S> {
        &self.policy
    }
}

impl<Svc: Clone, S, C: Clone> Clone for RetryService<Svc, S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Svc: fmt::Debug, S: fmt::Debug, C> fmt::Debug for RetryService<Svc, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<Svc, S, C, Req> Service<Req> for RetryService<Svc, S, C>
where
    Svc: Service<Req> + Clone + Send + 'static,
    Svc::Future: Send,
    Svc::Response: Send + 'static,
    Svc::Error: Send + 'static,
    Req: Clone + Send + 'static,
    S: Schedule + Send + Sync + 'static,
    S::Delays: Send,
    C: Classify<Svc::Response, Svc::Error> + Clone + Send + Sync + 'static,
{
    type Response = Svc::Response;
    type Error = RetryError<Svc::Response, Svc::Error>;
    type Future = ResponseFuture<Svc::Response, Svc::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let policy = self.policy.clone();
        let classify = self.classify.clone();
        let service = self.inner.clone();
        Box::pin(async move {
            policy
                .classify(classify)
                .run(move |_: &Attempt| {
                    let mut service = service.clone();
                    let request = request.clone();
                    async move {
                        poll_fn(|cx| service.poll_ready(cx)).await?;
                        service.call(request).await
                    }
                })
                .await
        })
    }
}
