//! `Jobs`: the handle to a job store, its workers and this process's maintenance tasks.
//!
//! # Invariants
//!
//! - `running` holds one entry per job this process runs, registered after its claim
//!   committed and removed after its last write. The heartbeat snapshots it *before* its
//!   statement, so a job it does not find extended was lost (or has just ended, which it
//!   checks), never merely claimed after the statement's snapshot.
//! - An entry's `taken` flag is set before its scope is cancelled by a cancel or a lost lease:
//!   a runner that sees it set writes nothing more (the row is no longer its own).
//! - Lock order: `running` alone; the wakers' maps alone (see `wake`). No lock is held across
//!   an `.await`.

mod builder;
pub(crate) mod maintenance;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::builder::JobsBuilder;
use crate::clock::{Clock, epoch_ms, millis};
use crate::error::Error;
use crate::event::Event;
use crate::new_job::{Enqueued, NewJob, RunAt};
use crate::record::{CancelOutcome, Counts, JobRecord};
use crate::store::{self, Insert, Retention, Store};
use crate::wake::{Wakers, lock};
use crate::{EventKind, JobId};

/// The settings the running parts read.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) reap_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) prune_interval: Duration,
    pub(crate) prune_batch: u32,
    pub(crate) retention: Retention,
    pub(crate) progress_interval: Duration,
    pub(crate) progress_buffer: usize,
}

/// Which engine a [`Jobs`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite in memory (tests).
    Memory,
    /// A SQLite file.
    Sqlite,
    /// Postgres.
    Postgres,
}

/// A job this process runs.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) attempt: i64,
    pub(crate) scope: CancelScope,
    pub(crate) taken: Arc<AtomicBool>,
}

/// What the runners, workers and maintenance tasks share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) store: Store,
    pub(crate) clock: Clock,
    /// This process's lease owner: its pid and 64 random bits.
    pub(crate) owner: String,
    pub(crate) config: Config,
    pub(crate) backend: Backend,
    /// Every job's scope is a child of it.
    pub(crate) scope: CancelScope,
    /// Cancelled when the workers must stop claiming.
    pub(crate) draining: CancellationToken,
    pub(crate) running: Mutex<HashMap<String, Running>>,
    /// Woken when a job leaves `running`.
    pub(crate) ended: Notify,
    pub(crate) wakers: Arc<Wakers>,
}

impl Core {
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether the workers must stop claiming.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled() || self.scope.is_cancelled()
    }

    /// Takes job `id` away from its runner, if this process runs it at `attempt` (any
    /// attempt if `None`): its scope is cancelled with `reason`. Whatever its runner writes
    /// afterwards fails its lease check.
    pub(crate) fn take_away(&self, id: &str, attempt: Option<i64>, reason: CancelReason) {
        let running = lock(&self.running);
        if let Some(entry) = running.get(id)
            && attempt.is_none_or(|a| a == entry.attempt)
        {
            entry.taken.store(true, Ordering::Release);
            entry.scope.cancel(reason);
        }
    }
}

/// The tasks of one `Jobs`: aborted when the last handle drops, as if the process died.
#[derive(Debug)]
struct Shared {
    core: Arc<Core>,
    workers: Mutex<JoinSet<()>>,
    maintenance: Mutex<JoinSet<()>>,
    /// Cancelled when a shutdown has ended.
    closed: CancellationToken,
}

