//! The prep shelf: background jobs that split a document into chunks and "embed" each one.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/jobs` `{"document": "...", "chunk_size": 256}` | 202, `Location: /v1/jobs/{id}`, the job (`queued`); its id is 128 random bits (`job-` and 32 hex digits) |
//! | `GET /v1/jobs/{id}` | the job: status, progress, the result when done, the cancel reason or error |
//! | `GET /v1/jobs/{id}/events` | SSE: one event per step, with ids; `Last-Event-ID` resumes; ends after the last step |
//! | `DELETE /v1/jobs/{id}` | cancels a queued or running job (200, `cancelled`); 409 once it has finished |
//!
//! # How it works
//!
//! - **Admission.** The caller's API key when keys are configured (a job then belongs to its
//!   key: other keys get a 404), and the same per-client request quota as chat
//!   (`--requests-per-min`: 429 with `Retry-After` and the rate-limit fields); a job reserves
//!   no tokens.
//! - **Queue.** A bounded FIFO (`--job-queue`). A job that finds it full is refused with 503 and a
//!   `Retry-After` of the time the nearest-to-done running job still needs (1 to 60 s), so a
//!   client backs off instead of piling up work nobody will start soon.
//! - **Workers.** `--job-workers` tasks of the [`Shutdown`], each running one job at a time. A
//!   chunk's embedding is CPU work, so it runs on tokio's blocking pool (`spawn_blocking`), never
//!   on the runtime's threads, where it would stall every stream of the kitchen; then comes a mock
//!   I/O wait (`--job-chunk-io-ms`, storing the vector), which is async and costs no thread.
//! - **Events.** Each job has a brigade-sse [`Replay`] sized for every event the job will ever
//!   publish (queued, running, one progress per chunk, the end: `chunks + 3`, and `chunks` is
//!   bounded by `--job-max-chunks`) and not bounded by bytes, so a `Last-Event-ID` from this
//!   job always resumes right after itself, with no gap and no duplicate. Followers wait on a
//!   `watch` of the newest sequence number and read the replay after their cursor: there is no
//!   second copy of the events to drift from the first. The stream ends after the job's last event; a browser's
//!   `EventSource` then reconnects with that id and gets 204, which tells it to stop.
//! - **Cancel.** Each job has a brigade-cancel [`CancelScope`], a child of the shutdown's scope.
//!   `DELETE` cancels it with the reason `client_request` and finishes the job at once (a queued
//!   job also leaves the queue); the worker, which runs the job under that scope, stops at its
//!   next await, and a chunk being embedded checks the scope's token between hashing rounds.
//! - **Retention.** A finished job stays readable for `--job-keep-secs`, then it is dropped; at
//!   most `--job-keep-max` finished jobs are held, the oldest going first, so memory is bounded
//!   by count as well as by time. Since the keep time is the same for every job, jobs expire in
//!   the order they finish: a FIFO of deadlines, swept by one task when a job finishes or
//!   expires (and by every lookup, so a read never sees an expired job).
//! - **Shutdown.** When the shutdown starts, the workers take no new job; the jobs still queued
//!   are cancelled with reason `shutdown`, and their count is logged once. Running jobs go on
//!   through the grace period; then the shutdown's scope, their parent, cancels them with reason
//!   `shutdown`. Their event streams end with that last event, so none holds the shutdown.
//!
//! # Invariants and lock order
//!
//! - A job's status only moves forward: queued → running → done, failed or cancelled, or queued
//!   → cancelled. Each change and each event is made under the job's `state` lock, so a reader
//!   that holds it sees the status and the event log agree; the first end wins (`finish` returns
//!   `false` to the later one).
//! - Lock order: `jobs` → `queue` → a job's `state` (→ the job's replay, inside brigade-sse);
//!   `expiry` is never held with another lock. No lock is held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brigade_cancel::{CancelReason, CancelScope, CancellationToken, Shutdown};
use brigade_sse::{Event, KeepAlive, Replay, SseBody};
use futures::{FutureExt, Stream, StreamExt};
use http::header::{HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::auth::ClientKey;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::routes::{App, Body, full, json};

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
    /// Jobs running at once (the worker pool); a job embeds its chunks one after another.
    #[arg(long, default_value = "2", value_name = "N")]
    pub(crate) job_workers: NonZeroUsize,

    /// Jobs that may wait for a worker; beyond it, `POST /v1/jobs` answers 503 with
    /// `Retry-After`.
    #[arg(long, default_value = "64", value_name = "N")]
    pub(crate) job_queue: NonZeroUsize,

    /// How long a finished job (done, failed or cancelled) stays readable, in seconds; then it is
    /// dropped (0: at once).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub(crate) job_keep_secs: u64,

    /// Most finished jobs kept at once; beyond it, the oldest finished job is dropped before its
    /// keep time is over.
    #[arg(long, default_value = "1024", value_name = "N")]
    pub(crate) job_keep_max: NonZeroUsize,

    /// Mock I/O wait per chunk (storing its vector), in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub(crate) job_chunk_io_ms: u64,

    /// Hashing rounds over each chunk: the CPU cost of one embedding, paid on the blocking pool.
    #[arg(long, default_value = "2000", value_name = "N")]
    pub(crate) job_embed_rounds: NonZeroU32,

    /// Most chunks a job may have (its document's length over its `chunk_size`); more is a 400.
    #[arg(long, default_value = "4096", value_name = "N")]
    pub(crate) job_max_chunks: NonZeroUsize,

    /// Mock: panic while embedding a chunk that contains this text (to check that a failed job
    /// leaves its worker alive).
    #[arg(long, hide = true)]
    pub(crate) job_fail_text: Option<String>,
}

