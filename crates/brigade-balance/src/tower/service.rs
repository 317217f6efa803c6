use std::fmt;
use std::task::{Context, Poll};

use http::Response;
use tower_service::Service;

use super::BoxError;
use super::future::ResponseFuture;
use crate::{Classify, HttpClassifier, Pick, PickBody, Pool, Unavailable};

/// Balances calls over a [`Pool`] of services; see the [module docs](super).
///
/// Cloning it clones the pool handle (the same pool) and the classifier, not a pick held for
/// the next call.
pub struct Balance<S, C = HttpClassifier> {
    pool: Pool<S>,
    classify: C,
    next: Option<Result<Pick<S>, Unavailable>>,
}

impl<S, C: Clone> Clone for Balance<S, C> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            classify: self.classify.clone(),
            next: None,
        }
    }
}

impl<S, C> fmt::Debug for Balance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.pool)
            .field(
                "next",
                &self.next.as_ref().map(|n| n.as_ref().map(Pick::id)),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Balance<S> {
    /// Balances over `pool` with the [`HttpClassifier`].
    pub const fn new(pool: Pool<S>) -> Self {
        Self {
            pool,
            classify: HttpClassifier,
            next: None,
        }
    }
}

impl<S, C> Balance<S, C> {
    /// Classifies responses with `classify` instead.
    pub fn classify<C2>(self, classify: C2) -> Balance<S, C2> {
        Balance {
            pool: self.pool,
            classify,
            next: self.next,
        }
    }

    /// The pool.
    pub fn get_ref(&self) -> &Pool<S> {
        &self.pool
    }

    /// The pool, mutably.
    pub fn get_mut(&mut self) -> &mut Pool<S> {
        &mut self.pool
    }

    /// The pool; a pick held for the next call is dropped.
    pub fn into_inner(self) -> Pool<S> {
        self.pool
    }
}

impl<S, C, Req, B> Service<Req> for Balance<S, C>
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<Response<B>, S::Error> + Clone,
{
    type Response = Response<PickBody<B, S>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.next.is_none() {
            self.next = Some(self.pool.pick());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // Called without `poll_ready`: pick now rather than panic.
        let next = self.next.take().unwrap_or_else(|| self.pool.pick());
        match next {
            Ok(pick) => ResponseFuture::new(pick, request, self.classify.clone()),
            Err(unavailable) => ResponseFuture::unavailable(unavailable),
        }
    }
}
