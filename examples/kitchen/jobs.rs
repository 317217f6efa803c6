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
//! What this file holds is the kitchen's part only: the routes, the "embed" handler and the
//! metrics. The queue, leases, workers, retries, cancel, event log and expiry are brigade-jobs'.
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

use std::io::Write;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brigade_cancel::{CancelReason, CancellationToken, Shutdown};
use brigade_jobs::{
    CancelOutcome, EventKind, Job, JobError, JobId, JobRecord, Jobs, NewJob, Status,
};
use brigade_sse::{Event, KeepAlive, SseBody};
use futures::{Stream, StreamExt};
use http::header::{HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::ClientKey;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::routes::{App, Body, full, json};

/// The store's queue of the embedding jobs.
const QUEUE: &str = "embed";

/// The chunk size, in characters, of a job that gives none.
const DEFAULT_CHUNK_SIZE: usize = 256;

/// Dimensions of the mock embedding.
const DIMENSIONS: usize = 8;

/// The reconnection time suggested to `EventSource` clients (`retry:`).
const RECONNECT: Duration = Duration::from_secs(1);

/// The cancel reason of `DELETE /v1/jobs/{id}`.
const CLIENT_REQUEST: &str = "client_request";

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
#[derive(Debug, Default)]
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
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for (name, help, gauge) in [
            (
                "jobs_queue_depth",
                "Jobs waiting in the store",
                &metrics.queued,
            ),
            (
                "jobs_running",
                "Jobs running in the store",
                &metrics.running,
            ),
            (
                "jobs_stored",
                "Jobs held in the store (finished ones until their keep time is over)",
                &metrics.stored,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        for (name, help, counter) in [
            ("jobs_submitted", "Jobs accepted", &metrics.submitted),
            (
                "jobs_rejected",
                "Jobs refused because the queue was full",
                &metrics.rejected,
            ),
            ("jobs_done", "Jobs finished with a result", &metrics.done),
            ("jobs_failed", "Jobs that failed", &metrics.failed),
            (
                "job_chunks_embedded",
                "Chunks embedded by the jobs",
                &metrics.chunks,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "jobs_cancelled",
            "Jobs cancelled, by reason",
            metrics.cancelled.clone(),
        );
        metrics
    }
}

/// A job's payload: what it embeds, and whose it is.
#[derive(Debug, Serialize, Deserialize)]
struct Embed {
    document: String,
    chunk_size: usize,
    total: usize,
    /// The caller's key hash (`key:` and 32 hex digits) when API keys are configured.
    owner: Option<String>,
}

/// A done job's result.
#[derive(Debug, Serialize, Deserialize)]
struct Embedded {
    dimensions: usize,
    chunks: Vec<Chunk>,
}

/// The mock embedding of one chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Chunk {
    index: usize,
    chars: usize,
    embedding: [f64; DIMENSIONS],
}

/// The prep shelf: the job store, with this process's workers started on it.
#[derive(Debug)]
pub(crate) struct Shelf {
    jobs: Jobs,
    /// Cancelled once the store has shut down (after the shutdown's grace period at most).
    closed: CancellationToken,
    queue_bound: u64,
    keep: Duration,
    chunk_io: Duration,
    workers: usize,
    max_chunks: usize,
}

/// What the handler needs.
#[derive(Debug)]
struct Cook {
    rounds: u32,
    chunk_io: Duration,
    fail_text: Option<Arc<str>>,
    effects: Option<PathBuf>,
    metrics: Arc<Metrics>,
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
        if let Some(dir) = &config.job_effects_dir {
            std::fs::create_dir_all(dir.join("done"))
                .map_err(|e| format!("--job-effects-dir {}: {e}", dir.display()))?;
        }
        let cook = Arc::new(Cook {
            rounds: config.job_embed_rounds.get(),
            chunk_io: Duration::from_millis(config.job_chunk_io_ms),
            fail_text: config
                .job_fail_text
                .as_deref()
                .filter(|text| !text.is_empty())
                .map(Arc::from),
            effects: config.job_effects_dir.clone(),
            metrics,
        });
        jobs.worker(QUEUE, move |job: Job<Embed>| {
            let cook = Arc::clone(&cook);
            async move { cook.embed(job).await }
        })
        .concurrency(config.job_workers.get())
        .start()
        .map_err(|e| format!("job workers: {e}"))?;
        // Beside the shutdown's tasks, not one of them: the store's close is joined by
        // `closed`, after the connections have drained.
        let closing = jobs.clone();
        let draining = shutdown.clone();
        let closed = CancellationToken::new();
        let done = closed.clone();
        tokio::spawn(async move {
            draining.draining().await;
            closing.shutdown(grace).await;
            tracing::info!("job store closed; running jobs released");
            done.cancel();
        });
        tracing::info!(backend = ?jobs.backend(), owner = jobs.owner(), "job store open");
        Ok(Self {
            jobs,
            closed,
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
        self.closed.cancelled().await;
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

    /// The job `id` names (`job-` and 32 hex digits) if `owner` may see it, else 404.
    async fn find(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(JobId, JobRecord, Embed), ApiError> {
        let not_found = || not_found(id, self.keep);
        let job_id = id
            .strip_prefix("job-")
            .and_then(|hex| hex.parse::<JobId>().ok())
            .ok_or_else(not_found)?;
        let record = self
            .jobs
            .get(job_id)
            .await
            .map_err(|e| store_failed(&e))?
            .ok_or_else(not_found)?;
        match record.payload_as::<Embed>() {
            Ok(embed) if record.queue == QUEUE && embed.owner.as_deref() == owner => {
                Ok((job_id, record, embed))
            }
            _ => Err(not_found()),
        }
    }

    /// The job as `GET /v1/jobs/{id}` shows it.
    async fn snapshot(
        &self,
        id: JobId,
        record: &JobRecord,
        embed: &Embed,
    ) -> Result<Value, ApiError> {
        let done = match record.status {
            Status::Done => embed.total,
            _ => self.progress(id, record.last_event).await?,
        };
        let url = format!("/v1/jobs/job-{id}");
        let mut value = json!({
            "id": format!("job-{id}"),
            "object": "job",
            "status": record.status.as_str(),
            "attempt": record.attempt,
            "created_at": unix_secs(record.created_at),
            "chunk_size": embed.chunk_size,
            "progress": { "done": done, "total": embed.total },
            "events_url": format!("{url}/events"),
            "url": url,
        });
        match record.status {
            Status::Done => {
                value["result"] = record
                    .result
                    .as_deref()
                    .and_then(|result| serde_json::from_str(result).ok())
                    .unwrap_or(Value::Null);
            }
            Status::Failed => value["error"] = json!(record.error),
            Status::Cancelled => value["cancel_reason"] = json!(record.cancel_reason),
            _ => {}
        }
        if let Some(expires_at) = record.expires_at {
            let left = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            value["expires_in_secs"] = json!(left.as_secs());
        }
        Ok(value)
    }

    /// Chunks done by the job's latest attempt: the newest progress event among its last few
    /// events (0 if an attempt began after it).
    async fn progress(&self, id: JobId, last_event: u64) -> Result<usize, ApiError> {
        const LOOK_BACK: u64 = 8;
        let events = self
            .jobs
            .events_after(id, last_event.saturating_sub(LOOK_BACK), 8)
            .await
            .map_err(|e| store_failed(&e))?;
        for event in events.iter().rev() {
            match event.kind {
                EventKind::Progress => {
                    let data: Value = event.data_as().unwrap_or_default();
                    return Ok(data["done"].as_u64().map_or(0, |n| n as usize));
                }
                EventKind::Running | EventKind::Queued | EventKind::Retrying => return Ok(0),
                _ => {}
            }
        }
        Ok(0)
    }
}

impl Cook {
    /// The "embed" handler: each chunk on the blocking pool, then the mock I/O wait, then a
    /// progress event.
    async fn embed(&self, job: Job<Embed>) -> Result<Embedded, JobError> {
        let id = job.id();
        self.effect_line("start", id);
        let Embed {
            document,
            chunk_size,
            total,
            ..
        } = job.payload();
        let (chunk_size, total) = (*chunk_size, *total);
        let document: Arc<str> = Arc::from(document.as_str());
        let mut chunks = Vec::with_capacity(total);
        for (index, range) in chunk_ranges(&document, chunk_size).into_iter().enumerate() {
            let text = Arc::clone(&document);
            let rounds = self.rounds;
            let fail_text = self.fail_text.clone();
            let embedded = job
                .blocking(move |cancel| {
                    let chunk = text.get(range).unwrap_or_default();
                    if let Some(fail) = fail_text
                        && chunk.contains(&*fail)
                    {
                        panic!("the prep cook dropped a chunk (fail text)");
                    }
                    embed(chunk, rounds, cancel)
                })
                .await;
            let chunk = match embedded {
                Ok(Some(chunk)) => chunk,
                // The job's scope was cancelled: the worker decides what becomes of it.
                Ok(None) => return Err(JobError::retryable("cancelled while embedding")),
                Err(error) => {
                    self.metrics.jobs.failed.inc();
                    return Err(JobError::permanent(format!(
                        "embedding chunk {index} failed: {error}"
                    )));
                }
            };
            if !self.chunk_io.is_zero() {
                tokio::time::sleep(self.chunk_io).await;
            }
            job.progress()
                .send(&json!({ "done": index + 1, "total": total }))
                .await?;
            self.metrics.jobs.chunks.inc();
            chunks.push(Chunk { index, ..chunk });
        }
        if let Some(dir) = &self.effects {
            // Idempotent: the first execution to get here creates it, a repeat finds it.
            match std::fs::File::create_new(dir.join("done").join(id.to_string())) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(JobError::retryable(error)),
            }
        }
        self.effect_line("end", id);
        self.metrics.jobs.done.inc();
        Ok(Embedded {
            dimensions: DIMENSIONS,
            chunks,
        })
    }

    /// Appends `<what> <id> <pid>` to the effects directory's `runs.log`, if there is one.
    fn effect_line(&self, what: &str, id: JobId) {
        let Some(dir) = &self.effects else {
            return;
        };
        let line = format!("{what} {id} {}\n", std::process::id());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runs.log"))
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(%error, "could not append to runs.log");
        }
    }
}

/// Routes `/v1/jobs` and `/v1/jobs/...`.
pub(crate) async fn route(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let target = Target::parse(request.uri().path());
    let method = request.method().clone();
    match (&target, &method) {
        (Target::Jobs, &Method::POST)
        | (Target::Job(_), &Method::GET | &Method::DELETE)
        | (Target::Events(_), &Method::GET) => {}
        (Target::Jobs, _) => return Err(ApiError::method_not_allowed("POST")),
        (Target::Job(_), _) => return Err(ApiError::method_not_allowed("GET, DELETE")),
        (Target::Events(_), _) => return Err(ApiError::method_not_allowed("GET")),
        (Target::Unknown, _) => return Err(ApiError::not_found(request.uri().path())),
    }
    let caller = crate::auth::authorize(&app, request.headers(), peer)?;
    // With API keys a job belongs to the key that made it; without, to whoever has its id.
    let owner = caller.is_api_key().then(|| caller.as_str().to_owned());
    let shelf = &app.jobs;
    match target {
        Target::Jobs => create(&app, request, &caller, owner).await,
        Target::Job(id) => {
            let (id, record, embed) = shelf.find(&id, owner.as_deref()).await?;
            if method == Method::DELETE {
                cancel(&app, id, &embed).await
            } else {
                Ok(json(
                    StatusCode::OK,
                    &shelf.snapshot(id, &record, &embed).await?,
                ))
            }
        }
        Target::Events(id) => {
            let (id, record, _) = shelf.find(&id, owner.as_deref()).await?;
            Ok(events(&app, id, &record, request.headers()))
        }
        Target::Unknown => Err(ApiError::not_found(request.uri().path())),
    }
}

/// What a path under `/v1/jobs` names.
#[derive(Debug)]
enum Target {
    Jobs,
    Job(String),
    Events(String),
    Unknown,
}

impl Target {
    fn parse(path: &str) -> Self {
        let Some(rest) = path.strip_prefix("/v1/jobs") else {
            return Self::Unknown;
        };
        if rest.is_empty() {
            return Self::Jobs;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Self::Unknown;
        };
        match rest.split_once('/') {
            None if !rest.is_empty() => Self::Job(rest.to_owned()),
            Some((id, "events")) if !id.is_empty() => Self::Events(id.to_owned()),
            _ => Self::Unknown,
        }
    }
}

/// `POST /v1/jobs`.
async fn create(
    app: &App,
    request: Request<hyper::body::Incoming>,
    caller: &ClientKey,
    owner: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let bytes = crate::routes::json_request_body(app, request).await?;
    let (document, chunk_size) = parse(&bytes)?;
    let shelf = &app.jobs;
    let chars = document.chars().count();
    let total = chars.div_ceil(chunk_size);
    if total > shelf.max_chunks {
        return Err(ApiError::invalid(format!(
            "`chunk_size` {chunk_size} cuts the {chars}-character `document` into {total} chunks; \
             at most {} are allowed",
            shelf.max_chunks
        )));
    }
    if app.shutdown.is_draining() {
        return Err(ApiError::shutting_down(app.config.grace()));
    }
    // The caller's request quota, as for a chat request (429 with the same headers). A job
    // reserves no tokens, so there is nothing to settle.
    let (_charged, limit_headers) = app.limits.reserve(caller.as_str(), 0).await?;
    let waiting = shelf
        .jobs
        .queued(QUEUE, shelf.queue_bound)
        .await
        .map_err(|e| store_failed(&e))?;
    if waiting >= shelf.queue_bound {
        app.metrics.jobs.rejected.inc();
        // About when this process's workers would reach a job like this one.
        let per_worker = waiting.div_ceil(shelf.workers as u64);
        let after = shelf
            .chunk_io
            .max(Duration::from_millis(1))
            .saturating_mul(
                u32::try_from(per_worker.saturating_mul(total as u64)).unwrap_or(u32::MAX),
            )
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        return Err(ApiError::unavailable(
            "queue_full",
            format!("the job queue is full ({waiting} jobs waiting for a worker)"),
            after,
        ));
    }
    let embed = Embed {
        document,
        chunk_size,
        total,
        owner,
    };
    let id = shelf
        .jobs
        .enqueue(NewJob::new(QUEUE, &embed))
        .await
        .map_err(|e| store_failed(&e))?
        .id();
    app.metrics.jobs.submitted.inc();
    tracing::info!(job = %id, chunks = total, chunk_size, "job queued");
    let url = format!("/v1/jobs/job-{id}");
    // The answer says `queued`: what the job is when it enters the queue.
    let body = json!({
        "id": format!("job-{id}"),
        "object": "job",
        "status": "queued",
        "attempt": 0,
        "created_at": unix_secs(SystemTime::now()),
        "chunk_size": chunk_size,
        "progress": { "done": 0, "total": total },
        "events_url": format!("{url}/events"),
        "url": url,
    });
    let mut response = json(StatusCode::ACCEPTED, &body);
    response.headers_mut().extend(limit_headers);
    if let Ok(location) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// The document and the chunk size of a job request.
fn parse(bytes: &[u8]) -> Result<(String, usize), ApiError> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    let Value::Object(mut body) = body else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let document = match body.remove("document") {
        Some(Value::String(document)) if !document.trim().is_empty() => document,
        Some(Value::String(_)) => {
            return Err(ApiError::invalid("`document` must not be empty"));
        }
        Some(_) => return Err(ApiError::invalid("`document` must be a string")),
        None => return Err(ApiError::invalid("`document` is required")),
    };
    let chunk_size = match body.get("chunk_size") {
        None | Some(Value::Null) => DEFAULT_CHUNK_SIZE,
        Some(value) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n > 0 => n,
            _ => {
                return Err(ApiError::invalid(
                    "`chunk_size` must be a positive integer (characters per chunk)",
                ));
            }
        },
    };
    Ok((document, chunk_size))
}

/// `DELETE /v1/jobs/{id}`: cancels a queued or running job, wherever it runs; 409 once it
/// has finished.
async fn cancel(app: &App, id: JobId, embed: &Embed) -> Result<Response<Body>, ApiError> {
    let shelf = &app.jobs;
    let reason = CancelReason::custom(CLIENT_REQUEST);
    match shelf
        .jobs
        .cancel(id, reason)
        .await
        .map_err(|e| store_failed(&e))?
    {
        CancelOutcome::Cancelled => {
            app.metrics
                .jobs
                .cancelled
                .get_or_create(&vec![("reason", CLIENT_REQUEST.to_owned())])
                .inc();
            tracing::info!(job = %id, "job cancelled");
            // Read back: with a keep time of 0 it is already gone.
            let (id, record, embed) = shelf
                .find(&format!("job-{id}"), embed.owner.as_deref())
                .await?;
            Ok(json(
                StatusCode::OK,
                &shelf.snapshot(id, &record, &embed).await?,
            ))
        }
        CancelOutcome::Finished(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "job_finished",
            format!("job `job-{id}` has already finished ({status}); there is nothing to cancel"),
        )),
        // Deleted meanwhile (its keep time was over).
        _ => Err(not_found(&format!("job-{id}"), shelf.keep)),
    }
}

