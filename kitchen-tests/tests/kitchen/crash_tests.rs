//! A kitchen killed with SIGKILL mid-job, then started again on the same SQLite file: real
//! processes (`processes`), on the real clock, with a short lease so that it takes seconds.

use brigade_sse::EventStream;
use futures::StreamExt;

use super::jobs_tests::{open_events, read_all, seq, status_is, submit_ok, wait_for};
use super::processes::Process;
use super::*;

#[tokio::test]
async fn a_job_killed_mid_run_finishes_after_a_restart_with_every_event_once() {
    let dir = std::env::temp_dir().join(format!(
        "kitchen-crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("jobs.db").display());
    let log = dir.join("kitchen.log");
    let flags = [
        "--jobs-db",
        &url,
        "--job-workers",
        "1",
        "--job-chunk-io-ms",
        "50",
        "--job-embed-rounds",
        "1",
        "--job-lease-ms",
        "1000",
        "--job-heartbeat-ms",
        "100",
        "--job-poll-ms",
        "100",
    ];
    let mut first = Process::start(&flags, &log).await;
    let chunks = 40;
    let id = submit_ok(first.addr, chunks).await;

    // A client follows the job until some progress, when the kitchen is killed.
    let (response, _connection) = open_events(first.addr, &id, None).await;
    let mut stream = EventStream::from_body(response.into_body());
    let mut seen: Vec<u64> = Vec::new();
    let mut progress = 0;
    while progress < 5 {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("events within 20 s")
            .expect("the stream goes on")
            .unwrap();
        seen.push(seq(event.id().unwrap()));
        let data: Value = serde_json::from_str(event.data()).unwrap();
        if data["type"] == "progress" {
            progress += 1;
        }
    }
    first.kill9();
    // What was sent before the kill is read to the end of the cut stream.
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        if let Some(id) = event.id() {
            let n = seq(id);
            if seen.last() != Some(&n) {
                seen.push(n);
            }
        }
    }
    let last = *seen.last().unwrap();

    // The next start on the same file: the job's lease expires, the reaper queues it again,
    // and it runs to the end.
    let second = Process::start(&flags, &log).await;
    let (response, _) = open_events(second.addr, &id, Some(&last.to_string())).await;
    let rest = read_all(response).await;
    seen.extend(rest.iter().map(|(id, _)| seq(id)));
    let done = wait_for(second.addr, &id, status_is("done")).await;
    assert_eq!(done["attempt"], 2, "the expired lease counted: {done}");
    assert_eq!(done["progress"], json!({ "done": chunks, "total": chunks }));

    // Across the two connections, every event once, no gap: 1..=N.
    let whole = read_all(open_events(second.addr, &id, None).await.0).await;
    let n = whole.len() as u64;
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    assert_eq!(
        whole.iter().map(|(id, _)| seq(id)).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let retrying = whole
        .iter()
        .find(|(_, e)| e["type"] == "retrying")
        .expect("the expired lease's event");
    assert_eq!(retrying.1["error"], "lease expired");
    assert_eq!(whole.last().unwrap().1["type"], "done");
    let _ = std::fs::remove_dir_all(dir);
}
