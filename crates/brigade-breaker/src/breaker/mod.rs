//! The circuit breaker, its permits and its handle.
//!
//! # Why a limited number of probes?
//!
//! When the open period ends, the breaker must find out whether the upstream is back. The
//! naive way, letting every call through again, sends the full load of
//! a busy service at an upstream that is still recovering, and likely knocks it over again:
//! half-open flooding is the circuit-breaker bug reported most across resilience4j, Polly and
//! others. Here half-open grants at most
//! [`half_open_probes`](crate::CircuitBreakerBuilder::half_open_probes) permits at once and
//! rejects the rest; the breaker closes after
//! [`half_open_successes`](crate::CircuitBreakerBuilder::half_open_successes) probes succeed and
//! reopens on the first that fails.
//!
//! # Why RAII permits?
//!
//! A probe slot handed out must come back. If the probing call is cancelled (the client went
//! away, a `select!` dropped it, a timeout fired), an API that waits for an explicit "done"
//! never hears of it, and after N such cancellations the breaker is stuck half-open, rejecting
//! everything forever. A [`Permit`] returns its slot when dropped and records nothing: a
//! cancelled call is neither a success nor a failure, since it says nothing about the upstream.
//!
//! # Why no lock?
//!
//! The breaker sits on every call to the upstream, so its closed-state success path (the one
//! taken almost always) is a few atomic operations: no lock, no allocation, and no clock read
//! unless the configuration needs the time (slow-call detection or a time window). Transitions
//! are rare and take a small lock to stay simple and to never be lost.

mod core;
mod permit;
mod state;

#[cfg(all(test, loom))]
mod loom_tests;

use std::fmt;
use std::future::IntoFuture;
use std::sync::Arc;

pub(crate) use self::core::Core;
pub use self::permit::{OwnedPermit, Permit};
pub use self::state::State;
use crate::{CircuitBreakerBuilder, Classify, Error, ErrorsAreFailures, Rejected};

/// A circuit breaker: stops calling a sick upstream, and probes it back.
///
/// Cloning is cheap, and clones share one breaker.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_breaker::{CircuitBreaker, Error, OpenDuration, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder()
///     .minimum_calls(4)
///     .open_duration(OpenDuration::fixed(Duration::from_millis(500)))
///     .build()
///     .unwrap();
///
/// for _ in 0..4 {
///     let _ = breaker.call(async { Err::<(), _>("upstream down") }).await;
/// }
/// assert_eq!(breaker.state(), State::Open);
///
/// // Rejected without running the call, with a hint for `Retry-After`.
/// let Err(Error::Rejected(rejected)) = breaker.call(async { Ok::<_, &str>(()) }).await else {
///     unreachable!()
/// };
/// assert_eq!(rejected.retry_after(), Duration::from_millis(500));
///
/// // After the open period, probes go through and close the breaker again.
/// tokio::time::sleep(rejected.retry_after()).await;
/// for _ in 0..3 {
///     breaker.call(async { Ok::<_, &str>(()) }).await.unwrap();
/// }
/// assert_eq!(breaker.state(), State::Closed);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    core: Arc<Core>,
}

impl Default for CircuitBreaker {
    /// A breaker with [`CircuitBreakerBuilder::new`]'s defaults.
    fn default() -> Self {
        Self::from_builder(CircuitBreakerBuilder::new())
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A builder with the defaults of [`CircuitBreakerBuilder::new`].
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new()
    }

    pub(crate) fn from_builder(builder: CircuitBreakerBuilder) -> Self {
        Self {
            core: Arc::new(Core::new(builder)),
        }
    }

    /// Whether a keyed breaker may forget this breaker without losing anything a caller relies
    /// on: nothing outside the map holds it (no clone, handle or permit), and it is closed, or
    /// half-open (an open period that has ended included). An open breaker before its open period
    /// ends, and every state set by hand, must stay.
    ///
    /// Exact when called by the only holder that hands out clones (the keyed map, under its
    /// lock): with no other holder, neither count nor state can change but by time passing.
    pub(crate) fn is_evictable(&self) -> bool {
        Arc::strong_count(&self.core) == 1
            && matches!(self.core.state(), State::Closed | State::HalfOpen)
    }