/// `GET /v1/jobs/{id}/events`: the job's events after `Last-Event-ID` (all of them without
/// one, or with an id this job never issued), then the new ones as they come, until the job's
/// last event.
fn events(app: &App, id: JobId, record: &JobRecord, headers: &HeaderMap) -> Response<Body> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let after = last_event_id
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&seq| seq <= record.last_event)
        .unwrap_or(0);
    if last_event_id.is_some() && record.status.is_final() && after >= record.last_event {
        // An `EventSource` reconnects whenever a stream ends, and stops only on a 204: the job
        // is over and this client has every event.
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        return response;
    }
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(app.config.keep_alive_secs));
    SseBody::new(follow(app, id, after))
        .keep_alive(keep_alive)
        .into_response()
        .map(BodyExt::boxed_unsync)
}

/// The `retry:` hint, then the job's events after `after` until its last one. A stream cut
/// before it (the shutdown's grace period is over, or a read of the store failed) ends with
/// an error event without an id, so the client resumes from the last id it saw.
fn follow(
    app: &App,
    id: JobId,
    after: u64,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + use<> {
    let job = format!("job-{id}");
    let hint = Event::default().retry(RECONNECT);
    let shutdown = app.shutdown.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let saw_last = Arc::clone(&ended);
    let events = app
        .jobs
        .jobs
        .follow(id, after)
        .take_until(shutdown.scope().clone().cancelled_owned())
        // Ends at the first error (a read of the store failed, or the job was deleted).
        .scan((), move |(), event| {
            std::future::ready(match event {
                Ok(event) => {
                    if event.kind.is_final() {
                        saw_last.store(true, Ordering::Relaxed);
                    }
                    Some(sse_event(&job, &event))
                }
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "job events failed");
                    None
                }
            })
        });
    let cut = futures::stream::once(async move {
        if ended.load(Ordering::Relaxed) {
            return None;
        }
        let error = if shutdown.is_draining() {
            crate::error::error_json(
                "the server is shutting down; resume with Last-Event-ID",
                "server_error",
                "shutting_down",
            )
        } else {
            crate::error::error_json(
                "the job's events could not be read; resume with Last-Event-ID",
                "server_error",
                "job_store_unavailable",
            )
        };
        Some(Event::default().data(error))
    })
    .filter_map(std::future::ready);
    futures::stream::once(std::future::ready(hint))
        .chain(events)
        .chain(cut)
        .map(Ok)
}