type Labels = Vec<(&'static str, String)>;

/// Metrics of the prep shelf.
#[derive(Debug, Default)]
pub(crate) struct JobMetrics {
    /// Jobs waiting for a worker.
    pub(crate) queued: Gauge,
    /// Jobs running now.
    pub(crate) running: Gauge,
    /// Jobs held in memory, whatever their status.
    pub(crate) stored: Gauge,
    /// Jobs accepted.
    pub(crate) submitted: Counter,
    /// Jobs refused because the queue was full.
    pub(crate) rejected: Counter,
    /// Jobs finished with a result.
    pub(crate) done: Counter,
    /// Jobs that failed.
    pub(crate) failed: Counter,
    /// Jobs cancelled, by reason.
    pub(crate) cancelled: Family<Labels, Counter>,
    /// Chunks embedded.
    pub(crate) chunks: Counter,
}

impl JobMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "jobs_queue_depth",
            "Jobs waiting for a worker",
            metrics.queued.clone(),
        );
        registry.register("jobs_running", "Jobs running now", metrics.running.clone());
        registry.register(
            "jobs_stored",
            "Jobs held in memory (finished ones until their keep time is over)",
            metrics.stored.clone(),
        );
        registry.register("jobs_submitted", "Jobs accepted", metrics.submitted.clone());
        registry.register(
            "jobs_rejected",
            "Jobs refused because the queue was full",
            metrics.rejected.clone(),
        );
        registry.register(
            "jobs_done",
            "Jobs finished with a result",
            metrics.done.clone(),
        );
        registry.register("jobs_failed", "Jobs that failed", metrics.failed.clone());
        registry.register(
            "jobs_cancelled",
            "Jobs cancelled, by reason",
            metrics.cancelled.clone(),
        );
        registry.register(
            "job_chunks_embedded",
            "Chunks embedded by the jobs",
            metrics.chunks.clone(),
        );
        metrics
    }
}

/// The prep shelf: the queue, the jobs, and the handle the workers share.
#[derive(Debug)]
pub(crate) struct Shelf {
    inner: Arc<Inner>,
}

/// State shared by the routes, the workers and the janitor.
#[derive(Debug)]
struct Inner {
    queue_capacity: usize,
    keep: Duration,
    keep_max: usize,
    chunk_io: Duration,
    rounds: u32,
    max_chunks: usize,
    fail_text: Option<Arc<str>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// Every job not yet expired, by id.
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Jobs waiting for a worker, oldest first.
    queue: Mutex<VecDeque<Arc<Job>>>,
    /// Wakes a worker when a job is queued.
    queued: Notify,
    /// When each finished job expires, in the order they finished (so in deadline order): one
    /// entry per finished job held, at most `keep_max`.
    expiry: Mutex<VecDeque<(Instant, String)>>,
    /// Wakes the janitor when a job finishes.
    finished: Notify,
}

