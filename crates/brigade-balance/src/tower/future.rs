//! The response future of [`Balance`](super::Balance).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::BoxError;
use crate::{Classify, Outcome, Pick, PickBody, Unavailable};

pin_project! {
    /// The response future of [`Balance`](super::Balance): drives the picked endpoint's
    /// service to readiness, calls it, and classifies the response.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it completes, the call was cancelled: the pick is dropped without a
    /// report (neither success nor failure).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, C, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, S::Future, Req>,
        pick: Option<Pick<S>>,
        classify: Option<C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, Req> {
        Ready { service: S, request: Option<Req> },
        Called { #[pin] future: F },
        Unavailable { unavailable: Option<Unavailable> },
        Done,
    }
}

impl<S, C, Req> ResponseFuture<S, C, Req>
where
    S: Service<Req> + Clone,
{
    pub(crate) fn new(pick: Pick<S>, request: Req, classify: C) -> Self {
        Self {
            state: State::Ready {
                service: pick.endpoint().clone(),
                request: Some(request),
            },
            pick: Some(pick),
            classify: Some(classify),
        }
    }

    pub(crate) fn unavailable(unavailable: Unavailable) -> Self {
        Self {
            state: State::Unavailable {
                unavailable: Some(unavailable),
            },
            pick: None,
            classify: None,
        }
    }
}

impl<S, C, Req> fmt::Debug for ResponseFuture<S, C, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pick", &self.pick.as_ref().map(Pick::id))
            .finish_non_exhaustive()
    }
}

impl<S, C, Req, B> Future for ResponseFuture<S, C, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<B>, S::Error>,
{
    type Output = Result<Response<PickBody<B, S>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Unavailable { unavailable } => {
                    let unavailable = unavailable.take();
                    this.state.set(State::Done);
                    let error = unavailable.map_or_else(
                        || BoxError::from("polled after completion"),
                        |u| Box::new(u) as BoxError,
                    );
                    return Poll::Ready(Err(error));
                }
                StateProj::Ready { service, request } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        // The endpoint's service failed before the call: a failure.
                        if let Some(pick) = this.pick.take() {
                            pick.failure();
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let future = service.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let Some(mut pick) = this.pick.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    if result.is_ok() {
                        pick.first_byte();
                    }
                    let outcome = this
                        .classify
                        .take()
                        .map_or(Outcome::Ignored, |c| c.classify(&result));
                    let response = match result {
                        Ok(response) => response,
                        Err(error) => {
                            pick.record(outcome);
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    let response = match outcome {
                        Outcome::Success => response.map(|body| PickBody::new(body, pick)),
                        Outcome::Ignored => {
                            response.map(|body| PickBody::ignoring_outcome(body, pick))
                        }
                        other => {
                            pick.record(other);
                            response.map(PickBody::without_pick)
                        }
                    };
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => {
                    return Poll::Ready(Err("polled after completion".into()));
                }
            }
        }
    }
}
