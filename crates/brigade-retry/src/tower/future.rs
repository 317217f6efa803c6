//! The future of the [`Retry`](super::Retry) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::RetryError;

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, RetryError<T, E>>> + Send>>;

/// The future of [`Retry::call`](super::Retry): the whole call, with its retries. Equivalent
/// to [`Call::run`](crate::Call::run) with the middleware's policy and classifier, each attempt
/// waiting for the inner service to be ready (except the first, which the caller has waited
/// for) and calling it with a clone of the request.
///
/// The retry loop borrows the policy it runs, so it is boxed: one allocation per call.
///
/// # Cancel safety
///
/// As [`Retry::run`](crate::Retry::run): dropping it drops the running attempt or wait.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T, E> {
    inner: Boxed<T, E>,
}

impl<T, E> ResponseFuture<T, E> {
    pub(super) fn new(inner: Boxed<T, E>) -> Self {
        Self { inner }
    }
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, RetryError<T, E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
