use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::Rejected;

/// A configuration that cannot work, rejected when it is built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// A replenish interval of zero: the limit would admit everything.
    ZeroPeriod,
    /// `burst × replenish_interval` does not fit in 584 years of nanoseconds.
    QuotaTooLong,
    /// A rate limiter needs at least one limit.
    NoLimits,
    /// More limits than a rate limiter holds ([`MAX_LIMITS`](crate::MAX_LIMITS)).
    TooManyLimits,
    /// Two limits share a name; header fields and rejections name limits, so names are unique.
    DuplicateLimit(&'static str),
    /// No limit has this name.
    UnknownLimit(String),
    /// A limit name with a character other than printable ASCII: it could not be written in
    /// the `RateLimit` header fields.
    InvalidLimitName(&'static str),
    /// A keyed limiter must hold at least one key.
    ZeroMaxKeys,
    /// A concurrency limit must admit at least one call.
    ZeroConcurrency,
    /// An adaptive limit's bounds out of order: it needs `1 <= min <= initial <= max`, and
    /// `max` within tokio's semaphore.
    InvalidLimits {
        /// The lowest limit asked for.
        min: usize,
        /// The starting limit asked for.
        initial: usize,
        /// The highest limit asked for.
        max: usize,
    },
    /// A setting outside the range it works in; names the setting and the range.
    OutOfRange {
        /// The setting.
        setting: &'static str,
        /// The values it takes, as its documentation writes them (`(0, 1]`, `at least 1`).
        range: &'static str,
    },
    /// An address prefix longer than the address (32 bits for IPv4, 128 for IPv6).
    PrefixTooLong {
        /// The prefix asked for.
        prefix: u8,
        /// The address length in bits.
        max: u8,
    },
    /// A local fallback that divides the quotas over zero replicas.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    ZeroReplicas,
    /// A duration setting that must be positive is zero; names the setting.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    ZeroDuration(&'static str),
    /// A count setting that must be positive is zero; names the setting.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    ZeroCount(&'static str),
    /// A Redis key prefix or limit name holds `{` or `}`: the Redis key layout reserves them
    /// for its hash tag (`prefix{key}:limit`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    BraceInRedisKey(String),
    /// The Redis URL does not parse; the message says why.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    RedisUrl(String),
    /// A Redis batch size outside 1 to 1,024.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    BatchSize(usize),
}

/// Without the `redis` feature, the Redis limiter's configuration errors do not exist:
///
/// ```compile_fail
/// let _ = brigade_limit::InvalidConfig::ZeroReplicas;
/// ```
///
/// while the others do:
///
/// ```
/// let _ = brigade_limit::InvalidConfig::ZeroPeriod;
/// ```
#[cfg(all(doctest, not(feature = "redis")))]
struct RedisVariantsNeedTheFeature;

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroPeriod => f.write_str("quota replenish interval is zero"),
            Self::QuotaTooLong => f.write_str("quota burst times interval overflows"),
            Self::NoLimits => f.write_str("rate limiter has no limit"),
            Self::TooManyLimits => {
                write!(f, "rate limiter has more than {} limits", crate::MAX_LIMITS)
            }
            Self::DuplicateLimit(name) => write!(f, "two limits are named {name:?}"),
            Self::UnknownLimit(name) => write!(f, "no limit is named {name:?}"),
            Self::InvalidLimitName(name) => {
                write!(f, "limit name {name:?} is not printable ASCII")
            }
            Self::ZeroMaxKeys => f.write_str("keyed rate limiter holds zero keys"),
            Self::ZeroConcurrency => f.write_str("concurrency limit admits zero calls"),
            Self::InvalidLimits { min, initial, max } => write!(
                f,
                "adaptive limit bounds min {min}, initial {initial}, max {max} are not in order"
            ),
            Self::OutOfRange { setting, range } => {
                write!(f, "{setting} is out of its range {range}")
            }
            Self::PrefixTooLong { prefix, max } => {
                write!(f, "address prefix /{prefix} is longer than /{max}")
            }
            #[cfg(feature = "redis")]
            Self::ZeroReplicas => {
                f.write_str("local fallback divides the quotas over zero replicas")
            }
            #[cfg(feature = "redis")]
            Self::ZeroDuration(setting) | Self::ZeroCount(setting) => {
                write!(f, "{setting} is zero")
            }
            #[cfg(feature = "redis")]
            Self::BraceInRedisKey(part) => {
                write!(
                    f,
                    "{part:?} holds a brace, reserved by the Redis key layout"
                )
            }
            #[cfg(feature = "redis")]
            Self::RedisUrl(why) => write!(f, "invalid Redis URL: {why}"),
            #[cfg(feature = "redis")]
            Self::BatchSize(n) => write!(f, "a Redis batch of {n} operations: from 1 to 1,024"),
        }
    }
}

