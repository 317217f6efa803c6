//! A tower [`Layer`](tower_layer::Layer) and [`Service`] that put a breaker in front of a
//! service.
//!
//! The service asks the breaker in `call`, before the inner service is touched: a rejected
//! request never reaches it. Its permit travels with the response future and records the
//! classified result when the inner future completes; a dropped response future records
//! nothing.
//!
//! Errors are a [`BoxError`]: the inner service's error, or [`Rejected`] (find it with
//! `downcast_ref::<Rejected>()`, and its `retry_after` for a 503's `Retry-After`).
//!
//! ```
//! use std::convert::Infallible;
//! use brigade_breaker::{CircuitBreaker, Rejected};
//! use brigade_breaker::tower::CircuitBreakerLayer;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::default();
//! let mut service = CircuitBreakerLayer::new(breaker.clone())
//!     .layer(service_fn(|name: &'static str| async move { Ok::<_, Infallible>(name.len()) }));
//!
//! assert_eq!(service.ready().await.unwrap().call("model").await.unwrap(), 5);
//!
//! breaker.handle().force_open();
//! let error = service.ready().await.unwrap().call("model").await.unwrap_err();
//! assert!(error.downcast_ref::<Rejected>().is_some());
//! # }
//! ```

mod future;
mod layer;

use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

pub use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
use crate::{CircuitBreaker, Classify, ErrorsAreFailures};

/// The error type of [`CircuitBreakerService`]: tower's customary boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc(no_inline)]
pub use crate::Rejected;

/// A service behind a circuit breaker; made by [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S, C = ErrorsAreFailures> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C> fmt::Debug for CircuitBreakerService<S, C>
where
    S: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S> CircuitBreakerService<S> {
    /// `inner` behind `breaker`, with `Ok` a success and `Err` a failure.
    pub const fn new(inner: S, breaker: CircuitBreaker) -> Self {
        Self {
            inner,
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<S, C> CircuitBreakerService<S, C> {
    /// `inner` behind `breaker`, with results classified by `classify`.
    pub const fn with_classifier(inner: S, breaker: CircuitBreaker, classify: C) -> Self {
        Self {
            inner,
            breaker,
            classify,
        }
    }

    /// The breaker.
    pub const fn breaker(&self) -> &CircuitBreaker {
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

impl<S, C, Request> Service<Request> for CircuitBreakerService<S, C>
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
