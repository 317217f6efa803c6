//! An adaptive concurrency limit whose permit lives with the response body:
//! [`AdaptiveConcurrencyLimitLayer`] builds [`AdaptiveConcurrencyLimit`], which waits for a
//! permit of an [`AdaptiveLimit`](crate::AdaptiveLimit) (the shared limit) or answers with a
//! 503, and records what each response showed: its classification (by default
//! [`HttpClassifier`](crate::concurrency::adaptive::HttpClassifier): 429, 503, 504 and errors
//! are drops) and, for a success, the time to its headers.

pub mod future;
mod layer;
mod service;

pub use self::layer::AdaptiveConcurrencyLimitLayer;
pub use self::service::AdaptiveConcurrencyLimit;
