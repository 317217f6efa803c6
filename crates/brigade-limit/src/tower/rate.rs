use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::headers::{RateLimitHeaders, retry_after};
use crate::{AcquireError, RateLimiter};

/// Applies [`RateLimit`]: one cell per request, for the key `F` extracts.
///
/// The extractor returns `None` for requests that are not limited (health checks, say).
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Quota, RateLimiter};
/// use brigade_limit::tower::RateLimitLayer;
/// use http::Request;
///
/// let limiter: RateLimiter<Vec<u8>> =
///     RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(60).unwrap())).unwrap();
/// let layer = RateLimitLayer::new(limiter, |req: &Request<String>| {
///     req.headers().get("authorization").map(|v| v.as_bytes().to_vec())
/// });
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer<K, F> {
    limiter: RateLimiter<K>,
    key: F,
    headers: RateLimitHeaders,
}

impl<K, F> RateLimitLayer<K, F> {
    /// Limits with `limiter`, keyed by `key`; writes the IETF header fields.
    pub fn new(limiter: RateLimiter<K>, key: F) -> Self {
        Self {
            limiter,
            key,
            headers: RateLimitHeaders::new(),
        }
    }

    /// Which header fields to write (default: [`RateLimitHeaders::new`]).
    #[must_use]
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }
}

impl<K, F> fmt::Debug for RateLimitLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
            headers: self.headers,
        }
    }
}

/// A rate-limited `http` service: 429 over quota, header fields on every response.
#[derive(Clone)]
pub struct RateLimit<S, K, F> {
    inner: S,
    limiter: RateLimiter<K>,
    key: F,
    headers: RateLimitHeaders,
}

impl<S, K, F> RateLimit<S, K, F> {
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

impl<S: fmt::Debug, K, F> fmt::Debug for RateLimit<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, K, F>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    F: Fn(&Request<ReqB>) -> Option<K>,
    K: Hash + Eq + Clone,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return RateLimitFuture::inner(self.inner.call(req), None);
        };
        let mut headers = HeaderMap::new();
        match self.limiter.try_acquire(&key, 1) {
            Ok(admitted) => {
                self.headers.admitted(&admitted, &mut headers);
                RateLimitFuture::inner(self.inner.call(req), Some(headers))
            }
            Err(err) => {
                match &err {
                    AcquireError::Rejected(r) | AcquireError::QueueFull(r) => {
                        self.headers.rejected(r, &mut headers);
                    }
                    other => {
                        if let Some(wait) = other.retry_after() {
                            headers.insert(http::header::RETRY_AFTER, retry_after(wait));
                        }
                    }
                }
                let mut response = Response::new(ResB::default());
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                *response.headers_mut() = headers;
                RateLimitFuture {
                    state: State::Refused {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Refused { response: Option<Response<B>> },
        Inner { #[pin] future: F, headers: Option<HeaderMap> },
    }
}

pin_project! {
    /// The response future of [`RateLimit`]: the inner service's response with the header
    /// fields added, or the 429.
    #[must_use = "futures do nothing unless polled"]
    pub struct RateLimitFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

impl<F, B> RateLimitFuture<F, B> {
    fn inner(future: F, headers: Option<HeaderMap>) -> Self {
        Self {
            state: State::Inner { future, headers },
        }
    }
}

impl<F, B> fmt::Debug for RateLimitFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RateLimitFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("RateLimitFuture polled after completion"))),
            StateProj::Inner { future, headers } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(headers) = headers.take() {
                    response.headers_mut().extend(headers);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
