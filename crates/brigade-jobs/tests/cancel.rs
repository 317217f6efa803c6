//! Cancelling jobs, queued or running, from this replica or another; on every backend.

#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod support;

use std::time::Duration;

use brigade_jobs::{CancelOutcome, CancelReason, EventKind, Job, JobError, Jobs, NewJob, Status};
use tokio::sync::{mpsc, oneshot};

use support::{fast, finished};

/// Sends when dropped: the worker dropped the handler's future.
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A worker on queue `hang` whose handler reports that it started, then waits forever; it
/// reports again when its future is dropped.
fn hang(
    jobs: &Jobs,
) -> (
    mpsc::UnboundedReceiver<oneshot::Receiver<()>>,
    mpsc::UnboundedReceiver<CancelReason>,
) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (reason_tx, reasons) = mpsc::unbounded_channel();
    jobs.worker("hang", move |job: Job<()>| {
        let (dropped_tx, dropped_rx) = oneshot::channel();
        started_tx.send(dropped_rx).unwrap();
        let reason_tx = reason_tx.clone();
        async move {
            let _guard = Dropped(Some(dropped_tx));
            // Records the scope's reason as it is cancelled (a task of its own: the
            // handler's future is dropped at once).
            let scope = job.scope().clone();
            tokio::spawn(async move {
                let reason = scope.cancelled().await;
                let _ = reason_tx.send(reason);
            });
            std::future::pending::<()>().await;
            Ok::<_, JobError>(())
        }
    })
    .start()
    .unwrap();
    (started, reasons)
}

async fn stopped_within(dropped: oneshot::Receiver<()>, within: Duration) {
    tokio::time::timeout(within, dropped)
        .await
        .unwrap_or_else(|_| panic!("the handler still ran {within:?} after the cancel"))
        .unwrap();
}

backends! {
    async fn a_queued_job_cancelled_never_runs(db) {
        let jobs = db.open(fast()).await;
        let id = jobs
            .enqueue(NewJob::new("later", &()).delay(Duration::from_secs(60)))
            .await
            .unwrap()
            .id();
        assert_eq!(jobs.cancel(id, "not needed").await.unwrap(), CancelOutcome::Cancelled);
        let record = jobs.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Cancelled);
        assert_eq!(record.cancel_reason.as_deref(), Some("not needed"));
        let kinds: Vec<EventKind> =
            jobs.events_after(id, 0, 10).await.unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Queued, EventKind::Cancelled]);
        assert_eq!(
            jobs.cancel(id, "again").await.unwrap(),
            CancelOutcome::Finished(Status::Cancelled)
        );
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn a_running_job_cancelled_here_stops_at_once(db) {
        let jobs = db.open(fast()).await;
        let (mut started, mut reasons) = hang(&jobs);
        let id = jobs.enqueue(NewJob::new("hang", &())).await.unwrap().id();
        let dropped = started.recv().await.unwrap();
        assert_eq!(
            jobs.cancel(id, CancelReason::custom("client_request")).await.unwrap(),
            CancelOutcome::Cancelled
        );
        stopped_within(dropped, Duration::from_secs(1)).await;
        assert_eq!(reasons.recv().await.unwrap(), CancelReason::custom("client_request"));
        let record = jobs.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Cancelled);
        // The cancelled event is the last one, and stays the last.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = jobs.events_after(id, 0, 10).await.unwrap();
        assert_eq!(events.last().unwrap().kind, EventKind::Cancelled);
        assert_eq!(events.len(), 3);
        assert_eq!(jobs.counts().await.unwrap().running, 0);
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn a_running_job_cancelled_from_another_replica_stops_within_a_second(db) {
        // The replica that runs the job, with the default heartbeat (500 ms).
        let runner = db
            .open(brigade_jobs::Jobs::builder().poll_interval(Duration::from_millis(100)))
            .await;
        let other = db.open(fast()).await;
        let (mut started, mut reasons) = hang(&runner);
        let id = other.enqueue(NewJob::new("hang", &())).await.unwrap().id();
        let dropped = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other.cancel(id, "stop").await.unwrap(), CancelOutcome::Cancelled);
        stopped_within(dropped, Duration::from_secs(1)).await;
        assert_eq!(reasons.recv().await.unwrap(), CancelReason::custom("stop"));
        let record = runner.get(id).await.unwrap().unwrap();
        assert_eq!((record.status, record.cancel_reason.as_deref()), (Status::Cancelled, Some("stop")));
        runner.shutdown(Duration::ZERO).await;
        other.shutdown(Duration::ZERO).await;
    }

    async fn a_finished_job_is_not_cancelled(db) {
        let jobs = db.open(fast()).await;
        jobs.worker("quick", async |_: Job<()>| Ok::<_, JobError>(1)).start().unwrap();
        let id = jobs.enqueue(NewJob::new("quick", &())).await.unwrap().id();
        assert_eq!(finished(&jobs, id).await.status, Status::Done);
        assert_eq!(
            jobs.cancel(id, "too late").await.unwrap(),
            CancelOutcome::Finished(Status::Done)
        );
        assert_eq!(jobs.get(id).await.unwrap().unwrap().status, Status::Done);
        jobs.shutdown(Duration::ZERO).await;
    }

    async fn blocking_work_sees_the_cancel(db) {
        let jobs = db.open(fast()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (spinning, mut started) = mpsc::unbounded_channel();
        jobs.worker("spin", move |job: Job<()>| {
            let (tx, spinning) = (tx.clone(), spinning.clone());
            async move {
                let spins = job
                    .blocking(move |cancel| {
                        let mut spins = 0_u64;
                        while !cancel.is_cancelled() {
                            if spins == 0 {
                                spinning.send(()).unwrap();
                            }
                            spins += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        tx.send(spins).unwrap();
                        spins
                    })
                    .await?;
                Ok::<_, JobError>(spins)
            }
        })
        .start()
        .unwrap();
        let id = jobs.enqueue(NewJob::new("spin", &())).await.unwrap().id();
        // Cancelled once the blocking work is spinning (not before it starts: it would then
        // see the cancel before its first turn, which proves less).
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .unwrap()
            .unwrap();
        jobs.cancel(id, "enough").await.unwrap();
        let spins = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.unwrap().unwrap();
        assert!(spins > 0);
        jobs.shutdown(Duration::ZERO).await;
    }
}

/// Postgres without `LISTEN` (behind a pooler in transaction mode): the heartbeat alone
/// brings the cancel, still within a second.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poll_only_a_cancel_from_another_replica_stops_within_a_second() {
    let db = support::TestDb::new(support::Kind::Postgres).await;
    let runner = db
        .open(
            brigade_jobs::Jobs::builder()
                .listen(false)
                .poll_interval(Duration::from_millis(100)),
        )
        .await;
    let other = db.open(fast().listen(false)).await;
    let (mut started, _reasons) = hang(&runner);
    let id = other.enqueue(NewJob::new("hang", &())).await.unwrap().id();
    let dropped = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .unwrap()
        .unwrap();
    other.cancel(id, "stop").await.unwrap();
    stopped_within(dropped, Duration::from_secs(1)).await;
    runner.shutdown(Duration::ZERO).await;
    other.shutdown(Duration::ZERO).await;
    db.drop_db().await;
}
