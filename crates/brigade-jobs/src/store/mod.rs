//! The job store: one set of operations, one implementation per engine.
//!
//! Each operation is one statement, or one transaction, that checks what it must in the same
//! statement that writes (the lease owner and attempt on every write of a running job; the
//! lease's expiry in the reaper's update), so no decision rests on a row read earlier. The
//! engines differ in how they lock (SQLite: one writer, `BEGIN IMMEDIATE`; Postgres: row locks
//! and `FOR UPDATE SKIP LOCKED`) and how they wake other replicas (Postgres `NOTIFY`). The
//! tables, statements and state machine are described in `docs/architecture.md`.
//!
//! Every time is milliseconds since the Unix epoch, passed in (`now`) by the caller.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(test)]
mod tests;

use crate::record::{Counts, Row};

/// The schema version this build writes; a database at a newer one is refused.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The Postgres channel of the wake-up hints (see `postgres`).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) const CHANNEL: &str = "brigade_jobs";

/// A job to insert.
#[derive(Debug)]
pub(crate) struct Insert<'a> {
    pub(crate) id: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) priority: i64,
    pub(crate) payload: &'a str,
    pub(crate) max_attempts: i64,
    pub(crate) timeout_ms: Option<i64>,
    pub(crate) key: Option<&'a str>,
    pub(crate) run_at: i64,
    pub(crate) now: i64,
}

/// A job a claim took: now `running`, leased to the claimer.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) id: String,
    pub(crate) priority: i64,
    pub(crate) run_at: i64,
    pub(crate) attempt: i64,
    pub(crate) max_attempts: i64,
    pub(crate) timeout_ms: Option<i64>,
    pub(crate) payload: String,
}

/// Which lease a write of a running job must still hold: the job is `running`, under this
/// owner, at this attempt. A write whose lease is gone changes nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease<'a> {
    pub(crate) id: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) attempt: i64,
}

/// An event to append.
#[derive(Clone, Debug)]
pub(crate) struct NewEvent {
    pub(crate) kind: &'static str,
    pub(crate) data: String,
}

/// How an attempt ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// `done`, with the result (JSON text).
    Done { result: String },
    /// `queued` again, not before `run_at`, keeping the error.
    Retry { run_at: i64, error: String },
    /// `failed`, with the error.
    Failed { error: String },
    /// `queued` again now, the attempt not counted (a shutdown).
    Release,
}

impl Ending {
    pub(crate) const fn state(&self) -> &'static str {
        match self {
            Self::Done { .. } => "done",
            Self::Retry { .. } | Self::Release => "queued",
            Self::Failed { .. } => "failed",
        }
    }
}

/// How long final jobs are kept, per status, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    pub(crate) done: i64,
    pub(crate) failed: i64,
    pub(crate) cancelled: i64,
}

impl Retention {
    /// When a job reaching `state` at `now` expires (`None`: not a final state).
    pub(crate) fn expires_at(&self, state: &str, now: i64) -> Option<i64> {
        let keep = match state {
            "done" => self.done,
            "failed" => self.failed,
            "cancelled" => self.cancelled,
            _ => return None,
        };
        Some(now.saturating_add(keep))
    }
}

/// A job the reaper took back from a dead worker.
#[derive(Debug)]
pub(crate) struct Reaped {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) id: String,
    pub(crate) queue: String,
    /// Queued again (attempts left), or failed.
    pub(crate) requeued: bool,
}

/// What a cancel did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// Cancelled now; `running` if a worker held it (it must stop).
    Now {
        running: bool,
    },
    /// Already final, in this state.
    Finished(String),
    NotFound,
}

/// One event as read.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) data: String,
    pub(crate) at: i64,
}

/// A job a heartbeat found no longer held by its owner: its state now, and the cancel reason
/// if it was cancelled.
#[derive(Debug)]
pub(crate) struct Gone {
    pub(crate) id: String,
    pub(crate) state: Option<String>,
    pub(crate) cancel_reason: Option<String>,
}

/// The backend, chosen when the store is opened.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever backend the store is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match *$self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(ref $store) => $call,
            #[cfg(feature = "postgres")]
            Store::Postgres(ref $store) => $call,
        }
    };
}