/// One job: what it was given, its cancel scope, its event log, and its state.
#[derive(Debug)]
pub(crate) struct Job {
    id: String,
    /// The client that made it, when API keys are configured: other keys do not see it.
    owner: Option<ClientKey>,
    created_at: u64,
    chunk_size: usize,
    total: usize,
    scope: CancelScope,
    /// Every event of the job, under ids `<epoch>-<seq>` (the replay holds all of them).
    events: Replay,
    /// `<epoch>-`: the prefix of the job's event ids.
    event_prefix: String,
    /// The sequence number of the newest event, for the followers to wait on.
    changes: watch::Sender<u64>,
    state: Mutex<JobState>,
}

#[derive(Debug)]
struct JobState {
    status: Status,
    /// Chunks embedded.
    done: usize,
    /// The document, until a worker takes it (or the job ends first).
    document: Option<Arc<str>>,
    /// The vectors so far; the result once done, dropped if the job fails or is cancelled.
    vectors: Vec<Vector>,
    cancel_reason: Option<CancelReason>,
    error: Option<String>,
    /// When a finished job is dropped.
    expires_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    const fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// How a job ends.
#[derive(Debug)]
enum End {
    Done,
    Failed(String),
    Cancelled(CancelReason),
}

/// Why the chunk loop stopped early.
#[derive(Debug)]
enum Stopped {
    Failed(String),
    Cancelled,
}

/// The mock embedding of one chunk.
#[derive(Clone, Debug, PartialEq)]
struct Vector {
    chars: usize,
    values: [f64; DIMENSIONS],
}

impl Shelf {
    /// Starts the workers and the janitor as tasks of `shutdown` (call inside the runtime).
    pub(crate) fn new(
        config: &JobsConfig,
        metrics: Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Result<Self, String> {
        let inner = Arc::new(Inner {
            queue_capacity: config.job_queue.get(),
            keep: Duration::from_secs(config.job_keep_secs),
            keep_max: config.job_keep_max.get(),
            chunk_io: Duration::from_millis(config.job_chunk_io_ms),
            rounds: config.job_embed_rounds.get(),
            max_chunks: config.job_max_chunks.get(),
            fail_text: config
                .job_fail_text
                .as_deref()
                .filter(|text| !text.is_empty())
                .map(Arc::from),
            metrics,
            shutdown: shutdown.clone(),
            jobs: Mutex::default(),
            queue: Mutex::default(),
            queued: Notify::new(),
            expiry: Mutex::default(),
            finished: Notify::new(),
        });
        for _ in 0..config.job_workers.get() {
            shutdown.spawn(Arc::clone(&inner).work());
        }
        shutdown.spawn(Arc::clone(&inner).janitor());
        Ok(Self { inner })
    }

    /// The job with this id, unless it has expired.
    pub(crate) fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.inner.sweep();
        lock(&self.inner.jobs).get(id).cloned()
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
    let owner = caller.is_api_key().then(|| caller.clone());
    let shelf = &app.jobs;
    match target {
        Target::Jobs => create(&app, request, &caller, owner).await,
        Target::Job(id) => {
            let job = shelf.find(&id, owner.as_ref())?;
            if method == Method::DELETE {
                shelf.inner.cancel(&job)
            } else {
                Ok(json(StatusCode::OK, &job.snapshot()))
            }
        }
        Target::Events(id) => {
            let job = shelf.find(&id, owner.as_ref())?;
            Ok(events(&app, job, request.headers()))
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
    owner: Option<ClientKey>,
) -> Result<Response<Body>, ApiError> {
    let bytes = crate::routes::json_request_body(app, request).await?;
    let (document, chunk_size) = parse(&bytes)?;
    let shelf = &app.jobs.inner;
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
        return Err(shutting_down(app.config.grace()));
    }
    // The caller's request quota, as for a chat request (429 with the same headers). A job
    // reserves no tokens, so there is nothing to settle.
    let (_charged, limit_headers) = app.limits.reserve(caller.as_str(), 0).await?;
    let job = shelf.new_job(document, chunk_size, total, owner)?;
    // The answer says `queued`: what the job is when it enters the queue.
    let body = job.snapshot();
    shelf.enqueue(&job, app.config.grace())?;
    tracing::info!(job = %job.id, chunks = total, chunk_size, "job queued");
    let mut response = json(StatusCode::ACCEPTED, &body);
    response.headers_mut().extend(limit_headers);
    if let Ok(location) = HeaderValue::from_str(&job.url()) {
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

/// `GET /v1/jobs/{id}/events`: the job's events after `Last-Event-ID` (all of them without
/// one), then the new ones as they come, until the job's last event.
fn events(app: &App, job: Arc<Job>, headers: &HeaderMap) -> Response<Body> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let after = job.resume_after(last_event_id);
    if last_event_id.is_some() && job.caught_up(after) {
        // An `EventSource` reconnects whenever a stream ends, and stops only on a 204: the job
        // is over and this client has every event.
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        return response;
    }
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(app.config.keep_alive_secs));
    SseBody::new(follow(job, after))
        .keep_alive(keep_alive)
        .into_response()
        .map(BodyExt::boxed_unsync)
}

/// A follower of one job: the job, a receiver of its changes, the last sequence number sent.
struct Follow {
    job: Arc<Job>,
    changes: watch::Receiver<u64>,
    after: u64,
    ended: bool,
}

/// The events of `job` after sequence number `after`, ending after its last event. The first
/// item is the `retry:` hint for `EventSource` clients.
fn follow(job: Arc<Job>, after: u64) -> impl Stream<Item = Result<Arc<Event>, Infallible>> + Send {
    // Subscribe before the first read: a change after it wakes the follower.
    let follow = Follow {
        changes: job.changes.subscribe(),
        job,
        after,
        ended: false,
    };
    let batches = futures::stream::unfold(follow, |mut follow| async move {
        loop {
            if follow.ended {
                return None;
            }
            let (batch, finished) = follow.job.events_after(follow.after);
            if let Some(&(seq, _)) = batch.last() {
                follow.after = seq;
            }
            // Read under the state lock: a finished job's batch holds its last event.
            follow.ended = finished;
            if !batch.is_empty() {
                return Some((batch, follow));
            }
            if finished || follow.changes.changed().await.is_err() {
                return None;
            }
        }
    });
    let hint = Ok::<_, Infallible>(Arc::new(Event::default().retry(RECONNECT)));
    futures::stream::once(std::future::ready(hint)).chain(
        batches
            .flat_map(|batch| futures::stream::iter(batch.into_iter().map(|(_, event)| Ok(event)))),
    )
}

impl Shelf {
    /// The job `id` if `owner` may see it, else 404.
    fn find(&self, id: &str, owner: Option<&ClientKey>) -> Result<Arc<Job>, ApiError> {
        match self.job(id) {
            Some(job) if job.owner.as_ref() == owner => Ok(job),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                format!(
                    "no job `{id}` (unknown, or dropped {} s after it finished)",
                    self.inner.keep.as_secs()
                ),
            )),
        }
    }
}

impl Inner {
    fn new_job(
        &self,
        document: String,
        chunk_size: usize,
        total: usize,
        owner: Option<ClientKey>,
    ) -> Result<Arc<Job>, ApiError> {
        let id = job_id().map_err(|error| {
            tracing::error!(%error, "the operating system's random generator failed");
            ApiError::internal()
        })?;
        // queued, running, one progress per chunk, the end: the replay never evicts an event.
        let capacity = total.saturating_add(3);
        // Bounded by the count alone: a job's events are few and small, and evicting one would
        // break the resume of its followers.
        let events = Replay::builder()
            .max_events(capacity)
            .max_bytes(usize::MAX)
            .build()
            .expect("the event count is at least 3 and the byte bound is not zero");
        let event_prefix = format!("{:x}-", events.epoch());
        let job = Arc::new(Job {
            id,
            owner,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            chunk_size,
            total,
            scope: self.shutdown.scope().child(),
            events,
            event_prefix,
            changes: watch::Sender::new(0),
            state: Mutex::new(JobState {
                status: Status::Queued,
                done: 0,
                document: Some(Arc::from(document)),
                vectors: Vec::new(),
                cancel_reason: None,
                error: None,
                expires_at: None,
            }),
        });
        job.publish(&job.lock(), "queued");
        Ok(job)
    }

