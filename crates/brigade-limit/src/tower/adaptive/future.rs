//! The response future of [`AdaptiveConcurrencyLimit`](super::AdaptiveConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::concurrency::adaptive::Classify;
use crate::tower::overloaded_response;
use crate::{AdaptiveLimit, AdaptivePermit, Overloaded, PermitBody};

type Acquire = Pin<Box<dyn Future<Output = Result<AdaptivePermit, Overloaded>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        Acquiring { acquire: Acquire, call: Option<(S, R)> },
        Calling { #[pin] future: S::Future, permit: Option<AdaptivePermit> },
    }
}

pin_project! {
    /// The response future of [`AdaptiveConcurrencyLimit`](super::AdaptiveConcurrencyLimit):
    /// waits for a permit if none was free, then calls the service, records the classified
    /// result on the permit and moves the permit into the response body; or answers 503.
    ///
    /// Dropping it while queued leaves the queue; dropping it while calling records nothing.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, R, C>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
        classify: C,
    }
}

impl<S: Service<R>, R, C> ResponseFuture<S, R, C> {
    pub(super) fn calling(future: S::Future, permit: AdaptivePermit, classify: C) -> Self {
        Self {
            state: State::Calling {
                future,
                permit: Some(permit),
            },
            classify,
        }
    }

    pub(super) fn acquiring(limit: AdaptiveLimit, service: S, req: R, classify: C) -> Self {
        Self {
            state: State::Acquiring {
                acquire: Box::pin(async move { limit.acquire().await }),
                call: Some((service, req)),
            },
            classify,
        }
    }
}

impl<S: Service<R>, R, C> fmt::Debug for ResponseFuture<S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, R, C, ResB> Future for ResponseFuture<S, R, C>
where
    S: Service<R, Response = Response<ResB>>,
    C: Classify<Response<ResB>, S::Error>,
    ResB: Default,
{
    type Output = Result<Response<PermitBody<ResB, AdaptivePermit>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        loop {
            match state.as_mut().project() {
                StateProj::Acquiring { acquire, call } => {
                    let permit = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(permit) => permit,
                        Err(overloaded) => return Poll::Ready(Ok(overloaded_response(overloaded))),
                    };
                    let (mut service, req) =
                        call.take().expect("ResponseFuture polled after completion");
                    let future = service.call(req);
                    state.set(State::Calling {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Calling { future, permit } => {
                    let result = ready!(future.poll(cx));
                    let mut permit = permit
                        .take()
                        .expect("ResponseFuture polled after completion");
                    permit.record(this.classify.classify(&result));
                    // An error drops the permit here: the call is over.
                    return Poll::Ready(
                        result.map(|response| response.map(|body| PermitBody::new(body, permit))),
                    );
                }
            }
        }
    }
}
