//! Two kitchens on one Postgres (feature `postgres`, `BRIGADE_POSTGRES_URL`; `.ci/with-servers`
//! starts a server): real processes of a kitchen binary built with `--features postgres`, each
//! test in a schema of its own. Without the variable these tests fail, never skip.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use http::Method;

use super::jobs_tests::{request, status_is, status_of, submit_ok, wait_for};
use super::processes::Process;
use super::*;

/// A fresh schema on the test server, and the `--jobs-db` URL that uses it.
async fn schema_url(name: &str) -> String {
    use brigade_jobs::sqlx::Connection;
    let url = std::env::var("BRIGADE_POSTGRES_URL").expect(
        "the `postgres` feature's kitchen tests need a server: set BRIGADE_POSTGRES_URL \
         (`bash .ci/with-servers cargo test -p brigade-kitchen-tests --all-features` starts one)",
    );
    let schema = format!(
        "kitchen_{name}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut conn = brigade_jobs::sqlx::postgres::PgConnection::connect(&url)
        .await
        .unwrap();
    brigade_jobs::sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kitchen-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `runs.log` of the effects directory: per job id, the pids that started and ended it.
fn runs(dir: &Path) -> (HashMap<String, Vec<u32>>, HashMap<String, Vec<u32>>) {
    let text = std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default();
    let (mut starts, mut ends) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(what), Some(id), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let map: &mut HashMap<String, Vec<u32>> = if what == "start" {
            &mut starts
        } else {
            &mut ends
        };
        map.entry(id.to_owned())
            .or_default()
            .push(pid.parse().unwrap());
    }
    (starts, ends)
}

/// Submits `n` one-chunk jobs to `addr` over `connections` keep-alive connections; their ids.
async fn submit_many(addr: SocketAddr, n: usize, connections: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let count = n / connections + usize::from(c < n % connections);
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let body = json!({ "document": format!("chunk {c} {i}"), "chunk_size": 64 });
                let request = Request::post("/v1/jobs")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let job: Value = serde_json::from_slice(&body).unwrap();
                ids.push(job["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Polls until `done` holds, every 20 ms; fails the test once `started` is `limit` old.
async fn poll_until<F: std::future::Future<Output = bool>>(
    what: &str,
    started: Instant,
    limit: Duration,
    mut done: impl FnMut() -> F,
) {
    while !done().await {
        assert!(
            started.elapsed() < limit,
            "{what}: not after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn done_count(effects: &Path) -> usize {
    std::fs::read_dir(effects.join("done")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kitchens_complete_every_job_once_and_one_finishes_the_dead_ones_jobs() {
    const JOBS: usize = 10_000;
    const WORKERS: usize = 8;
    // The backlog left in the store when A is killed: small enough that B drains it before
    // A's leases expire, so that B's finishing A's jobs waits on the lease, not on the queue.
    let lease = Duration::from_secs(2);
    // After the lease: the reaper's interval (the poll interval), B's claim and one run. A
    // job taken back keeps its place in the queue: B runs it before the backlog left by the
    // kill, which would take it several leases to drain.
    let slack = Duration::from_secs(1);
    let url = schema_url("replicas").await;
    let dir = temp_dir("replicas");
    let effects = dir.join("effects");
    let effects_flag = effects.display().to_string();
    let log = dir.join("kitchen.log");
    let workers = WORKERS.to_string();
    // A job is one chunk and 20 ms of mock I/O: 16 workers run at most 800 jobs a second, so
    // A's workers are busy with the last jobs submitted, or with the backlog, at the kill.
    let flags = [
        "--jobs-db",
        &url,
        "--job-workers",
        &workers,
        "--job-queue",
        "100000",
        "--job-chunk-io-ms",
        "20",
        "--job-embed-rounds",
        "1",
        "--job-lease-ms",
        "2000",
        "--job-heartbeat-ms",
        "200",
        "--job-poll-ms",
        "200",
        "--requests-per-min",
        "0",
        "--job-effects-dir",
        &effects_flag,
    ];
    let mut a = Process::start(&flags, &log).await;
    let b = Process::start(&flags, &log).await;
    let (b_addr, effects_dir) = (b.addr, effects.as_path());
    let started = Instant::now();
    let (on_a, on_b) = tokio::join!(
        submit_many(a.addr, JOBS / 2, 4),
        submit_many(b.addr, JOBS / 2, 4)
    );
    let enqueued = started.elapsed();
    let ids: HashSet<String> = on_a.into_iter().chain(on_b).collect();
    assert_eq!(ids.len(), JOBS);
    // Kill A mid-run: every job is in the store, the last ones still running or queued.
    let backlog = metric(b.addr, "kitchen_jobs_queue_depth").await;
    let done_at_enqueued = done_count(&effects);
    let a_pid = a.id();
    a.kill9();
    let killed = Instant::now();
    // What A's handlers were running at the kill: started on A, not ended there.
    let (starts, ends) = runs(&effects);
    let in_flight: Vec<String> = starts
        .iter()
        .filter(|(id, pids)| {
            pids.contains(&a_pid) && !ends.get(*id).is_some_and(|e| e.contains(&a_pid))
        })
        .map(|(id, _)| format!("job-{id}"))
        .collect();
    assert!(
        !in_flight.is_empty(),
        "A ran no job at the kill ({} done)",
        done_count(&effects)
    );
    assert!(in_flight.len() <= WORKERS, "{in_flight:?}");

    // B finishes each of them within a lease (and the slack) of the kill.
    let mut left = in_flight.clone();
    let mut last_finished = Duration::ZERO;
    while !left.is_empty() {
        let mut still = Vec::new();
        for id in left {
            if status_of(b.addr, &id).await["status"] == "done" {
                last_finished = killed.elapsed();
            } else {
                still.push(id);
            }
        }
        left = still;
        assert!(
            killed.elapsed() <= lease + slack,
            "{left:?} held by the dead kitchen {:?} after the kill",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everything finishes; every job's side effect is written once, and the store holds no
    // queued or running job.
    poll_until(
        "every job done",
        started,
        Duration::from_secs(55),
        || async move { done_count(effects_dir) >= JOBS },
    )
    .await;
    let finished = started.elapsed();
    poll_until(
        "the store empties",
        started,
        Duration::from_secs(55),
        || async move {
            metric(b_addr, "kitchen_jobs_queue_depth").await == 0.0
                && metric(b_addr, "kitchen_jobs_running").await == 0.0
        },
    )
    .await;
    let done: HashSet<String> = std::fs::read_dir(effects.join("done"))
        .unwrap()
        .map(|entry| format!("job-{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(done, ids, "every job done, none lost, none unknown");

    // Executions: once each, except the jobs A held at the kill: running in its handler, or
    // ended there before the completion was written (one per worker at most). Each of those
    // ran again on B, and only there.
    let (starts, ends) = runs(&effects);
    let b_pid = b.id();
    let repeated: Vec<&String> = starts
        .iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        repeated.len() <= WORKERS,
        "{} jobs ran twice",
        repeated.len()
    );
    for id in &repeated {
        assert_eq!(starts[*id], [a_pid, b_pid], "job-{id}");
    }
    for id in &in_flight {
        let id = id.strip_prefix("job-").unwrap();
        assert_eq!(starts[id], [a_pid, b_pid], "job-{id}");
        assert_eq!(ends[id], [b_pid], "job-{id}");
    }
    for id in &ids {
        let id = id.strip_prefix("job-").unwrap();
        let ran_to_the_end = ends.get(id).map_or(0, Vec::len);
        assert!(
            (1..=2).contains(&ran_to_the_end),
            "job-{id} ended {ran_to_the_end} times"
        );
    }
    eprintln!(
        "{JOBS} jobs: enqueued in {enqueued:?} ({done_at_enqueued} done, {backlog} queued at \
         the kill), all done {finished:?} after the start; {} running on the killed kitchen, finished by \
         the other within {last_finished:?} of the kill; {} ran twice",
        in_flight.len(),
        repeated.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_kitchen_stops_the_job_running_on_the_other_within_a_second() {
    let url = schema_url("cancel").await;
    let dir = temp_dir("cancel");
    let log = dir.join("kitchen.log");
    let flags = [
        "--jobs-db",
        &url,
        "--job-chunk-io-ms",
        "100",
        "--job-embed-rounds",
        "1",
        "--job-lease-ms",
        "2000",
        "--job-heartbeat-ms",
        "200",
    ];
    // The job runs on A: B starts after it was claimed.
    let a = Process::start(&flags, &log).await;
    let id = submit_ok(a.addr, 200).await;
    wait_for(a.addr, &id, |job| {
        job["status"] == "running" && job["progress"]["done"].as_u64() >= Some(2)
    })
    .await;
    let b = Process::start(&flags, &log).await;
    let response = request(b.addr, Method::DELETE, &format!("/v1/jobs/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled = Instant::now();
    // A's handler stops within a second: its chunk count stands still after that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_one_second = metric(a.addr, "kitchen_job_chunks_embedded_total").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(a.addr, "kitchen_job_chunks_embedded_total").await,
        at_one_second,
        "still embedding {:?} after the cancel",
        cancelled.elapsed()
    );
    assert!(at_one_second < 200.0);
    let job = wait_for(a.addr, &id, status_is("cancelled")).await;
    assert_eq!(job["cancel_reason"], "client_request");
    let _ = std::fs::remove_dir_all(dir);
}
