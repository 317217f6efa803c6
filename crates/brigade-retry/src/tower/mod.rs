//! tower middleware (feature `tower`): [`RetryLayer`] builds [`Retry`], which retries requests
//! to an inner service through a [`Retry`](crate::Retry) policy.
//!
//! - A request must be `Clone` to be replayed: for `http::Request`s with a streaming body,
//!   [`buffer_request`] collects the body into `Full<Bytes>` first, which makes the request
//!   cloneable.
//! - [`poll_ready`](tower_service::Service::poll_ready) is the inner service's: a service that
//!   is not ready makes the middleware not ready, so back-pressure and `LoadShed` work through
//!   it. The instance that was polled ready makes the first attempt; each retry waits for the
//!   inner service to be ready again.
//! - The default classifier, [`RetryOnErrorOrThrottle`], is for HTTP services: it retries every
//!   error, and a 429 or 503 response after the wait its `Retry-After` asks for; every other
//!   response is returned as it is. [`Retry::classify`] and [`RetryLayer::classify`] replace it
//!   (with [`RetryOnError`](crate::RetryOnError) for a service whose responses are not
//!   `http::Response`s).
//! - The service's error is the typed [`RetryError`](crate::RetryError); convert it to a
//!   `BoxError` where a stack needs one (`RetryError` is an `Error` when the response is `Debug`
//!   and the inner error an `Error`). An error from the inner service's `poll_ready` comes back
//!   from the middleware's `poll_ready`, with [`StopReason::NotReady`](crate::StopReason::NotReady).
//!
//! # Examples
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use brigade_retry::Backoff;
//! use brigade_retry::tower::RetryLayer;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let policy = brigade_retry::Retry::builder()
//!     .schedule(Backoff::constant(Duration::from_millis(100)))
//!     .build()
//!     .unwrap();
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let seen = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new(policy))
//!     .service(service_fn(move |_request: Request<()>| {
//!         let first = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
//!         async move {
//!             let response = if first {
//!                 // Busy: come back in 2 seconds.
//!                 Response::builder().status(429).header("retry-after", "2").body(()).unwrap()
//!             } else {
//!                 Response::new(())
//!             };
//!             Ok::<_, Infallible>(response)
//!         }
//!     }));
//!
//! let start = tokio::time::Instant::now();
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
//! assert_eq!(start.elapsed(), Duration::from_secs(2)); // as the server asked
//! # }
//! ```

mod body;
mod classify;
pub mod future;
mod layer;
mod service;

pub use self::body::buffer_request;
pub use self::classify::RetryOnErrorOrThrottle;
pub use self::layer::RetryLayer;
pub use self::service::Retry;
