//! Tests of the prep shelf (`/v1/jobs`) on brigade-jobs: lifecycle, cancel, events with
//! `Last-Event-ID`, the bounded queue, retention, shutdown and restart.
//!
//! The job store runs statements on sqlx's own threads, which tokio's paused clock does not
//! see (it would auto-advance through them and fire sqlx's timeouts, leases and heartbeats
//! spuriously), so these tests run on the real clock, with short waits: each wait polls with
//! a deadline that fails the test, and no outcome depends on how long a wait took. The one
//! test that needs minutes to pass (a rate limit's window) holds the paused clock still with
//! a blocking task (tokio does not auto-advance while one runs) and moves it by `advance`.
//! The embedding's CPU work is one hashing round per chunk (`--job-embed-rounds 1`).

use std::path::{Path, PathBuf};

use brigade_sse::EventStream;
use futures::StreamExt;
use http::Method;

use super::*;

/// Characters per chunk in these tests.
const CHUNK: usize = 10;

/// The longest any wait below may take before it fails the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// A document of `chunks` distinct chunks of [`CHUNK`] characters.
pub(crate) fn document(chunks: usize) -> String {
    (0..chunks).map(|i| format!("part{i:>6}")).collect()
}

pub(crate) async fn submit(addr: SocketAddr, body: &Value) -> Response<Incoming> {
    let request = Request::post("/v1/jobs")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(addr, request).await.0
}

/// Submits a job of `chunks` chunks; checks the 202 and its `Location`; returns the id.
pub(crate) async fn submit_ok(addr: SocketAddr, chunks: usize) -> String {
    let response = submit(
        addr,
        &json!({ "document": document(chunks), "chunk_size": CHUNK }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["progress"], json!({ "done": 0, "total": chunks }));
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}

pub(crate) async fn request(addr: SocketAddr, method: Method, path: &str) -> Response<Incoming> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::default())
        .unwrap();
    send(addr, request).await.0
}