impl Error for InvalidConfig {}

/// A cost larger than a limit's burst: it can never be admitted, so it is rejected at once
/// rather than waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsatisfiable {
    pub(crate) limit: &'static str,
    pub(crate) cost: u64,
    pub(crate) burst: u32,
}

impl Unsatisfiable {
    /// The limit whose burst is too small.
    pub const fn limit(&self) -> &'static str {
        self.limit
    }

    /// The cells asked for.
    pub const fn cost(&self) -> u64 {
        self.cost
    }

    /// The most cells that limit admits at once.
    pub const fn burst(&self) -> u32 {
        self.burst
    }
}

impl fmt::Display for Unsatisfiable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cost {} exceeds the burst {} of limit {:?}",
            self.cost, self.burst, self.limit
        )
    }
}

impl Error for Unsatisfiable {}

/// Why a rate limiter did not admit a call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AcquireError {
    /// Over quota now; [`Rejected::retry_after`] says when it would be admitted.
    Rejected(Rejected),
    /// The cost exceeds a limit's burst and can never be admitted.
    Unsatisfiable(Unsatisfiable),
    /// The key's wait queue is full (async acquire only); the rejection estimates when the
    /// queue ahead will have been served.
    QueueFull(Rejected),
    /// A new key found its shard of the key table full: of limited keys, and the limiter
    /// refuses new keys then ([`WhenFull::RefuseNewKeys`](crate::WhenFull::RefuseNewKeys)),
    /// or of keys with callers waiting; retry after the given time.
    KeysExhausted {
        /// When to look again: when the shard's limited keys are expected to go idle,
        /// freeing room, but never more than the longest limit's window (burst × interval),
        /// since a key charged past its burst by a settle may stay limited far longer and a
        /// refusal is cheap to ask again. While keys with callers waiting fill the shard
        /// there is no estimate (the callers may be admitted or leave at any time): one
        /// second, or the longest window if that is shorter.
        retry_after: Duration,
    },
    /// The wait was cancelled by its token (async acquire only). Nothing was charged.
    Cancelled,
    /// The call could not be admitted before its deadline (async acquire only). Nothing was
    /// charged.
    DeadlineExceeded,
    /// The shared store is unreachable and the fallback refuses the call: a `RedisRateLimiter`
    /// (feature `redis`) whose fallback is `FailClosed`, or a cost over a local fallback's
    /// divided burst. Nothing was charged; `retry_after` is when the store will be
    /// tried again. A server error (503) rather than a quota one (429).
    Unavailable {
        /// When the store will be tried again.
        retry_after: Duration,
    },
    /// The shared store answers, but not fast enough for this call: a `RedisRateLimiter`
    /// (feature `redis`) whose queue for Redis would keep the call past its bound, or did.
    /// Nothing was charged (a call that gave up while its batch was on the wire may have
    /// been). `retry_after` is the queue's expected wait. Not the caller's quota: a server
    /// error (503, overloaded) rather than a 429.
    Overloaded {
        /// When the queue is expected to have room.
        retry_after: Duration,
    },
}

impl AcquireError {
    /// When retrying may succeed, for the errors a client could act on: `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected(r) | Self::QueueFull(r) => Some(r.retry_after()),
            Self::KeysExhausted { retry_after }
            | Self::Unavailable { retry_after }
            | Self::Overloaded { retry_after } => Some(*retry_after),
            Self::Unsatisfiable(_) | Self::Cancelled | Self::DeadlineExceeded => None,
        }
    }

    /// The quota rejection, if that is what this is.
    pub fn as_rejected(&self) -> Option<&Rejected> {
        match self {
            Self::Rejected(r) | Self::QueueFull(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(_) => f.write_str("rate limited"),
            Self::Unsatisfiable(_) => f.write_str("cost can never be admitted"),
            Self::QueueFull(_) => f.write_str("rate limit wait queue is full"),
            Self::KeysExhausted { .. } => f.write_str("rate limiter key table is full"),
            Self::Cancelled => f.write_str("rate limit wait cancelled"),
            Self::DeadlineExceeded => f.write_str("rate limit wait passed its deadline"),
            Self::Unavailable { .. } => f.write_str("rate limit store unavailable"),
            Self::Overloaded { .. } => f.write_str("rate limit store overloaded"),
        }
    }
}

impl Error for AcquireError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Rejected(r) | Self::QueueFull(r) => Some(r),
            Self::Unsatisfiable(u) => Some(u),
            _ => None,
        }
    }
}

impl From<Rejected> for AcquireError {
    fn from(r: Rejected) -> Self {
        Self::Rejected(r)
    }
}

impl From<Unsatisfiable> for AcquireError {
    fn from(u: Unsatisfiable) -> Self {
        Self::Unsatisfiable(u)
    }
}
