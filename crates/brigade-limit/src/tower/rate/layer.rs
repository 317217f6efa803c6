use std::fmt;

use tower_layer::Layer;

use super::RateLimit;
use crate::RateLimiter;
use crate::headers::RateLimitHeaders;

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
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone(), self.key.clone()).headers(self.headers)
    }
}
