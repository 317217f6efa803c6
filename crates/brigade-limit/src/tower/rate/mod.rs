//! A rate limit keyed by the request: [`RateLimitLayer`] builds [`RateLimit`], which admits
//! a request against a [`RateLimiter`](crate::RateLimiter) or answers it with a 429.

pub mod future;
mod layer;
mod service;

pub use self::layer::RateLimitLayer;
pub use self::service::RateLimit;
