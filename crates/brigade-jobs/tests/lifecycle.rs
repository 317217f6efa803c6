//! A job's life through the public API: queued, run, done, with its events, on every backend.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod support;

use std::time::Duration;

use brigade_jobs::{EventKind, Job, JobError, NewJob, Status};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use support::{fast, finished};

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    words: Vec<String>,
}

backends! {
    async fn a_job_runs_with_its_payload_and_keeps_its_result(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("count", async |job: Job<Doc>| {
            for (i, _) in job.payload().words.iter().enumerate() {
                job.progress().send(&serde_json::json!({ "done": i + 1 })).await?;
            }
            Ok::<_, JobError>(job.payload().words.len())
        })
        .concurrency(2)
        .start()
        .unwrap();
        let doc = Doc { words: vec!["a".into(), "b".into(), "c".into()] };
        let queued = jobs.enqueue(NewJob::new("count", &doc)).await.unwrap();
        assert!(queued.is_new());
        let record = finished(&jobs, queued.id()).await;
        assert_eq!(record.status, Status::Done);
        assert_eq!(record.result_as::<usize>().unwrap(), Some(3));
        assert_eq!(record.attempt, 1);
        assert_eq!(record.payload_as::<Doc>().unwrap().words.len(), 3);
        assert!(record.finished_at.is_some() && record.expires_at.is_some());

        // Every event, numbered from 1, the last one final.
        let events = jobs.events_after(queued.id(), 0, 100).await.unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Queued,
                EventKind::Running,
                EventKind::Progress,
                EventKind::Progress,
                EventKind::Progress,
                EventKind::Done
            ]
        );
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert_eq!(events[4].data, r#"{"done":3}"#);
        assert_eq!(record.last_event, 6);

        // A follower that resumes after event 3 gets 4, 5 and 6, then the stream ends.
        let resumed: Vec<u64> = jobs
            .follow(queued.id(), 3)
            .map(|e| e.unwrap().seq)
            .collect()
            .await;
        assert_eq!(resumed, [4, 5, 6]);
        // After the last event, nothing.
        assert_eq!(jobs.follow(queued.id(), 6).count().await, 0);
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_follower_sees_every_event_once_as_they_come(db) {
        let jobs = db.open(fast()).await;
        let (go, gate) = tokio::sync::watch::channel(false);
        jobs.worker("steps", move |job: Job<u32>| {
            let mut gate = gate.clone();
            async move {
                for step in 0..*job.payload() {
                    job.progress().send(&step).await?;
                    if step == 2 {
                        // Wait until the follower has started.
                        let _ = gate.wait_for(|go| *go).await;
                    }
                }
                Ok::<_, JobError>(())
            }
        })
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("steps", &6_u32)).await.unwrap().id();
        let mut follow = Box::pin(jobs.follow(id, 0));
        let mut seen = Vec::new();
        while let Some(event) = tokio::time::timeout(Duration::from_secs(20), follow.next())
            .await
            .expect("the follower waited too long")
        {
            let event = event.unwrap();
            if event.kind == EventKind::Progress && event.data == "2" {
                go.send_replace(true);
            }
            seen.push(event.seq);
        }
        // queued, running, 6 progress, done.
        assert_eq!(seen, (1..=9).collect::<Vec<u64>>());
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn an_unknown_job_is_not_found(db) {
        let jobs = db.open(fast()).await;
        let id: brigade_jobs::JobId = "00000000000000000000000000000001".parse().unwrap();
        assert!(jobs.get(id).await.unwrap().is_none());
        assert!(jobs.events_after(id, 0, 10).await.unwrap().is_empty());
        let first = jobs.follow(id, 0).next().await.unwrap();
        assert!(matches!(first, Err(brigade_jobs::Error::NotFound(missing)) if missing == id));
        assert_eq!(
            jobs.cancel(id, "nobody").await.unwrap(),
            brigade_jobs::CancelOutcome::NotFound
        );
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn an_idempotency_key_queues_one_job(db) {
        let jobs = db.open(fast()).await;
        let job = || NewJob::new("once", &1).idempotency_key("upload-7f3a");
        let first = jobs.enqueue(job()).await.unwrap();
        let second = jobs.enqueue(job()).await.unwrap();
        assert!(first.is_new());
        assert!(!second.is_new());
        assert_eq!(first.id(), second.id());
        // Many at once: still one job.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let jobs = jobs.clone();
            tasks.push(tokio::spawn(async move {
                jobs.enqueue(NewJob::new("once", &2).idempotency_key("burst")).await.unwrap()
            }));
        }
        let mut created = 0;
        let mut ids = Vec::new();
        for task in tasks {
            let queued = task.await.unwrap();
            created += usize::from(queued.is_new());
            ids.push(queued.id());
        }
        ids.dedup();
        assert_eq!((created, ids.len()), (1, 1));
        assert_eq!(jobs.counts().await.unwrap().queued, 2);
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn due_jobs_run_by_priority_and_delayed_ones_wait(db) {
        let jobs = db.open(fast()).await;
        let first = jobs.enqueue(NewJob::new("order", &"low")).await.unwrap().id();
        let high = jobs.enqueue(NewJob::new("order", &"high").priority(10)).await.unwrap().id();
        let later = jobs
            .enqueue(NewJob::new("order", &"later").priority(99).delay(Duration::from_millis(300)))
            .await
            .unwrap()
            .id();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        jobs.worker("order", move |job: Job<String>| {
            let tx = tx.clone();
            async move {
                tx.send(job.into_payload()).unwrap();
                Ok::<_, JobError>(())
            }
        })
        .start()
        .unwrap();
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
        }
        assert_eq!(order, ["high", "low", "later"]);
        let later = finished(&jobs, later).await;
        let waited = later.started_at.unwrap().duration_since(later.created_at).unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert_eq!(finished(&jobs, first).await.status, Status::Done);
        assert_eq!(finished(&jobs, high).await.status, Status::Done);
        jobs.shutdown(Duration::from_secs(1)).await;
    }

    async fn invalid_jobs_are_refused(db) {
        let jobs = db.open(fast()).await;
        for job in [
            NewJob::new("", &1),
            NewJob::new("q", &1).max_attempts(0),
            NewJob::new("q", &1).timeout(Duration::ZERO),
        ] {
            assert!(matches!(
                jobs.enqueue(job).await,
                Err(brigade_jobs::Error::InvalidJob(_))
            ));
        }
        assert_eq!(
            jobs.worker("q", async |_: Job<u32>| Ok::<_, JobError>(())).concurrency(0).start(),
            Err(brigade_jobs::InvalidConfig::Concurrency)
        );
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn queued_counts_a_queue_up_to_a_bound(db) {
        let jobs = db.open(fast()).await;
        for n in 0..5 {
            jobs.enqueue(NewJob::new("wait", &n)).await.unwrap();
        }
        jobs.enqueue(NewJob::new("other", &0)).await.unwrap();
        let delayed = NewJob::new("wait", &9).delay(Duration::from_secs(60));
        let delayed = jobs.enqueue(delayed).await.unwrap().id();
        assert_eq!(jobs.queued("wait", 100).await.unwrap(), 6, "due or not");
        assert_eq!(jobs.queued("wait", 3).await.unwrap(), 3, "counted up to the bound");
        assert_eq!(jobs.queued("other", 100).await.unwrap(), 1);
        assert_eq!(jobs.queued("none", 100).await.unwrap(), 0);
        jobs.cancel(delayed, "test").await.unwrap();
        assert_eq!(jobs.queued("wait", 100).await.unwrap(), 5, "a cancelled job is not queued");
        jobs.shutdown(Duration::ZERO).await;
    }
}
