//! The prep shelf: background jobs that split a document into chunks and "embed" each one,
//! kept in a brigade-jobs store (a SQLite file by default, Postgres for replicas).
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/jobs` `{"document": "...", "chunk_size": 256}` | 202, `Location: /v1/jobs/{id}`, the job (`queued`); its id is 128 random bits (`job-` and 32 hex digits) |
//! | `GET /v1/jobs/{id}` | the job: status, attempt, progress, the result when done, the cancel reason or error |
//! | `GET /v1/jobs/{id}/events` | SSE: one event per step, its id the store's sequence number; `Last-Event-ID` resumes, on any replica, after a restart too; ends after the last step |
//! | `DELETE /v1/jobs/{id}` | cancels a queued or running job, on whichever replica runs it (200, `cancelled`); 409 once it has finished |
//!
//! What this module holds is the kitchen's part only: here the flags, the opening of the store
//! and the metrics; the HTTP contract in `routes`; the handler and its mock embedding in
//! `embed`. The queue, leases, workers, retries, cancel, event log and expiry are
//! brigade-jobs'.
//!
//! - **Admission.** The caller's API key when keys are configured (a job then belongs to its
//!   key, whose hash is kept in the payload: other keys get a 404), and the same per-client
//!   request quota as chat. `--job-queue` bounds the jobs waiting in the store (on every
//!   replica): beyond it, 503 with `Retry-After`.
//! - **The handler.** A chunk's embedding is CPU work, so it runs on tokio's blocking pool
//!   (`Job::blocking`), checking the job's cancel token between hashing rounds; then comes a
//!   mock I/O wait (`--job-chunk-io-ms`), async; then a progress event. A panic while
//!   embedding fails the job for good: the embedding is deterministic, a retry would panic
//!   again. A job whose process died runs again from its first chunk, on any replica, once its
//!   lease expires (its events go on numbered after the last one written).
//! - **Shutdown.** The workers stop claiming; running jobs get the grace period, then are
//!   released (queued again, the attempt not counted) for another replica or the next start;
//!   the store closes, and `main` waits for it ([`Shelf::closed`]) after the connections.
//!   Event streams end when the grace period is over, with an error event, so none holds the
//!   shutdown; their clients resume with `Last-Event-ID`.

mod embed;
mod routes;

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brigade_cancel::Shutdown;
use brigade_jobs::{Job, Jobs};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::chain;
use crate::metrics::{Metrics, add};

use self::embed::{Cook, Embed};
pub(crate) use self::routes::route;

/// The store's queue of the embedding jobs.
const QUEUE: &str = "embed";

/// Flags of the prep shelf.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct JobsConfig {
    /// The job store: `sqlite://PATH` (a file, created if missing), `sqlite::memory:` (gone at
    /// exit), or `postgres://…` (shared by replicas; needs the `postgres` feature). Default: the
    /// file `jobs.db` in `--data-dir`.
    #[arg(long, value_name = "URL")]
    pub(crate) jobs_db: Option<String>,

    /// The kitchen's data directory, created if missing: it holds the default job store.
    #[arg(long, default_value = "kitchen-data", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,

    /// Jobs this process runs at once; a job embeds its chunks one after another.
    #[arg(long, default_value = "2", value_name = "N")]
    pub(crate) job_workers: NonZeroUsize,

    /// Jobs that may wait in the store for a worker (of any replica); beyond it,
    /// `POST /v1/jobs` answers 503 with `Retry-After`.
    #[arg(long, default_value = "64", value_name = "N")]
    pub(crate) job_queue: NonZeroU64,

    /// How long a finished job (done, failed or cancelled) stays readable, in seconds; then it
    /// is deleted with its events (0: at once).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub(crate) job_keep_secs: u64,

    /// Mock I/O wait per chunk (storing its vector), in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub(crate) job_chunk_io_ms: u64,

    /// Hashing rounds over each chunk: the CPU cost of one embedding, paid on the blocking pool.
    #[arg(long, default_value = "2000", value_name = "N")]
    pub(crate) job_embed_rounds: NonZeroU32,

    /// Most chunks a job may have (its document's length over its `chunk_size`); more is a 400.
    #[arg(long, default_value = "4096", value_name = "N")]
    pub(crate) job_max_chunks: NonZeroUsize,

    /// How long a running job stays leased to this process without a heartbeat, in
    /// milliseconds: a job whose process died runs again this long after its last heartbeat.
    #[arg(long, hide = true, default_value_t = 30_000, value_name = "MS")]
    pub(crate) job_lease_ms: u64,

    /// How often this process extends its jobs' leases, in milliseconds (under half the lease).
    #[arg(long, hide = true, default_value_t = 500, value_name = "MS")]
    pub(crate) job_heartbeat_ms: u64,

    /// How often this process looks for due jobs and expired leases without a wake-up, and a
    /// follower for new events written by another process, in milliseconds.
    #[arg(long, hide = true, default_value_t = 1_000, value_name = "MS")]
    pub(crate) job_poll_ms: u64,

    /// Mock: panic while embedding a chunk that contains this text (to check that a failed job
    /// leaves its worker alive).
    #[arg(long, hide = true)]
    pub(crate) job_fail_text: Option<String>,

    /// Tests: the handler's side effect, an idempotent write. When a job's last chunk is
    /// embedded, the file `done/<id>` is created (`create_new`: once, however many times the
    /// job ran) and lines `start <id> <pid>` and `end <id> <pid>` are appended to `runs.log`
    /// at each execution's start and end.
    #[arg(long, hide = true, value_name = "DIR")]
    pub(crate) job_effects_dir: Option<PathBuf>,
}