/// A job's event as the kitchen sends it: its id the store's sequence number, its data the
/// step with the job's status.
fn sse_event(job: &str, event: &brigade_jobs::Event) -> Event {
    let data: Value = event.data_as().unwrap_or_default();
    let status = match event.kind {
        EventKind::Queued | EventKind::Retrying => "queued",
        EventKind::Running | EventKind::Progress => "running",
        kind => kind.as_str(),
    };
    let mut out = json!({ "type": event.kind.as_str(), "job": job, "status": status });
    match event.kind {
        EventKind::Progress => out["progress"] = data,
        EventKind::Cancelled => out["cancel_reason"] = data["reason"].clone(),
        EventKind::Queued if !data["reason"].is_null() => out["reason"] = data["reason"].clone(),
        EventKind::Failed | EventKind::Retrying => {
            out["attempt"] = data["attempt"].clone();
            out["error"] = data["error"].clone();
        }
        EventKind::Running | EventKind::Done => out["attempt"] = data["attempt"].clone(),
        _ => {}
    }
    let sse = Event::default().data(out.to_string());
    // A number is always a valid id.
    sse.clone().id(event.seq.to_string()).unwrap_or(sse)
}

/// 404: no job `id` that the caller may see.
fn not_found(id: &str, keep: Duration) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!(
            "no job `{id}` (unknown, or deleted {} s after it finished)",
            keep.as_secs()
        ),
    )
}

