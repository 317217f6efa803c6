//! Leases: a dead worker's job runs again within a lease, a restart continues the event
//! numbers, a worker that lost its job stops, a shutdown releases; on every backend.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod support;

use std::time::{Duration, Instant};

use brigade_jobs::{CancelReason, CancelScope, EventKind, Job, JobError, Jobs, NewJob, Status};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use support::{fast, finished, until};

/// A worker on `q` that sends `steps` progress events, reports each one, then waits forever
/// on its first attempt; later attempts finish.
fn stepper(jobs: &Jobs, steps: u32) -> mpsc::UnboundedReceiver<(u32, u32)> {
    let (tx, rx) = mpsc::unbounded_channel();
    jobs.worker("q", move |job: Job<()>| {
        let tx = tx.clone();
        async move {
            for step in 1..=steps {
                job.progress()
                    .send(&serde_json::json!({ "step": step }))
                    .await?;
                let _ = tx.send((job.attempt(), step));
            }
            if job.attempt() == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, JobError>(job.attempt())
        }
    })
    .start()
    .unwrap();
    rx
}

backends! {
    async fn a_dead_workers_job_runs_again_within_a_lease(db) {
        let survivor = db.open(fast()).await;
        let doomed = db.open(fast()).await;
        let mut steps = stepper(&doomed, 1);
        let id = doomed.enqueue(NewJob::new("q", &())).await.unwrap().id();
        assert_eq!(steps.recv().await, Some((1, 1)));
        let running = until(&doomed, id, Duration::from_secs(10), |r| r.last_event >= 3).await;
        assert_eq!(running.status, Status::Running);
        // The process dies: its heartbeat stops with it, and nothing is released.
        drop(doomed);
        let died = Instant::now();
        let mut again = stepper(&survivor, 1);
        let record = finished(&survivor, id).await;
        let took = died.elapsed();
        assert_eq!((record.status, record.attempt), (Status::Done, 2));
        assert_eq!(again.recv().await, Some((2, 1)));
        // The lease is 1 s; the reaper and the poll run every 100 ms.
        assert!(took < Duration::from_millis(2_500), "ran again after {took:?}");
        let kinds: Vec<EventKind> =
            survivor.events_after(id, 0, 20).await.unwrap().iter().map(|e| e.kind).collect();
        use EventKind::*;
        assert_eq!(kinds, [Queued, Running, Progress, Retrying, Running, Progress, Done]);
        survivor.shutdown(Duration::from_secs(1)).await;
    }

    async fn event_numbers_continue_across_a_restart_and_a_follower_resumes(db) {
        let before = db.open(fast()).await;
        let mut steps = stepper(&before, 3);
        let id = before.enqueue(NewJob::new("q", &())).await.unwrap().id();
        // A client follows on the first process and has seen events 1 to 3.
        let mut follow = before.follow(id, 0);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(follow.next().await.unwrap().unwrap().seq);
        }
        for _ in 0..3 {
            steps.recv().await.unwrap();
        }
        until(&before, id, Duration::from_secs(10), |r| r.last_event >= 5).await;
        // The restart: a new process on the same database, then the old one is gone.
        let after = db.open(fast()).await;
        drop(follow);
        drop(before);
        let _steps = stepper(&after, 3);
        // The client reconnects with `Last-Event-ID: 3` to the new process.
        let last_id = *seen.last().unwrap();
        let rest: Vec<u64> = tokio::time::timeout(
            Duration::from_secs(20),
            after.follow(id, last_id).map(|e| e.unwrap().seq).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        seen.extend(rest);
        let events = after.events_after(id, 0, 100).await.unwrap();
        let all: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seen, all, "every event once, in order");
        assert_eq!(all, (1..=u64::try_from(all.len()).unwrap()).collect::<Vec<_>>(), "no gap, no repeat");
        use EventKind::*;
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [Queued, Running, Progress, Progress, Progress, Retrying, Running, Progress, Progress, Progress, Done]
        );
        after.shutdown(Duration::from_secs(1)).await;
    }

    async fn a_worker_whose_job_was_taken_away_stops_and_writes_nothing_more(db) {
        let jobs = db.open(fast()).await;
        let (tx, mut sent) = mpsc::unbounded_channel();
        jobs.worker("q", move |job: Job<()>| {
            let tx = tx.clone();
            async move {
                let scope = job.scope().clone();
                for step in 0_u32.. {
                    match job.progress().send(&step).await {
                        Ok(()) => {}
                        Err(error) => {
                            let _ = tx.send(Err(error.to_string()));
                            break;
                        }
                    }
                    if step == 0 {
                        let _ = tx.send(Ok(scope.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, JobError>(())
            }
        })
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("q", &())).await.unwrap().id();
        let Some(Ok(scope)) = sent.recv().await else { panic!("the handler did not start") };
        // Another replica's reaper took it and another worker claimed it, as if this one's
        // lease had expired.
        let hex = id.to_string();
        db.execute(&format!(
            "UPDATE brigade_jobs SET lease_owner = 'elsewhere', attempt = 2 WHERE id = '{hex}'"
        ))
        .await;
        let reason = tokio::time::timeout(Duration::from_secs(1), scope.cancelled())
            .await
            .expect("the worker did not stop within a second");
        assert_eq!(reason, CancelReason::custom("lease_lost"));
        let written = jobs.get(id).await.unwrap().unwrap().last_event;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let record = jobs.get(id).await.unwrap().unwrap();
        assert_eq!(record.last_event, written, "the old worker wrote after losing the job");
        assert_eq!(record.status, Status::Running, "the new owner's job is left alone");
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn a_shutdown_releases_running_jobs_for_the_next_start(db) {
        let first = db.open(fast()).await;
        // Opened first: a database in memory lives while one of its stores is open.
        let next = db.open(fast()).await;
        let mut steps = stepper(&first, 1);
        let id = first.enqueue(NewJob::new("q", &())).await.unwrap().id();
        steps.recv().await.unwrap();
        first.shutdown(Duration::from_millis(100)).await;
        let record = next.get(id).await.unwrap().unwrap();
        assert_eq!((record.status, record.attempt), (Status::Queued, 0));
        let events = next.events_after(id, 0, 10).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.kind, EventKind::Queued);
        assert_eq!(last.data, r#"{"reason":"released"}"#);
        // The next start runs it as its first counted attempt.
        let mut again = stepper(&next, 1);
        assert_eq!(again.recv().await, Some((1, 1)));
        next.shutdown(Duration::ZERO).await;
    }

    async fn closed_resolves_once_a_shutdown_has_released_the_running_jobs(db) {
        let jobs = db.open(fast()).await;
        let next = db.open(fast()).await;
        let mut steps = stepper(&jobs, 1);
        let id = jobs.enqueue(NewJob::new("q", &())).await.unwrap().id();
        steps.recv().await.unwrap();
        assert!(jobs.closed().now_or_never().is_none(), "no shutdown yet");
        let closing = jobs.clone();
        tokio::spawn(async move { closing.shutdown(Duration::from_millis(100)).await });
        jobs.closed().await;
        let record = next.get(id).await.unwrap().unwrap();
        assert_eq!((record.status, record.attempt), (Status::Queued, 0));
        assert!(jobs.closed().now_or_never().is_some(), "closed stays closed");
        next.shutdown(Duration::ZERO).await;
    }

    async fn a_cancelled_parent_scope_releases_jobs_and_stops_claiming(db) {
        let parent = CancelScope::new();
        let jobs = db.open(fast().scope(parent.clone())).await;
        let mut steps = stepper(&jobs, 1);
        let id = jobs.enqueue(NewJob::new("q", &())).await.unwrap().id();
        steps.recv().await.unwrap();
        parent.cancel(CancelReason::Shutdown);
        let record = until(&jobs, id, Duration::from_secs(5), |r| r.status == Status::Queued).await;
        assert_eq!(record.attempt, 0);
        // No claim and release churn afterwards.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(jobs.get(id).await.unwrap().unwrap().last_event, record.last_event);
        jobs.shutdown(Duration::ZERO).await;
    }
}
