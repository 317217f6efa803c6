use std::error::Error;
use std::fmt;

/// Why a call to Redis did not give an answer (internal: the public face is
/// [`RedisUnavailable`]).
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// No answer within the call (or connect) timeout.
    Timeout,
    /// The client or the server reported an error.
    Redis(redis::RedisError),
    /// An answer of an unexpected shape.
    Reply(&'static str),
    /// Redis is marked down and the next probe is not due: no call was made.
    Down,
    /// The connection's batching task is gone (the runtime it was started on has ended): no
    /// call was made.
    Gone,
    /// The queue for the next batches would have outlasted the call timeout: no call was
    /// made.
    Shed,
}

impl Failure {
    /// An error about this request (a key holding something else, which the script cannot
    /// read), not about Redis: the fallback answers this call, and Redis the next ones.
    pub(crate) fn is_about_the_request(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || e.code() == Some("WRONGTYPE")
            }
            Self::Reply(_) => true,
            Self::Timeout | Self::Down | Self::Gone | Self::Shed => false,
        }
    }
}

/// Redis did not answer: down, slower than the timeout, or answering something unexpected.
///
/// Returned by [`RedisRateLimiter::connect`](super::RedisRateLimiter::connect) and
/// [`RedisReservation::settle`](super::RedisReservation::settle); a decision never returns it
/// (the fallback answers instead).
#[derive(Debug)]
pub struct RedisUnavailable {
    pub(crate) failure: Failure,
}

impl RedisUnavailable {
    pub(crate) fn new(failure: Failure) -> Self {
        Self { failure }
    }

    /// Whether the call ran out of time (rather than failing).
    pub fn is_timeout(&self) -> bool {
        matches!(self.failure, Failure::Timeout)
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
            Self::Down => f.write_str("redis is down until the next probe"),
            Self::Shed => f.write_str(
                "the queue for redis batches would outlast the call timeout; not sent",
            ),
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
