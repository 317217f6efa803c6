//! A concurrency limit whose permit lives with the response body:
//! [`ConcurrencyLimitLayer`] builds [`ConcurrencyLimit`], which waits for a permit of a
//! [`ConcurrencyLimit`](crate::ConcurrencyLimit) (the shared limit) or answers with a 503.

pub mod future;
mod layer;
mod service;

pub use self::layer::ConcurrencyLimitLayer;
pub use self::service::ConcurrencyLimit;