pub(crate) async fn status_of(addr: SocketAddr, id: &str) -> Value {
    let response = get(addr, &format!("/v1/jobs/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&text(response).await).unwrap()
}

/// Polls the job every 10 ms until `reached` holds; fails the test after [`DEADLINE`].
pub(crate) async fn wait_for(
    addr: SocketAddr,
    id: &str,
    reached: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let job = status_of(addr, id).await;
        if reached(&job) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never reached the state: {job}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |job| job["status"] == status
}

/// Opens the job's event stream, with a `Last-Event-ID` if given.
pub(crate) async fn open_events(
    addr: SocketAddr,
    id: &str,
    last_event_id: Option<&str>,
) -> (Response<Incoming>, JoinHandle<()>) {
    let mut request = Request::get(format!("/v1/jobs/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    send(addr, request.body(Full::default()).unwrap()).await
}

/// One event as a browser's `EventSource` sees it: its last event id and its data.
pub(crate) type Seen = (String, Value);

pub(crate) fn seen(event: &brigade_sse::DecodedEvent) -> Seen {
    (
        event.id().expect("every event has an id").to_owned(),
        serde_json::from_str(event.data()).unwrap(),
    )
}

/// Every event of an event stream, to its end.
pub(crate) async fn read_all(response: Response<Incoming>) -> Vec<Seen> {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = EventStream::from_body(response.into_body());
    let mut all = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("the event stream ended within the deadline")
    {
        all.push(seen(&event.unwrap()));
    }
    all
}

/// The sequence number of an event id: the store's, a plain number.
pub(crate) fn seq(id: &str) -> u64 {
    id.parse().unwrap()
}

fn kinds(events: &[Seen]) -> Vec<&str> {
    events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect()
}

/// A fresh directory for a test's job store.
fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("kitchen-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("jobs.db").display())
}

#[tokio::test]
async fn job_lifecycle_queued_running_done_with_result() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "100",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    // The first job takes the only worker; the second, the same document, waits for it.
    let first = submit_ok(addr, 4).await;
    wait_for(addr, &first, status_is("running")).await;
    let second = submit_ok(addr, 4).await;
    assert_ne!(first, second);
    assert_eq!(status_of(addr, &second).await["status"], "queued");
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 1.0);

    let running = wait_for(addr, &second, status_is("running")).await;
    assert!(
        running["progress"]["done"].as_u64().unwrap() < 4,
        "{running}"
    );
    assert!(running.get("result").is_none(), "{running}");
    assert_eq!(running["attempt"], 1);
    let done = wait_for(addr, &second, status_is("done")).await;
    assert_eq!(done["progress"], json!({ "done": 4, "total": 4 }));

    let chunks = done["result"]["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 4);
    assert_eq!(done["result"]["dimensions"], 8);
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["index"], i);
        assert_eq!(chunk["chars"], CHUNK);
        let embedding: Vec<f64> = chunk["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(embedding.len(), 8);
        let norm = embedding.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_ne!(chunks[0]["embedding"], chunks[1]["embedding"]);
    // Deterministic: the same document gives the same vectors.
    let first = wait_for(addr, &first, status_is("done")).await;
    assert_eq!(first["result"], done["result"]);

    assert_eq!(metric(addr, "kitchen_jobs_done_total").await, 2.0);
    assert_eq!(metric(addr, "kitchen_jobs_running").await, 0.0);
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 0.0);
    assert_eq!(metric(addr, "kitchen_job_chunks_embedded_total").await, 8.0);

    // The event log of the finished job, from the start: each step once, in order, with
    // consecutive ids (the store's numbers); the stream ends after the last one.
    let (response, _) = open_events(addr, &second, None).await;
    let events = read_all(response).await;
    assert_eq!(
        kinds(&events),
        [
            "queued", "running", "progress", "progress", "progress", "progress", "done"
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|(id, _)| seq(id)).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let progress: Vec<u64> = events[2..6]
        .iter()
        .map(|(_, e)| e["progress"]["done"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, [1, 2, 3, 4]);
    assert_eq!(events[6].1["status"], "done");
}

#[tokio::test]
async fn job_requests_follow_the_error_table() {
    let kitchen = kitchen(&["--job-max-chunks", "4", "--job-embed-rounds", "1"]).await;
    let addr = kitchen.addr;

    // 400 names the field.
    for (body, field) in [
        (json!({ "chunk_size": 4 }), "`document`"),
        (json!({ "document": "   " }), "`document`"),
        (json!({ "document": 7 }), "`document`"),
        (
            json!({ "document": "abc", "chunk_size": 0 }),
            "`chunk_size`",
        ),
        (
            json!({ "document": "abc", "chunk_size": -3 }),
            "`chunk_size`",
        ),
        (
            json!({ "document": "abc", "chunk_size": "10" }),
            "`chunk_size`",
        ),
        // 5 chunks, at most 4.
        (
            json!({ "document": document(5), "chunk_size": CHUNK }),
            "`chunk_size`",
        ),
        (json!(["document"]), "JSON object"),
    ] {
        let response = submit(addr, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error = error_of(response).await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error} should name {field}"
        );
    }
    let malformed = Request::post("/v1/jobs")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"document\":")))
        .unwrap();
    let response = send(addr, malformed).await.0;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_of(response).await["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    // 415: not JSON.
    let plain = Request::post("/v1/jobs")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"some text")))
        .unwrap();
    assert_eq!(
        send(addr, plain).await.0.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    // 404: unknown jobs and paths.
    for (method, path) in [
        (Method::GET, "/v1/jobs/job-999"),
        (Method::DELETE, "/v1/jobs/job-999"),
        (Method::GET, "/v1/jobs/job-999/events"),
        (Method::GET, "/v1/jobs/job-0123456789abcdef0123456789abcdef"),
        (Method::GET, "/v1/jobs/"),
        (Method::GET, "/v1/jobs/job-1/nothing"),
        (Method::GET, "/v1/jobsx"),
    ] {
        let response = request(addr, method.clone(), path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        error_of(response).await;
    }

    // 405 with Allow.
    for (method, path, allow) in [
        (Method::GET, "/v1/jobs", "POST"),
        (Method::PUT, "/v1/jobs/job-1", "GET, DELETE"),
        (Method::POST, "/v1/jobs/job-1/events", "GET"),
    ] {
        let response = request(addr, method.clone(), path).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allow);
        error_of(response).await;
    }

    // 409: a finished job cannot be cancelled.
    let id = submit_ok(addr, 1).await;
    wait_for(addr, &id, status_is("done")).await;
    let response = request(addr, Method::DELETE, &format!("/v1/jobs/{id}")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(response).await["code"], "job_finished");
    assert_eq!(status_of(addr, &id).await["status"], "done");
}