    /// Stores `job` and queues it, or refuses it: the queue is full or the server is
    /// shutting down.
    fn enqueue(&self, job: &Arc<Job>, grace: Duration) -> Result<(), ApiError> {
        // Stored first, so the job can be read as soon as a worker may take it.
        self.store(job);
        let refused = {
            let mut queue = lock(&self.queue);
            // Checked under the queue lock: the janitor empties the queue under it after the
            // drain has begun, so no job slips in behind it.
            if self.shutdown.is_draining() {
                Some(None)
            } else if queue.len() >= self.queue_capacity {
                Some(Some(queue.len()))
            } else {
                queue.push_back(Arc::clone(job));
                self.metrics.jobs.queued.set(gauge(queue.len()));
                None
            }
        };
        match refused {
            None => {
                self.metrics.jobs.submitted.inc();
                self.queued.notify_one();
                Ok(())
            }
            Some(waiting) => {
                self.unstore(&job.id);
                let Some(waiting) = waiting else {
                    return Err(shutting_down(grace));
                };
                self.metrics.jobs.rejected.inc();
                Err(ApiError::unavailable(
                    "queue_full",
                    format!("the job queue is full ({waiting} jobs waiting for a worker)"),
                    self.retry_after(),
                ))
            }
        }
    }

    fn store(&self, job: &Arc<Job>) {
        let mut jobs = lock(&self.jobs);
        jobs.insert(job.id.clone(), Arc::clone(job));
        self.metrics.jobs.stored.set(gauge(jobs.len()));
    }

