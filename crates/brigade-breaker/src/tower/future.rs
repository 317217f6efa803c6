//! The response future of the [`CircuitBreaker`](super::CircuitBreaker) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::BoxError;
use crate::{Classify, OwnedPermit, Rejected};

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker): the inner service's
    /// future, whose result is recorded when it completes; or a rejection, ready at once.
    ///
    /// Dropped before it completes, it records nothing.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Running {
            #[pin]
            future: F,
            permit: Option<OwnedPermit>,
            classify: C,
        },
        Rejected {
            rejected: Rejected,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) const fn running(future: F, permit: OwnedPermit, classify: C) -> Self {
        Self {
            kind: Kind::Running {
                future,
                permit: Some(permit),
                classify,
            },
        }
    }

    pub(crate) const fn rejected(rejected: Rejected) -> Self {
        Self {
            kind: Kind::Rejected { rejected },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = matches!(self.kind, Kind::Rejected { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                future,
                permit,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classify.classify(&result));
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { rejected } => Poll::Ready(Err(Box::new(*rejected))),
        }
    }
}
