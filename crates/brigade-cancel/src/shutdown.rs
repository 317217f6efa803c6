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
//! 3. **Give up.** At the hard deadline the shutdown ends whatever is still running;
//!    [`drained`](Shutdown::drained) resolves, and its report says how many tasks that is.
//!
//! The phases run on a task of their own, spawned by the trigger, so they run whether or not
//! anyone waits on [`drained`](Shutdown::drained): a `drained()` future dropped halfway (a
//! `select!` that took another branch) does not stop the scope from being cancelled when the
//! grace period ends. `drained()` only waits for the report.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::SetOnce;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

use crate::time::deadline_after;
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
    /// When the shutdown was triggered; set once, by the first trigger, before `draining` is
    /// cancelled.
    triggered_at: OnceLock<Instant>,
    /// Whether the task running the phases has been spawned (at most one ever is).
    phases_spawned: AtomicBool,
    /// The runtime the coordinator was built in, if any: the phases run there when the trigger
    /// comes from outside a runtime.
    runtime: Option<Handle>,
    /// Set by the phases task when the shutdown ends.
    report: SetOnce<ShutdownReport>,
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
    /// A grace period longer than about 30 years (`Duration::MAX`, say) is taken as 30 years
    /// (see [Time](crate#time)).
    ///
    /// Default: 30 seconds.
    pub const fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long after the trigger the shutdown ends at the latest, whatever is still running.
    /// Must be at least the grace period. Longer than about 30 years, it is taken as 30 years.
    ///
    /// Default: the grace period plus 5 seconds (saturating).
    pub const fn hard_deadline(mut self, hard_deadline: Duration) -> Self {
        self.hard_deadline = Some(hard_deadline);
        self
    }

    /// Builds the coordinator.
    ///
    /// Built inside a tokio runtime, the coordinator remembers it: a trigger from a thread
    /// outside any runtime then starts the phases there.
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
                triggered_at: OnceLock::new(),
                phases_spawned: AtomicBool::new(false),
                runtime: Handle::try_current().ok(),
                report: SetOnce::new(),
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
    ///
    /// [`draining`](Self::draining) resolves, and a task is spawned that runs the phases: the
    /// grace period, the cancel of [`scope`](Self::scope), the hard deadline. It runs on the
    /// current runtime, or, called from outside one, on the runtime the coordinator was built
    /// in; with neither, the phases start when [`drained`](Self::drained) is first polled,
    /// timed from this call all the same.
    ///
    /// May be called from any thread. The runtime that runs the phases needs its time driver.
    pub fn trigger(&self) -> bool {
        if self.inner.triggered_at.set(Instant::now()).is_err() {
            return false;
        }
        self.inner.tracker.close();
        self.inner.draining.cancel();
        self.spawn_phases();
        true
    }

    /// Spawns the task that runs the phases, unless it was spawned already, the shutdown has
    /// not started, or there is no runtime to spawn it on.
    fn spawn_phases(&self) {
        let inner = &self.inner;
        let Some(&started) = inner.triggered_at.get() else {
            return;
        };
        let Some(runtime) = Handle::try_current().ok().or_else(|| inner.runtime.clone()) else {
            return;
        };
        if inner.phases_spawned.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(run_phases(Arc::clone(inner), started));
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
    /// is cancelled with [`CancelReason::Shutdown`] when the grace period is over (unless every
    /// tracked task ended before), whether or not anyone waits on [`drained`](Self::drained).
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

    /// Waits for the shutdown to start, then for it to end, and reports how it ended: every
    /// tracked task done within the grace period, or after the cancel, or the hard deadline
    /// passed first.
    ///
    /// The phases do not run in this future but on the task [`trigger`](Self::trigger)
    /// spawns, so every call (before the end or after it, from any clone) sees the same
    /// report, and the scope is cancelled at the end of the grace period whether or not this
    /// future is polled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping this future changes nothing about the shutdown; wait again for
    /// the same report.
    pub async fn drained(&self) -> ShutdownReport {
        self.inner.draining.cancelled().await;
        // The trigger may have found no runtime to spawn the phases on.
        self.spawn_phases();
        *self.inner.report.wait().await
    }
}

/// The phases of a shutdown triggered at `started`, run on a task of their own.
async fn run_phases(inner: Arc<Inner>, started: Instant) {
    let grace_end = deadline_after(started, inner.grace);
    let hard_end = deadline_after(started, inner.hard_deadline);
    tracing::info!(
        tasks = inner.tracker.len(),
        grace = ?inner.grace,
        "shutdown: draining"
    );

    let outcome = if tokio::time::timeout_at(grace_end, inner.tracker.wait())
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
        if tokio::time::timeout_at(hard_end, inner.tracker.wait())
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
    // Only this task sets the report, once.
    let _ = inner.report.set(report);
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
