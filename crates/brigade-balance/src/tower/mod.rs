//! A tower [`Balance`] service over a [`Pool`](crate::Pool) of services, and its layer.
//!
//! Each call picks an endpoint, calls a clone of its service, records the first byte when the
//! response head arrives, classifies the response ([`HttpClassifier`](crate::HttpClassifier)
//! by default: an error or a 5xx is a failure, a 429 or a 503 with a hint a cooldown, anything
//! else a success), and wraps the body in a [`PickBody`](crate::PickBody), so the endpoint
//! counts the call in flight until the stream ends.
//!
//! # Readiness
//!
//! [`poll_ready`](tower_service::Service::poll_ready) picks the endpoint for the next call and
//! holds the pick; it is always ready. When no endpoint is eligible it is ready all the same,
//! and the next [`call`](tower_service::Service::call) fails at once with
//! [`Unavailable`](crate::Unavailable) (boxed, so `downcast_ref` finds it), carrying when to
//! retry: a pool with every endpoint open or cooling down is a fast 503, never a hang. The
//! endpoint's own service is driven to readiness inside the response future.
//!
//! # Examples
//!
//! ```
//! use std::convert::Infallible;
//! use brigade_balance::{EndpointConfig, Pool};
//! use brigade_balance::tower::Balance;
//! use http::{Request, Response};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let upstream = |name: &'static str| {
//!     tower::service_fn(move |_: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new(name))
//!     })
//! };
//! let pool = Pool::builder()
//!     .endpoint("a", upstream("a"), EndpointConfig::new())
//!     .endpoint("b", upstream("b"), EndpointConfig::new().tier(1))
//!     .build()
//!     .unwrap();
//! let response = Balance::new(pool).oneshot(Request::new(())).await.unwrap();
//! assert_eq!(*response.body().get_ref(), "a");
//! # }
//! ```

pub mod future;
mod layer;
mod service;

pub use self::layer::BalanceLayer;
pub use self::service::Balance;

/// The error of the tower service: the inner service's, or [`Unavailable`](crate::Unavailable).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
