//! Tests of the prep shelf (`/v1/jobs`): lifecycle, cancel, events with `Last-Event-ID`, the
//! bounded queue, retention and shutdown. The embedding's CPU work is one hashing round per
//! chunk (`--job-embed-rounds 1`), so no test depends on how long the blocking pool takes;
//! assertions are on states, reached by polling on the paused clock.

use brigade_sse::EventStream;
use futures::StreamExt;
use http::Method;

use super::*;

/// Characters per chunk in these tests.
const CHUNK: usize = 10;

/// A document of `chunks` distinct chunks of [`CHUNK`] characters.
fn document(chunks: usize) -> String {
    (0..chunks).map(|i| format!("part{i:>6}")).collect()
}

async fn submit(addr: SocketAddr, body: &Value) -> Response<Incoming> {
    let request = Request::post("/v1/jobs")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(addr, request).await.0
}

/// Submits a job of `chunks` chunks; checks the 202 and its `Location`; returns the id.
async fn submit_ok(addr: SocketAddr, chunks: usize) -> String {
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

async fn request(addr: SocketAddr, method: Method, path: &str) -> Response<Incoming> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::default())
        .unwrap();
    send(addr, request).await.0
}

async fn status_of(addr: SocketAddr, id: &str) -> Value {
    let response = get(addr, &format!("/v1/jobs/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&text(response).await).unwrap()
}

/// Polls the job every 10 ms of virtual time (for a minute at most) until `reached` holds.
async fn wait_for(addr: SocketAddr, id: &str, reached: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..6_000 {
        let job = status_of(addr, id).await;
        if reached(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never reached the state");
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |job| job["status"] == status
}

/// Opens the job's event stream, with a `Last-Event-ID` if given.
async fn open_events(
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
type Seen = (String, Value);

fn seen(event: &brigade_sse::DecodedEvent) -> Seen {
    (
        event.id().expect("every event has an id").to_owned(),
        serde_json::from_str(event.data()).unwrap(),
    )
}

/// Every event of an event stream, to its end.
async fn read_all(response: Response<Incoming>) -> Vec<Seen> {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = EventStream::from_body(response.into_body());
    let mut all = Vec::new();
    while let Some(event) = events.next().await {
        all.push(seen(&event.unwrap()));
    }
    all
}

/// The sequence number of a replay id (`<epoch>-<seq>`).
fn seq(id: &str) -> u64 {
    let (epoch, seq) = id.split_once('-').expect("ids are <epoch>-<seq>");
    assert!(u64::from_str_radix(epoch, 16).is_ok(), "{id}");
    seq.parse().unwrap()
}

/// A metric from the exposition text, for when the server no longer accepts connections.
fn metric_now(kitchen: &Running, series: &str) -> f64 {
    kitchen
        .app
        .metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(start_paused = true)]
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
    let first = status_of(addr, &first).await;
    assert_eq!(first["status"], "done");
    assert_eq!(first["result"], done["result"]);

    assert_eq!(metric(addr, "kitchen_jobs_done_total").await, 2.0);
    assert_eq!(metric(addr, "kitchen_jobs_running").await, 0.0);
    assert_eq!(metric(addr, "kitchen_jobs_queue_depth").await, 0.0);
    assert_eq!(metric(addr, "kitchen_job_chunks_embedded_total").await, 8.0);

    // The event log of the finished job, from the start: each step once, in order, with
    // consecutive ids; the stream ends after the last one.
    let (response, _) = open_events(addr, &second, None).await;
    let events = read_all(response).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
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

#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
async fn jobs_need_a_key_and_belong_to_it() {
    let kitchen = kitchen(&["--api-key", "k1", "--api-key", "k2"]).await;
    let body = json!({ "document": document(2), "chunk_size": CHUNK });
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
    // Another key neither sees nor cancels it.
    for method in [Method::GET, Method::DELETE] {
        let as_k2 = with_key("k2", Request::builder().method(method).uri(&path))
            .body(Full::default())
            .unwrap();
        assert_eq!(
            send(kitchen.addr, as_k2).await.0.status(),
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test(start_paused = true)]
async fn delete_cancels_a_running_job_with_its_reason() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "1000",
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

    // The only worker is free at once: a one-chunk job is done within 3 s, when the cancelled
    // job would have needed 17 s more.
    let next = submit_ok(addr, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(addr, &next).await["status"], "done");
    let after = status_of(addr, &long).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["progress"]["done"], done_at_cancel);
    assert_eq!(
        metric(addr, "kitchen_job_chunks_embedded_total").await,
        done_at_cancel as f64 + 1.0
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
    let kinds: Vec<Value> = read_all(response)
        .await
        .into_iter()
        .map(|(_, e)| e["type"].clone())
        .collect();
    assert_eq!(kinds, ["queued", "cancelled"]);
}

#[tokio::test(start_paused = true)]
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
        before.push(seen(&stream.next().await.unwrap().unwrap()));
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
    // An id this job never issued (another job's, a restarted server's) starts over.
    for foreign in ["0-3", "junk", "5"] {
        let (response, _) = open_events(addr, &id, Some(foreign)).await;
        assert_eq!(read_all(response).await, whole, "{foreign}");
    }
    // A client that has the last event is told to stop reconnecting.
    let (response, _) = open_events(addr, &id, Some(&whole.last().unwrap().0)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(start_paused = true)]
async fn full_queue_is_503_with_retry_after() {
    let kitchen = kitchen(&[
        "--job-workers",
        "1",
        "--job-queue",
        "1",
        "--job-chunk-io-ms",
        "1000",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let running = submit_ok(addr, 10).await;
    wait_for(addr, &running, status_is("running")).await;
    let queued = submit_ok(addr, 2).await;

    let response = submit(
        addr,
        &json!({ "document": document(2), "chunk_size": CHUNK }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // About the time the running job needs to end (10 chunks of 1 s, some done).
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

#[tokio::test(start_paused = true)]
async fn finished_job_is_dropped_after_the_keep_time() {
    let kitchen = kitchen(&[
        "--job-keep-secs",
        "5",
        "--job-chunk-io-ms",
        "10",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let id = submit_ok(addr, 2).await;
    let done = wait_for(addr, &id, status_is("done")).await;
    assert!(done["expires_in_secs"].as_u64().unwrap() <= 5, "{done}");
    assert_eq!(metric(addr, "kitchen_jobs_stored").await, 1.0);

    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status_of(addr, &id).await["status"], "done");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::DELETE, format!("/v1/jobs/{id}")),
    ] {
        let response = request(addr, method, &path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(response).await["code"], "not_found");
    }
    assert_eq!(metric(addr, "kitchen_jobs_stored").await, 0.0);
    assert!(kitchen.app.jobs.job(&id).is_none());
}

#[tokio::test(start_paused = true)]
async fn finished_jobs_beyond_the_cap_are_dropped_oldest_first() {
    let kitchen = kitchen(&[
        "--job-keep-max",
        "2",
        "--job-chunk-io-ms",
        "10",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = submit_ok(addr, 1).await;
        wait_for(addr, &id, status_is("done")).await;
        ids.push(id);
    }
    // Well within the keep time (600 s), the oldest finished job made room for the newest.
    let response = get(addr, &format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    for id in &ids[1..] {
        assert_eq!(status_of(addr, id).await["status"], "done");
    }
    assert_eq!(metric(addr, "kitchen_jobs_stored").await, 2.0);
}

#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_a_running_job_after_the_grace_period() {
    let kitchen = kitchen(&[
        "--grace-secs",
        "2",
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "500",
        "--job-embed-rounds",
        "1",
    ])
    .await;
    let addr = kitchen.addr;
    let running = submit_ok(addr, 100).await;
    wait_for(addr, &running, status_is("running")).await;
    let queued = submit_ok(addr, 100).await;
    // A follower of the running job, connected before the shutdown.
    let (response, _) = open_events(addr, &running, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let follower = tokio::spawn(read_all(response));
    let snapshot = |id: &str| kitchen.app.jobs.job(id).unwrap().snapshot();

    let shutdown = kitchen.app.shutdown.clone();
    assert!(shutdown.trigger());
    let drained = tokio::spawn(async move { shutdown.drained().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let at_trigger = snapshot(&running)["progress"]["done"].as_u64().unwrap();

    // The queued job will not run: cancelled at once, with reason shutdown.
    let never_run = snapshot(&queued);
    assert_eq!(never_run["status"], "cancelled");
    assert_eq!(never_run["cancel_reason"], "shutdown");
    assert_eq!(never_run["progress"]["done"], 0);
    assert_eq!(metric_now(&kitchen, "kitchen_jobs_queue_depth"), 0.0);

    // The running one goes on through the grace period...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(snapshot(&running)["status"], "running");
    // ...then is cancelled with reason shutdown, and its event stream ends with that.
    let events = follower.await.unwrap();
    let (_, last) = events.last().unwrap();
    assert_eq!(last["type"], "cancelled");
    assert_eq!(last["cancel_reason"], "shutdown");
    let at_end = last["progress"]["done"].as_u64().unwrap();
    assert!(
        at_end > at_trigger && at_end < 100,
        "worked on through the grace: {at_trigger} → {at_end}"
    );
    let job = snapshot(&running);
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["cancel_reason"], "shutdown");

    let report = drained.await.unwrap();
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert_eq!(report.still_running(), 0);
    assert_eq!(kitchen.app.shutdown.tracker().len(), 0, "workers joined");
    assert_eq!(
        metric_now(
            &kitchen,
            "kitchen_jobs_cancelled_total{reason=\"shutdown\"}"
        ),
        2.0
    );
    assert_eq!(metric_now(&kitchen, "kitchen_jobs_running"), 0.0);
}

#[tokio::test(start_paused = true)]
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
    let response = send(kitchen.addr, as_key("k1")).await.0;
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
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
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