    fn unstore(&self, id: &str) {
        let mut jobs = lock(&self.jobs);
        jobs.remove(id);
        self.metrics.jobs.stored.set(gauge(jobs.len()));
    }

    /// When a full queue may take a job again: when the running job nearest to its end is done
    /// (its chunks left times the I/O wait per chunk), 1 to 60 seconds.
    fn retry_after(&self) -> Duration {
        let per_chunk = self.chunk_io.max(Duration::from_millis(1));
        let fewest_left = lock(&self.jobs)
            .values()
            .filter_map(|job| {
                let state = job.lock();
                (state.status == Status::Running).then(|| job.total.saturating_sub(state.done))
            })
            .min();
        fewest_left
            .map_or(Duration::from_secs(1), |left| {
                per_chunk.saturating_mul(u32::try_from(left).unwrap_or(u32::MAX))
            })
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// A worker: one job after another, until the shutdown starts.
    async fn work(self: Arc<Self>) {
        loop {
            let job = tokio::select! {
                biased;
                () = self.shutdown.draining() => break,
                job = self.next_job() => job,
            };
            self.run(job).await;
        }
    }

    /// The next queued job, waiting for one if there is none.
    async fn next_job(&self) -> Arc<Job> {
        loop {
            // Registered before looking: a job queued after the look wakes this worker.
            let mut queued = pin!(self.queued.notified());
            queued.as_mut().enable();
            if let Some(job) = self.pop() {
                return job;
            }
            queued.await;
        }
    }

    fn pop(&self) -> Option<Arc<Job>> {
        let mut queue = lock(&self.queue);
        let job = queue.pop_front();
        self.metrics.jobs.queued.set(gauge(queue.len()));
        job
    }

    fn remove_queued(&self, job: &Arc<Job>) {
        let mut queue = lock(&self.queue);
        if let Some(position) = queue.iter().position(|queued| Arc::ptr_eq(queued, job)) {
            queue.remove(position);
        }
        self.metrics.jobs.queued.set(gauge(queue.len()));
    }

    /// Runs one job to its end, under its cancel scope.
    async fn run(&self, job: Arc<Job>) {
        let Some(document) = self.start(&job) else {
            return;
        };
        let chunks = job
            .scope
            .run_until_cancelled(self.embed_all(&job, document));
        // A bug in this loop must cost a job, not a worker.
        let end = match AssertUnwindSafe(chunks).catch_unwind().await {
            Ok(Ok(Ok(()))) => End::Done,
            Ok(Ok(Err(Stopped::Failed(error)))) => End::Failed(error),
            Ok(Ok(Err(Stopped::Cancelled))) => End::Cancelled(
                job.scope
                    .reason()
                    .unwrap_or_else(|| CancelReason::custom(CLIENT_REQUEST)),
            ),
            Ok(Err(cancelled)) => End::Cancelled(cancelled.into_reason()),
            Err(_) => End::Failed("internal error".to_owned()),
        };
        self.finish(&job, end);
    }

    /// Queued → running; the document to embed, or `None` if the job has already ended (or its
    /// scope was cancelled while it waited, which ends it now).
    fn start(&self, job: &Arc<Job>) -> Option<Arc<str>> {
        let mut state = job.lock();
        if state.status != Status::Queued {
            return None;
        }
        if let Some(reason) = job.scope.reason() {
            drop(state);
            self.finish(job, End::Cancelled(reason));
            return None;
        }
        state.status = Status::Running;
        self.metrics.jobs.running.inc();
        job.publish(&state, "running");
        tracing::debug!(job = %job.id, "job running");
        state.document.take()
    }

    /// Embeds each chunk: the CPU work on the blocking pool, then the mock I/O wait.
    async fn embed_all(&self, job: &Job, document: Arc<str>) -> Result<(), Stopped> {
        for (index, range) in chunk_ranges(&document, job.chunk_size)
            .into_iter()
            .enumerate()
        {
            let text = Arc::clone(&document);
            let token = job.scope.token();
            let rounds = self.rounds;
            let fail_text = self.fail_text.clone();
            let embedded = tokio::task::spawn_blocking(move || {
                let chunk = text.get(range).unwrap_or_default();
                if let Some(fail) = fail_text
                    && chunk.contains(&*fail)
                {
                    panic!("the prep cook dropped a chunk (fail text)");
                }
                embed(chunk, rounds, &token)
            })
            .await;
            let vector = match embedded {
                Ok(Some(vector)) => vector,
                Ok(None) => return Err(Stopped::Cancelled),
                Err(error) => {
                    let cause = if error.is_panic() {
                        panic_message(&*error.into_panic())
                    } else {
                        error.to_string()
                    };
                    return Err(Stopped::Failed(format!(
                        "embedding chunk {index} failed: {cause}"
                    )));
                }
            };
            if !self.chunk_io.is_zero() {
                tokio::time::sleep(self.chunk_io).await;
            }
            self.progress(job, vector);
        }
        Ok(())
    }

    /// Records one embedded chunk, unless the job has ended meanwhile.
    fn progress(&self, job: &Job, vector: Vector) {
        let mut state = job.lock();
        if state.status != Status::Running {
            return;
        }
        state.vectors.push(vector);
        state.done += 1;
        job.publish(&state, "progress");
        self.metrics.jobs.chunks.inc();
    }

    /// Ends `job` as `end`; `false` if it had already ended.
    fn finish(&self, job: &Job, end: End) -> bool {
        let expires_at = deadline_after(self.keep);
        {
            let mut state = job.lock();
            if state.status.is_finished() {
                return false;
            }
            if state.status == Status::Running {
                self.metrics.jobs.running.dec();
            }
            state.document = None;
            state.expires_at = Some(expires_at);
            let kind = match end {
                End::Done => {
                    state.status = Status::Done;
                    self.metrics.jobs.done.inc();
                    "done"
                }
                End::Failed(error) => {
                    state.status = Status::Failed;
                    state.vectors = Vec::new();
                    state.error = Some(error);
                    self.metrics.jobs.failed.inc();
                    "failed"
                }
                End::Cancelled(reason) => {
                    state.status = Status::Cancelled;
                    state.vectors = Vec::new();
                    self.metrics
                        .jobs
                        .cancelled
                        .get_or_create(&vec![("reason", reason.as_str().to_owned())])
                        .inc();
                    state.cancel_reason = Some(reason);
                    "cancelled"
                }
            };
            job.publish(&state, kind);
            tracing::info!(
                job = %job.id,
                status = kind,
                chunks = state.done,
                total = job.total,
                reason = state.cancel_reason.as_ref().map(CancelReason::as_str),
                error = state.error.as_deref(),
                "job finished"
            );
        }
        lock(&self.expiry).push_back((expires_at, job.id.clone()));
        self.finished.notify_one();
        true
    }

    /// `DELETE /v1/jobs/{id}`: cancels a queued or running job; 409 once it has finished.
    fn cancel(&self, job: &Arc<Job>) -> Result<Response<Body>, ApiError> {
        if job.lock().status.is_finished() {
            return Err(already_finished(job));
        }
        job.scope.cancel(CancelReason::custom(CLIENT_REQUEST));
        // The first reason stays: a job the shutdown cancelled first says `shutdown`.
        let reason = job
            .scope
            .reason()
            .unwrap_or_else(|| CancelReason::custom(CLIENT_REQUEST));
        self.remove_queued(job);
        self.finish(job, End::Cancelled(reason));
        // A worker that took the job meanwhile may have ended it first: cancelled (it saw the
        // cancel) is what was asked for; done or failed is too late.
        if job.lock().status == Status::Cancelled {
            Ok(json(StatusCode::OK, &job.snapshot()))
        } else {
            Err(already_finished(job))
        }
    }

    /// Drops the finished jobs whose keep time is over, and the oldest ones beyond `keep_max`;
    /// when the next one expires.
    fn sweep(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let mut expiry = lock(&self.expiry);
            while expiry.len() > self.keep_max || expiry.front().is_some_and(|&(at, _)| at <= now) {
                if let Some((_, id)) = expiry.pop_front() {
                    expired.push(id);
                }
            }
            expiry.front().map(|&(at, _)| at)
        };
        if !expired.is_empty() {
            let mut jobs = lock(&self.jobs);
            for id in &expired {
                jobs.remove(id);
            }
            self.metrics.jobs.stored.set(gauge(jobs.len()));
        }
        next
    }

