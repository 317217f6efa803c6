//! Brigade: async-service building blocks for AI backends.
//!
//! This crate re-exports each Brigade crate behind a feature of the same name, so one
//! dependency line brings in what a service needs:
//!
//! ```toml
//! [dependencies]
//! brigade = { version = "0.1", features = ["cancel"] }
//! ```
//!
//! | feature | module | crate |
//! | --- | --- | --- |
//! | `balance` | [`balance`] | `brigade-balance`: pools of upstreams: power of two choices on latency and load, weights, priority tiers with fallback, a breaker, an adaptive limit and a 429 cooldown per endpoint |
//! | `breaker` | [`breaker`] | `brigade-breaker`: a lock-free circuit breaker with rate windows, slow calls, probe permits and manual control |
//! | `cancel` | [`cancel`] | `brigade-cancel`: cancel scopes with reasons and deadlines, cancel-on-disconnect, graceful shutdown |
//! | `jobs` | [`jobs`] | `brigade-jobs`: durable background jobs on SQLite (embedded) or Postgres: leases with heartbeats, retries, cancel from any replica, resumable progress events |
//! | `limit` | [`limit`] | `brigade-limit`: keyed, token-weighted rate limits with reserve-and-settle and all-or-nothing multi-limits; fixed and adaptive concurrency limits whose permits live as long as the stream |
//! | `retry` | [`retry`] | `brigade-retry`: retries with backoff and jitter, retry budgets, deadlines, `Retry-After` and a commit point for streams |
//! | `sse` | [`sse`] | `brigade-sse`: a spec-exact SSE encoder and decoder, a hyper body with keep-alive, `Last-Event-ID` replay |
//! | `full` | all of the above | |
//!
//! The crates' own features are forwarded under the same names, so `brigade` alone reaches
//! everything:
//!
//! | feature | turns on |
//! | --- | --- |
//! | `tower` | the tower `Layer`/`Service` pairs of `balance`, `breaker`, `limit` and `retry`, for those turned on |
//! | `serde` | `sse`'s `Event::json_data`, if `sse` is on |
//! | `sse` | with `jobs` on too, `jobs`' `Jobs::follow_sse`: a job's events as a resumable SSE stream |
//! | `postgres` | `jobs`, and its Postgres backend |
//! | `redis` | `limit`, and its Redis-backed limiter (`limit::redis`) |
//! | `backoff` | `retry`, and its adapter for the `backoff` crate's schedules |
//!
//! Each crate can also be used on its own.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
pub use brigade_balance as balance;
#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub use brigade_breaker as breaker;
#[cfg(feature = "cancel")]
#[cfg_attr(docsrs, doc(cfg(feature = "cancel")))]
pub use brigade_cancel as cancel;
#[cfg(feature = "jobs")]
#[cfg_attr(docsrs, doc(cfg(feature = "jobs")))]
pub use brigade_jobs as jobs;
#[cfg(feature = "limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "limit")))]
pub use brigade_limit as limit;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use brigade_retry as retry;
#[cfg(feature = "sse")]
#[cfg_attr(docsrs, doc(cfg(feature = "sse")))]
pub use brigade_sse as sse;
