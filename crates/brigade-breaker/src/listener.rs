//! State-transition events, for logs, metrics and alerts.
//!
//! Every transition is also logged through `tracing` (target `brigade_breaker`): trips at
//! `WARN`, the rest at `INFO`. A [`Listener`] is for anything else: counters, alerts, tests.

use std::time::Duration;

use crate::State;

/// Why the breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// Failures reached the failure-rate threshold.
    FailureRate,
    /// Slow calls reached the slow-call-rate threshold.
    SlowCallRate,
    /// Failures in a row reached the consecutive-failure threshold.
    ConsecutiveFailures,
    /// The open period ended and a caller asked for a probe.
    OpenElapsed,
    /// A half-open probe failed (or was slow).
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
    /// A [`Handle`](crate::Handle) switched the state.
    Manual,
}

/// One state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub trigger: Trigger,
    /// For a transition to [`State::Open`], how long it stays open.
    pub open_for: Option<Duration>,
}

/// Hears about the breaker's transitions and rejections. Every method has a no-op default.
///
/// Called on the thread that caused the event, after the breaker's internal lock is released,
/// so a listener may call back into the breaker. Keep it quick: it runs on a request's path.
/// Two transitions racing on two threads may reach the listener in either order; each is
/// delivered exactly once.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use brigade_breaker::{CircuitBreaker, Listener, State, Transition};
///
/// #[derive(Clone, Default)]
/// struct Log(Arc<Mutex<Vec<(State, State)>>>);
///
/// impl Listener for Log {
///     fn on_transition(&self, transition: &Transition) {
///         self.0.lock().unwrap().push((transition.from, transition.to));
///     }
/// }
///
/// let log = Log::default();
/// let breaker = CircuitBreaker::builder().listener(log.clone()).build().unwrap();
/// breaker.handle().force_open();
/// assert_eq!(*log.0.lock().unwrap(), [(State::Closed, State::ForcedOpen)]);
/// ```
pub trait Listener: Send + Sync + 'static {
    /// The breaker changed state.
    fn on_transition(&self, transition: &Transition) {
        let _ = transition;
    }

    /// The breaker rejected a call; the caller was told to come back after `retry_after`.
    fn on_rejected(&self, state: State, retry_after: Duration) {
        let _ = (state, retry_after);
    }
}
