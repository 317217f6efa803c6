//! A job's events: its life and its handler's progress, numbered from 1 without a gap.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

/// What an [`Event`] tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The job was queued; also when a shutdown released it (data `{"reason":"released"}`).
    Queued,
    /// An attempt started (data `{"attempt":n}`).
    Running,
    /// The handler's progress (data: what it sent).
    Progress,
    /// An attempt failed and the job will run again (data `{"attempt":n,"error":"...",
    /// "run_at":ms}`; a lease that expired says `"error":"lease expired"`).
    Retrying,
    /// The job finished with a result (data `{"attempt":n}`); final.
    Done,
    /// The job failed (data `{"attempt":n,"error":"..."}`); final.
    Failed,
    /// The job was cancelled (data `{"reason":"..."}`); final.
    Cancelled,
}

impl EventKind {
    /// The name the stores keep, and a natural SSE event type.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Progress => "progress",
            Self::Retrying => "retrying",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// `done`, `failed` or `cancelled`: the job's last event.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "progress" => Self::Progress,
            "retrying" => Self::Retrying,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(()),
        })
    }
}

/// One event of a job.
///
/// `seq` numbers a job's events from 1, with no gap and no repeat, across restarts and
/// replicas: it is the number the store increments in the same transaction that writes the
/// event. An SSE server sends it as the event's `id`, and a client that reconnects with
/// `Last-Event-ID: n` resumes with [`Jobs::follow`](crate::Jobs::follow)`(id, n)`, on any
/// replica.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// Its number among the job's events, from 1.
    pub seq: u64,
    /// What it tells.
    pub kind: EventKind,
    /// Its data, as JSON text.
    pub data: String,
    /// When it was written.
    pub at: SystemTime,
}

impl Event {
    /// The data, deserialized.
    ///
    /// # Errors
    ///
    /// The data is not a `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}
