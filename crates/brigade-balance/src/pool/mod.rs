//! The pool: endpoints in priority tiers, and the pick.
//!
//! # The pick
//!
//! A pick reads tokio's clock once, loads the endpoint list (an [`ArcSwap`], no lock), and
//! walks the tiers from 0 up. In the first tier with an eligible endpoint it draws two distinct
//! eligible endpoints at random, each with a probability proportional to its weight, and keeps
//! the cheaper one, the first drawn on a tie (power of two choices). The cost of an endpoint is
//!
//! ```text
//! latency × (1 + in_flight / weight)
//! ```
//!
//! where `latency` is its peak-EWMA first-byte latency decayed to the time of the pick. With
//! equal weights this orders endpoints exactly as tower's `latency × (in_flight + 1)` does.
//! Weights enter twice, each where it means something: in the draw, so that at rest (nothing
//! in flight, equal latencies, every cost the same) an endpoint gets `weight / total` of the
//! picks; and in the load term, so that under load an endpoint of weight 4 is judged as busy
//! as one of weight 1 when it has four times the calls in flight. (`latency × (in_flight + 1)
//! / weight` would let the heavier endpoint of every pair win at rest: weights 1:2:4 would get
//! 0 %, 33 % and 67 % of the picks.)
//!
//! An endpoint is eligible when it is not cooling down, its breaker did not refuse it for a
//! time that has not yet passed, and its adaptive limit (if any) has room. The winner's breaker
//! permit ([`CircuitBreaker::try_acquire_owned`]: a half-open breaker grants only its probe
//! slots) and adaptive permit are then taken; if either is refused, the endpoint is set aside
//! (a breaker's refusal for its `retry_after`) and the pick draws again, at most once per
//! endpoint of the tier. Only when no endpoint of a tier can be granted does the pick go on
//! to the next tier, so the pool returns to a tier as soon as one of its endpoints is eligible.
//!
//! # Cost
//!
//! One clock read, one `ArcSwap` load, a few scans of the tier reading relaxed atomics, two
//! random draws, two `exp` calls, the breaker's permit (atomics and an `Arc` clone), and an
//! `Arc` clone of the endpoint; no lock and no allocation. Dropping the pick is the permits'
//! release and a decrement.

mod endpoint;
#[cfg(all(test, loom))]
mod loom_tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use brigade_breaker::{CircuitBreakerBuilder, State as BreakerState};
use tokio::time::Instant;

use self::endpoint::State;
pub(crate) use self::endpoint::{Clock, Endpoint, ns_to_duration};
use crate::loom::{Mutex, Ordering, lock};
use crate::rng::{Rng, random_seed};
use crate::{EndpointConfig, InvalidConfig, Pick, Unavailable};

/// A pool of upstream endpoints: pick one by latency and load, fall back by tier, and keep
/// out those that are failing or throttling.
///
/// `E` is the caller's handle on an upstream: a URL, a client, a tower service. Cloning the
/// pool is cheap and shares it. The [module docs](crate) explain the pick.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_balance::{EndpointConfig, Pool};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool = Pool::builder()
///     .endpoint("a", "http://10.0.0.1:8000", EndpointConfig::new())
///     .endpoint("b", "http://10.0.0.2:8000", EndpointConfig::new())
///     .seed(7)
///     .build()
///     .unwrap();
///
/// let mut pick = pool.pick().unwrap();
/// let url = *pick.endpoint(); // call it
/// tokio::time::sleep(Duration::from_millis(40)).await;
/// pick.first_byte(); // a 40 ms latency sample
/// pick.success();
/// # let _ = url;
/// # }
/// ```
pub struct Pool<E> {
    shared: Arc<Shared<E>>,
}

impl<E> Clone for Pool<E> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<E> fmt::Debug for Pool<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.len())
            .finish_non_exhaustive()
    }
}