/// A durable job store, its workers and this process's part in keeping it: the handle to
/// queue, read, follow and cancel jobs, and to start workers.
///
/// Cloning is cheap (one `Arc`); the clones share everything. Open one with [`Jobs::open`]
/// or [`Jobs::builder`].
///
/// [`shutdown`](Self::shutdown) stops it gracefully: the workers stop claiming, running jobs
/// get a grace period, then their handlers are cancelled and the jobs released to run again.
/// Dropping the last handle instead aborts everything at once, as a crash would: the jobs
/// this process ran stay `running` until their leases expire, when any replica's reaper
/// queues them again.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_jobs::{Jobs, NewJob, Status};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let jobs = Jobs::open("sqlite::memory:").await?;
/// jobs.worker("greet", async |job: brigade_jobs::Job<String>| {
///     Ok(format!("hello, {}", job.payload()))
/// })
/// .start()?;
///
/// let id = jobs.enqueue(NewJob::new("greet", &"kitchen")).await?.id();
/// let mut record = jobs.get(id).await?.unwrap();
/// while !record.status.is_final() {
///     tokio::time::sleep(Duration::from_millis(5)).await;
///     record = jobs.get(id).await?.unwrap();
/// }
/// assert_eq!(record.status, Status::Done);
/// assert_eq!(record.result_as::<String>()?.unwrap(), "hello, kitchen");
/// jobs.shutdown(Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("backend", &self.shared.core.backend)
            .field("owner", &self.shared.core.owner)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The settings of a store to open.
    pub fn builder() -> JobsBuilder {
        JobsBuilder::default()
    }

    /// Opens the store a URL names with the default settings: see [`JobsBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`JobsBuilder::open`].
    pub async fn open(url: &str) -> Result<Self, crate::OpenError> {
        Self::builder().open(url).await
    }

    fn start(builder: JobsBuilder, store: Store, backend: Backend) -> Self {
        let owner = format!(
            "{}-{:016x}",
            std::process::id(),
            JobId::random().map_or(0, |id| id.as_u128() as u64)
        );
        let core = Arc::new(Core {
            store,
            clock: Clock::new(),
            owner,
            config: builder.config,
            backend,
            scope: builder.scope.map_or_else(CancelScope::new, |s| s.child()),
            draining: CancellationToken::new(),
            running: Mutex::default(),
            ended: Notify::new(),
            wakers: Arc::default(),
        });
        let mut maintenance = JoinSet::new();
        maintenance.spawn(maintenance::heartbeat(Arc::clone(&core)));
        maintenance.spawn(maintenance::reaper(Arc::clone(&core)));
        maintenance.spawn(maintenance::pruner(Arc::clone(&core)));
        #[cfg(feature = "postgres")]
        if builder.listen
            && let Store::Postgres(pg) = &core.store
        {
            maintenance.spawn(maintenance::listener(Arc::clone(&core), pg.pool().clone()));
        }
        #[cfg(not(feature = "postgres"))]
        let _ = builder.listen;
        Self {
            shared: Arc::new(Shared {
                core,
                workers: Mutex::new(JoinSet::new()),
                maintenance: Mutex::new(maintenance),
                closed: CancellationToken::new(),
            }),
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.shared.core
    }

    pub(crate) fn spawn_worker(&self, worker: impl Future<Output = ()> + Send + 'static) {
        lock(&self.shared.workers).spawn(worker);
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.shared.core.backend
    }

    /// This process's name as a lease owner (its pid and 64 random bits): the
    /// `lease_owner` of the jobs it runs.
    pub fn owner(&self) -> &str {
        &self.shared.core.owner
    }

    /// Queues a job, with its `queued` event (sequence number 1), in one transaction.
    ///
    /// A job with an [idempotency key](NewJob::idempotency_key) that a held job already has
    /// is not queued: the held job's id comes back, with [`Enqueued::is_new`] `false`. Workers
    /// of its queue in this process wake at once; on Postgres, those of every replica that
    /// listens.
    ///
    /// # Errors
    ///
    /// The payload did not serialize, the job is invalid (an empty queue name, zero
    /// attempts or timeout), or the store failed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it ends may or may not have queued the job: give it an
    /// idempotency key to queue it again safely.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, Error> {
        job.validate()?;
        let NewJob {
            queue,
            payload,
            priority,
            run_at,
            max_attempts,
            timeout,
            idempotency_key,
        } = job;
        let payload = payload?;
        let core = self.core();
        let id = JobId::random().map_err(Error::Random)?;
        let hex = id.hex();
        let now = core.now();
        let run_at = match run_at {
            RunAt::Now => now,
            RunAt::After(delay) => now.saturating_add(millis(delay)),
            RunAt::At(at) => epoch_ms(at),
        };
        let (stored, created) = core
            .store
            .enqueue(&Insert {
                id: &hex,
                queue: &queue,
                priority: i64::from(priority),
                payload: &payload,
                max_attempts: i64::from(max_attempts),
                timeout_ms: timeout.map(millis),
                key: idempotency_key.as_deref(),
                run_at,
                now,
            })
            .await?;
        if created {
            if run_at <= now {
                core.wakers.wake_queue(&queue);
            } else {
                core.wakers.queue(&queue).due_at(run_at);
                core.wakers.wake_queue(&queue);
            }
            return Ok(Enqueued { id, created });
        }
        let id = stored
            .parse()
            .map_err(|_| Error::InvalidJob("a held job's id is not 32 hex digits"))?;
        Ok(Enqueued { id, created })
    }

    /// The job, unless it is unknown or was final past its time to live (a job past it is
    /// never returned, whether or not the pruner has deleted it yet).
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, Error> {
        let core = self.core();
        let row = core.store.get(&id.hex(), core.now()).await?;
        Ok(row.and_then(crate::record::Row::into_record))
    }

    /// Cancels a queued or running job, from any replica: it becomes `cancelled` now, with
    /// its final event, in one transaction, and a running handler's scope is cancelled with
    /// `reason`: at once in this process, within a second elsewhere (a Postgres notification,
    /// or at the latest the next heartbeat of the replica that runs it). Whatever that
    /// handler writes afterwards is discarded.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn cancel(
        &self,
        id: JobId,
        reason: impl Into<CancelReason>,
    ) -> Result<CancelOutcome, Error> {
        let reason = reason.into();
        let core = self.core();
        let hex = id.hex();
        let outcome = core
            .store
            .cancel(&hex, reason.as_str(), core.now(), core.config.retention)
            .await?;
        Ok(match outcome {
            store::Cancelled::Now { running } => {
                if running {
                    core.take_away(&hex, None, reason);
                }
                core.wakers.wake_job(&hex);
                CancelOutcome::Cancelled
            }
            store::Cancelled::Finished(state) => CancelOutcome::Finished(
                state
                    .parse()
                    .map_err(|()| Error::InvalidJob("a job's state is unknown"))?,
            ),
            store::Cancelled::NotFound => CancelOutcome::NotFound,
        })
    }

    /// Up to `limit` events of the job after sequence number `after` (0: from the first), in
    /// order. A job that is unknown, or pruned, has none.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn events_after(
        &self,
        id: JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        read_events(self.core(), &id.hex(), after, limit).await
    }

    /// The job's events after sequence number `after` (0: from the first), then each new one
    /// as it is written, ending after its final event (`done`, `failed` or `cancelled`).
    ///
    /// A client that reconnects with `Last-Event-ID: n` resumes with `follow(id, n)` on any
    /// replica, after a restart too: the numbers are the store's. New events wake the stream
    /// at once when written in this process (or on Postgres with `LISTEN`), else at the next
    /// poll interval.
    ///
    /// The stream yields [`Error::NotFound`] and ends if the job is unknown or pruned, and an
    /// error of the store and ends if a read fails.
    pub fn follow(&self, id: JobId, after: u64) -> crate::Follow {
        crate::follow::follow(Arc::clone(self.core()), id, after)
    }

    /// How many jobs the store holds in each status, and how many events (two counting
    /// queries: mind their cost on a large table).
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn counts(&self) -> Result<Counts, Error> {
        Ok(self.core().store.counts().await?)
    }

    /// How many jobs of `queue` wait for a worker (due or not), counted up to `at_most`: a
    /// bound on a queue (refuse new jobs while `queued(queue, bound)` reaches `bound`) reads
    /// at most `bound` entries of the queued jobs' index, whatever the table holds, where
    /// [`counts`](Self::counts) reads every row.
    ///
    /// # Errors
    ///
    /// The store failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_jobs::{Jobs, NewJob};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs = Jobs::open("sqlite::memory:").await?; // no worker: the jobs wait
    /// for n in 0..3 {
    ///     jobs.enqueue(NewJob::new("embed", &n)).await?;
    /// }
    /// assert_eq!(jobs.queued("embed", 100).await?, 3);
    /// assert_eq!(jobs.queued("embed", 2).await?, 2); // the bound is reached
    /// assert_eq!(jobs.queued("other", 100).await?, 0);
    /// # jobs.shutdown(std::time::Duration::ZERO).await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn queued(&self, queue: &str, at_most: u64) -> Result<u64, Error> {
        let at_most = i64::try_from(at_most).unwrap_or(i64::MAX);
        let n = self.core().store.queued(queue, at_most).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Stops gracefully: the workers stop claiming; the running jobs get `grace` to end;
    /// then their handlers' scopes are cancelled with [`CancelReason::Shutdown`] and each
    /// job is released (queued again, its attempt not counted, keeping its due time and so its
    /// place in the queue) unless it ends first; then
    /// the heartbeat, reaper, pruner and listener stop, and the store closes. Every clone of
    /// this `Jobs` is stopped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the shutdown where it was: the workers have stopped
    /// claiming, and the rest stops when the last handle drops.
    pub async fn shutdown(&self, grace: Duration) {
        let core = self.core();
        core.draining.cancel();
        let deadline = tokio::time::Instant::now() + grace.min(crate::clock::FAR);
        loop {
            let ended = core.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if lock(&core.running).is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        core.scope.cancel(CancelReason::Shutdown);
        let mut workers = std::mem::take(&mut *lock(&self.shared.workers));
        while workers.join_next().await.is_some() {}
        let mut maintenance = std::mem::take(&mut *lock(&self.shared.maintenance));
        maintenance.shutdown().await;
        core.store.close().await;
        self.shared.closed.cancel();
    }

    /// Waits until a [`shutdown`](Self::shutdown), by any clone, has ended: the workers
    /// stopped, the running jobs ended or released, the store closed. It never resolves
    /// without a shutdown.
    ///
    /// A process that starts the shutdown in one task (on a signal, say) waits for it with
    /// this in another, before it exits.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_jobs::Jobs;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs = Jobs::open("sqlite::memory:").await?;
    /// let closing = jobs.clone();
    /// tokio::spawn(async move { closing.shutdown(Duration::from_secs(1)).await });
    /// jobs.closed().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }
}

/// Reads events as [`Event`]s.
pub(crate) async fn read_events(
    core: &Core,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let rows = core
        .store
        .events_after(
            id,
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(Event {
                seq: u64::try_from(row.seq).ok()?,
                kind: row.kind.parse::<EventKind>().ok()?,
                data: row.data,
                at: crate::clock::system_time(row.at),
            })
        })
        .collect())
}
