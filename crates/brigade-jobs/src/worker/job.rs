//! What a handler gets: the job, its cancel scope, and its progress sink.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use brigade_cancel::{CancelScope, CancellationToken};
use serde::Serialize;
use tokio::sync::Notify;

use crate::JobId;
use crate::error::{Error, ErrorKind, JobError};
use crate::store::NewEvent;
use crate::wake::lock;

/// One attempt of a job, as its handler gets it.
///
/// The [`scope`](Self::scope) is cancelled when the attempt must stop: the job was
/// cancelled (from any replica), its lease was lost, its [timeout](crate::NewJob::timeout)
/// passed, or the process shuts down. The worker then drops the handler's future at its next
/// `.await`; code on the blocking pool ([`Job::blocking`]) should check the token it is given.
pub struct Job<P> {
    pub(crate) id: JobId,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) payload: P,
    pub(crate) scope: CancelScope,
    pub(crate) progress: Progress,
}

impl<P: fmt::Debug> fmt::Debug for Job<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl<P> Job<P> {
    /// The job's id.
    pub const fn id(&self) -> JobId {
        self.id
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1.
    pub const fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The most attempts the job makes.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The payload.
    pub const fn payload(&self) -> &P {
        &self.payload
    }

    /// The payload, by value (the scope and progress sink are kept apart first if needed).
    pub fn into_payload(self) -> P {
        self.payload
    }

    /// The attempt's cancel scope: a child of the store's scope, with the job's timeout as
    /// its deadline. Its reason says why it stopped (`deadline_exceeded`, `shutdown`, the
    /// reason given to [`Jobs::cancel`](crate::Jobs::cancel), or `lease_lost`).
    pub const fn scope(&self) -> &CancelScope {
        &self.scope
    }

    /// The attempt's progress sink (cheap to clone).
    pub const fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Runs CPU-heavy `work` on tokio's blocking pool, never on the runtime's threads, with
    /// the attempt's cancel token to check between steps.
    ///
    /// # Errors
    ///
    /// `work` panicked: a retryable error with the panic's message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn handler(job: brigade_jobs::Job<String>) -> Result<usize, brigade_jobs::JobError> {
    /// let text = job.payload().clone();
    /// let words = job
    ///     .blocking(move |cancel| {
    ///         let mut n = 0;
    ///         for _ in text.split_whitespace() {
    ///             if cancel.is_cancelled() {
    ///                 break;
    ///             }
    ///             n += 1;
    ///         }
    ///         n
    ///     })
    ///     .await?;
    /// # Ok(words)
    /// # }
    /// ```
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, JobError>
    where
        F: FnOnce(&CancellationToken) -> T + Send + 'static,
        T: Send + 'static,
    {
        let token = self.scope.token();
        tokio::task::spawn_blocking(move || work(&token))
            .await
            .map_err(|error| {
                let cause = if error.is_panic() {
                    panic_message(&*error.into_panic())
                } else {
                    "the blocking task was cancelled".to_owned()
                };
                JobError::with_message(
                    ErrorKind::Retryable,
                    format!("blocking work panicked: {cause}"),
                )
            })
    }
}

/// A running job's progress sink: each [`send`](Self::send) appends an event of kind
/// `progress` with its data, numbered after the job's previous events.
///
/// Events are written together: the first one sent waits up to the
/// [progress interval](crate::JobsBuilder::progress_interval) for others, and the lot goes in
/// one statement that checks the job's lease; the last ones go in the transaction that ends
/// the attempt. So an event a handler sent is kept if and only if the attempt still held the
/// job when it was written. Once the job is taken away, `send` fails with [`Error::JobLost`].
#[derive(Clone)]
pub struct Progress {
    pub(crate) inner: Arc<ProgressInner>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("pending", &lock(&self.inner.pending).len())
            .field("lost", &self.inner.lost.load(Ordering::Acquire))
            .finish()
    }
}

#[derive(Debug)]
pub(crate) struct ProgressInner {
    pub(crate) pending: Mutex<Vec<NewEvent>>,
    /// Wakes the runner: the first event of a batch, or a full buffer.
    pub(crate) wake: Notify,
    /// Wakes senders waiting for room.
    pub(crate) room: Notify,
    pub(crate) lost: AtomicBool,
    pub(crate) capacity: usize,
}

impl Progress {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(ProgressInner {
                pending: Mutex::new(Vec::new()),
                wake: Notify::new(),
                room: Notify::new(),
                lost: AtomicBool::new(false),
                capacity,
            }),
        }
    }

    /// Sends a progress event with `data` (serialized as JSON).
    ///
    /// Returns at once unless the job already holds
    /// [`progress_buffer`](crate::JobsBuilder::progress_buffer) unwritten events; then it
    /// waits until they are written.
    ///
    /// # Errors
    ///
    /// [`Error::JobLost`] once the job was taken away from this attempt (the event is not
    /// kept), and [`Error::Json`] if `data` does not serialize.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for room sends nothing.
    pub async fn send(&self, data: &impl Serialize) -> Result<(), Error> {
        let data = serde_json::to_string(data)?;
        let inner = &self.inner;
        loop {
            let room = inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if inner.lost.load(Ordering::Acquire) {
                return Err(Error::JobLost);
            }
            {
                let mut pending = lock(&inner.pending);
                if pending.len() < inner.capacity {
                    pending.push(NewEvent {
                        kind: "progress",
                        data,
                    });
                    let n = pending.len();
                    drop(pending);
                    if n == 1 || n >= inner.capacity {
                        inner.wake.notify_one();
                    }
                    return Ok(());
                }
            }
            inner.wake.notify_one();
            room.await;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        lock(&self.inner.pending).len() >= self.inner.capacity
    }

    /// Takes the unwritten events.
    pub(crate) fn take(&self) -> Vec<NewEvent> {
        std::mem::take(&mut *lock(&self.inner.pending))
    }

    /// Puts back events a failed write took, before any sent since.
    pub(crate) fn put_back(&self, mut events: Vec<NewEvent>) {
        let mut pending = lock(&self.inner.pending);
        events.append(&mut pending);
        *pending = events;
    }

    /// The job was taken away: no more events are kept.
    pub(crate) fn set_lost(&self) {
        self.inner.lost.store(true, Ordering::Release);
        lock(&self.inner.pending).clear();
        self.inner.room.notify_waiters();
    }

    /// Wakes senders waiting for room after a write.
    pub(crate) fn written(&self) {
        self.inner.room.notify_waiters();
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
