//! Durable background jobs for async services: a queue that survives restarts and is shared
//! by replicas, on SQLite (embedded, the default) or Postgres.
//!
//! TODO crate docs.

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
pub use crate::worker::{Job, Progress, WorkerBuilder, default_backoff};

pub use brigade_cancel::{CancelReason, CancelScope, CancellationToken};
pub use sqlx;
