//! Workers: a queue's claim loop, and the runner of each job it claims.
//!
//! A worker runs at most `concurrency` jobs of its queue at once. Whenever it has free slots
//! it claims up to that many due jobs in one statement, and it sleeps until a slot frees, a
//! wake-up comes (a job queued in this process, or a Postgres hint), a job it knows of comes
//! due, or the poll interval passes.

mod job;
mod run;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use brigade_retry::{Backoff, Jitter, Schedule};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

pub use self::job::{Job, Progress};
use crate::error::{InvalidConfig, JobError};
use crate::jobs::{Core, Jobs};

/// The delay before retry `n` (0 for the first), from a job's seed; `None` once the schedule
/// has ended.
pub(crate) type Delays = Arc<dyn Fn(u64, u32) -> Option<Duration> + Send + Sync>;

/// A worker's default backoff: exponential from 1 s, doubling, capped at 10 minutes, with
/// full jitter.
pub fn default_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1), 2.0)
        .max_delay(Duration::from_secs(600))
        .jitter(Jitter::Full)
}

/// A worker to start: its queue, handler, concurrency and backoff. From [`Jobs::worker`].
#[must_use = "a worker runs only once started"]
pub struct WorkerBuilder<P, H> {
    jobs: Jobs,
    queue: String,
    handler: H,
    concurrency: usize,
    delays: Delays,
    _payload: PhantomData<fn() -> P>,
}

impl<P, H> fmt::Debug for WorkerBuilder<P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// A worker for `queue`: `handler` runs each job, with its payload deserialized as `P`.
    ///
    /// The handler's `Ok` is the job's result (serialized as JSON), and the job is `done`. An
    /// error is retried after the worker's [backoff](WorkerBuilder::backoff) while attempts
    /// remain, unless [permanent](JobError::permanent); a
    /// [throttled](JobError::throttled) one waits at least as long as it asks. A payload that
    /// does not deserialize as `P`, or a result that does not serialize, fails the job at
    /// once. A panic in the handler fails the attempt as a retryable error.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_jobs::{Job, JobError, Jobs};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs = Jobs::open("sqlite::memory:").await?;
    /// jobs.worker("count", async |job: Job<Vec<u32>>| {
    ///     for (i, _) in job.payload().iter().enumerate() {
    ///         job.progress().send(&serde_json::json!({ "done": i + 1 })).await?;
    ///     }
    ///     Ok::<_, JobError>(job.payload().len())
    /// })
    /// .concurrency(4)
    /// .start()?;
    /// # jobs.shutdown(std::time::Duration::ZERO).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker<P, H, F, R>(&self, queue: impl Into<String>, handler: H) -> WorkerBuilder<P, H>
    where
        P: DeserializeOwned + Send + 'static,
        H: Fn(Job<P>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<R, JobError>> + Send + 'static,
        R: Serialize + Send + 'static,
    {
        let backoff = default_backoff();
        WorkerBuilder {
            jobs: self.clone(),
            queue: queue.into(),
            handler,
            concurrency: 1,
            delays: Arc::new(move |seed, n| backoff.delays(seed).nth(n as usize)),
            _payload: PhantomData,
        }
    }
}

impl<P, H, F, R> WorkerBuilder<P, H>
where
    P: DeserializeOwned + Send + 'static,
    H: Fn(Job<P>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<R, JobError>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    /// The most jobs of the queue this worker runs at once.
    ///
    /// Default: 1.
    pub const fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs;
        self
    }

    /// The delays before retries, one of brigade-retry's schedules: retry `n` of a job waits
    /// the schedule's `n`-th delay, jittered from a seed of the job's own (the same job, the
    /// same delays). When the schedule ends, the job fails with its last error, whatever
    /// attempts remain.
    ///
    /// Default: [`default_backoff`], exponential from 1 s, doubling, capped at 10 minutes, with
    /// full jitter.
    pub fn backoff<S>(mut self, schedule: S) -> Self
    where
        S: Schedule + Send + Sync + 'static,
    {
        self.delays = Arc::new(move |seed, n| schedule.delays(seed).nth(n as usize));
        self
    }

    /// Starts the worker, as a task of its [`Jobs`] (it stops with it).
    ///
    /// # Errors
    ///
    /// The queue name is empty or longer than 200 bytes, or the concurrency is zero.
    pub fn start(self) -> Result<(), InvalidConfig> {
        if self.queue.is_empty() || self.queue.len() > 200 {
            return Err(InvalidConfig::QueueName);
        }
        if self.concurrency == 0 {
            return Err(InvalidConfig::Concurrency);
        }
        let worker = Worker {
            core: Arc::clone(self.jobs.core()),
            queue: Arc::from(self.queue),
            handler: Arc::new(self.handler),
            concurrency: self.concurrency,
            delays: self.delays,
            _payload: PhantomData,
        };
        self.jobs.spawn_worker(worker.work());
        Ok(())
    }
}

/// A started worker.
pub(crate) struct Worker<P, H> {
    pub(crate) core: Arc<Core>,
    pub(crate) queue: Arc<str>,
    pub(crate) handler: Arc<H>,
    pub(crate) concurrency: usize,
    pub(crate) delays: Delays,
    _payload: PhantomData<fn() -> P>,
}

impl<P, H, F, R> Worker<P, H>
where
    P: DeserializeOwned + Send + 'static,
    H: Fn(Job<P>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<R, JobError>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    /// Claims and runs jobs until the store drains, then waits for the running ones.
    async fn work(self) {
        let core = Arc::clone(&self.core);
        let wake = core.wakers.queue(&self.queue);
        let this = Arc::new(self);
        let mut running = JoinSet::new();
        let mut failures = 0_u32;
        loop {
            while running.try_join_next().is_some() {}
            if core.is_draining() {
                break;
            }
            // Registered before the claim: a job queued after it wakes this worker.
            let woken = wake.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let free = this.concurrency.saturating_sub(running.len());
            let mut error_wait = None;
            if free > 0 {
                let now = core.now();
                let lease_until = now.saturating_add(crate::clock::millis(core.config.lease));
                let limit = i64::try_from(free).unwrap_or(i64::MAX);
                match core
                    .store
                    .claim(&this.queue, limit, &core.owner, now, lease_until)
                    .await
                {
                    Ok(mut claimed) => {
                        failures = 0;
                        claimed.sort_by(|a, b| {
                            b.priority
                                .cmp(&a.priority)
                                .then(a.run_at.cmp(&b.run_at))
                                .then(a.id.cmp(&b.id))
                        });
                        let full = claimed.len() >= free;
                        for job in claimed {
                            let registered = run::register(&core, &job);
                            running.spawn(Arc::clone(&this).run(job, registered));
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, queue = %this.queue, "brigade-jobs: claim failed");
                        // 100 ms, doubling, up to the poll interval.
                        let wait = Duration::from_millis(100)
                            .saturating_mul(1 << failures.min(10))
                            .min(core.config.poll_interval);
                        error_wait = Some(wait);
                    }
                }
            }
            let now = core.now();
            let due = wake
                .next_due(now)
                .map(|at| core.clock.instant_of(at))
                .unwrap_or_else(|| tokio::time::Instant::now() + crate::clock::FAR);
            let poll = error_wait.unwrap_or(core.config.poll_interval);
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = &mut woken, if error_wait.is_none() => {}
                () = tokio::time::sleep(poll) => {}
                () = tokio::time::sleep_until(due) => {}
                () = core.draining.cancelled() => {}
                _ = core.scope.cancelled() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }
}
