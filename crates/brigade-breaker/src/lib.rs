//! The circuit breaker: stop calling a sick upstream, and probe it back without flooding it.
//!
//! The model is resilience4j's, without a lock on the hot path:
//!
//! - States [`Closed`](State::Closed), [`Open`](State::Open), [`HalfOpen`](State::HalfOpen),
//!   and by hand ([`Handle`]) [`ForcedOpen`](State::ForcedOpen),
//!   [`Disabled`](State::Disabled) and [`MetricsOnly`](State::MetricsOnly).
//! - A [`Window`] of the last N calls or the last N seconds (in buckets).
//! - Trips on a failure rate, a slow-call rate, or consecutive failures, each once the window
//!   holds a minimum number of calls.
//! - An [`OpenDuration`] that is fixed, or escalates over consecutive trips with seeded jitter
//!   up to a cap, stretched by the upstream's own `Retry-After` when that is longer.
//! - Half-open lets at most N probes through at once, each holding an RAII [`Permit`]: a
//!   cancelled probe hands its slot back and records nothing.
//! - The caller [classifies](Classify) results: success, failure, or [ignored](Outcome::Ignored)
//!   (a client's cancel, a 4xx). A cancelled call is never a failure.
//! - [`KeyedCircuitBreaker`]: one breaker per upstream, model or provider, at most `max_keys`;
//!   the least recently used make room for new keys, never one that is open or in use.
//! - A [`Listener`] and `tracing` for transitions, and a [`Metrics`] snapshot.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brigade_breaker::{CircuitBreaker, Error, OpenDuration, State, Window};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .window(Window::count(20))
//!     .minimum_calls(5)
//!     .failure_rate_threshold(50.0)
//!     .open_duration(OpenDuration::escalating(Duration::from_secs(1), Duration::from_secs(60)))
//!     .half_open_probes(1)
//!     .half_open_successes(2)
//!     .build()
//!     .unwrap();
//!
//! // The upstream goes down: after 5 failures the breaker opens.
//! for _ in 0..5 {
//!     let result = breaker.call(async { Err::<&str, _>("503") }).await;
//!     assert!(matches!(result, Err(Error::Inner("503"))));
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Calls are now rejected at once, without touching the upstream.
//! let result = breaker.call(async { Ok::<_, &str>("tokens") }).await;
//! let Err(Error::Rejected(rejected)) = result else { unreachable!() };
//! assert_eq!(rejected.state(), State::Open);
//! assert_eq!(rejected.retry_after(), Duration::from_secs(1)); // for `Retry-After`
//!
//! // A second later one probe at a time goes through; two successes close the breaker.
//! tokio::time::sleep(Duration::from_secs(1)).await;
//! let probe = breaker.try_acquire().unwrap();
//! assert!(breaker.try_acquire().is_err()); // no flooding
//! probe.success();
//! breaker.call(async { Ok::<_, &str>("tokens") }).await.unwrap();
//! assert_eq!(breaker.state(), State::Closed);
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tower` | no | [`tower::CircuitBreakerLayer`] and the [`tower::CircuitBreaker`] service: rejects in `call`, before the inner service is touched |
//!
//! # Cancel safety
//!
//! [`CircuitBreaker::call`] and its keyed and tower forms are cancel safe in the way that
//! matters to a breaker: dropping the call records nothing and hands back any half-open probe
//! slot it held, so cancelled calls neither count as failures nor leave the breaker stuck
//! half-open.
//!
//! # Time
//!
//! All time is tokio's clock ([`tokio::time::Instant`]), so tests can pause and advance it.
//! The clock is read only where needed: on a call or a state read while open, at both ends of
//! a call when slow calls are detected, and at the end of a call with a time window. With the
//! default configuration (a count window, no slow-call threshold) a successful call reads no
//! clock.
//!
//! # Performance
//!
//! A successful call through a closed breaker is a few atomic operations, with no lock and no
//! allocation; transitions take a small lock. `docs/benchmarks.md` in the repository holds the
//! figures (`cargo bench -p brigade-breaker --bench breaker`).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod classify;
mod config;
mod error;
mod keyed;
mod listener;
mod loom;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
mod window;

pub use crate::breaker::{CircuitBreaker, Handle, Metrics, OwnedPermit, Permit, State};
pub use crate::classify::{Classify, ErrorsAreFailures, Outcome};
pub use crate::config::{CircuitBreakerBuilder, OpenDuration, Window};
pub use crate::error::{Error, InvalidConfig, Rejected};
pub use crate::keyed::KeyedCircuitBreaker;
pub use crate::listener::{Listener, Transition, Trigger};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
