use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::State;

/// The breaker refused a call: it is open, forced open, or half-open with every probe taken.
///
/// Returned by [`CircuitBreaker::try_acquire`](crate::CircuitBreaker::try_acquire), and the
/// marker error the tower service boxes, so it can be found again with `downcast_ref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    retry_after: Duration,
    state: State,
}

impl Rejected {
    pub(crate) const fn new(retry_after: Duration, state: State) -> Self {
        Self { retry_after, state }
    }

    /// How long the caller should wait before trying again. Suitable for a `Retry-After`
    /// header (round up).
    ///
    /// - [`State::Open`]: the time left until the breaker lets a probe through (the open
    ///   duration, stretched by an upstream hint, minus the time already spent open).
    /// - [`State::HalfOpen`] with every probe slot taken: a slot frees up as soon as a probe
    ///   ends, so the base open duration capped at one second.
    /// - [`State::ForcedOpen`]: when an operator will switch it back is unknown, so the
    ///   configured base open duration.
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The state that rejected the call.
    pub const fn state(&self) -> State {
        self.state
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker {}: retry after {} ms",
            self.state,
            self.retry_after.as_millis()
        )
    }
}

impl StdError for Rejected {}

/// The error of [`CircuitBreaker::call`](crate::CircuitBreaker::call): the breaker rejected the
/// call, or the call ran and failed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_breaker::{CircuitBreaker, Error, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::default();
/// breaker.handle().force_open();
/// match breaker.call(async { Ok::<_, std::io::Error>("tokens") }).await {
///     Err(Error::Rejected(rejected)) => {
///         // 503 with `Retry-After`
///         assert_eq!(rejected.state(), State::ForcedOpen);
///         assert_eq!(rejected.retry_after(), Duration::from_secs(30));
///     }
///     Err(Error::Inner(_upstream)) => unreachable!("the call never ran"),
///     Ok(_) | Err(_) => unreachable!(),
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The breaker did not run the call; the rejection says in which state, and when to try
    /// again ([`Rejected::retry_after`]).
    Rejected(Rejected),
    /// The call ran and returned this error.
    Inner(E),
}

impl<E> Error<E> {
    /// Whether the breaker rejected the call.
    pub const fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(error) => Some(error),
            Self::Rejected(_) => None,
        }
    }
}

impl<E> From<Rejected> for Error<E> {
    fn from(rejected: Rejected) -> Self {
        Self::Rejected(rejected)
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The rejection is the whole error, not a cause: shown as is.
            Self::Rejected(rejected) => rejected.fmt(f),
            Self::Inner(_) => f.write_str("call through the circuit breaker failed"),
        }
    }
}

impl<E: StdError + 'static> StdError for Error<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Inner(error) => Some(error),
            Self::Rejected(_) => None,
        }
    }
}

/// A breaker configuration that cannot work, rejected by
/// [`CircuitBreakerBuilder::build`](crate::CircuitBreakerBuilder::build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// The failure-rate threshold is outside `(0, 100]` percent.
    FailureRateThreshold,
    /// The slow-call-rate threshold is outside `(0, 100]` percent.
    SlowCallRateThreshold,
    /// The slow-call duration is zero: every call would be slow.
    ZeroSlowCallDuration,
    /// The window holds no calls (a count of zero, or a zero duration).
    ZeroWindow,
    /// A time window has no buckets, or buckets shorter than a millisecond.
    BucketTooShort,
    /// A count window holds more than [`Window::MAX_CALLS`](crate::Window::MAX_CALLS) calls,
    /// or a time window has more than [`Window::MAX_BUCKETS`](crate::Window::MAX_BUCKETS)
    /// buckets.
    WindowTooLarge,
    /// The minimum number of calls is zero, or larger than a count window can hold.
    MinimumCalls,
    /// The consecutive-failure threshold is zero.
    ZeroConsecutiveFailures,
    /// The open duration is zero.
    ZeroOpenDuration,
    /// An escalating open duration's cap is below its base, its multiplier is below 1 or not
    /// finite, or its jitter is outside `[0, 1]`.
    Escalation,
    /// Half-open allows no probes, or more than 65 535.
    HalfOpenProbes,
    /// Half-open closes after zero successes, or more than 65 535.
    HalfOpenSuccesses,
    /// A keyed breaker allows no keys.
    ZeroMaxKeys,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FailureRateThreshold => "failure-rate threshold outside (0, 100] percent",
            Self::SlowCallRateThreshold => "slow-call-rate threshold outside (0, 100] percent",
            Self::ZeroSlowCallDuration => "slow-call duration is zero",
            Self::ZeroWindow => "window holds no calls",
            Self::BucketTooShort => "time window buckets shorter than a millisecond",
            Self::WindowTooLarge => "window too large",
            Self::MinimumCalls => "minimum calls is zero or larger than the window",
            Self::ZeroConsecutiveFailures => "consecutive-failure threshold is zero",
            Self::ZeroOpenDuration => "open duration is zero",
            Self::Escalation => "escalating open duration has a cap below its base, a multiplier below 1 or not finite, or a jitter outside [0, 1]",
            Self::HalfOpenProbes => "half-open probes not in 1..=65535",
            Self::HalfOpenSuccesses => "half-open successes to close not in 1..=65535",
            Self::ZeroMaxKeys => "keyed breaker allows no keys",
        })
    }
}

impl StdError for InvalidConfig {}
