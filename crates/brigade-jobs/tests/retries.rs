//! Failed attempts: retried on the worker's schedule, throttled, timed out, or failed with the
//! last error; on every backend.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brigade_jobs::{EventKind, Job, JobError, NewJob, Status};
use serde_json::Value;

use support::{fast, finished};

const QUICK: [Duration; 8] = [Duration::from_millis(10); 8];

fn data(event: &brigade_jobs::Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

backends! {
    async fn a_job_out_of_attempts_fails_with_its_last_error(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("flaky", async |job: Job<()>| {
            Err::<(), _>(JobError::retryable(format!("attempt {} failed", job.attempt())))
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("flaky", &()).max_attempts(3)).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.attempt, 3);
        assert_eq!(record.error.as_deref(), Some("attempt 3 failed"));
        let events = jobs.events_after(id, 0, 100).await.unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        use EventKind::*;
        assert_eq!(kinds, [Queued, Running, Retrying, Running, Retrying, Running, Failed]);
        assert_eq!(data(&events[2])["error"], "attempt 1 failed");
        assert_eq!(data(&events[6])["attempt"], 3);
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_retryable_error_then_a_success_is_done(db) {
        let jobs = db.open(fast()).await;
        // `?` on any error: retryable.
        jobs.worker("parse", async |job: Job<String>| {
            if job.attempt() == 1 {
                return Ok(job.payload().parse::<u32>()?);
            }
            Ok::<_, JobError>(7)
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("parse", &"x")).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Done, 2));
        assert_eq!(record.result_as::<u32>().unwrap(), Some(7));
        assert_eq!(record.error, None, "a done job keeps no error");
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_permanent_error_fails_at_once(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("strict", async |_: Job<()>| {
            Err::<(), _>(JobError::permanent("the document is empty"))
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("strict", &())).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Failed, 1));
        assert_eq!(record.error.as_deref(), Some("the document is empty"));
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_throttled_error_waits_at_least_its_delay_and_counts_an_attempt(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("upstream", async |job: Job<()>| {
            if job.attempt() == 1 {
                return Err(JobError::throttled("429", Duration::from_millis(400)));
            }
            Ok(job.attempt())
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("upstream", &())).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Done, 2));
        let events = jobs.events_after(id, 0, 100).await.unwrap();
        let retrying = events.iter().find(|e| e.kind == EventKind::Retrying).unwrap();
        let run_at = data(retrying)["run_at"].as_i64().unwrap();
        let at = i64::try_from(
            retrying.at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        assert!(run_at - at >= 400, "the throttle's delay: {}", run_at - at);
        let second = events.iter().rfind(|e| e.kind == EventKind::Running).unwrap();
        let started = i64::try_from(
            second.at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        assert!(started >= run_at, "ran {} ms early", run_at - started);
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_job_past_its_timeout_is_cancelled_and_retried(db) {
        let jobs = db.open(fast()).await;
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        jobs.worker("slow", move |job: Job<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if job.attempt() == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, JobError>("in time")
            }
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs
            .enqueue(NewJob::new("slow", &()).timeout(Duration::from_millis(200)))
            .await
            .unwrap()
            .id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Done, 2));
        let events = jobs.events_after(id, 0, 100).await.unwrap();
        let retrying = events.iter().find(|e| e.kind == EventKind::Retrying).unwrap();
        assert_eq!(data(retrying)["error"], "timed out after 200ms");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_panicking_handler_fails_its_attempt_not_its_worker(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("fragile", async |job: Job<()>| {
            if job.attempt() == 1 {
                panic!("the prep cook dropped a chunk");
            }
            Ok::<_, JobError>(())
        })
        .backoff(QUICK)
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("fragile", &())).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Done, 2));
        let events = jobs.events_after(id, 0, 100).await.unwrap();
        let retrying = events.iter().find(|e| e.kind == EventKind::Retrying).unwrap();
        assert_eq!(
            data(retrying)["error"],
            "the handler panicked: the prep cook dropped a chunk"
        );
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_payload_the_worker_cannot_read_fails_at_once(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("typed", async |job: Job<Vec<u32>>| Ok::<_, JobError>(job.payload().len()))
            .start()
            .unwrap();
        let id = jobs.enqueue(NewJob::new("typed", &"not a list")).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Failed, 1));
        assert!(
            record.error.as_deref().unwrap().starts_with("the payload does not deserialize"),
            "{:?}",
            record.error
        );
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn the_end_of_the_schedule_ends_the_retries(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("short", async |_: Job<()>| Err::<(), _>(JobError::retryable("no")))
            .backoff([Duration::from_millis(10)])
            .start()
            .unwrap();
        let id = jobs.enqueue(NewJob::new("short", &()).max_attempts(5)).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!((record.status, record.attempt), (Status::Failed, 2));
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn blocking_work_runs_on_the_blocking_pool(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("cpu", async |job: Job<u64>| {
            let n = *job.payload();
            let sum = job
                .blocking(move |cancel| {
                    assert!(!cancel.is_cancelled());
                    (1..=n).sum::<u64>()
                })
                .await?;
            let panicked = job.blocking(|_| panic!("boom")).await;
            assert!(panicked.unwrap_err().message().contains("boom"));
            Ok::<_, JobError>(sum)
        })
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("cpu", &100_u64)).await.unwrap().id();
        let record = finished(&jobs, id).await;
        assert_eq!(record.result_as::<u64>().unwrap(), Some(5050));
        jobs.shutdown(Duration::from_secs(1)).await;
    }
}