    /// Drops expired jobs on time until the shutdown starts; then cancels the queued jobs.
    async fn janitor(self: Arc<Self>) {
        loop {
            // Registered before the sweep: a job finishing after it wakes the janitor.
            let mut finished = pin!(self.finished.notified());
            finished.as_mut().enable();
            let next = self.sweep();
            let expiry = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.draining() => break,
                () = expiry => {}
                () = finished => {}
            }
        }
        self.drain_queue();
    }

    /// On shutdown: the queued jobs will not run; each is cancelled with reason `shutdown`.
    fn drain_queue(&self) {
        let queued: Vec<Arc<Job>> = {
            let mut queue = lock(&self.queue);
            let queued = queue.drain(..).collect();
            self.metrics.jobs.queued.set(0);
            queued
        };
        tracing::info!(
            queued = queued.len(),
            running = self.metrics.jobs.running.get(),
            "shutdown: queued jobs will not run; running jobs get the grace period"
        );
        for job in queued {
            job.scope.cancel(CancelReason::Shutdown);
            let reason = job.scope.reason().unwrap_or(CancelReason::Shutdown);
            self.finish(&job, End::Cancelled(reason));
        }
    }
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        lock(&self.state)
    }

    fn url(&self) -> String {
        format!("/v1/jobs/{}", self.id)
    }

    /// The job as `GET /v1/jobs/{id}` shows it.
    pub(crate) fn snapshot(&self) -> Value {
        let state = self.lock();
        let mut value = json!({
            "id": self.id,
            "object": "job",
            "status": state.status.as_str(),
            "created_at": self.created_at,
            "chunk_size": self.chunk_size,
            "progress": { "done": state.done, "total": self.total },
            "url": self.url(),
            "events_url": format!("{}/events", self.url()),
        });
        match state.status {
            Status::Done => {
                let chunks: Vec<Value> = state
                    .vectors
                    .iter()
                    .enumerate()
                    .map(|(index, vector)| {
                        json!({
                            "index": index,
                            "chars": vector.chars,
                            "embedding": vector.values,
                        })
                    })
                    .collect();
                value["result"] = json!({ "dimensions": DIMENSIONS, "chunks": chunks });
            }
            Status::Failed => value["error"] = json!(state.error),
            Status::Cancelled => {
                value["cancel_reason"] =
                    json!(state.cancel_reason.as_ref().map(CancelReason::as_str));
            }
            Status::Queued | Status::Running => {}
        }
        if let Some(expires_at) = state.expires_at {
            value["expires_in_secs"] = json!(
                expires_at
                    .saturating_duration_since(Instant::now())
                    .as_secs()
            );
        }
        value
    }

    /// Appends an event of type `kind` with the job's state; the caller holds the state lock.
    fn publish(&self, state: &JobState, kind: &'static str) {
        let mut data = json!({
            "type": kind,
            "job": self.id,
            "status": state.status.as_str(),
            "progress": { "done": state.done, "total": self.total },
        });
        if let Some(reason) = &state.cancel_reason {
            data["cancel_reason"] = json!(reason.as_str());
        }
        if let Some(error) = &state.error {
            data["error"] = json!(error);
        }
        let (seq, _) = self.events.push(Event::default().data(data.to_string()));
        self.changes.send_replace(seq);
    }

    /// The events after sequence number `after`, and whether the job has finished (then they
    /// end with its last event).
    fn events_after(&self, after: u64) -> (Vec<(u64, Arc<Event>)>, bool) {
        let state = self.lock();
        // The replay holds every event of the job, and `after` is at most the newest one, so
        // neither miss of `events_after` can happen.
        let events = self
            .events
            .events_after(&format!("{}{after}", self.event_prefix))
            .unwrap_or_default();
        (events, state.status.is_finished())
    }

    /// Where a follower with this `Last-Event-ID` resumes: after that event if this job issued
    /// it, else from the start (an id of another job, another process, or garbage).
    fn resume_after(&self, last_event_id: Option<&str>) -> u64 {
        let newest = self.events.last_seq().unwrap_or(0);
        last_event_id
            .and_then(|id| self.events.seq_of(id))
            .filter(|&seq| seq <= newest)
            .unwrap_or(0)
    }

    /// Whether a follower that has seen event `after` has seen the last event of a finished job.
    fn caught_up(&self, after: u64) -> bool {
        let state = self.lock();
        state.status.is_finished() && self.events.last_seq().is_some_and(|last| after >= last)
    }
}