struct Shared<E> {
    list: ArcSwap<List<E>>,
    /// Serializes insert and remove (each reads the list, then swaps in a changed copy).
    write: Mutex<()>,
    rng: Rng,
    clock: Clock,
    default_latency: Duration,
    breaker: CircuitBreakerBuilder,
    unavailable_retry_after: Duration,
}

/// The endpoints, by tier in ascending order; never an empty tier.
struct List<E> {
    tiers: Vec<Tier<E>>,
    len: usize,
}

struct Tier<E> {
    tier: u32,
    endpoints: Vec<Arc<Endpoint<E>>>,
}

impl<E> List<E> {
    fn new(mut endpoints: Vec<Arc<Endpoint<E>>>) -> Self {
        // Stable: within a tier, endpoints keep the order they were added in.
        endpoints.sort_by_key(|e| e.tier);
        let len = endpoints.len();
        let mut tiers: Vec<Tier<E>> = Vec::new();
        for endpoint in endpoints {
            match tiers.last_mut() {
                Some(last) if last.tier == endpoint.tier => last.endpoints.push(endpoint),
                _ => tiers.push(Tier {
                    tier: endpoint.tier,
                    endpoints: vec![endpoint],
                }),
            }
        }
        Self { tiers, len }
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint<E>>> {
        self.tiers.iter().flat_map(|t| t.endpoints.iter())
    }
}

/// Builds a [`Pool`]; each setter documents its default.
#[must_use]
pub struct PoolBuilder<E> {
    endpoints: Vec<(Arc<str>, E, EndpointConfig)>,
    decay: Duration,
    default_latency: Duration,
    default_cooldown: Duration,
    max_cooldown: Duration,
    unavailable_retry_after: Duration,
    breaker: CircuitBreakerBuilder,
    seed: Option<u64>,
}

impl<E> fmt::Debug for PoolBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("endpoints", &self.endpoints.len())
            .field("decay", &self.decay)
            .field("default_latency", &self.default_latency)
            .field("default_cooldown", &self.default_cooldown)
            .field("max_cooldown", &self.max_cooldown)
            .field("unavailable_retry_after", &self.unavailable_retry_after)
            .field("breaker", &self.breaker)
            .field("seed", &self.seed)
            .finish()
    }
}

impl<E> PoolBuilder<E> {
    /// Adds an endpoint under `id`. Default: no endpoint (an empty pool is valid; every pick
    /// fails with [`Unavailable`] until one is [inserted](Pool::insert)).
    pub fn endpoint(
        mut self,
        id: impl Into<Arc<str>>,
        endpoint: E,
        config: EndpointConfig,
    ) -> Self {
        self.endpoints.push((id.into(), endpoint, config));
        self
    }

    /// How fast the latency estimate forgets: a sample below the estimate moves it by
    /// `1 − e^(−elapsed / decay)`, and an estimate left alone decays toward zero by
    /// `e^(−elapsed / decay)`. Above zero. Default: 10 s.
    pub const fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The latency estimate of an endpoint with no sample yet; its first sample replaces it.
    /// Above zero. Default: 1 s.
    ///
    /// A default above the latencies of the other endpoints keeps a new endpoint from being
    /// flooded before it has shown its latency, but also keeps it out of picks while the
    /// others are lightly loaded, until its estimate has decayed to theirs (`decay ×
    /// ln(default / latency)`: 23 s for 1 s against 100 ms with the default decay). Set it near
    /// the latency you expect when new endpoints should be tried at once.
    pub const fn default_latency(mut self, latency: Duration) -> Self {
        self.default_latency = latency;
        self
    }

    /// The cooldown of a throttle that says nothing of its length (a 429 without
    /// `Retry-After` or `x-ratelimit-reset-*`). Default: 1 s.
    pub const fn default_cooldown(mut self, cooldown: Duration) -> Self {
        self.default_cooldown = cooldown;
        self
    }

