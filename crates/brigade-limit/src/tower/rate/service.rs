use std::fmt;
use std::hash::Hash;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower_service::Service;

use super::future::ResponseFuture;
use crate::headers::{RateLimitHeaders, retry_after};
use crate::{AcquireError, RateLimiter};

/// A rate-limited `http` service: one cell per request, for the key `F` extracts; a 429
/// over quota, header fields on every limited response.
///
/// A refused request never reaches the inner service: the 429 has an empty body
/// (`B: Default`), `Retry-After`, the `RateLimit-Policy` and `RateLimit` fields (for a
/// quota rejection), and the [`AcquireError`] in its extensions.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use std::num::NonZeroU32;
/// use brigade_limit::{AcquireError, Quota, RateLimiter};
/// use brigade_limit::tower::RateLimit;
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(1).unwrap())).unwrap();
/// let client = |_: &Request<()>| Some("one client");
/// let ok = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
/// let service = RateLimit::new(ok, limiter, client);
///
/// let first = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(first.status(), StatusCode::OK);
/// let second = service.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(second.headers()["retry-after"], "60");
/// let refusal = second.extensions().get::<AcquireError>().unwrap();
/// assert_eq!(refusal.as_rejected().unwrap().limit().name(), "default");
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimit<S, K, F> {
    inner: S,
    limiter: RateLimiter<K>,
    key: F,
    headers: RateLimitHeaders,
}

impl<S, K, F> RateLimit<S, K, F> {
    /// Limits `inner` with `limiter`, keyed by `key`; writes the IETF header fields.
    pub fn new(inner: S, limiter: RateLimiter<K>, key: F) -> Self {
        Self {
            inner,
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
            .field("headers", &self.headers)
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
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(key) = (self.key)(&req) else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let mut headers = HeaderMap::new();
        match self.limiter.try_acquire(&key, 1) {
            Ok(admitted) => {
                self.headers.admitted(&admitted, &mut headers);
                ResponseFuture::inner(self.inner.call(req), Some(headers))
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
                response.extensions_mut().insert(err);
                ResponseFuture::refused(response)
            }
        }
    }
}
