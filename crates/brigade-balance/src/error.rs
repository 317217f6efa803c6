//! The pool's errors: a configuration that cannot work, and a pick with nowhere to go.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A pool or endpoint configuration that cannot work, refused when it is built or inserted.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// An endpoint's weight is zero, negative, or not finite.
    Weight(f64),
    /// The latency decay time is zero.
    ZeroDecay,
    /// The default latency estimate is zero.
    ZeroDefaultLatency,
    /// Two endpoints of a builder share an id.
    DuplicateId(String),
    /// The pool's default breaker configuration is invalid.
    Breaker(brigade_breaker::InvalidConfig),
    /// An endpoint's concurrency limit cannot be built ([`EndpointSpec::config`](crate::EndpointSpec::config)).
    Limit(brigade_limit::InvalidConfig),
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Weight(weight) => {
                write!(
                    f,
                    "endpoint weight must be finite and above zero, not {weight}"
                )
            }
            Self::ZeroDecay => f.write_str("latency decay time must be above zero"),
            Self::ZeroDefaultLatency => f.write_str("default latency estimate must be above zero"),
            Self::DuplicateId(id) => write!(f, "endpoint id {id:?} is used twice"),
            Self::Breaker(_) => f.write_str("invalid default circuit breaker"),
            Self::Limit(_) => f.write_str("invalid endpoint concurrency limit"),
        }
    }
}

impl StdError for InvalidConfig {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Breaker(error) => Some(error),
            Self::Limit(error) => Some(error),
            _ => None,
        }
    }
}

/// No endpoint of the pool could take a pick: the pool is empty, or every endpoint is open,
/// cooling down, saturated or excluded.
///
/// Each endpoint is counted once, under what keeps it out longest.
/// [`retry_after`](Self::retry_after) is the earliest time one of them comes back, for a 503's
/// `Retry-After`. The tower service boxes this error, so it can be found again with
/// `downcast_ref`.
///
/// # Examples
///
/// ```
/// use brigade_balance::Pool;
///
/// let pool = Pool::<&str>::builder().build().unwrap();
/// let unavailable = pool.pick().unwrap_err();
/// assert!(unavailable.is_empty());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub(crate) endpoints: usize,
    pub(crate) open: usize,
    pub(crate) cooling_down: usize,
    pub(crate) saturated: usize,
    pub(crate) excluded: usize,
    pub(crate) retry_after: Duration,
}

impl Unavailable {
    /// How many endpoints the pool holds.
    pub const fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Whether the pool holds no endpoint at all.
    pub const fn is_empty(&self) -> bool {
        self.endpoints == 0
    }

    /// Endpoints whose circuit breaker refused the call (open, forced open, or half-open with
    /// every probe taken).
    pub const fn open(&self) -> usize {
        self.open
    }

    /// Endpoints cooling down after a throttle (a 429, a `Retry-After`).
    pub const fn cooling_down(&self) -> usize {
        self.cooling_down
    }

    /// Endpoints whose adaptive concurrency limit is reached.
    pub const fn saturated(&self) -> usize {
        self.saturated
    }

    /// Endpoints the caller excluded (already tried).
    pub const fn excluded(&self) -> usize {
        self.excluded
    }

    /// How long until an open or cooling endpoint comes back: the earliest of their times.
    /// When none is open or cooling (the pool is empty, saturated or all excluded), the pool's
    /// [`unavailable_retry_after`](crate::PoolBuilder::unavailable_retry_after). Suitable for
    /// a `Retry-After` header (round up).
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.endpoints == 0 {
            return f.write_str("no endpoint in the pool");
        }
        write!(
            f,
            "no eligible endpoint of {}: {} open, {} cooling down, {} saturated, {} excluded; retry after {} ms",
            self.endpoints,
            self.open,
            self.cooling_down,
            self.saturated,
            self.excluded,
            self.retry_after.as_millis()
        )
    }
}

impl StdError for Unavailable {}