#[tokio::test]
async fn jobs_need_a_key_and_belong_to_it() {
    let kitchen = kitchen(&[
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--job-chunk-io-ms",
        "200",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let body = json!({ "document": document(20), "chunk_size": CHUNK });
    let response = submit(kitchen.addr, &body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(response).await["code"], "invalid_api_key");

    let with_key = |key: &str, request: http::request::Builder| {
        request
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
    };
    let request = with_key("k1", Request::post("/v1/jobs"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = send(kitchen.addr, request).await.0;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = serde_json::from_str(&text(response).await).unwrap();
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());

    let as_k1 = with_key("k1", Request::get(&path))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(kitchen.addr, as_k1).await.0.status(), StatusCode::OK);
    // Another key neither sees, follows nor cancels it.
    for (method, path) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("{path}/events")),
        (Method::DELETE, path.clone()),
    ] {
        let as_k2 = with_key("k2", Request::builder().method(method).uri(&path))
            .body(Full::default())
            .unwrap();
        let response = send(kitchen.addr, as_k2).await.0;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(response).await["code"], "not_found");
    }
    let as_k1 = with_key("k1", Request::get(&path))
        .body(Full::default())
        .unwrap();
    let job: Value = serde_json::from_str(&text(send(kitchen.addr, as_k1).await.0).await).unwrap();
    assert_ne!(job["status"], "cancelled", "{job}");
}

