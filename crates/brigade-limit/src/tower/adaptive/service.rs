use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use crate::concurrency::adaptive::{Classify, HttpClassifier};
use crate::{AdaptivePermit, PermitBody};

/// An `http` service behind an [`AdaptiveLimit`](crate::AdaptiveLimit): a request waits in
/// the limit's bounded queue for a permit, its response is classified and recorded on the
/// permit (a success's latency is the time to its headers), the permit moves into the
/// response body ([`PermitBody`]), and a refused request gets a 503 with `Retry-After`.
///
/// The default classification, [`HttpClassifier`], reads 429, 503, 504 and errors as drops,
/// ignores other 5xx and takes everything else as a success; [`classify`](Self::classify)
/// installs another. A response future dropped before the response (a client gone)
/// records nothing. The 503 has an empty body (`B: Default`) and the
/// [`Overloaded`](crate::Overloaded) in its extensions.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use brigade_limit::AdaptiveLimit;
/// use brigade_limit::tower::AdaptiveConcurrencyLimit;
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limit = AdaptiveLimit::builder()
///     .initial_limit(10)
///     .window_samples(1)
///     .build()
///     .unwrap();
/// let upstream = service_fn(|req: Request<u16>| async move {
///     tokio::time::sleep(Duration::from_millis(40)).await;
///     let mut response = Response::new(());
///     *response.status_mut() = StatusCode::from_u16(*req.body()).unwrap();
///     Ok::<_, Infallible>(response)
/// });
/// let service = AdaptiveConcurrencyLimit::new(upstream, limit.clone());
///
/// let ok = service.clone().oneshot(Request::new(200)).await.unwrap();
/// assert!(ok.body().holds_permit()); // until the stream ends
/// assert_eq!(limit.latency(), Some(Duration::from_millis(40))); // to the headers
/// drop(ok);
///
/// let throttled = service.clone().oneshot(Request::new(429)).await.unwrap();
/// assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
/// drop(throttled);
/// assert_eq!(limit.limit(), 9); // a drop lowered it (the gradient, by a tenth)
/// # }
/// ```
#[derive(Clone)]
pub struct AdaptiveConcurrencyLimit<S, C = HttpClassifier> {
    inner: S,
    limit: crate::AdaptiveLimit,
    classify: C,
}

impl<S> AdaptiveConcurrencyLimit<S> {
    /// Limits `inner` with `limit` (which other services may share), classifying responses
    /// with [`HttpClassifier`].
    pub fn new(inner: S, limit: crate::AdaptiveLimit) -> Self {
        Self {
            inner,
            limit,
            classify: HttpClassifier,
        }
    }
}

impl<S, C> AdaptiveConcurrencyLimit<S, C> {
    /// The same service, classifying results with `classify` (a [`Classify`], such as a
    /// closure over `&Result<Response, Error>`).
    pub fn classify<D>(self, classify: D) -> AdaptiveConcurrencyLimit<S, D> {
        AdaptiveConcurrencyLimit {
            inner: self.inner,
            limit: self.limit,
            classify,
        }
    }

    /// The limit.
    pub fn limit(&self) -> &crate::AdaptiveLimit {
        &self.limit
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

impl<S: fmt::Debug, C> fmt::Debug for AdaptiveConcurrencyLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for AdaptiveConcurrencyLimit<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    C: Classify<Response<ResB>, S::Error> + Clone,
    ResB: Default,
{
    type Response = Response<PermitBody<ResB, AdaptivePermit>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let classify = self.classify.clone();
        // A free permit (none free while callers queue: the semaphore is fair): call now.
        if let Ok(permit) = self.limit.try_acquire() {
            return ResponseFuture::calling(self.inner.call(req), permit, classify);
        }
        // The ready service goes with this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::acquiring(self.limit.clone(), inner, req, classify)
    }
}
