//! Two kitchens on one Postgres (feature `postgres`, `BRIGADE_POSTGRES_URL`; `.ci/with-servers`
//! starts a server): real processes of a kitchen binary built with `--features postgres`, each
//! test in a schema of its own. Without the variable these tests fail, never skip.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use http::Method;

use super::jobs_tests::{request, status_is, submit_ok, wait_for};
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

/// Submits `n` one-chunk jobs to `addr` over `connections` keep-alive connections; the ids of
/// those accepted, until the kitchen goes away (it may be killed meanwhile).
async fn submit_many(addr: SocketAddr, n: usize, connections: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let count = n / connections + usize::from(c < n % connections);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            let Ok(stream) = TcpStream::connect(addr).await else {
                return ids;
            };
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            for i in 0..count {
                let body = json!({ "document": format!("chunk {c} {i}"), "chunk_size": 64 });
                let request = Request::post("/v1/jobs")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let Ok(response) = sender.send_request(request).await else {
                    break;
                };
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let Ok(body) = response.into_body().collect().await else {
                    break;
                };
                let job: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kitchens_complete_every_job_once_and_one_finishes_the_dead_ones_jobs() {
    const JOBS: usize = 10_000;
    let url = schema_url("replicas").await;
    let dir = temp_dir("replicas");
    let effects = dir.join("effects");
    let effects_flag = effects.display().to_string();
    let log = dir.join("kitchen.log");
    let lease = Duration::from_secs(2);
    let flags = [
        "--jobs-db",
        &url,
        "--job-workers",
        "8",
        "--job-queue",
        "100000",
        "--job-chunk-io-ms",
        "0",
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
    let started = Instant::now();
    let on_a = tokio::spawn(submit_many(a.addr, JOBS / 2, 4));
    let on_b = tokio::spawn(submit_many(b.addr, JOBS / 2, 4));

    // Kill A mid-run (while jobs are still being queued on both), once a tenth is done.
    loop {
        let done = std::fs::read_dir(effects.join("done")).unwrap().count();
        if done >= JOBS / 10 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{done} done");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_pid = a.id();
    a.kill9();
    let killed = Instant::now();
    let (starts, ends) = runs(&effects);
    let in_flight: Vec<String> = starts
        .iter()
        .filter(|(id, pids)| {
            pids.contains(&a_pid) && !ends.get(*id).is_some_and(|e| e.contains(&a_pid))
        })
        .map(|(id, _)| id.clone())
        .collect();
    // Jobs are short: at the kill, A may hold none mid-handler (the count is printed).

    // B takes the dead kitchen's jobs back once their leases expire (plus a reap interval),
    // and finishes everything.
    for id in &in_flight {
        let job = wait_for(b.addr, &format!("job-{id}"), |job| {
            job["status"] != "running" || job["attempt"].as_u64() > Some(1)
        })
        .await;
        assert!(
            killed.elapsed() < lease + Duration::from_secs(2),
            "job-{id} held by the dead kitchen {:?} after the kill: {job}",
            killed.elapsed()
        );
    }
    let on_a = on_a.await.unwrap();
    let on_b = on_b.await.unwrap();
    assert_eq!(on_b.len(), JOBS / 2);
    let ids: HashSet<String> = on_a.into_iter().chain(on_b).collect();
    let enqueued = started.elapsed();
    loop {
        let done = std::fs::read_dir(effects.join("done")).unwrap().count();
        if done >= ids.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "{done} done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = started.elapsed();
    // Every job done in the store (none queued or running left), its side effect written once.
    loop {
        if metric(b.addr, "kitchen_jobs_queue_depth").await == 0.0
            && metric(b.addr, "kitchen_jobs_running").await == 0.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done: HashSet<String> = std::fs::read_dir(effects.join("done"))
        .unwrap()
        .map(|entry| format!("job-{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    // Every job acknowledged is done; at most the requests cut by the kill (one per
    // connection) were queued without an answer.
    assert!(done.is_superset(&ids), "none lost");
    assert!(
        done.len() <= ids.len() + 4,
        "{} done, {} acknowledged",
        done.len(),
        ids.len()
    );
    // Executions: once each, except jobs the dead kitchen held at the kill (at most its 8
    // workers' worth: running, or ended by its handler before the completion was written).
    let (_, ends) = runs(&effects);
    let repeated: Vec<&String> = ends
        .iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(repeated.len() <= 8, "{} jobs ran twice", repeated.len());
    for id in &repeated {
        assert!(
            starts[*id].contains(&a_pid),
            "job-{id} ran twice, never on the dead kitchen"
        );
    }
    for id in in_flight.iter().take(20) {
        assert_eq!(
            wait_for(b.addr, &format!("job-{id}"), status_is("done")).await["status"],
            "done"
        );
    }
    eprintln!(
        "{} jobs: enqueued in {enqueued:?}, all done {finished:?} after the start; \
         {} in flight on the killed kitchen",
        ids.len(),
        in_flight.len()
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
