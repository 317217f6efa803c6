use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::headers::retry_after;
use crate::{ConcurrencyLimit, ConcurrencyPermit, Overloaded, PermitBody};

/// Applies [`Bulkhead`]: at most N requests in flight, counted until their response bodies
/// end.
///
/// # Examples
///
/// ```
/// use brigade_limit::ConcurrencyLimit;
/// use brigade_limit::tower::ConcurrencyLimitLayer;
///
/// let limit = ConcurrencyLimit::builder().max_in_flight(32).build().unwrap();
/// let layer = ConcurrencyLimitLayer::new(limit);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    limit: ConcurrencyLimit,
}

impl ConcurrencyLimitLayer {
    /// Limits with `limit` (shared by every service the layer makes).
    pub fn new(limit: ConcurrencyLimit) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// An `http` service behind a [`ConcurrencyLimit`]: a request waits in the bounded queue
/// for a permit, the permit moves into the response body ([`PermitBody`]), and an
/// overloaded request gets a 503 with `Retry-After`.
///
/// Unlike tower's `ConcurrencyLimit`, a streamed response counts as in flight until its
/// stream ends, and a full queue is answered at once rather than waited on.
#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    limit: ConcurrencyLimit,
}

impl<S> Bulkhead<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<ConcurrencyPermit, Overloaded>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Bulkhead<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<PermitBody<ResB>>;
    type Error = S::Error;
    type Future = BulkheadFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The ready service goes with this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit.clone();
        BulkheadFuture {
            state: State::Acquiring {
                acquire: Box::pin(async move { limit.acquire().await }),
                call: Some((inner, req)),
            },
        }
    }
}

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
    /// The response future of [`Bulkhead`]: waits for a permit, then calls the service.
    ///
    /// Dropping it while queued leaves the queue.
    #[must_use = "futures do nothing unless polled"]
    pub struct BulkheadFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
    }
}

impl<S: Service<R>, R> fmt::Debug for BulkheadFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadFuture").finish_non_exhaustive()
    }
}

impl<S, R, ResB> Future for BulkheadFuture<S, R>
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
                        Err(overloaded) => {
                            let mut response =
                                Response::new(PermitBody::without_permit(ResB::default()));
                            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            response.headers_mut().insert(
                                http::header::RETRY_AFTER,
                                retry_after(overloaded.retry_after()),
                            );
                            response.extensions_mut().insert(overloaded);
                            return Poll::Ready(Ok(response));
                        }
                    };
                    let (mut service, req) =
                        call.take().expect("BulkheadFuture polled after completion");
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
                        .expect("BulkheadFuture polled after completion");
                    return Poll::Ready(Ok(response.map(|body| PermitBody::new(body, permit))));
                }
            }
        }
    }
}
