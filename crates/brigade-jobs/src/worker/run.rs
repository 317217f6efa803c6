//! The runner of one attempt: the handler on a task of its own under the attempt's scope,
//! its progress written in batches beside it, and the ending written with the last events.
//!
//! Every write checks the lease (owner and attempt) in its statement. A write that finds the
//! lease gone marks the attempt lost and cancels its scope; nothing it writes afterwards is
//! kept. When the handler ends, the runner decides the ending:
//!
//! | the handler | the attempt's scope | ending |
//! | --- | --- | --- |
//! | `Ok(result)` | any | `done` |
//! | `Err` or cancelled | taken away (cancel, lost lease) | none: the row is another's |
//! | `Err` or cancelled | its timeout passed | retry (or `failed`), "timed out" |
//! | `Err` or cancelled | shutdown, or the store's scope | released: queued, the attempt not counted |
//! | `Err(e)`, panic | not cancelled | retry after the backoff, or `failed` |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::Worker;
use super::job::{Job, Progress, panic_message};
use crate::JobId;
use crate::error::{ErrorKind, JobError};
use crate::jobs::maintenance::LEASE_LOST;
use crate::jobs::{Core, Running};
use crate::store::{Claimed, Ending, Lease, NewEvent};
use crate::wake::lock;

/// The attempt's scope and whether it was taken away, as registered in `running`.
#[derive(Debug)]
pub(crate) struct Registered {
    scope: CancelScope,
    taken: Arc<AtomicBool>,
}

/// Registers a claimed job in `running` (before its runner starts, so the next heartbeat
/// covers it), under a scope with its timeout.
pub(crate) fn register(core: &Core, job: &Claimed) -> Registered {
    let scope = match job.timeout_ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) if ms > 0 => core.scope.child_with_timeout(Duration::from_millis(ms)),
        _ => core.scope.child(),
    };
    let taken = Arc::new(AtomicBool::new(false));
    lock(&core.running).insert(
        job.id.clone(),
        Running {
            attempt: job.attempt,
            scope: scope.clone(),
            taken: Arc::clone(&taken),
        },
    );
    Registered { scope, taken }
}

