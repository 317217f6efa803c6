//! The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::tower::overloaded_response;
use crate::{ConcurrencyLimit, ConcurrencyPermit, Overloaded, PermitBody};

type Acquire = Pin<Box<dyn Future<Output = Result<ConcurrencyPermit, Overloaded>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        Acquiring { acquire: Acquire, call: Option<(S, R)> },
        Calling { #[pin] future: S::Future, permit: Option<ConcurrencyPermit> },
    }
}

pin_project! {
    /// The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit): waits for a
    /// permit if none was free, then calls the service and moves the permit into the
    /// response body; or answers 503.
    ///
    /// Dropping it while queued leaves the queue.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
    }
}

impl<S: Service<R>, R> ResponseFuture<S, R> {
    pub(super) fn calling(future: S::Future, permit: ConcurrencyPermit) -> Self {
        Self {
            state: State::Calling {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(super) fn acquiring(limit: ConcurrencyLimit, service: S, req: R) -> Self {
        Self {
            state: State::Acquiring {
                acquire: Box::pin(async move { limit.acquire().await }),
                call: Some((service, req)),
            },
        }
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, R, ResB> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = Response<ResB>>,
    ResB: Default,
{
    type Output = Result<Response<PermitBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
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
                    let response = ready!(future.poll(cx))?;
                    let permit = permit
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(|body| PermitBody::new(body, permit))));
                }
            }
        }
    }
}
