//! The crate's errors: opening a store, operating on it, and a handler's failure.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::JobId;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A [`JobsBuilder`](crate::JobsBuilder) setting that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// A duration that must be longer than zero is zero (its setter's name).
    Zero(&'static str),
    /// The heartbeat is not shorter than half the lease: one late heartbeat would lose jobs.
    HeartbeatTooLong {
        /// The heartbeat interval.
        heartbeat: Duration,
        /// The lease.
        lease: Duration,
    },
    /// A worker's queue name is empty or longer than 200 bytes.
    QueueName,
    /// A worker's concurrency is zero.
    Concurrency,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero(setting) => write!(f, "`{setting}` must be longer than zero"),
            Self::HeartbeatTooLong { heartbeat, lease } => write!(
                f,
                "the heartbeat ({heartbeat:?}) must be shorter than half the lease ({lease:?})"
            ),
            Self::QueueName => f.write_str("a queue name is 1 to 200 bytes"),
            Self::Concurrency => f.write_str("a worker's concurrency must be at least 1"),
        }
    }
}

impl StdError for InvalidConfig {}

/// Opening a store failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration cannot work.
    InvalidConfig(InvalidConfig),
    /// The URL names no backend this build has (`sqlite:` needs the `sqlite` feature,
    /// `postgres:` the `postgres` feature).
    UnsupportedUrl(String),
    /// Connecting, or applying the schema, failed.
    Database(sqlx::Error),
    /// The database holds a newer schema than this version of the crate knows: a newer
    /// version has migrated it, and this one must not write to it.
    NewerSchema {
        /// The database's schema version.
        found: i64,
        /// The newest version this crate knows.
        known: i64,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig(_) => f.write_str("invalid configuration"),
            Self::UnsupportedUrl(scheme) => write!(
                f,
                "no backend for `{scheme}` in this build (features `sqlite`, `postgres`)"
            ),
            Self::Database(_) => f.write_str("the job store could not be opened"),
            Self::NewerSchema { found, known } => write!(
                f,
                "the job store's schema is version {found}, newer than this build's {known}"
            ),
        }
    }
}

impl StdError for OpenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::InvalidConfig(e) => Some(e),
            Self::Database(e) => Some(e),
            Self::UnsupportedUrl(_) | Self::NewerSchema { .. } => None,
        }
    }
}

impl From<InvalidConfig> for OpenError {
    fn from(e: InvalidConfig) -> Self {
        Self::InvalidConfig(e)
    }
}

impl From<sqlx::Error> for OpenError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// An operation on the job store failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The database failed (after SQLite's busy waits and this crate's retries of them).
    Database(sqlx::Error),
    /// A payload or result does not serialize, or a stored one does not deserialize as asked.
    Json(serde_json::Error),
    /// A [`NewJob`](crate::NewJob) that cannot be queued (the reason).
    InvalidJob(&'static str),
    /// No such job (never queued, or pruned after its time to live).
    NotFound(JobId),
    /// The operating system's random generator failed (a new job needs an id).
    Random(getrandom::Error),
    /// The job was taken away from this worker: cancelled, or its lease expired and another
    /// worker may run it. Nothing more this attempt writes is kept, and its handler's scope
    /// is cancelled: the handler should stop.
    JobLost,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Database(_) => f.write_str("the job store failed"),
            Self::Json(_) => f.write_str("a job's JSON did not convert"),
            Self::InvalidJob(reason) => write!(f, "invalid job: {reason}"),
            Self::NotFound(id) => write!(f, "no job {id}"),
            Self::Random(_) => f.write_str("no random id for a new job"),
            Self::JobLost => f.write_str("the job was taken away from this worker"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Database(e) => Some(e),
            Self::Json(e) => Some(e),
            Self::Random(e) => Some(e),
            Self::InvalidJob(_) | Self::NotFound(_) | Self::JobLost => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// How a handler's attempt failed, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Try again after the worker's backoff schedule's next delay, while attempts remain.
    Retryable,
    /// Never try again: the job is `failed` at once.
    Permanent,
    /// The upstream asked to slow down: try again after this long at least (and at least the
    /// schedule's next delay), while attempts remain. It counts as an attempt.
    Throttled(Duration),
}

/// A handler's failure: a message (kept as the job's error) and what to do about it.
///
/// Any error converts into a retryable one with `?`; [`JobError::permanent`] and
/// [`JobError::throttled`] say otherwise. The message is the error's `Display`, followed by
/// each of its sources' (`: ` between them).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_jobs::{ErrorKind, JobError};
///
/// fn parse(text: &str) -> Result<u32, JobError> {
///     Ok(text.parse::<u32>()?) // a ParseIntError: retryable
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), ErrorKind::Retryable);
///
/// let refused = JobError::permanent("the document is empty");
/// assert_eq!(refused.kind(), ErrorKind::Permanent);
/// assert_eq!(refused.message(), "the document is empty");
///
/// let busy = JobError::throttled("429 from the upstream", Duration::from_secs(20));
/// assert_eq!(busy.kind(), ErrorKind::Throttled(Duration::from_secs(20)));
/// ```
#[derive(Clone, Debug)]
pub struct JobError {
    kind: ErrorKind,
    message: String,
}

impl JobError {
    /// A failure worth another attempt.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Retryable, &*error.into())
    }

    /// A failure no attempt will fix: the job fails now.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Permanent, &*error.into())
    }

    /// The upstream asked to wait `after` before trying again.
    pub fn throttled(error: impl Into<BoxError>, after: Duration) -> Self {
        Self::new(ErrorKind::Throttled(after), &*error.into())
    }

    fn new(kind: ErrorKind, error: &(dyn StdError + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { kind, message }
    }

    pub(crate) fn with_message(kind: ErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// What happens next.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message kept as the job's error.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error is a retryable [`JobError`] (`?` in a handler).
///
/// `JobError` itself is not an `std::error::Error`, as with `anyhow::Error`, so that this
/// conversion can exist.
impl<E> From<E> for JobError
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self::new(ErrorKind::Retryable, &error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream call failed")
        }
    }

    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_job_errors_message_carries_its_sources() {
        let error: JobError = Outer(std::io::Error::other("connection reset")).into();
        assert_eq!(error.message(), "upstream call failed: connection reset");
        assert_eq!(error.kind(), ErrorKind::Retryable);
    }
}
