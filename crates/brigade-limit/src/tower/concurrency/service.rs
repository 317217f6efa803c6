use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use crate::PermitBody;

/// An `http` service behind a [`ConcurrencyLimit`](crate::ConcurrencyLimit): a request
/// waits in the limit's bounded queue for a permit, the permit moves into the response body
/// ([`PermitBody`]), and an overloaded request gets a 503 with `Retry-After`.
///
/// A streamed response counts as in flight until its stream ends (or its body is dropped),
/// and a full queue is answered at once rather than waited on. The 503 has an empty body
/// (`B: Default`) and the [`Overloaded`](crate::Overloaded) in its extensions.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use brigade_limit::tower::ConcurrencyLimit;
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limit = brigade_limit::ConcurrencyLimit::builder()
///     .max_in_flight(1)
///     .max_queue(0)
///     .build()
///     .unwrap();
/// let ok = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
/// let service = ConcurrencyLimit::new(ok, limit.clone());
///
/// let streaming = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(limit.in_flight(), 1); // its body holds the permit
/// let refused = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
/// drop(streaming);
/// assert_eq!(limit.in_flight(), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limit: crate::ConcurrencyLimit,
}

impl<S> ConcurrencyLimit<S> {
    /// Limits `inner` with `limit` (which other services may share).
    pub fn new(inner: S, limit: crate::ConcurrencyLimit) -> Self {
        Self { inner, limit }
    }

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

impl<S, ReqB, ResB> Service<Request<ReqB>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<PermitBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // A free permit (none free while callers queue: the semaphore is fair): call now.
        if let Ok(permit) = self.limit.try_acquire() {
            return ResponseFuture::calling(self.inner.call(req), permit);
        }
        // The ready service goes with this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::acquiring(self.limit.clone(), inner, req)
    }
}
