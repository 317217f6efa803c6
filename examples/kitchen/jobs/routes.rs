//! The HTTP contract of the prep shelf (the table in the module above): admission, the job's
//! view, cancel, and its events as SSE.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brigade_cancel::CancelReason;
use brigade_jobs::{CancelOutcome, EventKind, JobId, JobRecord, NewJob, SseCut, SseReply, Status};
use brigade_sse::{Event, KeepAlive, SseBody};
use http::header::{HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::embed::Embed;
use super::{QUEUE, Shelf};
use crate::api::ObjectOnly;
use crate::auth::ClientKey;
use crate::error::ApiError;
use crate::error::chain;
use crate::routes::{App, Body, full, json};

/// The chunk size, in characters, of a job that gives none.
const DEFAULT_CHUNK_SIZE: usize = 256;

/// The reconnection time suggested to `EventSource` clients (`retry:`).
const RECONNECT: Duration = Duration::from_secs(1);

/// The cancel reason of `DELETE /v1/jobs/{id}`.
const CLIENT_REQUEST: &str = "client_request";

impl Shelf {
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

    /// The job as `GET /v1/jobs/{id}` shows it (200).
    async fn snapshot(
        &self,
        id: JobId,
        record: &JobRecord,
        embed: &Embed,
    ) -> Result<Response<Body>, ApiError> {
        let (status, total) = (record.status, embed.total);
        let done = match status {
            Status::Done => total,
            _ => self.progress(id, record.last_event).await?,
        };
        let view = JobView {
            status: status.as_str(),
            attempt: record.attempt,
            created_at: unix_secs(record.created_at),
            progress: json!({ "done": done, "total": total }),
            // `null` if it does not parse.
            result: (status == Status::Done)
                .then(|| record.result_as().ok().flatten().unwrap_or_default()),
            error: (status == Status::Failed).then(|| record.error.clone().into()),
            cancel_reason: (status == Status::Cancelled)
                .then(|| record.cancel_reason.clone().into()),
            expires_in_secs: record.expires_at.map(|at| {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                left.as_secs()
            }),
            ..JobView::queued(id, embed)
        };
        Ok(json(StatusCode::OK, &view))
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

/// Routes `/v1/jobs` and `/v1/jobs/...`.
pub(crate) async fn route(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    // What follows `/v1/jobs` (the only paths routed here): nothing, `/{id}` or `/{id}/events`.
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(3).collect();
    let allow = match segments[..] {
        [] => "POST",
        [id] if !id.is_empty() => "GET, DELETE",
        [id, "events"] if !id.is_empty() => "GET",
        _ => return Err(ApiError::not_found(&path)),
    };
    let method = request.method().clone();
    if !allow.split(", ").any(|allowed| allowed == method.as_str()) {
        return Err(ApiError::method_not_allowed(allow));
    }
    let caller = crate::auth::authorize(&app, request.headers(), peer)?;
    // With API keys a job belongs to the key that made it; without, to whoever has its id.
    let owner = caller.is_api_key().then(|| caller.as_str().to_owned());
    let shelf = &app.jobs;
    match segments[..] {
        [] => create(&app, request, &caller, owner).await,
        [id] => {
            let (id, record, embed) = shelf.find(id, owner.as_deref()).await?;
            if method == Method::DELETE {
                cancel(&app, id, &embed).await
            } else {
                shelf.snapshot(id, &record, &embed).await
            }
        }
        [id, _] => {
            let (_, record, _) = shelf.find(id, owner.as_deref()).await?;
            Ok(events(&app, &record, request.headers()))
        }
        _ => Err(ApiError::not_found(&path)),
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
    // The answer says `queued`: what the job is when it enters the queue.
    let view = JobView::queued(id, &embed);
    let mut response = json(StatusCode::ACCEPTED, &view);
    response.headers_mut().extend(limit_headers);
    if let Ok(location) = HeaderValue::from_str(&view.url) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// A job as the API shows it: `result`, `error` or `cancel_reason` (maybe `null`) once it is
/// done, failed or cancelled; `expires_in_secs` once it has an expiry.
#[derive(Debug, Default, Serialize)]
struct JobView {
    id: String,
    object: &'static str,
    status: &'static str,
    attempt: u32,
    created_at: u64,
    chunk_size: usize,
    progress: Value,
    events_url: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_reason: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_secs: Option<u64>,
}

impl JobView {
    /// The job as it enters the queue.
    fn queued(id: JobId, embed: &Embed) -> Self {
        let url = format!("/v1/jobs/job-{id}");
        Self {
            id: format!("job-{id}"),
            object: "job",
            status: "queued",
            created_at: unix_secs(SystemTime::now()),
            chunk_size: embed.chunk_size,
            progress: json!({ "done": 0, "total": embed.total }),
            events_url: format!("{url}/events"),
            url,
            ..Self::default()
        }
    }
}

/// A job request's body (other fields are ignored).
#[derive(Debug, Deserialize)]
struct JobRequest {
    document: String,
    /// Characters per chunk; `DEFAULT_CHUNK_SIZE` if absent or null.
    #[serde(default)]
    chunk_size: Option<NonZeroUsize>,
}

/// The document and the chunk size of a job request; a 400 names the field at fault.
fn parse(bytes: &[u8]) -> Result<(String, usize), ApiError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let ObjectOnly(request): ObjectOnly<JobRequest> =
        serde_path_to_error::deserialize(&mut json).map_err(crate::api::invalid)?;
    json.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    if request.document.trim().is_empty() {
        return Err(ApiError::invalid("`document` must not be empty"));
    }
    let chunk_size = request
        .chunk_size
        .map_or(DEFAULT_CHUNK_SIZE, NonZeroUsize::get);
    Ok((request.document, chunk_size))
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
            shelf.snapshot(id, &record, &embed).await
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

/// `GET /v1/jobs/{id}/events`: the job's events after `Last-Event-ID` as SSE, to its last one
/// (brigade-jobs' policy: 204 once the client has them all, an id-less error event when the
/// stream is cut by the shutdown or a failed read, so the client resumes).
fn events(app: &App, record: &JobRecord, headers: &HeaderMap) -> Response<Body> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let SseReply::Stream(events) = app.jobs.jobs.follow_sse(record, last_event_id) else {
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        return response;
    };
    let job = format!("job-{}", record.id);
    let shutdown = app.shutdown.clone();
    let events = events
        .retry(RECONNECT)
        .until(shutdown.scope().clone().cancelled_owned())
        .render(move |event| sse_event(&job, event))
        .cut(move |cut| {
            if let SseCut::Failed(error) = &cut {
                tracing::warn!(error = %chain(error), "job events failed");
            }
            let (message, code) = if shutdown.is_draining() {
                ("the server is shutting down", "shutting_down")
            } else {
                (
                    "the job's events could not be read",
                    "job_store_unavailable",
                )
            };
            let message = format!("{message}; resume with Last-Event-ID");
            Event::default().data(crate::error::error_json(&message, "server_error", code))
        });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(app.config.keep_alive_secs));
    SseBody::new(events)
        .keep_alive(keep_alive)
        .into_response()
        .map(BodyExt::boxed_unsync)
}

/// A job's event as the kitchen sends it: the step with the job's status (brigade-jobs sets
/// its id, the store's sequence number).
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
    Event::default().data(out.to_string())
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

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
