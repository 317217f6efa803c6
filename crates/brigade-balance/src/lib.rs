//! Pools of upstreams: pick one by latency and load, fall back by tier, and keep out those
//! that fail or throttle.
//!
//! An AI backend rarely has one model server: replicas of a self-hosted model, several
//! providers, a cheaper fallback. A [`Pool`] holds them as endpoints, each with a weight, a
//! priority tier, its own [circuit breaker](brigade_breaker::CircuitBreaker), an optional
//! [adaptive concurrency limit](brigade_limit::AdaptiveLimit), and a cooldown for when it
//! throttles. A [`Pick`] is one call's claim on an endpoint: it counts the call in flight until
//! it is dropped (or until the response body ends, inside a [`PickBody`]), and reports the
//! latency to the first byte and the outcome.
//!
//! # The pick
//!
//! - **Power of two choices** on a cost of `latency × (1 + in_flight / weight)`, `latency`
//!   being the endpoint's peak-EWMA time to first byte: two endpoints are drawn at random, each
//!   with a probability proportional to its weight, and the cheaper one wins (the first drawn
//!   on a tie). At rest each endpoint gets its weight's share of the picks; under load the
//!   faster and less loaded one wins.
//! - **Peak EWMA**: a sample above the estimate replaces it; one below moves it with a weight
//!   that grows with the time since the last sample ([`decay`](PoolBuilder::decay), 10 s by
//!   default); an endpoint left alone decays toward zero, so a slow one is tried again now and
//!   then. An endpoint with no sample yet has the
//!   [`default_latency`](PoolBuilder::default_latency).
//! - **Eligible** endpoints only: not cooling down, admitted by their breaker (a half-open
//!   breaker lets only its probes through), their adaptive limit (if any) not reached.
//! - **Tiers**: tier 0 first; a higher tier is used only while every endpoint of the tiers
//!   below is open, cooling down or saturated, and the pool returns to a lower tier as soon as
//!   one of its endpoints is eligible again.
//! - **Nowhere to go**: [`Unavailable`], saying why (empty, open, cooling down, saturated,
//!   excluded) and when to retry, for a 503 with `Retry-After`.
//!
//! A breaker that refuses a pick keeps its endpoint out for the refusal's
//! [`retry_after`](brigade_breaker::Rejected::retry_after) without asking it again, so a pick
//! does not read the clock once per open endpoint; a breaker reset by hand meanwhile is asked
//! again only after that time.
//!
//! # Cooldowns
//!
//! A throttled call ([`Pick::throttled`], [`Pick::cooldown_from_headers`], or a 429 through the
//! tower service) keeps its endpoint out of picks for the time the upstream asks: `Retry-After`
//! (delta-seconds or HTTP-date), or OpenAI's `x-ratelimit-reset-requests` /
//! `x-ratelimit-reset-tokens` ([`headers::cooldown`]); the pool's
//! [`default_cooldown`](PoolBuilder::default_cooldown) when they say nothing, at most its
//! [`max_cooldown`](PoolBuilder::max_cooldown). A throttle is not a breaker failure.
//!
//! # Endpoints from text
//!
//! [`EndpointSpec`] reads one endpoint from a flag or a configuration file,
//! `URL[,id=…,weight=…,tier=…,concurrency=N|adaptive]`, validated as [`EndpointConfig`] is,
//! with an error naming the part at fault ([`InvalidEndpointSpec`]); options it does not know
//! are kept in order for the application's own.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brigade_balance::{EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let pool = Pool::builder()
//!     .endpoint("replica-1", "http://10.0.0.1:8000", EndpointConfig::new())
//!     .endpoint("replica-2", "http://10.0.0.2:8000", EndpointConfig::new())
//!     .endpoint("provider", "https://api.example.com", EndpointConfig::new().tier(1))
//!     .build()
//!     .unwrap();
//!
//! let mut pick = pool.pick().unwrap();
//! assert_eq!(pick.tier(), 0); // a replica while one is eligible
//! // ... send the request to `pick.endpoint()`; at the response head:
//! tokio::time::sleep(Duration::from_millis(80)).await;
//! assert_eq!(pick.first_byte(), Duration::from_millis(80));
//! // A failure before the first token: retry on another endpoint.
//! let tried = pick.id().to_owned();
//! pick.failure();
//! let retry = pool.pick_excluding(&[&tried]).unwrap();
//! assert_ne!(retry.id(), tried);
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tower` | no | [`tower::BalanceLayer`] and the [`tower::Balance`] service over a pool of services |
//!
//! # Cancel safety
//!
//! Nothing here waits: [`Pool::pick`] answers at once. A [`Pick`] or [`PickBody`] dropped
//! before its outcome is reported was cancelled: it counts as neither success nor failure, and
//! gives its permits back; if it had no first byte yet, the time it waited raises the
//! endpoint's latency estimate when that was lower (see [`Pick`]). The tower service's response future is cancel safe in the same way.
//!
//! # Time
//!
//! All time is tokio's clock ([`tokio::time::Instant`]), so tests can pause and advance it.
//! A pick reads it once; the same reading is the pick's start (for the latency sample) and the
//! time the latency estimates are decayed to and cooldowns compared with. An HTTP-date
//! `Retry-After` is wall-clock time and is compared with the system clock.
//!
//! # Performance
//!
//! A pick takes no lock and allocates nothing; the [module docs of the pool](Pool) list its
//! cost. `docs/benchmarks.md` in the repository compares it with tower's `p2c::Balance`
//! (`cargo bench -p brigade-balance --bench balance`).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod classify;
mod config;
mod error;
pub mod headers;
mod loom;
mod pick;
mod pool;
mod rng;
mod spec;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use crate::body::PickBody;
pub use crate::classify::{Classify, HttpClassifier, Outcome};
pub use crate::config::EndpointConfig;
pub use crate::error::{InvalidConfig, Unavailable};
pub use crate::pick::Pick;
pub use crate::pool::{EndpointSnapshot, Pool, PoolBuilder};
pub use crate::spec::{Concurrency, EndpointSpec, InvalidEndpointSpec};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