impl JobsConfig {
    /// The store's URL: `--jobs-db`, or `jobs.db` in the data directory (created).
    fn url(&self) -> Result<String, String> {
        if let Some(url) = &self.jobs_db {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("--data-dir {}: {e}", self.data_dir.display()))?;
        Ok(format!(
            "sqlite://{}",
            self.data_dir.join("jobs.db").display()
        ))
    }
}

type Labels = Vec<(&'static str, String)>;

/// Metrics of the prep shelf.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    /// Jobs waiting in the store (every replica's), at the last scrape.
    pub(crate) queued: Gauge,
    /// Jobs running in the store (every replica's), at the last scrape.
    pub(crate) running: Gauge,
    /// Jobs held in the store, whatever their status, at the last scrape.
    pub(crate) stored: Gauge,
    /// Jobs accepted by this process.
    pub(crate) submitted: Counter,
    /// Jobs this process refused because the queue was full.
    pub(crate) rejected: Counter,
    /// Jobs this process's handler finished with a result.
    pub(crate) done: Counter,
    /// Jobs this process's handler failed for good.
    pub(crate) failed: Counter,
    /// Jobs cancelled through this process, by reason.
    pub(crate) cancelled: Family<Labels, Counter>,
    /// Chunks embedded by this process.
    pub(crate) chunks: Counter,
}

impl JobMetrics {
    pub(crate) fn register(r: &mut Registry) -> Self {
        Self {
            queued: add(r, "jobs_queue_depth", "Jobs waiting in the store"),
            running: add(r, "jobs_running", "Jobs running in the store"),
            stored: add(
                r,
                "jobs_stored",
                "Jobs held in the store (finished ones until their keep time is over)",
            ),
            submitted: add(r, "jobs_submitted", "Jobs accepted"),
            rejected: add(
                r,
                "jobs_rejected",
                "Jobs refused because the queue was full",
            ),
            done: add(r, "jobs_done", "Jobs finished with a result"),
            failed: add(r, "jobs_failed", "Jobs that failed"),
            cancelled: add(r, "jobs_cancelled", "Jobs cancelled, by reason"),
            chunks: add(r, "job_chunks_embedded", "Chunks embedded by the jobs"),
        }
    }
}

/// The prep shelf: the job store, with this process's workers started on it.
#[derive(Debug)]
pub(crate) struct Shelf {
    jobs: Jobs,
    queue_bound: u64,
    keep: Duration,
    chunk_io: Duration,
    workers: usize,
    max_chunks: usize,
}

impl Shelf {
    /// Opens the store, starts this process's workers, and stops them in `shutdown`.
    pub(crate) async fn open(
        config: &JobsConfig,
        metrics: Arc<Metrics>,
        shutdown: &Shutdown,
        grace: Duration,
    ) -> Result<Self, String> {
        let url = config.url()?;
        if !cfg!(feature = "postgres") && url.starts_with("postgres") {
            return Err(format!(
                "--jobs-db {url}: Postgres needs the kitchen built with the `postgres` feature \
                 (`cargo run --example kitchen --features postgres`)"
            ));
        }
        let keep = Duration::from_secs(config.job_keep_secs);
        let jobs = Jobs::builder()
            .lease(Duration::from_millis(config.job_lease_ms))
            .heartbeat(Duration::from_millis(config.job_heartbeat_ms))
            .poll_interval(Duration::from_millis(config.job_poll_ms))
            .reap_interval(Duration::from_millis(config.job_poll_ms))
            .keep_done(keep)
            .keep_failed(keep)
            .keep_cancelled(keep)
            .scope(shutdown.scope().clone())
            .open(&url)
            .await
            .map_err(|e| format!("--jobs-db {url}: {}", chain(&e)))?;
        let cook = Arc::new(Cook::new(config, metrics)?);
        jobs.worker(QUEUE, move |job: Job<Embed>| {
            let cook = Arc::clone(&cook);
            async move { cook.embed(job).await }
        })
        .concurrency(config.job_workers.get())
        .start()
        .map_err(|e| format!("job workers: {e}"))?;
        // Beside the shutdown's tasks, not one of them: `main` waits for the store's close
        // (`closed`) after the connections have drained.
        let (closing, draining) = (jobs.clone(), shutdown.clone());
        tokio::spawn(async move {
            draining.draining().await;
            closing.shutdown(grace).await;
        });
        tracing::info!(backend = ?jobs.backend(), owner = jobs.owner(), "job store open");
        Ok(Self {
            jobs,
            queue_bound: config.job_queue.get(),
            keep,
            chunk_io: Duration::from_millis(config.job_chunk_io_ms),
            workers: config.job_workers.get(),
            max_chunks: config.job_max_chunks.get(),
        })
    }

    /// Waits until the store has shut down: the workers stopped, running jobs released (the
    /// shutdown's grace period at most, then the store's close).
    pub(crate) async fn closed(&self) {
        self.jobs.closed().await;
        tracing::info!("job store closed; running jobs released");
    }

    /// The store's counts into the gauges (for a scrape of `/metrics`).
    pub(crate) async fn export_counts(&self, metrics: &Metrics) {
        match self.jobs.counts().await {
            Ok(counts) => {
                metrics.jobs.queued.set(gauge(counts.queued));
                metrics.jobs.running.set(gauge(counts.running));
                metrics.jobs.stored.set(gauge(counts.jobs()));
            }
            Err(error) => tracing::warn!(error = %chain(&error), "job counts failed"),
        }
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
