//! A tower [`Layer`](tower_layer::Layer) and [`Service`](tower_service::Service) that put a
//! breaker in front of a service.
//!
//! The service asks the breaker in `call`, before the inner service is touched: a rejected
//! request never reaches it. Its permit travels with the response future and records the
//! classified result when the inner future completes; a dropped response future records
//! nothing.
//!
//! Errors are a [`BoxError`]: the inner service's error, or [`Rejected`] (find it with
//! `downcast_ref::<Rejected>()`, and its `retry_after` for a 503's `Retry-After`).
//!
//! ```
//! use std::convert::Infallible;
//! use brigade_breaker::{CircuitBreaker, Rejected};
//! use brigade_breaker::tower::CircuitBreakerLayer;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::default();
//! let mut service = CircuitBreakerLayer::new(breaker.clone())
//!     .layer(service_fn(|name: &'static str| async move { Ok::<_, Infallible>(name.len()) }));
//!
//! assert_eq!(service.ready().await.unwrap().call("model").await.unwrap(), 5);
//!
//! breaker.handle().force_open();
//! let error = service.ready().await.unwrap().call("model").await.unwrap_err();
//! assert!(error.downcast_ref::<Rejected>().is_some());
//! # }
//! ```

pub mod future;
mod layer;
mod service;

pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;

/// The error type of [`CircuitBreaker`]: tower's customary boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc(no_inline)]
pub use crate::Rejected;
