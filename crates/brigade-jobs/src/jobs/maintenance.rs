//! The tasks every process runs for the store: the heartbeat of its leases, the reaper of
//! everyone's expired ones, the pruner of expired jobs, and (Postgres) the listener of
//! wake-up hints.
//!
//! Each loop logs a failed statement and carries on at its next tick: a database that is
//! down for a while costs leases (when it comes back, the reaper of some replica queues those
//! jobs again), not a task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use brigade_cancel::CancelReason;
use tokio::time::MissedTickBehavior;

use super::Core;
use crate::wake::lock;

/// The cancel reason of a job whose lease this process lost.
pub(crate) const LEASE_LOST: &str = "lease_lost";

/// A cancel reason read back from the store: the crate's own names become their variants.
pub(crate) fn reason_of(text: &str) -> CancelReason {
    match text {
        "client_disconnected" => CancelReason::ClientDisconnected,
        "deadline_exceeded" => CancelReason::DeadlineExceeded,
        "shutdown" => CancelReason::Shutdown,
        other => CancelReason::custom(other),
    }
}

fn interval(every: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Extends the leases of every job this process runs, in one statement per tick, and takes
/// away those it no longer holds.
pub(super) async fn heartbeat(core: Arc<Core>) {
    let mut ticks = interval(core.config.heartbeat);
    loop {
        ticks.tick().await;
        // The snapshot comes first: every job in it was claimed before the statement runs.
        let held: Vec<(String, i64)> = lock(&core.running)
            .iter()
            .map(|(id, r)| (id.clone(), r.attempt))
            .collect();
        if held.is_empty() {
            continue;
        }
        let ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
        let lease_until = core
            .now()
            .saturating_add(crate::clock::millis(core.config.lease));
        let extended = match core.store.heartbeat(&core.owner, &ids, lease_until).await {
            Ok(extended) => extended,
            Err(error) => {
                tracing::warn!(%error, jobs = ids.len(), "brigade-jobs: heartbeat failed");
                continue;
            }
        };
        let missing: Vec<(String, i64)> = held
            .into_iter()
            .filter(|held| !extended.contains(held))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let ids: Vec<String> = missing.iter().map(|(id, _)| id.clone()).collect();
        match core.store.gone(&ids).await {
            Ok(gone) => {
                for job in gone {
                    let Some(&(_, attempt)) = missing.iter().find(|(id, _)| *id == job.id) else {
                        continue;
                    };
                    // A job that has just ended is not lost: its runner is past its handler,
                    // and cancelling its scope changes nothing.
                    let reason = match (job.state.as_deref(), job.cancel_reason) {
                        (Some("cancelled"), Some(reason)) => reason_of(&reason),
                        _ => CancelReason::custom(LEASE_LOST),
                    };
                    tracing::info!(job = %job.id, attempt, reason = %reason, "brigade-jobs: job taken away");
                    core.take_away(&job.id, Some(attempt), reason);
                }
            }
            Err(error) => tracing::warn!(%error, "brigade-jobs: looking up lost jobs failed"),
        }
    }
}

/// Queues again (or fails) the running jobs whose lease expired, on every replica.
pub(super) async fn reaper(core: Arc<Core>) {
    let mut ticks = interval(core.config.reap_interval);
    let batch = i64::from(core.config.prune_batch);
    loop {
        ticks.tick().await;
        loop {
            match core
                .store
                .reap(core.now(), batch, core.config.retention)
                .await
            {
                Ok(reaped) => {
                    for job in &reaped {
                        tracing::info!(job = %job.id, requeued = job.requeued, "brigade-jobs: lease expired");
                        if job.requeued {
                            core.wakers.wake_queue(&job.queue);
                        }
                        core.wakers.wake_job(&job.id);
                    }
                    if i64::try_from(reaped.len()).unwrap_or(i64::MAX) < batch {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "brigade-jobs: reaping expired leases failed");
                    break;
                }
            }
        }
    }
}

/// Deletes final jobs whose time to live is over, with their events, batch after batch.
pub(super) async fn pruner(core: Arc<Core>) {
    let mut ticks = interval(core.config.prune_interval);
    let batch = u64::from(core.config.prune_batch);
    loop {
        ticks.tick().await;
        loop {
            match core
                .store
                .prune(core.now(), i64::try_from(batch).unwrap_or(i64::MAX))
                .await
            {
                Ok(deleted) if deleted >= batch => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "brigade-jobs: pruning expired jobs failed");
                    break;
                }
            }
        }
    }
}

/// Postgres: `LISTEN`s for the hints and wakes what they name. After a lost connection (the
/// hints sent meanwhile are lost) it wakes everything, and listens again.
#[cfg(feature = "postgres")]
pub(super) async fn listener(core: Arc<Core>, pool: sqlx::PgPool) {
    use sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "brigade-jobs: LISTEN connection failed; polling meanwhile");
                tokio::time::sleep(core.config.poll_interval).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(crate::store::CHANNEL).await {
            tracing::warn!(%error, "brigade-jobs: LISTEN failed; polling meanwhile");
            tokio::time::sleep(core.config.poll_interval).await;
            continue;
        }
        // Anything sent before the LISTEN took effect was missed.
        core.wakers.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => hint(&core, notification.payload()),
                Ok(None) => {
                    // Reconnected: hints may have been lost.
                    core.wakers.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, "brigade-jobs: LISTEN connection lost");
                    core.wakers.wake_all();
                    tokio::time::sleep(core.config.poll_interval).await;
                    break;
                }
            }
        }
    }
}

/// Acts on one hint: `q:QUEUE`, `c:ID:REASON` or `e:ID`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn hint(core: &Core, payload: &str) {
    match payload.split_once(':') {
        Some(("q", queue)) => core.wakers.wake_queue(queue),
        Some(("e", id)) => core.wakers.wake_job(id),
        Some(("c", rest)) => {
            let (id, reason) = rest.split_once(':').unwrap_or((rest, ""));
            let running = lock(&core.running)
                .get(id)
                .is_some_and(|r| !r.taken.load(Ordering::Acquire));
            if running {
                core.take_away(id, None, reason_of(reason));
            }
        }
        _ => {}
    }
}