/// 409: a finished job cannot be cancelled.
fn already_finished(job: &Job) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        "job_finished",
        format!(
            "job `{}` has already finished ({}); there is nothing to cancel",
            job.id,
            job.lock().status.as_str()
        ),
    )
}

fn shutting_down(grace: Duration) -> ApiError {
    ApiError::unavailable("shutting_down", "the server is shutting down", grace)
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
/// (checked every round).
fn embed(chunk: &str, rounds: u32, cancel: &CancellationToken) -> Option<Vector> {
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
    let values = sums.map(|x| {
        if norm == 0.0 {
            0.0
        } else {
            (x / norm * 1e6).round() / 1e6
        }
    });
    Some(Vector {
        chars: chunk.chars().count(),
        values,
    })
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

/// A new job id: `job-` and 128 bits from the operating system's random generator, in hex.
///
/// Unguessable, unlike a counter: knowing one's own job says nothing about the next one, so
/// without API keys a job's id is what it takes to read or cancel it, and with keys a guessed
/// id of another key's job still finds nothing (jobs belong to their key).
fn job_id() -> Result<String, getrandom::Error> {
    let mut bits = [0_u8; 16];
    getrandom::fill(&mut bits)?;
    Ok(format!("job-{:032x}", u128::from_be_bytes(bits)))
}

/// `after` from now, or about 30 years from now if an `Instant` cannot hold that.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that could panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
        let norm: f64 = a.values.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        token.cancel();
        assert!(embed("anything", 3, &token).is_none());
    }
}
