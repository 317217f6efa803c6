//! Retries for async services: backoff with capped jitter, a shared retry budget, deadlines
//! that count attempt time, `Retry-After` hints, cancellation, and a commit point for streams.
//!
//! Retries turn a blip into a success and, done carelessly, a blip into an outage. This crate
//! keeps the second from happening:
//!
//! - A [`RetryBudget`], on by default and shared by every call of a policy, lets retries add at
//!   most a fraction of recent traffic: a sick upstream is not hit three times as hard.
//!   The [`budget`] module explains why a per-call attempt limit is not enough.
//! - The **commit point**: an attempt that has started answering the client (the first token
//!   of a stream) calls [`Attempt::commit`] and is never retried, so a streamed answer is never
//!   duplicated.
//! - A [`deadline`](RetryBuilder::deadline) counts attempts and waits together, and no attempt
//!   starts when its wait would end past the deadline.
//! - A classifier ([`Classify`]) decides per outcome: retry, stop, or
//!   [throttled](Action::Throttled) with the server's hint (a `Retry-After`, which
//!   [`RetryAfter`] parses), which the next wait honours. An `Ok` can be a failure: an HTTP 503
//!   is an `Ok` to hyper.
//! - [`Backoff`] schedules (constant, linear, exponential) with AWS's jitter variants, where the
//!   cap holds after jitter and jitter does not vanish at the cap; any
//!   `IntoIterator<Item = Duration>` is a schedule too. Jitter is seeded and repeatable.
//! - **Hedging** ([`Hedge`], through [`Retry::hedge`]): when a request has not sent its first
//!   byte after a delay (fixed, or a percentile of recent first-byte latencies), another
//!   starts, on another upstream if the operation chooses; the first to commit wins and the
//!   others are cancelled at once. Hedges draw on the same budget as retries, and none starts
//!   after a commit. The [`hedge`] module explains it.
//! - A [`CancellationToken`] cuts a wait short at once.
//! - The final [`RetryError`] says how many attempts were made, how long it took, why retrying
//!   stopped ([`StopReason`]) and what the last outcome was.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brigade_retry::{Backoff, Jitter, Retry};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let policy = Retry::builder()
//!     .schedule(
//!         Backoff::exponential(Duration::from_millis(100), 2.0)
//!             .max_delay(Duration::from_secs(2))
//!             .jitter(Jitter::Equal),
//!     )
//!     .max_attempts(5)
//!     .deadline(Duration::from_secs(10))
//!     .build()
//!     .unwrap();
//!
//! // An upstream that fails twice, then answers.
//! let mut calls = 0;
//! let answer = policy
//!     .run(async |attempt| {
//!         calls += 1;
//!         if attempt.number() < 3 { Err("connection reset") } else { Ok("tokens") }
//!     })
//!     .await;
//!
//! assert_eq!(answer.unwrap(), "tokens");
//! assert_eq!(calls, 3);
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tower` | no | [`tower::RetryLayer`] / [`tower::Retry`] for cloneable requests, with a default classifier for HTTP responses that honours `Retry-After` on 429 and 503, and [`buffer_request`](tower::buffer_request) to make an `http::Request` replayable |
//! | `backoff` | no | [`schedule::from_backoff`]: the unmaintained `backoff` crate's schedules, for migrations |
//!
//! # Cancel safety
//!
//! [`Retry::run`], [`Call::run`] and [`HedgedCall::run`] are cancel safe in the usual sense:
//! dropping the future drops the running attempts or wait and leaves nothing behind (a retry or
//! hedge already taken from the budget stays taken; a hedged request's token is cancelled). To
//! stop a call from elsewhere, pass a token with [`Call::cancel_on`] or
//! [`HedgedCall::cancel_on`].
//!
//! # Time and randomness
//!
//! All time is tokio's ([`tokio::time::Instant`]), so tests pause and advance it. Jitter comes
//! from a small seeded generator (SplitMix64); [`RetryBuilder::rng`] fixes the seed, and each
//! call derives its own from it.
//!
//! # Performance
//!
//! A call that succeeds on its first attempt allocates nothing, takes no lock and (almost) never
//! reads the clock: the budget deposit is a thread-local increment, and a thread that makes many
//! calls adds them to the shared window in batches of 32, with one CAS and one clock read each
//! ([batching](budget#deposits-are-batched-per-thread)); timers are armed only once an attempt
//! actually waits. A hedged call that does not hedge allocates nothing either; each hedge
//! allocates its future. `docs/benchmarks.md` in the repository holds the figures against
//! backon and tower.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
mod error;
pub mod hedge;
mod loom;
mod policy;
mod retry_after;
mod rng;
pub mod schedule;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use crate::budget::{RetryBudget, RetryBudgetBuilder};
pub use crate::error::{InvalidConfig, RetryError, StopReason};
pub use crate::hedge::{Hedge, HedgeAttempt, HedgeBuilder, HedgeDelay, LatencyPercentile};
pub use crate::policy::{
    Action, Attempt, Call, Classify, HedgedCall, Retry, RetryBuilder, RetryCause, RetryEvent,
    RetryOnError,
};
pub use crate::retry_after::RetryAfter;
pub use crate::schedule::{Backoff, Jitter, Schedule};

pub use tokio_util::sync::CancellationToken;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
