//! tower middleware for `http` services: a rate limit keyed by the request, and a fixed and
//! an adaptive concurrency limit whose permits live with the response body.
//!
//! Each has the shape of tower's own middleware: a layer ([`RateLimitLayer`],
//! [`ConcurrencyLimitLayer`], [`AdaptiveConcurrencyLimitLayer`]) builds a service
//! ([`RateLimit`], [`ConcurrencyLimit`], [`AdaptiveConcurrencyLimit`]), which also has a
//! `new(inner, ..)`, `get_ref`, `get_mut` and `into_inner`, and whose response future is the
//! `future::ResponseFuture` of its module ([`rate::future`], [`concurrency::future`],
//! [`adaptive::future`]).
//!
//! They answer refusals themselves, with an empty body (`B: Default`), the header fields a
//! client needs, and the refusal in the response's extensions: 429 with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`, and the [`AcquireError`](crate::AcquireError), for the
//! rate limit; 503 with `Retry-After`, and the [`Overloaded`], for the
//! concurrency limits. Admitted responses carry `RateLimit-Policy` and `RateLimit` too.

pub mod adaptive;
pub mod concurrency;
pub mod rate;

pub use self::adaptive::{AdaptiveConcurrencyLimit, AdaptiveConcurrencyLimitLayer};
pub use self::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use self::rate::{RateLimit, RateLimitLayer};

use http::{Response, StatusCode};

use crate::headers::retry_after;
use crate::{Overloaded, PermitBody};

/// The 503 of a concurrency limit: an empty body, `Retry-After`, and the refusal in the
/// extensions.
fn overloaded_response<B: Default, P>(overloaded: Overloaded) -> Response<PermitBody<B, P>> {
    let mut response = Response::new(PermitBody::without_permit(B::default()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        retry_after(overloaded.retry_after()),
    );
    response.extensions_mut().insert(overloaded);
    response
}