    /// The longest cooldown honoured: a longer hint is cut to it. Default: 5 minutes.
    pub const fn max_cooldown(mut self, cooldown: Duration) -> Self {
        self.max_cooldown = cooldown;
        self
    }

    /// The [`Unavailable::retry_after`] of a refusal with no open or cooling endpoint to wait
    /// for (an empty or saturated pool). Default: 1 s.
    pub const fn unavailable_retry_after(mut self, retry_after: Duration) -> Self {
        self.unavailable_retry_after = retry_after;
        self
    }

    /// The circuit breaker configuration of endpoints inserted without their own
    /// [`breaker`](EndpointConfig::breaker): each gets a breaker of its own built from it.
    /// Default: [`CircuitBreakerBuilder::new`].
    pub fn breaker(mut self, breaker: CircuitBreakerBuilder) -> Self {
        self.breaker = breaker;
        self
    }

    /// Seeds the pick's random draws, for repeatable tests. Default: a random seed.
    pub const fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the pool.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`]: a weight that is zero, negative or not finite, a zero decay or
    /// default latency, an id used twice, or an invalid default breaker.
    pub fn build(self) -> Result<Pool<E>, InvalidConfig> {
        if self.decay.is_zero() {
            return Err(InvalidConfig::ZeroDecay);
        }
        if self.default_latency.is_zero() {
            return Err(InvalidConfig::ZeroDefaultLatency);
        }
        // Checked once here, so that building a breaker per endpoint cannot fail later.
        self.breaker
            .clone()
            .build()
            .map_err(InvalidConfig::Breaker)?;
        let clock = Clock {
            epoch: Instant::now(),
            decay_ns: self.decay.as_secs_f64() * 1e9,
            default_cooldown: self.default_cooldown,
            max_cooldown: self.max_cooldown,
        };
        let shared = Shared {
            list: ArcSwap::from_pointee(List::new(Vec::new())),
            write: Mutex::new(()),
            rng: Rng::new(self.seed.unwrap_or_else(random_seed)),
            clock,
            default_latency: self.default_latency,
            breaker: self.breaker,
            unavailable_retry_after: self.unavailable_retry_after,
        };
        let mut endpoints: Vec<Arc<Endpoint<E>>> = Vec::with_capacity(self.endpoints.len());
        for (id, endpoint, config) in self.endpoints {
            if endpoints.iter().any(|e| e.id == id) {
                return Err(InvalidConfig::DuplicateId(id.to_string()));
            }
            endpoints.push(shared.endpoint(id, endpoint, config)?);
        }
        shared.list.store(Arc::new(List::new(endpoints)));
        Ok(Pool {
            shared: Arc::new(shared),
        })
    }
}

impl<E> Shared<E> {
    fn endpoint(
        &self,
        id: Arc<str>,
        endpoint: E,
        config: EndpointConfig,
    ) -> Result<Arc<Endpoint<E>>, InvalidConfig> {
        config.validate()?;
        let breaker = match config.breaker {
            Some(breaker) => breaker,
            None => self
                .breaker
                .clone()
                .build()
                .map_err(InvalidConfig::Breaker)?,
        };
        Ok(Arc::new(Endpoint {
            id,
            endpoint,
            weight: config.weight,
            tier: config.tier,
            breaker,
            limit: config.limit,
            clock: self.clock,
            state: State::new(self.default_latency, self.clock.nanos(Instant::now())),
        }))
    }
}

impl<E> Pool<E> {
    /// A builder: no endpoint, a 10 s latency decay, a 1 s default latency, a 1 s default
    /// cooldown up to 5 minutes, the default breaker configuration, a random seed.
    pub fn builder() -> PoolBuilder<E> {
        PoolBuilder {
            endpoints: Vec::new(),
            decay: Duration::from_secs(10),
            default_latency: Duration::from_secs(1),
            default_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(300),
            unavailable_retry_after: Duration::from_secs(1),
            breaker: CircuitBreakerBuilder::new(),
            seed: None,
        }
    }

    /// Picks an endpoint; see the [module docs](crate) for how.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when no endpoint of any tier is eligible, with why and when to retry.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_balance::{EndpointConfig, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .endpoint("only", "http://10.0.0.1", EndpointConfig::new())
    ///     .build()
    ///     .unwrap();
    /// let pick = pool.pick().unwrap();
    /// assert_eq!((pick.id(), pick.tier()), ("only", 0));
    /// assert_eq!(pool.snapshot()[0].in_flight, 1);
    /// drop(pick); // cancelled: counts as neither success nor failure
    /// assert_eq!(pool.snapshot()[0].in_flight, 0);
    /// ```
    #[inline]
    pub fn pick(&self) -> Result<Pick<E>, Unavailable> {
        self.pick_excluding(&[])
    }

