//! A job to queue: its payload and how it runs.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::JobId;
use crate::error::Error;

/// The most attempts a job makes unless told otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A job to queue with [`Jobs::enqueue`](crate::Jobs::enqueue): a queue name, a payload
/// (anything serde serializes, kept as JSON), and how it runs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_jobs::NewJob;
///
/// let job = NewJob::new("embed", &serde_json::json!({ "document": "..." }))
///     .priority(10)
///     .delay(Duration::from_secs(5))
///     .max_attempts(3)
///     .timeout(Duration::from_secs(60))
///     .idempotency_key("upload-7f3a");
/// # let _ = job;
/// ```
#[derive(Debug)]
#[must_use]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Result<String, serde_json::Error>,
    pub(crate) priority: i32,
    pub(crate) run_at: RunAt,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotency_key: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum RunAt {
    Now,
    After(Duration),
    At(SystemTime),
}

impl NewJob {
    /// A job for the workers of `queue`, with `payload` serialized as JSON now (a payload
    /// that does not serialize makes `enqueue` fail with [`Error::Json`]).
    pub fn new(queue: impl Into<String>, payload: &impl Serialize) -> Self {
        Self {
            queue: queue.into(),
            payload: serde_json::to_string(payload),
            priority: 0,
            run_at: RunAt::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            idempotency_key: None,
        }
    }

    /// Among the jobs of a queue that are due, higher priorities run first; equal ones in
    /// the order they came due.
    ///
    /// Default: 0.
    pub const fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not before `delay` from now.
    ///
    /// Default: at once.
    pub const fn delay(mut self, delay: Duration) -> Self {
        self.run_at = RunAt::After(delay);
        self
    }

    /// Not before `at`.
    ///
    /// Default: at once.
    pub const fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = RunAt::At(at);
        self
    }

    /// The most attempts the job makes, the first included; at least 1. An attempt whose
    /// lease expired (its worker died) counts.
    ///
    /// Default: [`DEFAULT_MAX_ATTEMPTS`] (5).
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How long one attempt may run: then its handler's scope is cancelled with
    /// `DeadlineExceeded` and the attempt fails as retryable.
    ///
    /// Default: unbounded (the lease and its heartbeats keep a live worker's job).
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Queue this job at most once: while a job queued with the same key is held (until its
    /// time to live after it ends is over), `enqueue` returns that job's id instead.
    ///
    /// Keys are global, across queues. Default: none.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.queue.is_empty() || self.queue.len() > 200 {
            return Err(Error::InvalidJob("a queue name is 1 to 200 bytes"));
        }
        if self.max_attempts == 0 {
            return Err(Error::InvalidJob("`max_attempts` must be at least 1"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidJob("`timeout` must be longer than zero"));
        }
        if self
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 1_000)
        {
            return Err(Error::InvalidJob("an idempotency key is 1 to 1,000 bytes"));
        }
        Ok(())
    }
}

/// What [`Jobs::enqueue`](crate::Jobs::enqueue) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub(crate) id: JobId,
    pub(crate) created: bool,
}

impl Enqueued {
    /// The job's id: the new job's, or that of the job already queued with the same key.
    pub const fn id(&self) -> JobId {
        self.id
    }

    /// `false` when a job with the same idempotency key was already held (and its id is
    /// returned).
    pub const fn is_new(&self) -> bool {
        self.created
    }
}
