use std::time::Duration;

/// Why an attempt is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryCause {
    /// The classifier returned [`Action::Retry`](crate::Action::Retry).
    Failed,
    /// The classifier returned [`Action::Throttled`](crate::Action::Throttled) with this hint.
    Throttled(Duration),
    /// The attempt ran past the [attempt timeout](crate::RetryBuilder::attempt_timeout).
    TimedOut,
}

/// A retry about to happen, given to the [`on_retry`](crate::RetryBuilder::on_retry) hook and
/// logged as a `tracing` event (`DEBUG`, target `brigade_retry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The attempt that failed: 1 for the first.
    pub attempt: u32,
    /// How long the policy waits before the next attempt.
    pub wait: Duration,
    /// Why the attempt is retried.
    pub cause: RetryCause,
    /// Time since the call started.
    pub elapsed: Duration,
}