    /// As [`pick`](Self::pick), never choosing an endpoint whose id is in `tried`: to retry a
    /// failed call on another endpoint.
    ///
    /// # Errors
    ///
    /// [`Unavailable`], counting the endpoints left out as [excluded](Unavailable::excluded).
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_balance::{EndpointConfig, Pool};
    ///
    /// let pool = Pool::builder()
    ///     .endpoint("a", (), EndpointConfig::new())
    ///     .endpoint("b", (), EndpointConfig::new())
    ///     .build()
    ///     .unwrap();
    /// let first = pool.pick().unwrap();
    /// let again = pool.pick_excluding(&[first.id()]).unwrap();
    /// assert_ne!(first.id(), again.id());
    /// ```
    pub fn pick_excluding(&self, tried: &[&str]) -> Result<Pick<E>, Unavailable> {
        let shared = &*self.shared;
        let now = Instant::now();
        let now_ns = shared.clock.nanos(now);
        let list = shared.list.load();
        for tier in &list.tiers {
            for _ in 0..tier.endpoints.len() {
                let Some(chosen) = self.choose(&tier.endpoints, tried, now_ns) else {
                    break;
                };
                if let Some(pick) = grant(chosen, now, now_ns) {
                    return Ok(pick);
                }
            }
        }
        Err(self.unavailable(&list, tried, now_ns))
    }

