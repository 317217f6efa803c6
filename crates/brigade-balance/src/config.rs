//! What the caller says about one endpoint.

use std::fmt;

use brigade_breaker::CircuitBreaker;
use brigade_limit::AdaptiveLimit;

use crate::InvalidConfig;

/// One endpoint's weight, tier, breaker and adaptive limit: a value with chained setters.
///
/// # Examples
///
/// ```
/// use brigade_balance::{EndpointConfig, Pool};
/// use brigade_breaker::CircuitBreaker;
///
/// let fallback = EndpointConfig::new()
///     .tier(1) // used only while every tier-0 endpoint is out
///     .weight(2.0)
///     .breaker(CircuitBreaker::builder().minimum_calls(5).build().unwrap());
/// let pool = Pool::builder()
///     .endpoint("primary", "http://10.0.0.1", EndpointConfig::new())
///     .endpoint("fallback", "http://10.0.0.2", fallback)
///     .build()
///     .unwrap();
/// assert_eq!(pool.pick().unwrap().id(), "primary");
/// ```
#[derive(Clone)]
#[must_use]
pub struct EndpointConfig {
    pub(crate) weight: f64,
    pub(crate) tier: u32,
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) limit: Option<AdaptiveLimit>,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("weight", &self.weight)
            .field("tier", &self.tier)
            .field("breaker", &self.breaker.is_some())
            .field("limit", &self.limit.as_ref().map(AdaptiveLimit::limit))
            .finish()
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointConfig {
    /// Weight 1, tier 0, the pool's default breaker, no adaptive limit.
    pub const fn new() -> Self {
        Self {
            weight: 1.0,
            tier: 0,
            breaker: None,
            limit: None,
        }
    }

    /// The endpoint's share of the picks relative to the others of its tier: finite and above
    /// zero. Default 1.
    ///
    /// At rest (no call in flight, equal latencies) an endpoint gets `weight / total` of the
    /// picks; under load, the in-flight count it is judged by is divided by its weight.
    pub const fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// The priority tier, 0 first. A higher tier is picked from only while every endpoint of
    /// the lower tiers is open, cooling down or saturated. Default 0.
    pub const fn tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// The endpoint's circuit breaker. A clone of a breaker shares its state, so pass a breaker
    /// of its own to each endpoint. Default: one built from the pool's
    /// [`breaker`](crate::PoolBuilder::breaker) configuration.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// An adaptive concurrency limit: the endpoint is skipped while it is reached, and each pick
    /// holds one of its permits. Default: none.
    pub fn adaptive_limit(mut self, limit: AdaptiveLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.weight.is_finite() && self.weight > 0.0 {
            Ok(())
        } else {
            Err(InvalidConfig::Weight(self.weight))
        }
    }
}
