//! What a job is, as the store holds it: its status and the record a caller reads.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::JobId;
use crate::clock::system_time;

/// Where a job is in its life.
///
/// ```text
///            claim             Ok
///  queued ─────────▶ running ──────▶ done
///    ▲  │              │ │ │  error, attempts left ──▶ queued (run_at = now + backoff)
///    │  │              │ │ └─ lease expired, attempts left ──▶ queued (its run_at kept)
///    │  │              │ └── error or expired lease, no attempts left ──▶ failed
///    │  │              └──── shutdown releases it ──▶ queued (the attempt is not counted)
///    │  └── cancel ──▶ cancelled ◀── cancel ── running
/// ```
///
/// `done`, `failed` and `cancelled` are final: a final job never changes again, and is
/// deleted when its time to live is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Waiting for a worker (from its `run_at` on).
    Queued,
    /// Held by a worker under a lease.
    Running,
    /// Finished with a result.
    Done,
    /// Out of attempts, or failed permanently; the last error is kept.
    Failed,
    /// Cancelled, queued or running; the reason is kept.
    Cancelled,
}

impl Status {
    /// The name the stores keep: `queued`, `running`, `done`, `failed` or `cancelled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// `done`, `failed` or `cancelled`: the job will not change again.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(()),
        })
    }
}

/// A job as the store holds it, from [`Jobs::get`](crate::Jobs::get).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Where it is in its life.
    pub status: Status,
    /// Higher runs first among the jobs due in a queue.
    pub priority: i32,
    /// Its payload, as JSON text.
    pub payload: String,
    /// Attempts made (started) so far; the running one included.
    pub attempt: u32,
    /// The most attempts it may make.
    pub max_attempts: u32,
    /// How long one attempt may run, if bounded.
    pub timeout: Option<Duration>,
    /// The idempotency key it was queued with.
    pub idempotency_key: Option<String>,
    /// When it was queued.
    pub created_at: SystemTime,
    /// When it may run next (queued), or when its last run was due.
    pub run_at: SystemTime,
    /// When its latest attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached its final status.
    pub finished_at: Option<SystemTime>,
    /// When a final job is deleted.
    pub expires_at: Option<SystemTime>,
    /// The handler's result, as JSON text (`done` only).
    pub result: Option<String>,
    /// The last attempt's error (kept on a job that will try again, and on a `failed` one).
    pub error: Option<String>,
    /// Why it was cancelled (`cancelled` only).
    pub cancel_reason: Option<String>,
    /// The sequence number of its newest event (its events are numbered from 1).
    pub last_event: u64,
}

impl JobRecord {
    /// The payload, deserialized.
    ///
    /// # Errors
    ///
    /// The payload is not a `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// The result, deserialized; `None` before the job is `done`.
    ///
    /// # Errors
    ///
    /// The result is not a `T`.
    pub fn result_as<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.result.as_deref().map(serde_json::from_str).transpose()
    }
}

/// The row of a job, with times in milliseconds since the epoch: what a store reads.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) queue: String,
    pub(crate) state: String,
    pub(crate) priority: i64,
    pub(crate) payload: String,
    pub(crate) attempt: i64,
    pub(crate) max_attempts: i64,
    pub(crate) timeout_ms: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) run_at: i64,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) cancel_reason: Option<String>,
    pub(crate) last_seq: i64,
}

impl Row {
    /// The record; `None` for a row this version cannot read (a state it does not know).
    pub(crate) fn into_record(self) -> Option<JobRecord> {
        Some(JobRecord {
            id: self.id.parse().ok()?,
            queue: self.queue,
            status: self.state.parse().ok()?,
            priority: i32::try_from(self.priority).ok()?,
            payload: self.payload,
            attempt: u32::try_from(self.attempt).ok()?,
            max_attempts: u32::try_from(self.max_attempts).ok()?,
            timeout: self
                .timeout_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
            idempotency_key: self.idempotency_key,
            created_at: system_time(self.created_at),
            run_at: system_time(self.run_at),
            started_at: self.started_at.map(system_time),
            finished_at: self.finished_at.map(system_time),
            expires_at: self.expires_at.map(system_time),
            result: self.result,
            error: self.error,
            cancel_reason: self.cancel_reason,
            last_event: u64::try_from(self.last_seq).unwrap_or(0),
        })
    }
}

/// How many jobs the store holds in each status, and how many events, from
/// [`Jobs::counts`](crate::Jobs::counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Jobs queued (due or not).
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Jobs done, not yet pruned.
    pub done: u64,
    /// Jobs failed, not yet pruned.
    pub failed: u64,
    /// Jobs cancelled, not yet pruned.
    pub cancelled: u64,
    /// Events of every job held.
    pub events: u64,
}

impl Counts {
    /// Every job held, whatever its status.
    pub const fn jobs(&self) -> u64 {
        self.queued + self.running + self.done + self.failed + self.cancelled
    }

    pub(crate) fn add(&mut self, state: &str, n: i64) {
        let n = u64::try_from(n).unwrap_or(0);
        match state.parse() {
            Ok(Status::Queued) => self.queued += n,
            Ok(Status::Running) => self.running += n,
            Ok(Status::Done) => self.done += n,
            Ok(Status::Failed) => self.failed += n,
            Ok(Status::Cancelled) => self.cancelled += n,
            Err(()) => {}
        }
    }
}

/// What [`Jobs::cancel`](crate::Jobs::cancel) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was queued or running and is now `cancelled`, its final event written. A
    /// running handler's scope is cancelled within a second, on whichever replica runs it.
    Cancelled,
    /// The job had already finished, with this status; nothing changed.
    Finished(Status),
    /// No such job.
    NotFound,
}
