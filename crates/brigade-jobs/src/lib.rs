//! Durable background jobs for async services: a queue that survives restarts and is shared by
//! replicas, on SQLite (embedded, the default) or Postgres, through sqlx.
//!
//! Slow work that outlives a request (parse a PDF, embed thousands of chunks, a nightly
//! summary) needs a queue that keeps its jobs across a crash, lets several replicas share
//! them, lets a client cancel one from anywhere and follow its progress after a reconnect.
//! The known holes of such queues are closed here by construction:
//!
//! - **Leases with heartbeats, per job.** A claimed job is leased to its process, which
//!   extends the leases of all its jobs in one statement per
//!   [heartbeat](JobsBuilder::heartbeat). A dead worker's job runs again one
//!   [lease](JobsBuilder::lease) after its last heartbeat, not after a global rescue timeout.
//! - **A reaper that never overwrites a completion.** Every replica re-queues expired leases
//!   in the statement that checks the expiry, so a job whose completion landed first is left
//!   alone; and every write of a running job (progress, completion) checks the lease owner and
//!   attempt in its own statement, so a worker whose job was taken away writes nothing, and
//!   its handler's scope is cancelled.
//! - **Cancel from any replica**: [`Jobs::cancel`] ends the job `cancelled` at once, and the
//!   running handler's [`CancelScope`] is cancelled within a second (a Postgres notification,
//!   the heartbeat as the backstop).
//! - **Retries on brigade-retry's schedules** (exponential with full jitter by default):
//!   errors are retryable, permanent or throttled with a delay ([`JobError`]); an expired lease
//!   counts as an attempt; a job out of attempts is `failed` with its last error.
//! - **Progress events with stable numbers**: each job's events are numbered from 1 in the
//!   store, without a gap or a repeat, across restarts and replicas, so the number is an SSE
//!   event id and a client resumes with `Last-Event-ID` anywhere ([`Jobs::follow`]). Writes are
//!   batched; the final event is written in the transaction of the final state.
//! - **Bounded tables**: final jobs are kept for a time to live per status, then deleted with
//!   their events in batches.
//! - **No "database is locked"**: SQLite runs in WAL mode with one writer task that commits
//!   batches of writes with `BEGIN IMMEDIATE`, a busy timeout on every connection, and retries
//!   of what is still busy.
//!
//! Delivery is at least once: a job whose worker dies, or loses its lease, runs again, so a
//! handler's side effects should be idempotent (keyed by [`Job::id`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brigade_jobs::{Job, JobError, Jobs, NewJob, Status};
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = Jobs::open("sqlite::memory:").await?; // a file: "sqlite://jobs.db"
//!
//! jobs.worker("embed", async |job: Job<Vec<String>>| {
//!     for (i, chunk) in job.payload().iter().enumerate() {
//!         let chunk = chunk.clone();
//!         let _vector = job.blocking(move |_cancel| chunk.len()).await?; // CPU work
//!         job.progress().send(&serde_json::json!({ "done": i + 1 })).await?;
//!     }
//!     Ok::<_, JobError>(job.payload().len())
//! })
//! .concurrency(4)
//! .start()?;
//!
//! let chunks = vec!["the quick".to_owned(), "brown fox".to_owned()];
//! let id = jobs.enqueue(NewJob::new("embed", &chunks).max_attempts(3)).await?.id();
//!
//! // Every event, from the first, until the last: `Last-Event-ID` would resume after `seq`.
//! let mut events = jobs.follow(id, 0);
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("id: {}, {}: {}", event.seq, event.kind, event.data);
//! }
//! assert_eq!(jobs.get(id).await?.unwrap().status, Status::Done);
//! jobs.shutdown(Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `sqlite` | yes | the SQLite backend (sqlx's, SQLite compiled in): a file in WAL mode, or in memory for tests |
//! | `postgres` | no | the Postgres backend: claims with `FOR UPDATE SKIP LOCKED`, `LISTEN`/`NOTIFY` wake-ups, a poll-only mode for connection poolers |
//! | `sse` | no | [`Jobs::follow_sse`]: a job's events as a resumable server-sent event stream for `brigade-sse`'s body, with `Last-Event-ID`, `204 No Content` for a client that has every event, and an id-less event when the stream is cut |
//!
//! No TLS backend of sqlx is turned on: a Postgres server that requires TLS needs one of
//! sqlx's TLS features in the application's manifest (see [`JobsBuilder::open_postgres`]).
//!
//! # Cancel safety
//!
//! Dropping a future of [`Jobs`] (`enqueue`, `cancel`, ...) after it started may or may not
//! have let its write commit: the write is one transaction, committed or not, never half. A
//! dropped [`Follow`] loses nothing; following again from the last `seq` seen resumes.
//!
//! # Time
//!
//! The store keeps times as milliseconds since the Unix epoch, read from the system clock once
//! when a `Jobs` opens and advanced by tokio's clock from then on. Each statement is given its
//! `now`; replicas compare leases by their own clocks, which must agree to well within a lease
//! (NTP keeps them to milliseconds).

#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend feature the store has no engine: the types compile, nothing runs.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(unused))]

mod clock;
mod error;
mod event;
mod follow;
mod id;
mod jobs;
mod new_job;
mod record;
#[cfg(feature = "sse")]
mod sse;
mod store;
mod wake;
mod worker;

pub use crate::error::{Error, ErrorKind, InvalidConfig, JobError, OpenError};
pub use crate::event::{Event, EventKind};
pub use crate::follow::Follow;
pub use crate::id::{InvalidJobId, JobId};
pub use crate::jobs::{Backend, Jobs, JobsBuilder};
pub use crate::new_job::{DEFAULT_MAX_ATTEMPTS, Enqueued, NewJob};
pub use crate::record::{CancelOutcome, Counts, JobRecord, Status};
#[cfg(feature = "sse")]
#[cfg_attr(docsrs, doc(cfg(feature = "sse")))]
pub use crate::sse::{SseCut, SseFollow, SseReply};
pub use crate::worker::{Job, Progress, WorkerBuilder, default_backoff};

pub use brigade_cancel::{CancelReason, CancelScope, CancellationToken};
/// The sqlx this crate is built on: its connect options (`sqlx::sqlite::SqliteConnectOptions`,
/// `sqlx::postgres::PgConnectOptions`) open a store with settings of one's own.
pub use sqlx;

// The README's examples use the SQLite backend and, for events over SSE, brigade-sse.
#[cfg(all(doctest, feature = "sqlite", feature = "sse"))]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
