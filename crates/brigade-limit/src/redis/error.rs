use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Why a call to Redis did not give an answer (internal: the public faces are
/// [`RedisUnavailable`] and [`AcquireError`](crate::AcquireError)).
///
/// Three kinds, which the limiter treats apart (see the [module docs](super#when-redis-is-down)):
///
/// - a failed round trip ([`is_outage_evidence`](Self::is_outage_evidence)): the call (or its
///   batch) went to Redis, and Redis did not answer it in time or answered with an error that
///   is not about the request: the fallback answers that call, and enough of them in a row
///   switch the limiter;
/// - an error about the request ([`is_about_the_request`](Self::is_about_the_request)): Redis
///   answered, but cannot decide on this key: the fallback answers that call alone;
/// - load ([`Shed`](Self::Shed), [`WaitTimeout`](Self::WaitTimeout)): the call never had its
///   answer because the local queue for Redis was too long: refused as overloaded, never
///   evidence of anything about Redis.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// No answer within the call (or connect) timeout.
    Timeout,
    /// The client or the server reported an error.
    Redis(redis::RedisError),
    /// An answer of an unexpected shape: the script (or the command) is not the one this
    /// code expects.
    Reply(&'static str),
    /// The script's own answer for an operation one of whose keys holds something that is not
    /// a time (`-1`): about this key only.
    NotATime,
    /// Redis is marked down and the next probe is not due: no call was made.
    Down,
    /// The connection's batching task is gone (the runtime it was started on has ended): no
    /// call was made, and none can be on this connection.
    Gone,
    /// The queue for the next batches would have outlasted the call's bound: no call was
    /// made. `retry_after` is the queue's expected wait.
    Shed { retry_after: Duration },
    /// The call's bound passed while it waited for its batch, queued or on the wire.
    /// `retry_after` is the queue's expected wait.
    WaitTimeout { retry_after: Duration },
}

impl Failure {
    /// An error about this request (a key holding something the script cannot read: the
    /// script's `-1`, or `WRONGTYPE` from a command), not about Redis: the fallback answers
    /// this call, and Redis the next ones.
    pub(crate) fn is_about_the_request(&self) -> bool {
        match self {
            Self::NotATime => true,
            Self::Redis(e) => e.code() == Some("WRONGTYPE"),
            Self::Timeout
            | Self::Reply(_)
            | Self::Down
            | Self::Gone
            | Self::Shed { .. }
            | Self::WaitTimeout { .. } => false,
        }
    }

    /// A round trip that Redis failed: no answer in time, a connection error, or an error
    /// reply that is not about the request (a generic `ERR`, such as a Lua runtime error in
    /// the script, `READONLY`, `OOM`, `NOPERM`, ...), or a reply of the wrong shape.
    pub(crate) fn is_outage_evidence(&self) -> bool {
        match self {
            Self::Timeout | Self::Reply(_) => true,
            Self::Redis(_) => !self.is_about_the_request(),
            Self::NotATime
            | Self::Down
            | Self::Gone
            | Self::Shed { .. }
            | Self::WaitTimeout { .. } => false,
        }
    }

    /// The load answers: the call had no answer because of the local queue, not Redis.
    pub(crate) fn overloaded(&self) -> Option<Duration> {
        match self {
            Self::Shed { retry_after } | Self::WaitTimeout { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Redis did not answer: down, slower than the timeout, answering something unexpected, or
/// (for a settle) queued for its batch as long as the call may wait.
///
/// Returned by [`RedisRateLimiter::connect`](super::RedisRateLimiter::connect) and
/// [`RedisReservation::settle`](super::RedisReservation::settle); a decision never returns it
/// (the fallback answers instead, or it is refused as
/// [`Overloaded`](crate::AcquireError::Overloaded)).
#[derive(Debug)]
pub struct RedisUnavailable {
    pub(crate) failure: Failure,
}

impl RedisUnavailable {
    pub(crate) fn new(failure: Failure) -> Self {
        Self { failure }
    }

    /// Whether the call ran out of time (rather than failing): Redis did not answer within
    /// the call timeout, or the call waited for its batch as long as it may.
    pub fn is_timeout(&self) -> bool {
        matches!(self.failure, Failure::Timeout | Failure::WaitTimeout { .. })
    }

    /// Whether no call was made because Redis is marked down until its next probe.
    pub fn is_down(&self) -> bool {
        matches!(self.failure, Failure::Down)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("redis call timed out"),
            Self::Redis(_) => f.write_str("redis call failed"),
            Self::Reply(what) => write!(f, "unexpected redis reply: {what}"),
            Self::NotATime => f.write_str("a key holds something other than a time"),
            Self::Down => f.write_str("redis is down until the next probe"),
            Self::Shed { .. } => {
                f.write_str("the queue for redis batches would outlast the call's bound; not sent")
            }
            Self::WaitTimeout { .. } => {
                f.write_str("the call's bound passed while it waited for its redis batch")
            }
            Self::Gone => f.write_str(
                "the connection's batching task is gone (its runtime has ended); reconnecting at the next probe",
            ),
        }
    }
}

impl fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.failure, f)
    }
}

impl Error for RedisUnavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.failure {
            Failure::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Failure {
    /// redis-rs's own response and connection timeouts count as timeouts.
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else {
            Self::Redis(e)
        }
    }
}
