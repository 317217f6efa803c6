//! tower middleware for `http` services: a rate limit keyed by the request, and a
//! concurrency limit whose permit lives with the response body.
//!
//! Both answer refusals themselves, with an empty body (`B: Default`) and the header fields a
//! client needs: 429 with `Retry-After`, `RateLimit-Policy` and `RateLimit` for the rate limit,
//! 503 with `Retry-After` for the concurrency limit. Admitted responses carry
//! `RateLimit-Policy` and `RateLimit` too.

mod concurrency;
mod rate;

pub use self::concurrency::{Bulkhead, BulkheadFuture, ConcurrencyLimitLayer};
pub use self::rate::{RateLimit, RateLimitFuture, RateLimitLayer};
