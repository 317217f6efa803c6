//! Graceful shutdown that ends even when a stream stays open.
//!
//! hyper-util's and axum's graceful shutdown wait for every connection to close, and a
//! connection carrying an open SSE stream never does (hyper#2787, axum#2673): the process hangs
//! until it is killed. [`Shutdown`] runs in three phases instead:
//!
//! 1. **Drain.** On SIGINT/SIGTERM or [`trigger`](Shutdown::trigger), [`draining`](Shutdown::draining)
//!    resolves: stop accepting and tell connections to finish (`graceful_shutdown` on hyper's
//!    connections). Tracked work goes on.
//! 2. **Cancel.** When the grace period is over, [`scope`](Shutdown::scope) is cancelled with
//!    [`CancelReason::Shutdown`]: every request scope made from it stops, and streams can send
//!    a last event and end.
//! 3. **Give up.** At the hard deadline [`drained`](Shutdown::drained) resolves whatever is still
//!    running, and its report says how many tasks that is.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use crate::{CancelReason, CancelScope, InvalidConfig};

/// Coordinates a graceful shutdown: a drain signal, a tracked set of tasks, a grace period, a
/// cancel with reason [`Shutdown`](CancelReason::Shutdown), and a hard deadline.
///
/// Cloning gives another handle to the same coordinator.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_cancel::{CancelReason, Shutdown, ShutdownOutcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let shutdown = Shutdown::builder()
///     .grace(Duration::from_secs(10))
///     .hard_deadline(Duration::from_secs(15))
///     .build()
///     .unwrap();
///
/// // A stream that runs until it is told to stop.
/// let request = shutdown.scope().child();
/// shutdown.spawn(async move {
///     let reason = request.cancelled().await;
///     assert_eq!(reason, CancelReason::Shutdown);
/// });
///
/// shutdown.trigger(); // or shutdown.listen_for_signals()
/// let report = shutdown.drained().await;
/// assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
/// assert_eq!(report.elapsed(), Duration::from_secs(10));
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    draining: CancellationToken,
    scope: CancelScope,
    tracker: TaskTracker,
    grace: Duration,
    hard_deadline: Duration,
}

/// Builds a [`Shutdown`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ShutdownBuilder {
    grace: Duration,
    hard_deadline: Option<Duration>,
}

/// How a shutdown ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownOutcome {
    /// Every tracked task finished within the grace period; nothing was cancelled.
    Drained,
    /// The grace period ran out; the scope was cancelled and every task then finished before the
    /// hard deadline.
    Cancelled,
    /// The hard deadline passed with tasks still running.
    TimedOut,
}

/// What [`Shutdown::drained`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    outcome: ShutdownOutcome,
    elapsed: Duration,
    still_running: usize,
}

impl ShutdownReport {
    /// How the shutdown ended.
    pub const fn outcome(&self) -> ShutdownOutcome {
        self.outcome
    }

    /// Time from the trigger to the end of the shutdown.
    pub const fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Tracked tasks still running when the shutdown gave up (zero unless
    /// [`TimedOut`](ShutdownOutcome::TimedOut)).
    pub const fn still_running(&self) -> usize {
        self.still_running
    }
}

impl ShutdownBuilder {
    /// How long tracked work may go on after the trigger before the scope is cancelled.
    ///
    /// Default: 30 seconds.
    pub const fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long after the trigger [`Shutdown::drained`] resolves at the latest, whatever is
    /// still running. Must be at least the grace period.
    ///
    /// Default: the grace period plus 5 seconds.
    pub const fn hard_deadline(mut self, hard_deadline: Duration) -> Self {
        self.hard_deadline = Some(hard_deadline);
        self
    }

    /// Builds the coordinator.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::HardDeadlineBeforeGrace`] when the hard deadline is shorter than the
    /// grace period.
    pub fn build(self) -> Result<Shutdown, InvalidConfig> {
        let hard_deadline = self
            .hard_deadline
            .unwrap_or_else(|| self.grace.saturating_add(Duration::from_secs(5)));
        if hard_deadline < self.grace {
            return Err(InvalidConfig::HardDeadlineBeforeGrace);
        }
        Ok(Shutdown {
            inner: Arc::new(Inner {
                draining: CancellationToken::new(),
                scope: CancelScope::new(),
                tracker: TaskTracker::new(),
                grace: self.grace,
                hard_deadline,
            }),
        })
    }
}

impl Default for ShutdownBuilder {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            hard_deadline: None,
        }
    }
}

