//! Rate limits and concurrency limits for AI backends: keyed, token-weighted GCRA limits with
//! reserve-and-settle, all-or-nothing multi-limits, fair waiting, bounded memory, and fixed
//! or adaptive concurrency limits whose permits live as long as the response stream.
//!
//! LLM providers limit requests per minute *and* tokens per minute, and charge an estimate
//! (prompt plus `max_tokens`) that they settle once the real usage is known. So a limiter in
//! front of them must refund, check several limits before charging any, change a quota,
//! queue a large caller fairly and bound its keyed memory; a concurrency limit on streamed
//! responses must hold its permit until the stream ends, not until the headers are sent; and
//! an upstream's capacity moves, so a limit in front of it is best found from what its calls
//! show. This crate does those things:
//!
//! - [`RateLimiter`]: up to [`MAX_LIMITS`] GCRA [`Limit`]s per key, checked as one (all
//!   charged or none), with [`try_acquire`](RateLimiter::try_acquire) (decide now),
//!   [`acquire`](RateLimiter::acquire) (a fair FIFO wait per key, ended by a
//!   `CancellationToken` or a deadline), [`Reservation`]s settled with the actual cost,
//!   [`set_quota`](RateLimiter::set_quota) without losing state, shadow mode, and a bound on
//!   the keys it holds: idle keys go as new ones need room, and a table full of limited
//!   keys evicts the key nearest to idle or refuses new keys, as [`WhenFull`] chooses.
//! - [`IpKey`] / [`IpKeyer`]: client addresses as keys, IPv6 by its /64.
//! - [`ConcurrencyLimit`]: a bulkhead with a bounded queue and timeout, and a
//!   [`ConcurrencyPermit`] that a [`PermitBody`] holds until the stream ends.
//! - [`AdaptiveLimit`]: a concurrency limit that finds the upstream's capacity from latency
//!   samples and drops, by a [`Gradient`] or an [`Aimd`] policy, with the bulkhead's queue
//!   and refusals; its [`AdaptivePermit`] records what the call showed and goes into a
//!   [`PermitBody`] too ([`concurrency::adaptive`] explains the policies and the traps they
//!   avoid).
//! - [`headers`]: `Retry-After` rounded up, the IETF `RateLimit-Policy` and `RateLimit` fields,
//!   and OpenAI's `x-ratelimit-*`.
//! - `redis` (feature `redis`): `RedisRateLimiter`, the same limits and decision values kept in
//!   Redis and shared by every replica, one round trip per decision on the server's clock,
//!   with a fail-open, fail-closed or local fallback while Redis is down.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use brigade_limit::{AcquireError, Limit, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let per_minute = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
//! let limiter: RateLimiter<&str> = RateLimiter::builder()
//!     .limit(Limit::per_request("requests", per_minute(60)))
//!     .limit(Limit::new("tokens", per_minute(1_000)))
//!     .build()?;
//!
//! // Reserve prompt + max_tokens; settle with the real count when the stream ends.
//! let reservation = limiter.try_reserve(&"key-1", 900)?;
//! reservation.settle(250); // 650 tokens come back
//!
//! // Too many tokens: rejected on "tokens", and nothing is charged on "requests" either.
//! let Err(AcquireError::Rejected(rejected)) = limiter.try_acquire(&"key-1", 800) else {
//!     panic!("over the token quota")
//! };
//! assert_eq!(rejected.limit().name(), "tokens");
//! assert_eq!(rejected.retry_after().as_secs(), 3); // 50 tokens at one per 60 ms
//! let requests = rejected.limits().next().unwrap();
//! assert_eq!(requests.remaining(), 59); // only the reservation counted as a request
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tower` | no | `tower::RateLimit` (with a key extractor), `tower::ConcurrencyLimit` and `tower::AdaptiveConcurrencyLimit` (the permit lives with the response body; the adaptive one records each response), and their layers, for `http` services |
//! | `redis` | no | `redis::RedisRateLimiter`: per-key limits in Redis (a Lua script; the native `GCRA` command, experimental, on request), shared by every replica, with a fallback for outages, overload refusals for load, and switch metrics; pulls `redis` (redis-rs, tokio) and `tracing` |
//!
//! # Cancel safety
//!
//! [`RateLimiter::acquire`], [`RateLimiter::reserve`], [`ConcurrencyLimit::acquire`] and
//! [`AdaptiveLimit::acquire`] are cancel safe: a dropped future leaves its queue and holds or
//! charges nothing.
//!
//! # Time
//!
//! All time is tokio's clock ([`tokio::time::Instant`]), read once per decision (and once per
//! recorded outcome of an adaptive permit), so tests can pause and advance it. Nothing runs
//! in the background.
//! The `redis` limiter decides on the Redis server's clock instead, so that replicas agree;
//! its timeouts and probe schedule use tokio's.
//!
//! # Performance
//!
//! A keyed decision is one clock read, one hash, one uncontended shard lock and a few integer
//! operations, and allocates nothing for a key already held (a `String` key is looked up by
//! `&str`); a direct single-limit decision is one clock read and one compare-and-swap. A key
//! costs about 41 bytes for a `u64` key and one limit (the key, one TAT and a pointer, in a
//! hash table; a second limit or a wait queue adds a small box per key);
//! [`RateLimiter::memory_bytes`] reports it at run time. An adaptive permit is granted by one
//! compare-and-swap, an atomic load and a clock read, and records its outcome under one
//! uncontended lock. The module docs of [`rate`] and [`concurrency`] explain the design; the
//! README has the benchmarks.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod concurrency;
mod error;
mod gcra;
pub mod headers;
mod key;
mod loom;
mod quota;
pub mod rate;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use crate::concurrency::adaptive::{
    AdaptiveLimit, AdaptiveLimitBuilder, AdaptivePermit, AdaptivePolicy, Aimd, Gradient,
};
pub use crate::concurrency::{
    ConcurrencyLimit, ConcurrencyLimitBuilder, ConcurrencyPermit, OverloadReason, Overloaded,
    PermitBody,
};
pub use crate::error::{AcquireError, InvalidConfig, Unsatisfiable};
pub use crate::key::{IpKey, IpKeyer};
pub use crate::quota::Quota;
pub use crate::rate::{
    Admitted, Limit, LimitStatus, MAX_LIMITS, RateLimiter, RateLimiterBuilder, Rejected,
    Reservation, WhenFull,
};

pub use tokio_util::sync::CancellationToken;

// The README's examples: the Redis one needs the feature (and a server to run, so it is
// only compiled).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
