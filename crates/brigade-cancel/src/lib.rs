//! The cancel bell: cancel scopes with reasons and deadlines, cancel-on-disconnect, and a
//! graceful shutdown that does not hang on open streams.
//!
//! tokio-util's [`CancellationToken`] is the ecosystem's cancel signal, and the type Brigade's
//! other crates accept. It cannot say *why* it was cancelled (tokio#5249), has no deadline, has
//! a single parent, and hyper 1.x gives no hook when a client goes away. This crate adds exactly
//! that, on top of the token:
//!
//! - [`CancelScope`]: a token with a [`CancelReason`] (the first one wins, children see their
//!   parent's), a deadline (children inherit the earliest), any number of parents
//!   ([`CancelScope::linked`]), and [`run_until_cancelled`](CancelScope::run_until_cancelled).
//! - [`CancelOnDrop`]: cancels with a reason when dropped, unless disarmed.
//! - [`DisconnectBody`]: an `http_body::Body` that cancels with
//!   [`ClientDisconnected`](CancelReason::ClientDisconnected) when hyper drops it mid-stream.
//! - [`Shutdown`]: SIGINT/SIGTERM, a drain signal, tracked tasks, a grace period, a cancel with
//!   reason [`Shutdown`](CancelReason::Shutdown), and a hard deadline that always ends it.
//!
//! Every scope hands out a tokio-util token cancelled with it ([`CancelScope::token`]), so code
//! that needs only tokio-util never sees this crate.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brigade_cancel::{CancelReason, CancelScope};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A request with a 2-second budget.
//! let request = CancelScope::with_timeout(Duration::from_secs(2));
//!
//! // The upstream call gets the time that is left, and stops when the request does.
//! let call = request.child();
//! let budget = call.remaining().unwrap();
//! let answer = call
//!     .run_until_cancelled(async {
//!         tokio::time::sleep(Duration::from_secs(5)).await; // a slow model
//!         "tokens"
//!     })
//!     .await;
//!
//! assert_eq!(budget, Duration::from_secs(2));
//! assert_eq!(answer.unwrap_err().reason(), &CancelReason::DeadlineExceeded);
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `signal` | yes | [`Shutdown::listen_for_signals`] and [`signal`]: SIGINT/SIGTERM (Ctrl-C on Windows) |
//!
//! # Cancel safety
//!
//! [`CancelScope::cancelled`], [`Shutdown::draining`] and [`Shutdown::drained`] are cancel
//! safe: drop them and wait again, nothing is lost (the shutdown's phases run on a task of
//! their own, not in `drained`). [`CancelScope::run_until_cancelled`] is as cancel safe as the future
//! it runs.
//!
//! # Time
//!
//! Deadlines use tokio's clock ([`tokio::time::Instant`]), so tests can pause and advance time.
//! A scope with a deadline of its own runs a small timer task, aborted when the scope is dropped.
//!
//! No duration overflows. Wherever this crate adds a duration to an instant (a scope's
//! timeout, the shutdown's grace period and hard deadline), a duration longer than about 30
//! years (tokio's own "far future"; `Duration::MAX` among them) is taken as 30 years: the
//! deadline saturates at a far instant that never comes in practice, and nothing panics.
//!
//! # Performance
//!
//! The tree is this crate's own (tokio-util's token cannot carry a reason or have two parents),
//! built like tokio-util's: [`is_cancelled`](CancelScope::is_cancelled) is one atomic load, a
//! child costs one allocation and one lock of its parent, and removing a child touches no
//! sibling. `docs/benchmarks.md` in the repository holds the figures.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod guard;
mod loom;
mod reason;
mod scope;
mod shutdown;
mod time;

pub use crate::body::DisconnectBody;
pub use crate::error::{Cancelled, InvalidConfig};
pub use crate::guard::CancelOnDrop;
pub use crate::reason::CancelReason;
pub use crate::scope::{
    CancelScope, RunUntilCancelled, RunUntilCancelledOwned, WaitCancelled, WaitCancelledOwned,
};
#[cfg(feature = "signal")]
pub use crate::shutdown::signal;
pub use crate::shutdown::{Shutdown, ShutdownBuilder, ShutdownOutcome, ShutdownReport};

pub use tokio_util::sync::CancellationToken;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
