use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Why retrying stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The attempts ran out: [`max_attempts`](crate::RetryBuilder::max_attempts) was reached, or
    /// the schedule ended.
    Exhausted,
    /// The classifier returned [`Action::Stop`](crate::Action::Stop) for an error.
    NotRetryable,
    /// The shared [`RetryBudget`](crate::RetryBudget) had no retry left.
    BudgetExhausted,
    /// The overall [`deadline`](crate::RetryBuilder::deadline) passed during an attempt, or the
    /// next wait would have ended at or past it.
    DeadlineExceeded,
    /// The call's [`CancellationToken`](tokio_util::sync::CancellationToken) was cancelled.
    Cancelled,
    /// The attempt had [committed](crate::Attempt::commit) and failed in a way that would
    /// otherwise have been retried: a committed attempt is never retried.
    Committed,
    /// The tower middleware's inner service failed in `poll_ready` (feature `tower`): a
    /// service that fails there is done, by tower's contract, so no attempt was made.
    NotReady,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Exhausted => "attempts exhausted",
            Self::NotRetryable => "not retryable",
            Self::BudgetExhausted => "retry budget exhausted",
            Self::DeadlineExceeded => "deadline exceeded",
            Self::Cancelled => "cancelled",
            Self::Committed => "attempt committed",
            Self::NotReady => "inner service failed to get ready",
        })
    }
}

/// A call that failed for good: how many attempts it made, how long it took, why retrying
/// stopped, and the last outcome.
///
/// The last outcome is a `Result<T, E>`, not only an `E`: the classifier may treat an `Ok` as
/// a failure (an HTTP 503 is an `Ok` to hyper), and then the caller gets that response back.
/// It is `None` when no attempt finished (the call was cancelled or timed out before any did).
///
/// [`source`](Error::source) is the last error, when the last outcome was an `Err`.
///
/// # Examples
///
/// ```
/// use brigade_retry::{Retry, StopReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Retry::builder().max_attempts(2).build().unwrap();
/// let err = policy.run(async |_| Err::<(), _>("refused")).await.unwrap_err();
/// assert_eq!(err.attempts(), 2);
/// assert_eq!(err.stop(), StopReason::Exhausted);
/// assert_eq!(err.error(), Some(&"refused"));
/// # }
/// ```
#[derive(Debug)]
pub struct RetryError<T, E> {
    pub(crate) attempts: u32,
    pub(crate) elapsed: Duration,
    pub(crate) stop: StopReason,
    pub(crate) last: Option<Result<T, E>>,
    pub(crate) timed_out: bool,
}

impl<T, E> RetryError<T, E> {
    /// The inner service's `poll_ready` failed with `error`, before any attempt.
    #[cfg(feature = "tower")]
    pub(crate) const fn not_ready(error: E) -> Self {
        Self {
            attempts: 0,
            elapsed: Duration::ZERO,
            stop: StopReason::NotReady,
            last: Some(Err(error)),
            timed_out: false,
        }
    }

    /// Attempts started, the last one included (0 when the tower middleware's inner service
    /// failed to get ready, [`StopReason::NotReady`]: [`last`](Self::last) then holds its
    /// error).
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time from the start of the call to the stop, on tokio's clock.
    ///
    /// The clock is first read when the first attempt waits or fails, so an attempt that
    /// failed without ever waiting adds nothing here (it took no measurable time).
    pub const fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Why retrying stopped.
    pub const fn stop(&self) -> StopReason {
        self.stop
    }

    /// The outcome of the last attempt that finished.
    pub const fn last(&self) -> Option<&Result<T, E>> {
        self.last.as_ref()
    }

    /// The last error, when the last finished attempt returned one.
    pub fn error(&self) -> Option<&E> {
        self.last.as_ref().and_then(|last| last.as_ref().err())
    }

    /// Whether the last attempt was cut short (by the attempt timeout or the deadline) before
    /// it finished; [`last`](Self::last) then holds the attempt before it, if any.
    pub const fn is_timed_out(&self) -> bool {
        self.timed_out
    }

    /// Takes the last outcome out.
    pub fn into_last(self) -> Option<Result<T, E>> {
        self.last
    }

    /// Takes the last error out, when the last finished attempt returned one.
    pub fn into_error(self) -> Option<E> {
        self.last.and_then(Result::err)
    }
}

impl<T, E> fmt::Display for RetryError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempts = self.attempts;
        let plural = if attempts == 1 { "" } else { "s" };
        write!(
            f,
            "retrying stopped after {attempts} attempt{plural} in {:?}: {}",
            self.elapsed, self.stop
        )
    }
}

impl<T, E> Error for RetryError<T, E>
where
    T: fmt::Debug,
    E: Error + 'static,
{
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error().map(|e| e as &(dyn Error + 'static))
    }
}

/// A retry configuration that cannot work, rejected when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// `max_attempts` must be at least 1 (the first attempt counts).
    ZeroMaxAttempts,
    /// An exponential backoff's factor must be finite and at least 1.
    BackoffFactor,
    /// The overall deadline must be longer than zero.
    ZeroDeadline,
    /// The per-attempt timeout must be longer than zero.
    ZeroAttemptTimeout,
    /// A retry budget's window must be from 10 ms to one hour.
    BudgetWindow,
    /// A retry budget's ratio must be finite and from 0 to 1000.
    BudgetRatio,
    /// A hedge's `max_in_flight` must be at least 1 (the first request counts).
    ZeroMaxInFlight,
    /// A hedge's latency percentile must be finite, above 0 and at most 100.
    HedgePercentile,
    /// A hedge's delay floor must not be above its ceiling.
    HedgeClamp,
    /// A hedge's latency window must hold from 1 to 512 samples, and its minimum samples
    /// must be from 1 to the window.
    HedgeWindow,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroMaxAttempts => "max attempts is zero",
            Self::BackoffFactor => "backoff factor is not a finite number of at least 1",
            Self::ZeroDeadline => "deadline is zero",
            Self::ZeroAttemptTimeout => "attempt timeout is zero",
            Self::BudgetWindow => "retry budget window is outside 10 ms to 1 hour",
            Self::BudgetRatio => "retry budget ratio is not a finite number from 0 to 1000",
            Self::ZeroMaxInFlight => "hedge max in flight is zero",
            Self::HedgePercentile => "hedge percentile is not a finite number above 0 and at most 100",
            Self::HedgeClamp => "hedge delay floor is above its ceiling",
            Self::HedgeWindow => "hedge latency window is outside 1 to 512 samples, or min samples outside 1 to the window",
        })
    }
}

impl Error for InvalidConfig {}