/// 503: the store failed (it may be back in a moment).
fn store_failed(error: &brigade_jobs::Error) -> ApiError {
    tracing::error!(error = %chain(error), "job store failed");
    ApiError::unavailable(
        "job_store_unavailable",
        "the job store failed; try again",
        Duration::from_secs(1),
    )
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The byte ranges of `text` in chunks of `chunk_size` characters (the last one shorter).
fn chunk_ranges(text: &str, chunk_size: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (offset, _) in text.char_indices() {
        if count == chunk_size {
            ranges.push(start..offset);
            start = offset;
            count = 0;
        }
        count += 1;
    }
    if count > 0 {
        ranges.push(start..text.len());
    }
    ranges
}

/// The mock embedding: `rounds` passes of feature hashing over the chunk's bytes into
/// [`DIMENSIONS`] signed buckets, normalized to unit length and rounded to 6 decimals (all zeros
/// after zero rounds). The same chunk always gives the same vector. `None` if `cancel` fires first
/// (checked every round). Its `index` is 0: the caller sets it.
fn embed(chunk: &str, rounds: u32, cancel: &CancellationToken) -> Option<Chunk> {
    let mut sums = [0.0_f64; DIMENSIONS];
    for round in 0..rounds {
        if cancel.is_cancelled() {
            return None;
        }
        let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ mix(u64::from(round));
        for &byte in chunk.as_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            let mixed = mix(hash);
            let bucket = (mixed >> 32) as usize % DIMENSIONS;
            sums[bucket] += if mixed & 1 == 0 { 1.0 } else { -1.0 };
        }
    }
    let norm = sums.iter().map(|x| x * x).sum::<f64>().sqrt();
    let embedding = sums.map(|x| {
        if norm == 0.0 {
            0.0
        } else {
            (x / norm * 1e6).round() / 1e6
        }
    });
    Some(Chunk {
        index: 0,
        chars: chunk.chars().count(),
        embedding,
    })
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_on_characters_not_bytes() {
        let text = "héllo wörld";
        let ranges = chunk_ranges(text, 4);
        let chunks: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(chunks, ["héll", "o wö", "rld"]);
        assert_eq!(chunk_ranges("abc", 3).len(), 1);
        assert_eq!(chunk_ranges("abcd", 3).len(), 2);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let token = CancellationToken::new();
        let a = embed("the quick brown fox", 3, &token).unwrap();
        assert_eq!(a, embed("the quick brown fox", 3, &token).unwrap());
        assert_ne!(a, embed("the quick brown cat", 3, &token).unwrap());
        let norm: f64 = a.embedding.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        token.cancel();
        assert!(embed("anything", 3, &token).is_none());
    }
}