    /// Power of two choices among the eligible endpoints of one tier.
    #[inline]
    fn choose<'a>(
        &self,
        tier: &'a [Arc<Endpoint<E>>],
        tried: &[&str],
        now_ns: u64,
    ) -> Option<&'a Arc<Endpoint<E>>> {
        let eligible = |e: &Endpoint<E>| is_eligible(e, tried, now_ns);
        let (mut count, mut total) = (0_usize, 0.0_f64);
        let mut only = None;
        for (i, e) in tier.iter().enumerate() {
            if eligible(e) {
                count += 1;
                total += e.weight;
                only = Some(i);
            }
        }
        match (count, only) {
            (0, _) | (_, None) => None,
            (1, Some(i)) => Some(&tier[i]),
            _ => {
                let rng = &self.shared.rng;
                let a = draw(tier, &eligible, rng.next_f64() * total, None);
                let b = draw(
                    tier,
                    &eligible,
                    rng.next_f64() * (total - tier[a].weight),
                    Some(a),
                );
                let decay = self.shared.clock.decay_ns;
                let (ea, eb) = (&tier[a], &tier[b]);
                Some(if cost(ea, now_ns, decay) <= cost(eb, now_ns, decay) {
                    ea
                } else {
                    eb
                })
            }
        }
    }

    fn unavailable(&self, list: &List<E>, tried: &[&str], now_ns: u64) -> Unavailable {
        let mut unavailable = Unavailable {
            endpoints: list.len,
            open: 0,
            cooling_down: 0,
            saturated: 0,
            excluded: 0,
            retry_after: Duration::ZERO,
        };
        let mut earliest: Option<u64> = None;
        for e in list.iter() {
            let cooling = e
                .state
                .cooldown_until
                .load(Ordering::Relaxed)
                .saturating_sub(now_ns);
            let open = e
                .state
                .breaker_until
                .load(Ordering::Relaxed)
                .saturating_sub(now_ns);
            if tried.contains(&&*e.id) {
                unavailable.excluded += 1;
            } else if cooling > 0 || open > 0 {
                if cooling >= open {
                    unavailable.cooling_down += 1;
                } else {
                    unavailable.open += 1;
                }
                let back = cooling.max(open);
                earliest = Some(earliest.map_or(back, |t| t.min(back)));
            } else {
                // The limit is reached, or was at the moment of the grant.
                unavailable.saturated += 1;
            }
        }
        unavailable.retry_after = earliest.map_or(self.shared.unavailable_retry_after, |ns| {
            Duration::from_nanos(ns)
        });
        unavailable
    }

    /// Adds an endpoint, or replaces the one with the same id, while picks go on. A replaced
    /// endpoint's outstanding picks finish normally; the new one starts with fresh state
    /// (latency estimate, cooldown, counters) and its own breaker.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::Weight`] for a weight that is zero, negative or not finite.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_balance::{EndpointConfig, Pool};
    ///
    /// let pool = Pool::builder().build().unwrap();
    /// assert!(pool.pick().is_err());
    /// pool.insert("replica-3", "http://10.0.0.3", EndpointConfig::new()).unwrap();
    /// assert_eq!(pool.pick().unwrap().id(), "replica-3");
    /// ```
    pub fn insert(
        &self,
        id: impl Into<Arc<str>>,
        endpoint: E,
        config: EndpointConfig,
    ) -> Result<(), InvalidConfig> {
        let shared = &*self.shared;
        let new = shared.endpoint(id.into(), endpoint, config)?;
        let _guard = lock(&shared.write);
        let list = shared.list.load();
        let mut endpoints: Vec<_> = list.iter().filter(|e| e.id != new.id).cloned().collect();
        endpoints.push(new);
        shared.list.store(Arc::new(List::new(endpoints)));
        Ok(())
    }

    /// Removes the endpoint `id`, if present; returns whether it was. Its outstanding picks
    /// finish normally (they hold the endpoint), and no new pick chooses it.
    pub fn remove(&self, id: &str) -> bool {
        let shared = &*self.shared;
        let _guard = lock(&shared.write);
        let list = shared.list.load();
        if !list.iter().any(|e| &*e.id == id) {
            return false;
        }
        let endpoints = list.iter().filter(|e| &*e.id != id).cloned().collect();
        shared.list.store(Arc::new(List::new(endpoints)));
        true
    }

    /// How many endpoints the pool holds.
    pub fn len(&self) -> usize {
        self.shared.list.load().len
    }

    /// Whether the pool holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each endpoint's state now, by tier, for a `/metrics` page.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_balance::{EndpointConfig, Pool};
    /// use brigade_breaker::State;
    ///
    /// let pool = Pool::builder()
    ///     .endpoint("a", (), EndpointConfig::new().weight(3.0))
    ///     .build()
    ///     .unwrap();
    /// let _pick = pool.pick().unwrap();
    /// let a = &pool.snapshot()[0];
    /// assert_eq!((&*a.id, a.weight, a.picks, a.in_flight), ("a", 3.0, 1, 1));
    /// assert_eq!(a.breaker, State::Closed);
    /// assert_eq!((a.limit, a.cooldown), (None, None));
    /// ```
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let shared = &*self.shared;
        let now_ns = shared.clock.nanos(Instant::now());
        shared
            .list
            .load()
            .iter()
            .map(|e| {
                let state = &e.state;
                let remaining = |until: u64| {
                    let left = until.saturating_sub(now_ns);
                    (left > 0).then(|| Duration::from_nanos(left))
                };
                EndpointSnapshot {
                    id: Arc::clone(&e.id),
                    tier: e.tier,
                    weight: e.weight,
                    picks: state.picks.load(Ordering::Relaxed),
                    in_flight: state.in_flight.load(Ordering::Relaxed),
                    latency: ns_to_duration(state.latency_ns(now_ns, shared.clock.decay_ns)),
                    breaker: e.breaker.state(),
                    limit: e.limit.as_ref().map(brigade_limit::AdaptiveLimit::limit),
                    cooldown: remaining(state.cooldown_until.load(Ordering::Relaxed)),
                    cooldowns: state.cooldowns.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// One endpoint's state at a [`Pool::snapshot`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// The endpoint's id.
    pub id: Arc<str>,
    /// Its priority tier.
    pub tier: u32,
    /// Its weight.
    pub weight: f64,
    /// Picks granted since it was inserted.
    pub picks: u64,
    /// Picks alive now (granted, not yet dropped).
    pub in_flight: usize,
    /// The latency estimate now (the default latency before any sample, decayed as time
    /// passes).
    pub latency: Duration,
    /// Its circuit breaker's state.
    pub breaker: BreakerState,
    /// Its adaptive limit's current limit, if it has one.
    pub limit: Option<usize>,
    /// The cooldown left, if it is cooling down.
    pub cooldown: Option<Duration>,
    /// Throttles reported since the endpoint was added: each one starts a cooldown, or
    /// extends the one under way.
    pub cooldowns: u64,
}

#[inline]
fn is_eligible<E>(e: &Endpoint<E>, tried: &[&str], now_ns: u64) -> bool {
    let state = &e.state;
    state.cooldown_until.load(Ordering::Relaxed) <= now_ns
        && state.breaker_until.load(Ordering::Relaxed) <= now_ns
        && e.limit.as_ref().is_none_or(|l| l.in_flight() < l.limit())
        && (tried.is_empty() || !tried.contains(&&*e.id))
}

/// The index of the eligible endpoint (other than `skip`) at which the running sum of weights
/// passes `target`; the last eligible one if rounding leaves `target` past the end.
#[inline]
fn draw<E>(
    tier: &[Arc<Endpoint<E>>],
    eligible: &impl Fn(&Endpoint<E>) -> bool,
    target: f64,
    skip: Option<usize>,
) -> usize {
    let mut sum = 0.0;
    let mut last = 0;
    for (i, e) in tier.iter().enumerate() {
        if Some(i) == skip || !eligible(e) {
            continue;
        }
        sum += e.weight;
        last = i;
        if target < sum {
            return i;
        }
    }
    last
}

#[inline]
fn cost<E>(e: &Endpoint<E>, now_ns: u64, decay_ns: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // in-flight counts are far below 2^53
    let in_flight = e.state.in_flight.load(Ordering::Relaxed) as f64;
    e.state.latency_ns(now_ns, decay_ns) * (1.0 + in_flight / e.weight)
}

/// Takes the endpoint's breaker and limit permits, or sets it aside.
#[inline]
fn grant<E>(e: &Arc<Endpoint<E>>, now: Instant, now_ns: u64) -> Option<Pick<E>> {
    let breaker = match e.breaker.try_acquire_owned() {
        Ok(permit) => permit,
        Err(rejected) => {
            let until = now_ns.saturating_add(
                u64::try_from(rejected.retry_after().as_nanos()).unwrap_or(u64::MAX),
            );
            e.state.breaker_until.fetch_max(until, Ordering::Relaxed);
            return None;
        }
    };
    let limit = match &e.limit {
        None => None,
        // A refusal drops the breaker permit unreported: a probe slot goes back.
        Some(limit) => Some(limit.try_acquire().ok()?),
    };
    e.state.in_flight.fetch_add(1, Ordering::Relaxed);
    e.state.picks.fetch_add(1, Ordering::Relaxed);
    Some(Pick::new(Arc::clone(e), now, breaker, limit))
}