#[tokio::test]
async fn delete_cancels_a_running_job_with_its_reason() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "200",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let long = submit_ok(addr, 20).await;
    wait_for(addr, &long, |job| {
        job["status"] == "running" && job["progress"]["done"].as_u64().unwrap() >= 2
    })
    .await;

    let response = request(addr, Method::DELETE, &format!("/v1/jobs/{long}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancel_reason"], "client_request");
    assert!(cancelled.get("result").is_none());
    let done_at_cancel = cancelled["progress"]["done"].as_u64().unwrap();
    assert!((2..20).contains(&done_at_cancel), "{cancelled}");
    assert_eq!(metric(addr, "kitchen_jobs_running").await, 0.0);
    assert_eq!(
        metric(
            addr,
            "kitchen_jobs_cancelled_total{reason=\"client_request\"}"
        )
        .await,
        1.0
    );

    // The only worker is free at once: a one-chunk job is done well before the cancelled job
    // would have ended (17 chunks of 200 ms more).
    let freed = std::time::Instant::now();
    let next = submit_ok(addr, 1).await;
    wait_for(addr, &next, status_is("done")).await;
    assert!(
        freed.elapsed() < Duration::from_secs(3),
        "{:?}",
        freed.elapsed()
    );
    let after = status_of(addr, &long).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["progress"]["done"], done_at_cancel);
    // The handler stopped: at most the chunk it was on when the cancel came was embedded
    // after the last progress kept.
    let embedded = metric(addr, "kitchen_job_chunks_embedded_total").await as u64;
    assert!(
        (done_at_cancel + 1..=done_at_cancel + 2).contains(&embedded),
        "{embedded} chunks embedded, {done_at_cancel} at the cancel"
    );
    // Cancelling twice: the job has finished.
    let response = request(addr, Method::DELETE, &format!("/v1/jobs/{long}")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // A queued job leaves the queue and never runs.
    let busy = submit_ok(addr, 20).await;
    wait_for(addr, &busy, status_is("running")).await;
    let waiting = submit_ok(addr, 3).await;
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 1.0);
    let response = request(addr, Method::DELETE, &format!("/v1/jobs/{waiting}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 0.0);
    let (response, _) = open_events(addr, &waiting, None).await;
    let events = read_all(response).await;
    assert_eq!(kinds(&events), ["queued", "cancelled"]);
    assert_eq!(events[1].1["cancel_reason"], "client_request");
}

#[tokio::test]
async fn events_resume_after_last_event_id_without_gap_or_duplicate() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "100",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let id = submit_ok(addr, 8).await;

    // A browser's EventSource: text/event-stream, a reconnection time, ids on every event.
    let (response, connection) = open_events(addr, &id, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut stream = EventStream::from_body(response.into_body());
    let mut before = Vec::new();
    while before.len() < 4 {
        let event = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap();
        before.push(seen(&event.unwrap().unwrap()));
    }
    assert_eq!(stream.retry(), Some(Duration::from_secs(1)));
    // The connection drops mid-job; the job goes on meanwhile.
    drop(stream);
    connection.abort();
    let _ = connection.await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    let last = before.last().unwrap().0.clone();
    let (response, _) = open_events(addr, &id, Some(&last)).await;
    let after = read_all(response).await;
    assert_eq!(seq(&after[0].0), seq(&last) + 1, "resumes right after");
    assert_eq!(after.last().unwrap().1["type"], "done");

    // Together they are the whole log, as a new follower reads it: no gap, no duplicate.
    let (response, _) = open_events(addr, &id, None).await;
    let whole = read_all(response).await;
    assert_eq!(whole.len(), 8 + 3);
    let joined: Vec<Seen> = before.iter().chain(&after).cloned().collect();
    assert_eq!(joined, whole);

    // Resuming after the done job's events works from any of them.
    let (response, _) = open_events(addr, &id, Some(&whole[5].0)).await;
    assert_eq!(read_all(response).await, whole[6..]);
    // An id this job never issued (past its last event, or not a number) starts over.
    for foreign in ["0-3", "junk", "12", "-1"] {
        let (response, _) = open_events(addr, &id, Some(foreign)).await;
        assert_eq!(read_all(response).await, whole, "{foreign}");
    }
    // A client that has the last event is told to stop reconnecting.
    let (response, _) = open_events(addr, &id, Some(&whole.last().unwrap().0)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn full_queue_is_503_with_retry_after() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-queue",
        "1",
        "--job-chunk-io-ms",
        "300",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let running = submit_ok(addr, 20).await;
    wait_for(addr, &running, status_is("running")).await;
    let queued = submit_ok(addr, 2).await;

    let response = submit(
        addr,
        &json!({ "document": document(2), "chunk_size": CHUNK }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(error_of(response).await["code"], "queue_full");
    assert_eq!(metric(addr, "kitchen_jobs_rejected_total").await, 1.0);
    assert_eq!(metric(addr, "kitchen_jobs_submitted_total").await, 2.0);
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 1.0);
    // The refused job was not kept.
    assert_eq!(metric(addr, "kitchen_jobs_stored").await, 2.0);

    // Room again once the queued job is cancelled.
    let response = request(addr, Method::DELETE, &format!("/v1/jobs/{queued}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    submit_ok(addr, 2).await;
}

#[tokio::test]
async fn finished_job_is_dropped_after_the_keep_time() {
    let kitchen = kitchen(&[
        "--job-keep-secs",
        "1",
        "--job-chunk-io-ms",
        "10",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let id = submit_ok(addr, 2).await;
    let done = wait_for(addr, &id, status_is("done")).await;
    assert!(done["expires_in_secs"].as_u64().unwrap() <= 1, "{done}");
    let kept = std::time::Instant::now();

    // Gone once its keep time is over (whether or not the pruner has deleted it yet).
    let path = format!("/v1/jobs/{id}");
    loop {
        let response = get(addr, &path).await;
        if response.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(kept.elapsed() < DEADLINE, "still readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::DELETE, format!("/v1/jobs/{id}")),
    ] {
        let response = request(addr, method, &path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(response).await["code"], "not_found");
    }
}

#[tokio::test]
async fn a_panicking_embedding_fails_the_job_not_the_worker() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-fail-text",
        "POISON",
        "--job-chunk-io-ms",
        "10",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    // The second chunk holds the poison.
    let body = json!({ "document": "first part POISON... and the rest", "chunk_size": 10 });
    let response = submit(addr, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = serde_json::from_str::<Value>(&text(response).await).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = wait_for(addr, &id, |job| {
        job["status"] != "queued" && job["status"] != "running"
    })
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    // Failed for good at the first attempt: the embedding would panic again.
    assert_eq!(failed["attempt"], 1, "{failed}");
    assert_eq!(failed["progress"]["done"], 1);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("embedding chunk 1 failed"), "{error}");
    assert!(failed.get("result").is_none());

    // The one worker lives on.
    let next = submit_ok(addr, 2).await;
    wait_for(addr, &next, status_is("done")).await;
    assert_eq!(metric(addr, "kitchen_jobs_failed_total").await, 1.0);
    assert_eq!(metric(addr, "kitchen_jobs_done_total").await, 1.0);
}

#[tokio::test]
async fn shutdown_releases_running_jobs_and_the_next_start_finishes_them() {
    let dir = temp_dir("shutdown");
    let url = sqlite_url(&dir);
    let flags = [
        "--jobs-db",
        &url,
        "--grace-secs",
        "1",
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "50",
        "--job-embed-rounds",
        "1",
    ];
    let first_start = kitchen(&flags).await;
    let addr = first_start.addr;
    let running = submit_ok(addr, 60).await;
    wait_for(addr, &running, |job| {
        job["status"] == "running" && job["progress"]["done"].as_u64().unwrap() >= 2
    })
    .await;
    let queued = submit_ok(addr, 3).await;
    // A follower of the running job, connected before the shutdown.
    let (response, _) = open_events(addr, &running, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let follower = tokio::spawn(async move {
        let mut events = EventStream::from_body(response.into_body());
        let mut all = Vec::new();
        while let Some(event) = events.next().await {
            all.push(event.unwrap());
        }
        all
    });

    let shutdown = first_start.app.shutdown.clone();
    assert!(shutdown.trigger());
    let report = tokio::time::timeout(DEADLINE, shutdown.drained())
        .await
        .unwrap();
    assert_eq!(report.still_running(), 0);
    assert_eq!(
        first_start.app.shutdown.tracker().len(),
        0,
        "workers joined"
    );
    tokio::time::timeout(DEADLINE, first_start.app.jobs.closed())
        .await
        .expect("the job store closed");

    // The follower's stream ended with an error event without an id (the id it reports is
    // the last one sent, as `EventSource` keeps it): the client resumes from there.
    let events = tokio::time::timeout(DEADLINE, follower)
        .await
        .unwrap()
        .unwrap();
    let (last, before) = events.split_last().unwrap();
    let error: Value = serde_json::from_str(last.data()).unwrap();
    assert_eq!(error["error"]["code"], "shutting_down");
    let last_id = last.id().unwrap().to_owned();
    assert_eq!(before.last().unwrap().id(), Some(last_id.as_str()));

    // The next start on the same file runs both: the released job from its first chunk again,
    // its attempt not counted; the queued one as it was.
    let again = kitchen(&flags).await;
    let first = wait_for(again.addr, &running, status_is("done")).await;
    assert_eq!(first["attempt"], 1, "a release is not an attempt: {first}");
    let second = wait_for(again.addr, &queued, status_is("done")).await;
    assert_eq!(second["attempt"], 1);

    let (response, _) = open_events(again.addr, &running, None).await;
    let whole = read_all(response).await;
    let seqs: Vec<u64> = whole.iter().map(|(id, _)| seq(id)).collect();
    assert_eq!(seqs, (1..=whole.len() as u64).collect::<Vec<_>>());
    let released = whole
        .iter()
        .position(|(_, e)| e["type"] == "queued" && e["reason"] == "released")
        .expect("a released event");
    assert_eq!(whole[released + 1].1["type"], "running");
    assert_eq!(whole[released + 2].1["progress"]["done"], 1);
    assert_eq!(whole.last().unwrap().1["type"], "done");
    // The follower resumes where it was cut, on the restarted kitchen: every event once.
    let (response, _) = open_events(again.addr, &running, Some(&last_id)).await;
    let rest = read_all(response).await;
    assert_eq!(rest, whole[seq(&last_id) as usize..]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn job_ids_are_random_and_a_guessed_neighbour_is_a_404() {
    let kitchen = kitchen(&["--job-embed-rounds", "1"]).await;
    let ids = [
        submit_ok(kitchen.addr, 1).await,
        submit_ok(kitchen.addr, 1).await,
    ];
    let mut values = Vec::new();
    for id in &ids {
        let hex = id.strip_prefix("job-").unwrap();
        assert_eq!(hex.len(), 32, "{id}: 128 bits in hex");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        values.push(u128::from_str_radix(hex, 16).unwrap());
    }
    // Not a counter: two ids in a row differ in about half their bits, not in the last few.
    let differing = (values[0] ^ values[1]).count_ones();
    assert!(differing > 16, "{ids:?} differ in {differing} bits");

    // Guesses next to a job's id, or a counter's, find nothing.
    let mut guesses = vec!["job-1".to_owned(), "job-2".to_owned(), "job-0".to_owned()];
    for value in values {
        for neighbour in [value.wrapping_add(1), value.wrapping_sub(1)] {
            guesses.push(format!("job-{neighbour:032x}"));
        }
    }
    for guess in guesses {
        let response = get(kitchen.addr, &format!("/v1/jobs/{guess}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{guess}");
        assert_eq!(error_of(response).await["code"], "not_found");
    }
    for id in &ids {
        assert_eq!(status_of(kitchen.addr, id).await["id"], id.as_str());
    }
}

#[tokio::test(start_paused = true)]
async fn job_creation_shares_the_request_quota_of_chat() {
    // The quota's window is a minute, so the paused clock. Every request that reaches the job
    // store holds the clock still (its statements run on other threads); the chat request,
    // whose mock model waits on timers, lets it auto-advance.
    let kitchen = kitchen(&[
        "--requests-per-min",
        "2",
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let body = json!({ "document": document(1), "chunk_size": CHUNK });
    let as_key = |key: &str| {
        Request::post("/v1/jobs")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    // One job and one chat use k1's two requests of the minute: each answer says what is left.
    let held = HeldClock::new();
    let response = send(kitchen.addr, as_key("k1")).await.0;
    drop(held);
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "1");
    assert!(response.headers().contains_key("ratelimit"));
    let chat = post(
        kitchen.addr,
        &order("hi", false),
        &[("authorization", "Bearer k1")],
    )
    .await;
    assert_eq!(chat.status(), StatusCode::OK);

    // The next job is refused as chat would be: 429, `Retry-After`, the rate-limit fields.
    let _held = HeldClock::new();
    let response = send(kitchen.addr, as_key("k1")).await.0;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers().clone();
    assert_eq!(error_of(response).await["code"], "rate_limit_exceeded");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""requests";r=0;"#),
        "{headers:?}"
    );
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(
        metric(
            kitchen.addr,
            "kitchen_rate_limit_rejections_total{limit=\"requests\"}"
        )
        .await,
        1.0
    );
    // Another key has its own quota; k1 gets its turn back after the wait it was told.
    assert_eq!(
        send(kitchen.addr, as_key("k2")).await.0.status(),
        StatusCode::ACCEPTED
    );
    tokio::time::advance(Duration::from_secs(retry_after)).await;
    let response = send(kitchen.addr, as_key("k1")).await.0;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    let job: Value = serde_json::from_str(&text(response).await).unwrap();
    // Reading a job costs nothing of the quota: k1 has none left, and reads it still.
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    for _ in 0..3 {
        let request = Request::get(&path)
            .header("authorization", "Bearer k1")
            .body(Full::default())
            .unwrap();
        assert_eq!(send(kitchen.addr, request).await.0.status(), StatusCode::OK);
    }
}