impl Shutdown {
    /// A builder with the default grace period (30 s) and hard deadline (grace + 5 s).
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::default()
    }

    /// A coordinator with the given grace period and a hard deadline 5 seconds after it.
    pub fn new(grace: Duration) -> Self {
        Self::builder()
            .grace(grace)
            .build()
            .expect("the default hard deadline is never before the grace period")
    }

    /// Starts the shutdown. Returns `false` when it had already started.
    pub fn trigger(&self) -> bool {
        if self.inner.draining.is_cancelled() {
            return false;
        }
        self.inner.draining.cancel();
        true
    }

    /// Whether the shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Resolves when the shutdown starts: stop accepting new work.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.inner.draining.cancelled()
    }

    /// The root scope of the work being shut down: make each request's scope a child of it. It
    /// is cancelled with [`CancelReason::Shutdown`] when the grace period is over.
    pub fn scope(&self) -> &CancelScope {
        &self.inner.scope
    }

    /// The tracker whose tasks the shutdown waits for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Spawns a tracked task on the current runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tracker.spawn(future)
    }

    /// Wraps a future so the shutdown waits for it, wherever it runs.
    pub fn track<F: Future>(&self, future: F) -> TrackedFuture<F> {
        self.inner.tracker.track_future(future)
    }

    /// Spawns a task that triggers the shutdown on SIGINT or SIGTERM (Ctrl-C on Windows).
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with signals and I/O enabled.
    #[cfg(feature = "signal")]
    #[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
    pub fn listen_for_signals(&self) -> JoinHandle<()> {
        let shutdown = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = signal() => {
                    match result {
                        Ok(name) => tracing::info!(signal = name, "shutdown signal received"),
                        Err(error) => tracing::error!(%error, "listening for shutdown signals failed; shutting down"),
                    }
                    shutdown.trigger();
                }
                () = shutdown.draining() => {}
            }
        })
    }

    /// Waits for the shutdown to start, then for the tracked work: through the grace period,
    /// then, having cancelled [`scope`](Self::scope), until the hard deadline at the latest.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe until the shutdown starts. Once started, the phases run on the clock, not
    /// on this future: dropping it early does not cancel the scope.
    pub async fn drained(&self) -> ShutdownReport {
        let inner = &*self.inner;
        inner.draining.cancelled().await;
        let started = Instant::now();
        inner.tracker.close();
        tracing::info!(
            tasks = inner.tracker.len(),
            grace = ?inner.grace,
            "shutdown: draining"
        );

        let outcome = if tokio::time::timeout(inner.grace, inner.tracker.wait())
            .await
            .is_ok()
        {
            ShutdownOutcome::Drained
        } else {
            tracing::info!(
                tasks = inner.tracker.len(),
                "shutdown: grace period over, cancelling"
            );
            inner.scope.cancel(CancelReason::Shutdown);
            let hard = started + inner.hard_deadline;
            if tokio::time::timeout_at(hard, inner.tracker.wait())
                .await
                .is_ok()
            {
                ShutdownOutcome::Cancelled
            } else {
                ShutdownOutcome::TimedOut
            }
        };
        let report = ShutdownReport {
            outcome,
            elapsed: started.elapsed(),
            still_running: inner.tracker.len(),
        };
        if outcome == ShutdownOutcome::TimedOut {
            tracing::warn!(
                still_running = report.still_running,
                "shutdown: hard deadline passed with tasks still running"
            );
        } else {
            tracing::info!(?outcome, elapsed = ?report.elapsed, "shutdown: complete");
        }
        report
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("tasks", &self.inner.tracker.len())
            .field("grace", &self.inner.grace)
            .field("hard_deadline", &self.inner.hard_deadline)
            .finish()
    }
}

/// Waits for SIGINT or SIGTERM (Ctrl-C on Windows) and returns the signal's name.
///
/// # Errors
///
/// The I/O error from installing a signal handler.
#[cfg(feature = "signal")]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub async fn signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => Ok("SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("ctrl-c")
    }
}