impl Store {
    /// Inserts a job and its `queued` event; an idempotency key already held returns that
    /// job's id instead (`false`).
    pub(crate) async fn enqueue(&self, job: &Insert<'_>) -> Result<(String, bool), sqlx::Error> {
        dispatch!(self, s => s.enqueue(job).await)
    }

    /// Claims up to `limit` due jobs of `queue` for `owner`, with leases until `lease_until`,
    /// and writes each one's `running` event.
    pub(crate) async fn claim(
        &self,
        queue: &str,
        limit: i64,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        dispatch!(self, s => s.claim(queue, limit, owner, now, lease_until).await)
    }

    /// Extends the leases of `ids` still running under `owner` to `lease_until`, in one
    /// statement; the ids and attempts it extended.
    pub(crate) async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        dispatch!(self, s => s.heartbeat(owner, ids, lease_until).await)
    }

    /// The state and cancel reason of each of `ids` (a missing job has neither).
    pub(crate) async fn gone(&self, ids: &[String]) -> Result<Vec<Gone>, sqlx::Error> {
        dispatch!(self, s => s.gone(ids).await)
    }

    /// Appends `events` to a running job; `false` if the lease is gone (nothing written).
    pub(crate) async fn append(
        &self,
        lease: Lease<'_>,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, s => s.append(lease, events, now).await)
    }

    /// Ends an attempt: the pending `progress` events, then the ending's state and its event,
    /// in one transaction; `false` if the lease is gone (nothing written).
    pub(crate) async fn finish(
        &self,
        lease: Lease<'_>,
        progress: &[NewEvent],
        ending: &Ending,
        now: i64,
        retention: Retention,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, s => s.finish(lease, progress, ending, now, retention).await)
    }

    /// Cancels a queued or running job, with its `cancelled` event, in one transaction.
    pub(crate) async fn cancel(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        retention: Retention,
    ) -> Result<Cancelled, sqlx::Error> {
        dispatch!(self, s => s.cancel(id, reason, now, retention).await)
    }

    /// Takes back up to `limit` running jobs whose lease expired before `now`, in the statement
    /// that checks the expiry: queued again, or failed without attempts left.
    pub(crate) async fn reap(
        &self,
        now: i64,
        limit: i64,
        retention: Retention,
    ) -> Result<Vec<Reaped>, sqlx::Error> {
        dispatch!(self, s => s.reap(now, limit, retention).await)
    }

    /// Deletes up to `limit` final jobs whose time to live is over, with their events.
    pub(crate) async fn prune(&self, now: i64, limit: i64) -> Result<u64, sqlx::Error> {
        dispatch!(self, s => s.prune(now, limit).await)
    }

    /// The job, unless it is missing or expired.
    pub(crate) async fn get(&self, id: &str, now: i64) -> Result<Option<Row>, sqlx::Error> {
        dispatch!(self, s => s.get(id, now).await)
    }

    /// Up to `limit` events of the job after `after`, in order.
    pub(crate) async fn events_after(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        dispatch!(self, s => s.events_after(id, after, limit).await)
    }

    /// Jobs per state, and events.
    pub(crate) async fn counts(&self) -> Result<Counts, sqlx::Error> {
        dispatch!(self, s => s.counts().await)
    }

    /// The queued jobs of `queue`, counted up to `at_most` (the partial index's entries).
    pub(crate) async fn queued(&self, queue: &str, at_most: i64) -> Result<i64, sqlx::Error> {
        dispatch!(self, s => s.queued(queue, at_most).await)
    }

    /// Closes the pools.
    pub(crate) async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}

/// The data of the event ending an attempt.
pub(crate) fn ending_event(ending: &Ending, attempt: i64) -> NewEvent {
    use serde_json::json;
    let (kind, data) = match ending {
        Ending::Done { .. } => ("done", json!({ "attempt": attempt })),
        Ending::Retry { run_at, error } => (
            "retrying",
            json!({ "attempt": attempt, "error": error, "run_at": run_at }),
        ),
        Ending::Failed { error } => ("failed", json!({ "attempt": attempt, "error": error })),
        Ending::Release => ("queued", json!({ "reason": "released" })),
    };
    NewEvent {
        kind,
        data: data.to_string(),
    }
}

/// The data of a `cancelled` event.
pub(crate) fn cancelled_data(reason: &str) -> String {
    serde_json::json!({ "reason": reason }).to_string()
}