impl<P, H, F, R> Worker<P, H>
where
    P: DeserializeOwned + Send + 'static,
    H: Fn(Job<P>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<R, JobError>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    /// Runs one attempt to its end.
    pub(super) async fn run(self: Arc<Self>, claimed: Claimed, registered: Registered) {
        let core = Arc::clone(&self.core);
        core.wakers.wake_job(&claimed.id);
        let lease = Lease {
            id: &claimed.id,
            owner: &core.owner,
            attempt: claimed.attempt,
        };
        let (ending, progress) = self.attempt(&claimed, lease, &registered).await;
        if let Some(ending) = ending {
            self.write_ending(&claimed, lease, &progress, &ending).await;
        }
        {
            let mut running = lock(&core.running);
            if running
                .get(&claimed.id)
                .is_some_and(|r| r.attempt == claimed.attempt)
            {
                running.remove(&claimed.id);
            }
        }
        core.ended.notify_waiters();
    }

    /// Runs the handler; how the attempt ends (`None`: it was taken away), and the progress
    /// events not yet written.
    async fn attempt(
        &self,
        claimed: &Claimed,
        lease: Lease<'_>,
        registered: &Registered,
    ) -> (Option<Ending>, Vec<NewEvent>) {
        let core = &self.core;
        let attempt = u32::try_from(claimed.attempt).unwrap_or(u32::MAX);
        let max_attempts = u32::try_from(claimed.max_attempts).unwrap_or(u32::MAX);
        let Ok(id) = claimed.id.parse::<JobId>() else {
            let error = format!("the job id `{}` is not 32 hex digits", claimed.id);
            return (Some(Ending::Failed { error }), Vec::new());
        };
        let payload: P = match serde_json::from_str(&claimed.payload) {
            Ok(payload) => payload,
            Err(error) => {
                let error = format!("the payload does not deserialize: {error}");
                return (Some(Ending::Failed { error }), Vec::new());
            }
        };
        let progress = Progress::new(core.config.progress_buffer);
        let job = Job {
            id,
            queue: Arc::clone(&self.queue),
            attempt,
            max_attempts,
            payload,
            scope: registered.scope.clone(),
            progress: progress.clone(),
        };
        let handler = (self.handler)(job);
        // A task of its own: the progress is written while it runs, and a panic stays in it.
        let mut handle = AbortOnDropHandle::new(tokio::spawn(
            registered.scope.clone().run_until_cancelled_owned(handler),
        ));
        let mut flush_at: Option<Instant> = None;
        let joined = loop {
            let timer = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = &mut handle => break joined,
                () = progress.inner.wake.notified() => {
                    if progress.is_full() {
                        flush_at = self.flush(&progress, lease, registered).await;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + core.config.progress_interval);
                    }
                }
                () = timer => flush_at = self.flush(&progress, lease, registered).await,
            }
        };
        let pending = progress.take();
        // Whatever a task the handler left behind sends now is not kept.
        progress.set_lost();
        let taken = registered.taken.load(Ordering::Acquire);
        let ending = match joined {
            Ok(Ok(Ok(result))) => Some(match serde_json::to_string(&result) {
                Ok(result) => Ending::Done { result },
                Err(error) => Ending::Failed {
                    error: format!("the result does not serialize: {error}"),
                },
            }),
            _ if taken => None,
            Err(error) if !error.is_panic() => None,
            joined => match registered.scope.reason() {
                Some(CancelReason::DeadlineExceeded) if claimed.timeout_ms.is_some() => {
                    let timeout = Duration::from_millis(
                        claimed
                            .timeout_ms
                            .and_then(|t| u64::try_from(t).ok())
                            .unwrap_or(0),
                    );
                    let error = JobError::with_message(
                        ErrorKind::Retryable,
                        format!("timed out after {timeout:?}"),
                    );
                    Some(self.retry_or_fail(claimed, &error))
                }
                Some(_) => Some(Ending::Release),
                None => {
                    let error = match joined {
                        Ok(Ok(Err(error))) => error,
                        Err(panic) => JobError::with_message(
                            ErrorKind::Retryable,
                            format!(
                                "the handler panicked: {}",
                                panic_message(&*panic.into_panic())
                            ),
                        ),
                        // Not cancelled, so not `Ok(Err(Cancelled))`; `Ok(Ok(Ok))` is above.
                        Ok(_) => JobError::with_message(
                            ErrorKind::Retryable,
                            "the handler stopped".to_owned(),
                        ),
                    };
                    Some(self.retry_or_fail(claimed, &error))
                }
            },
        };
        (ending, pending)
    }

    /// Writes the pending progress events; when to try again if the write failed.
    async fn flush(
        &self,
        progress: &Progress,
        lease: Lease<'_>,
        registered: &Registered,
    ) -> Option<Instant> {
        let core = &self.core;
        let events = progress.take();
        if events.is_empty() {
            return None;
        }
        match core.store.append(lease, &events, core.now()).await {
            Ok(true) => {
                progress.written();
                core.wakers.wake_job(lease.id);
                None
            }
            Ok(false) => {
                // Cancelled or reaped: this attempt must stop.
                progress.set_lost();
                registered.taken.store(true, Ordering::Release);
                registered.scope.cancel(CancelReason::custom(LEASE_LOST));
                None
            }
            Err(error) => {
                tracing::warn!(%error, job = lease.id, "brigade-jobs: writing progress failed");
                progress.put_back(events);
                Some(Instant::now() + core.config.progress_interval)
            }
        }
    }

    /// After a failed attempt: `queued` again after the backoff, or `failed`.
    fn retry_or_fail(&self, claimed: &Claimed, error: &JobError) -> Ending {
        let message = error.message().to_owned();
        let out_of_attempts = claimed.attempt >= claimed.max_attempts;
        if error.kind() == ErrorKind::Permanent || out_of_attempts {
            return Ending::Failed { error: message };
        }
        let seed = claimed
            .id
            .parse::<JobId>()
            .map_or(0, |id| (id.as_u128() >> 64) as u64 ^ id.as_u128() as u64);
        let retry = u32::try_from(claimed.attempt - 1).unwrap_or(u32::MAX);
        let Some(delay) = (self.delays)(seed, retry) else {
            return Ending::Failed { error: message };
        };
        let delay = match error.kind() {
            ErrorKind::Throttled(after) => delay.max(after),
            _ => delay,
        };
        Ending::Retry {
            run_at: self.core.now().saturating_add(crate::clock::millis(delay)),
            error: message,
        }
    }

    /// Writes the ending, with the last progress events; tries again while the store fails,
    /// for up to a lease (then the lease expires and the reaper takes over).
    async fn write_ending(
        &self,
        claimed: &Claimed,
        lease: Lease<'_>,
        progress: &[NewEvent],
        ending: &Ending,
    ) {
        let core = &self.core;
        let give_up = Instant::now() + core.config.lease;
        let mut delays = brigade_retry::Backoff::exponential(Duration::from_millis(50), 2.0)
            .max_delay(Duration::from_secs(2))
            .jitter(brigade_retry::Jitter::Full)
            .delays(claimed.attempt.unsigned_abs());
        loop {
            let now = core.now();
            match core
                .store
                .finish(lease, progress, ending, now, core.config.retention)
                .await
            {
                Ok(true) => {
                    core.wakers.wake_job(lease.id);
                    match ending {
                        Ending::Release => core.wakers.wake_queue(&self.queue),
                        Ending::Retry { run_at, .. } => {
                            let wake = core.wakers.queue(&self.queue);
                            wake.due_at(*run_at);
                            wake.wake();
                        }
                        Ending::Done { .. } | Ending::Failed { .. } => {}
                    }
                    return;
                }
                Ok(false) => {
                    tracing::debug!(job = lease.id, "brigade-jobs: the job was taken away first");
                    return;
                }
                Err(error) if Instant::now() < give_up => {
                    tracing::warn!(%error, job = lease.id, "brigade-jobs: ending a job failed; trying again");
                    let wait = delays.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        job = lease.id,
                        "brigade-jobs: ending a job failed; its lease will expire and it will run again"
                    );
                    return;
                }
            }
        }
    }
}
