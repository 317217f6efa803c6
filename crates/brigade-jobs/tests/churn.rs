//! Many jobs at once: two replicas complete each job exactly once, SQLite's lock never
//! reaches a caller, and pruning keeps the tables bounded; on every backend.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_jobs::{Job, JobError, JobId, Jobs, NewJob, Status};

use support::fast;

/// Runs `queue`'s jobs on `jobs`: each adds its payload to `done` (an idempotent write,
/// keyed by the job's id, that counts how often it happened).
fn count_into(jobs: &Jobs, done: &Arc<Mutex<HashMap<JobId, (u32, u32)>>>, concurrency: usize) {
    let done = Arc::clone(done);
    jobs.worker("churn", move |job: Job<u32>| {
        let done = Arc::clone(&done);
        async move {
            job.progress().send(&"working").await?;
            let mut done = done.lock().unwrap();
            let entry = done.entry(job.id()).or_insert((*job.payload(), 0));
            entry.1 += 1;
            Ok::<_, JobError>(())
        }
    })
    .concurrency(concurrency)
    .start()
    .unwrap();
}

backends! {
    async fn two_replicas_complete_each_job_exactly_once(db) {
        // A short busy timeout makes SQLite report busy often: the retries must hide it.
        let settings = || {
            fast()
                .lease(Duration::from_secs(10))
                .busy_timeout(Duration::from_millis(5))
        };
        let a = db.open(settings()).await;
        let b = db.open(settings()).await;
        let done = Arc::new(Mutex::new(HashMap::new()));
        count_into(&a, &done, 8);
        count_into(&b, &done, 8);
        const N: u32 = 600;
        let mut producers = Vec::new();
        for p in 0..6_u32 {
            let jobs = if p % 2 == 0 { a.clone() } else { b.clone() };
            producers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in (p..N).step_by(6) {
                    // Every enqueue succeeds: no "database is locked" reaches a caller.
                    ids.push(jobs.enqueue(NewJob::new("churn", &n)).await.unwrap().id());
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for producer in producers {
            ids.extend(producer.await.unwrap());
        }
        assert_eq!(ids.len(), N as usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let counts = a.counts().await.unwrap();
            if counts.done == u64::from(N) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not all done: {counts:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = done.lock().unwrap().clone();
        assert_eq!(done.len(), N as usize, "jobs lost");
        let twice: Vec<_> = done.iter().filter(|(_, (_, runs))| *runs != 1).collect();
        assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
        let mut payloads: Vec<u32> = done.values().map(|(n, _)| *n).collect();
        payloads.sort_unstable();
        assert_eq!(payloads, (0..N).collect::<Vec<_>>());
        for id in ids.iter().take(20) {
            let record = a.get(*id).await.unwrap().unwrap();
            assert_eq!((record.status, record.attempt), (Status::Done, 1));
        }
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    async fn pruning_keeps_the_tables_bounded_under_churn(db) {
        let jobs = db
            .open(
                fast()
                    .keep_done(Duration::ZERO)
                    .prune_interval(Duration::from_millis(50))
                    .prune_batch(25),
            )
            .await;
        let done = Arc::new(Mutex::new(HashMap::new()));
        count_into(&jobs, &done, 4);
        // 1,000 jobs, 50 every 50 ms; each leaves 4 events behind when it ends.
        let sampler = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut most = (0, 0);
                for _ in 0..1_000 {
                    let counts = jobs.counts().await.unwrap();
                    most = (most.0.max(counts.jobs()), most.1.max(counts.events));
                    if counts.done + counts.queued + counts.running == 0 && most.0 > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                most
            })
        };
        for wave in 0..20_u32 {
            for n in 0..50 {
                jobs.enqueue(NewJob::new("churn", &(wave * 50 + n))).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (most_jobs, most_events) = sampler.await.unwrap();
        assert_eq!(done.lock().unwrap().len(), 1_000);
        // Never near the 1,000 jobs and 4,000 events that went through.
        assert!(most_jobs <= 400, "held {most_jobs} jobs at once");
        assert!(most_events <= 1_600, "held {most_events} events at once");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let counts = jobs.counts().await.unwrap();
            if counts.jobs() == 0 && counts.events == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not pruned: {counts:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        jobs.shutdown(Duration::from_secs(1)).await;
    }
}
