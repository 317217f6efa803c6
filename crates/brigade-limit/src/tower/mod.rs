//! tower middleware for `http` services: a rate limit keyed by the request, and a
//! concurrency limit whose permit lives with the response body.
//!
//! Each has the shape of tower's own middleware: a layer ([`RateLimitLayer`],
//! [`ConcurrencyLimitLayer`]) builds a service ([`RateLimit`], [`ConcurrencyLimit`]), which
//! also has a `new(inner, ..)`, `get_ref`, `get_mut` and `into_inner`, and whose response
//! future is the `future::ResponseFuture` of its module ([`rate::future`],
//! [`concurrency::future`]).
//!
//! Both answer refusals themselves, with an empty body (`B: Default`), the header fields a
//! client needs, and the refusal in the response's extensions: 429 with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`, and the [`AcquireError`](crate::AcquireError), for the
//! rate limit; 503 with `Retry-After`, and the [`Overloaded`](crate::Overloaded), for the
//! concurrency limit. Admitted responses carry `RateLimit-Policy` and `RateLimit` too.

pub mod concurrency;
pub mod rate;

pub use self::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use self::rate::{RateLimit, RateLimitLayer};
