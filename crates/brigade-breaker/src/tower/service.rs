use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use super::BoxError;
use super::future::ResponseFuture;
use crate::{Classify, ErrorsAreFailures};

/// A service behind a circuit breaker; made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer)
/// or [`new`](Self::new).
///
/// A request the breaker rejects fails with [`Rejected`](crate::Rejected) (boxed) without
/// reaching the inner service; the result of one it lets through is classified (by default
/// `Ok` is a success and `Err` a failure) and recorded when the response future completes.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use brigade_breaker::{Outcome, tower::CircuitBreaker};
/// use tower::{Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = brigade_breaker::CircuitBreaker::default();
/// let upstream = service_fn(|status: u16| async move { Ok::<_, Infallible>(status) });
/// let mut service = CircuitBreaker::new(upstream, breaker.clone()).classify(
///     |result: &Result<u16, Infallible>| match result {
///         Ok(status) if *status >= 500 => Outcome::FAILURE,
///         Ok(status) if *status >= 400 => Outcome::Ignored, // the client's problem
///         _ => Outcome::Success,
///     },
/// );
/// assert_eq!(service.ready().await.unwrap().call(404).await.unwrap(), 404);
/// assert_eq!(breaker.metrics().calls, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker<S, C = ErrorsAreFailures> {
    inner: S,
    breaker: crate::CircuitBreaker,
    classify: C,
}

impl<S, C> fmt::Debug for CircuitBreaker<S, C>
where
    S: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S> CircuitBreaker<S> {
    /// `inner` behind `breaker`, with `Ok` a success and `Err` a failure.
    pub const fn new(inner: S, breaker: crate::CircuitBreaker) -> Self {
        Self {
            inner,
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// The same service, classifying results with `classify` (a [`Classify`], such as a
    /// closure over `&Result<Response, Error>`).
    pub fn classify<D>(self, classify: D) -> CircuitBreaker<S, D> {
        CircuitBreaker {
            inner: self.inner,
            breaker: self.breaker,
            classify,
        }
    }

    /// The breaker.
    pub const fn breaker(&self) -> &crate::CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, taken out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => {
                ResponseFuture::running(self.inner.call(request), permit, self.classify.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