    /// Asks for permission to make one call.
    ///
    /// Use it for work that cannot be wrapped in one future; prefer [`call`](Self::call)
    /// otherwise. Report the outcome through the permit; drop it to record nothing.
    ///
    /// # Errors
    ///
    /// [`Rejected`], carrying a `retry_after`, when the breaker is open or forced open, or
    /// half-open with every probe slot taken.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::default();
    /// let permit = breaker.try_acquire().unwrap();
    /// let answer: Result<u32, ()> = Ok(42); // the work
    /// match answer {
    ///     Ok(_) => permit.success(),
    ///     Err(_) => permit.failure(),
    /// }
    /// assert_eq!(breaker.metrics().calls, 1);
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.core
            .acquire()
            .map(|ticket| Permit::new(&self.core, ticket))
    }

    /// As [`try_acquire`](Self::try_acquire), with a permit that holds its own reference to
    /// the breaker: for a stream that records its outcome when it ends.
    ///
    /// # Errors
    ///
    /// [`Rejected`], as [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        self.core
            .acquire()
            .map(|ticket| OwnedPermit::new(Arc::clone(&self.core), ticket))
    }

    /// Runs `future` if the breaker lets it, and records its result: `Ok` as a success,
    /// `Err` as a failure.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] if the breaker did not run the call; [`Error::Inner`] with the
    /// future's own error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future before it completes cancels the call and records nothing:
    /// a cancelled call never counts as a failure, and a half-open probe slot is handed back.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_breaker::CircuitBreaker;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::default();
    /// let tokens = breaker.call(async { Ok::<_, std::io::Error>("tokens") }).await.unwrap();
    /// assert_eq!(tokens, "tokens");
    /// # }
    /// ```
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, Error<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
    {
        self.call_classified(future, ErrorsAreFailures).await
    }

    /// As [`call`](Self::call), with the result classified by `classify`: a client's
    /// cancel or a 4xx can be [`Ignored`](crate::Outcome::Ignored), a 429 or 503 can carry its
    /// `Retry-After`.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_breaker::{CircuitBreaker, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    /// let status = breaker
    ///     .call_classified(async { Err::<(), u16>(404) }, |r: &Result<(), u16>| match r {
    ///         Ok(()) => Outcome::Success,
    ///         Err(status) if *status < 500 => Outcome::Ignored,
    ///         Err(_) => Outcome::FAILURE,
    ///     })
    ///     .await;
    /// assert!(status.is_err());
    /// assert_eq!(breaker.metrics().calls, 0); // a 404 is the client's problem
    /// # }
    /// ```
    pub async fn call_classified<F, T, E, C>(&self, future: F, classify: C) -> Result<T, Error<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        let permit = self.try_acquire()?;
        let result = future.into_future().await;
        permit.record(classify.classify(&result));
        result.map_err(Error::Inner)
    }

    /// The current state.
    ///
    /// An open breaker whose open period has ended reads [`State::HalfOpen`]: the next caller
    /// to ask for a permit becomes its first probe. Listeners hear of that transition
    /// ([`Trigger::OpenElapsed`](crate::Trigger::OpenElapsed)) when that caller asks, not
    /// when the period ends.
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// A snapshot of the breaker's state and window.
    pub fn metrics(&self) -> Metrics {
        Metrics::of(&self.core)
    }

    /// A handle to switch the breaker's state by hand and read its metrics, for an admin
    /// endpoint or a deploy script.
    pub fn handle(&self) -> Handle {
        Handle {
            core: Arc::clone(&self.core),
        }
    }
}

/// Switches a breaker's state by hand. Cloneable; every clone controls the same breaker.
///
/// Each switch is a transition like any other: listeners hear of it, and the permits granted
/// before it record nothing after it and never trip the breaker (one completing at the very
/// moment of the switch may still leave its one sample in the window).
/// [`reset`](Self::reset) returns to normal operation.
///
/// # Examples
///
/// ```
/// use brigade_breaker::{CircuitBreaker, State};
///
/// let breaker = CircuitBreaker::default();
/// let handle = breaker.handle();
///
/// handle.force_open(); // maintenance window
/// assert!(breaker.try_acquire().is_err());
///
/// handle.disable(); // everything passes, nothing is recorded
/// assert!(breaker.try_acquire().is_ok());
///
/// handle.reset();
/// assert_eq!(breaker.state(), State::Closed);
/// ```
#[derive(Clone)]
pub struct Handle {
    core: Arc<Core>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Rejects every call until switched again. Rejections carry the base open duration as
    /// their `retry_after`.
    pub fn force_open(&self) {
        self.core.switch(State::ForcedOpen);
    }

    /// Lets every call through and records nothing.
    pub fn disable(&self) {
        self.core.switch(State::Disabled);
    }

    /// Lets every call through and records it, but never trips: to watch a new upstream's
    /// rates before trusting the breaker with it.
    pub fn metrics_only(&self) {
        self.core.switch(State::MetricsOnly);
    }

    /// Closes the breaker with an empty window, from any state.
    pub fn reset(&self) {
        self.core.switch(State::Closed);
    }

    /// The current state; see [`CircuitBreaker::state`].
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// A snapshot of the breaker's state and window.
    pub fn metrics(&self) -> Metrics {
        Metrics::of(&self.core)
    }
}

/// A snapshot of a breaker, from [`CircuitBreaker::metrics`].
///
/// Rates are percentages in `[0, 100]` of the calls in the window, and zero when it is empty.
/// The window is emptied when the breaker closes after an open period, or is reset.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The state, as [`CircuitBreaker::state`] reports it.
    pub state: State,
    /// Failed calls in the window, in percent.
    pub failure_rate: f64,
    /// Slow calls in the window, in percent.
    pub slow_call_rate: f64,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls rejected since the breaker was built.
    pub rejections: u64,
    /// Half-open probes in flight.
    pub probes_in_flight: u32,
}

impl Metrics {
    fn of(core: &Core) -> Self {
        let snapshot = core.snapshot();
        let totals = snapshot.totals;
        let rate = |n: u64| {
            if totals.calls == 0 {
                0.0
            } else {
                n as f64 * 100.0 / totals.calls as f64
            }
        };
        Self {
            state: snapshot.state,
            failure_rate: rate(totals.failures),
            slow_call_rate: rate(totals.slow),
            calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            rejections: snapshot.rejections,
            probes_in_flight: snapshot.probes_in_flight,
        }
    }
}
