//! Rate limits: GCRA quotas per key, weighted costs, reserve-then-settle, all-or-nothing
//! multi-limits, fair waiting, bounded memory, reconfiguration and shadow mode.
//!
//! # GCRA, briefly
//!
//! Each limit keeps one number per key, the *theoretical arrival time* (TAT): the instant at
//! which the key would be back to a full burst. `n` cells are admitted when
//! `now >= TAT + (n - 1) × interval - (burst - 1) × interval`, and admitting them adds
//! `n × interval` to `max(TAT, now)`. That is governor's algorithm, with governor's
//! [`Quota`] meaning: the burst is the most cells admitted at once, one cell
//! comes back every interval. A property test checks this crate's decisions against
//! governor's own.
//!
//! # Why its own state?
//!
//! Deciding and charging in one compare-and-swap is all a plain limit needs. A refund, a
//! check of several limits before charging any, a change of quota, a queue, and keyed state
//! that shrinks without a scan each need the TATs themselves, so this crate runs the
//! algorithm over its own state:
//!
//! - a direct limiter with one limit keeps its TAT in an atomic, updated by compare-and-swap,
//!   so its common decision takes no lock (waiters, settles and reconfigurations go through
//!   the same compare-and-swap, model-checked with loom);
//! - every other limiter keeps its TATs in mutex-guarded hash-table shards (one hash picks
//!   the shard and the bucket), which makes a multi-limit decision, a settle, a
//!   reconfiguration and an eviction plain arithmetic under one uncontended lock.
//!
//! # Bounded keys
//!
//! A keyed limiter holds at most [`max_keys`](RateLimiterBuilder::max_keys) keys. A key
//! whose cells are all back is idle: its state is a fresh key's, so it is forgotten as new
//! keys need room, which changes no decision. A table full of keys that are still limited
//! has to give up something for a new key: a limited key's debt, or the new key.
//! [`WhenFull`] chooses; [`max_keys`](RateLimiterBuilder::max_keys) weighs the two.

//! # Why reserve, then settle?
//!
//! An LLM call's token count is known only when its stream ends, but the limit must be
//! checked before it starts. [`RateLimiter::try_reserve`] charges an estimate (prompt plus
//! `max_tokens`); [`Reservation::settle`] charges the difference with the real count:
//! unused cells are refunded, extra ones charged (even past the burst: they were spent). A
//! reservation dropped without a settle keeps its whole charge, the safe side for a limit.
//!
//! # Why a queue?
//!
//! Without one, a caller that needs 50 cells waits for 50 free cells, and every 1-cell
//! caller arriving meanwhile takes the cell that just came back: the large caller starves.
//! [`RateLimiter::acquire`] queues callers per key, first come first served. While a key has
//! waiters, a later caller (including [`try_acquire`](RateLimiter::try_acquire)) is admitted
//! only if it fits after every waiter ahead has been charged, so it never delays them.
//!
//! # Multi-limits
//!
//! A limiter holds up to [`MAX_LIMITS`] limits, checked as one: either all admit the call and
//! all are charged, or none is. A [`Limit::new`] charges the call's cost (tokens); a
//! [`Limit::per_request`] charges one cell per call (requests).

mod decision;
mod direct;
mod reservation;
mod store;
mod wait;

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use self::decision::Snapshot;
pub use self::decision::{Admitted, LimitStatus, Rejected};
use self::direct::Direct;
pub use self::reservation::Reservation;
use self::store::{Ahead, Entry, Limits, Shard};
use crate::gcra::Gcra;
use crate::{AcquireError, InvalidConfig, Quota, Unsatisfiable};

/// The most limits one rate limiter checks together.
pub const MAX_LIMITS: usize = 4;

/// The hint of [`AcquireError::KeysExhausted`] when the shard cannot tell when it will have
/// room (keys with callers waiting fill it): one second, in nanoseconds.
const NO_ROOM_ESTIMATE: u64 = 1_000_000_000;

/// One limit of a rate limiter: a name and a quota.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Limit, Quota};
///
/// let rpm = Limit::per_request("requests", Quota::per_minute(NonZeroU32::new(60).unwrap()));
/// let tpm = Limit::new("tokens", Quota::per_minute(NonZeroU32::new(10_000).unwrap()));
/// assert_eq!(rpm.name(), "requests");
/// assert!(rpm.is_per_request() && !tpm.is_per_request());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    name: &'static str,
    quota: Quota,
    per_request: bool,
}

impl Limit {
    /// A limit that charges each call its cost (for instance its LLM tokens).
    ///
    /// The name appears in header fields and rejections; it is a `&'static str` because it
    /// is part of the service's contract, fixed when it is built.
    pub const fn new(name: &'static str, quota: Quota) -> Self {
        Self {
            name,
            quota,
            per_request: false,
        }
    }

    /// A limit that charges one cell per call, whatever its cost (requests).
    pub const fn per_request(name: &'static str, quota: Quota) -> Self {
        Self {
            name,
            quota,
            per_request: true,
        }
    }

    /// The limit's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The limit's quota.
    pub const fn quota(&self) -> Quota {
        self.quota
    }

    /// Whether each call is charged one cell rather than its cost.
    pub const fn is_per_request(&self) -> bool {
        self.per_request
    }
}

/// What a keyed limiter does with a new key when the key's shard is full of keys that are
/// still limited; set with [`RateLimiterBuilder::when_full`], whose documentation weighs the
/// two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WhenFull {
    /// Forget the key that would be idle soonest (its debt is forgiven) and admit the new
    /// key. The default.
    #[default]
    EvictNearestIdle,
    /// Keep every limited key and refuse the new one with [`AcquireError::KeysExhausted`]
    /// until keys go idle.
    RefuseNewKeys,
}

/// Builds a [`RateLimiter`] with keys of type `K`; each setter documents its default.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Limit, Quota, RateLimiter, WhenFull};
///
/// let per_minute = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
/// let limiter: RateLimiter<String> = RateLimiter::builder()
///     .limit(Limit::per_request("requests", per_minute(60)))
///     .limit(Limit::new("tokens", per_minute(10_000)))
///     .max_keys(50_000)
///     .when_full(WhenFull::EvictNearestIdle)
///     .build()?;
/// # Ok::<(), brigade_limit::InvalidConfig>(())
/// ```
#[must_use]
pub struct RateLimiterBuilder<K> {
    limits: Vec<Limit>,
    max_keys: usize,
    when_full: WhenFull,
    max_queue: usize,
    shadow: bool,
    // `fn() -> K`: the builder holds no `K`, so it is `Send`, `Sync` and `Clone` whatever `K`.
    key: PhantomData<fn() -> K>,
}

impl<K> Default for RateLimiterBuilder<K> {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            max_keys: 100_000,
            when_full: WhenFull::default(),
            max_queue: 64,
            shadow: false,
            key: PhantomData,
        }
    }
}

impl<K> Clone for RateLimiterBuilder<K> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
            key: PhantomData,
            ..*self
        }
    }
}

impl<K> fmt::Debug for RateLimiterBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("limits", &self.limits)
            .field("max_keys", &self.max_keys)
            .field("when_full", &self.when_full)
            .field("max_queue", &self.max_queue)
            .field("shadow", &self.shadow)
            .finish()
    }
}

impl<K> RateLimiterBuilder<K> {
    /// Adds a limit; at least one, at most [`MAX_LIMITS`], names unique and printable ASCII.
    /// No default.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// The most keys held at once (a keyed limiter). Default: 100,000.
    ///
    /// The bound is split evenly over up to 32 shards. A key's state is held while the key
    /// is limited; an idle key (all its cells back, its state a fresh key's) is forgotten as
    /// new keys need room, which changes no decision. There is no background thread.
    ///
    /// # When a shard is full of limited keys
    ///
    /// A new key then costs something, and [`when_full`](Self::when_full) chooses what:
    ///
    /// - [`WhenFull::EvictNearestIdle`] (the default) forgets the key that would be idle
    ///   soonest (the earliest theoretical arrival time; with several limits, the latest of
    ///   its limits') and admits the new key. The forgotten key's debt is forgiven: it comes
    ///   back as a fresh key, with a whole burst, that much time early. Whoever can mint keys
    ///   (many IPv6 /64s, a key taken from a header a client chooses) can flood the table
    ///   and make it forget the keys nearest to idle, so a limited client may get its
    ///   burst back early; each new key forgives the smallest debt in its shard, and pushing
    ///   out a key that owes more takes flood keys that owe more themselves (quota the
    ///   flood spends). New clients are always admitted.
    /// - [`WhenFull::RefuseNewKeys`] never forgets a limited key, so no debt is forgiven,
    ///   and refuses a new key with [`AcquireError::KeysExhausted`] until keys go idle.
    ///   Whoever can mint keys can fill the table with limited keys (one charge per key,
    ///   renewed once per window) and lock every new client out for as long as the flood
    ///   lasts, while the clients already held are served as usual.
    ///
    /// Size `max_keys` above the keys that a window of legitimate traffic holds, so that
    /// neither happens without a flood. Under either policy a key with callers waiting in
    /// [`RateLimiter::acquire`] is never forgotten, and a new key finding its shard full of
    /// such keys is refused.
    ///
    /// The work per new key stays amortised: refusing sweeps a full shard at most once per
    /// eighth of it going idle (and refuses at once in between); evicting keeps the eighth of
    /// the shard idle soonest in a heap, refilled by a scan once that eighth is used up.
    /// Memory stays bounded: the tables never hold more buckets than `max_keys + max_keys / 8`
    /// entries need ([`RateLimiter::memory_bytes`]).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// What a new key does when its shard is full of limited keys: see
    /// [`max_keys`](Self::max_keys) for the trade-off. Default:
    /// [`WhenFull::EvictNearestIdle`].
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// The most callers waiting in [`RateLimiter::acquire`] per key. Default: 64.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }

    /// Shadow mode: decide and report, never reject. Default: off.
    ///
    /// A call over quota is admitted uncharged, with [`Admitted::shadow_rejection`] set; use
    /// it to measure a new limit on live traffic before enforcing it
    /// ([`RateLimiter::set_shadow`] switches at run time).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Builds the limiter.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] for no limit, too many, two with one name, a name that is not
    /// printable ASCII, a quota whose window overflows, or `max_keys(0)`.
    pub fn build(self) -> Result<RateLimiter<K>, InvalidConfig> {
        if self.limits.is_empty() {
            return Err(InvalidConfig::NoLimits);
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(InvalidConfig::TooManyLimits);
        }
        if self.max_keys == 0 {
            return Err(InvalidConfig::ZeroMaxKeys);
        }
        let mut names = [""; MAX_LIMITS];
        let mut per_request = [false; MAX_LIMITS];
        let mut gcra = [Gcra {
            t: u64::MAX,
            tau: 0,
            burst: u32::MAX,
        }; MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            if !limit.name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(InvalidConfig::InvalidLimitName(limit.name));
            }
            if names[..i].contains(&limit.name) {
                return Err(InvalidConfig::DuplicateLimit(limit.name));
            }
            names[i] = limit.name;
            per_request[i] = limit.per_request;
            gcra[i] = Gcra::new(limit.quota)?;
        }
        let zero_sized = size_of::<K>() == 0;
        let shards = if zero_sized {
            1
        } else {
            (self.max_keys / 1024)
                .clamp(1, 32)
                .next_power_of_two()
                .min(32)
        };
        let limits = Limits { gcra };
        let direct = (zero_sized && self.limits.len() == 1).then(|| Direct::new(gcra[0]));
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| Mutex::new(Shard::new(limits)))
                    .collect(),
                mask: shards - 1,
                // Rounded down, so the shards together never hold more than `max_keys`
                // (more than one shard only from 2,048 keys: each holds more than 512).
                cap: self.max_keys / shards,
                evict: self.when_full == WhenFull::EvictNearestIdle,
                hasher: RandomState::new(),
                zero_sized,
                direct,
                start: Instant::now(),
                len: self.limits.len(),
                names,
                per_request,
                per_request_mask: (0..MAX_LIMITS)
                    .filter(|&i| per_request[i])
                    .fold(0, |mask, i| mask | 1 << i),
                max_queue: self.max_queue,
                shadow: AtomicBool::new(self.shadow),
            }),
        })
    }
}

/// A rate limiter: one or more GCRA limits per key, checked together.
///
/// `K` is the key: an API key, a client address ([`IpKey`](crate::IpKey)), or `()` for a
/// single direct limit ([`RateLimiter::direct`]). Cloning is cheap and shares the state.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(2).unwrap())).unwrap();
/// assert!(limiter.try_acquire(&"alice", 1).is_ok());
/// assert!(limiter.try_acquire(&"alice", 1).is_ok());
/// let rejected = limiter.try_acquire(&"alice", 1).unwrap_err();
/// assert_eq!(rejected.retry_after(), Some(std::time::Duration::from_millis(500)));
/// assert!(limiter.try_acquire(&"bob", 1).is_ok()); // keys are independent
/// # }
/// ```
pub struct RateLimiter<K = ()> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for RateLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &&self.inner.names[..self.inner.len])
            .field("shards", &self.inner.shards.len())
            .field("shadow", &self.is_shadow())
            .finish_non_exhaustive()
    }
}

struct Inner<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    mask: usize,
    /// The most entries per shard.
    cap: usize,
    /// [`WhenFull::EvictNearestIdle`].
    evict: bool,
    hasher: RandomState,
    /// `K` has one value (the direct limiter's `()`): skip hashing.
    zero_sized: bool,
    /// A direct limiter with one limit: its TAT lives here, lock-free.
    direct: Option<Direct>,
    start: Instant,
    len: usize,
    names: [&'static str; MAX_LIMITS],
    per_request: [bool; MAX_LIMITS],
    /// `per_request` as bits, for [`Snapshot`].
    per_request_mask: u8,
    max_queue: usize,
    shadow: AtomicBool,
}

/// Locks `mutex`, ignoring poisoning: no code in this crate panics while holding a shard
/// lock, and each step leaves the shard consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a single-limit decision found: the quota it used and the TAT it left (or found),
/// a few words rather than a whole [`Snapshot`].
#[derive(Clone, Copy)]
enum One {
    Admit(Gcra, u64),
    /// The TAT found, and the wait in nanoseconds.
    Reject(Gcra, u64, u64),
    Unsatisfiable(Gcra),
}

/// What one decision found, before it is turned into the public types.
pub(crate) enum Outcome {
    Admit(Snapshot),
    Reject(Rejected),
    Unsatisfiable(Unsatisfiable),
}

impl RateLimiter<()> {
    /// A direct limiter: one limit named `"default"`, one state for every caller.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::QuotaTooLong`] if `burst × interval` overflows.
    pub fn direct(quota: Quota) -> Result<Self, InvalidConfig> {
        Self::builder().limit(Limit::new("default", quota)).build()
    }
}

impl<K> RateLimiter<K> {
    /// A builder, for several limits, a key bound, a queue bound or shadow mode; for keys of
    /// any type (`K: Hash + Eq` to decide).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use brigade_limit::{Limit, Quota, RateLimiter};
    ///
    /// /// A tenant and a model: each pair has its own quota.
    /// #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    /// struct Tenant {
    ///     id: u32,
    ///     model: &'static str,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tokens = Quota::per_minute(NonZeroU32::new(10_000).unwrap());
    /// let limiter = RateLimiter::<Tenant>::builder()
    ///     .limit(Limit::new("tokens", tokens))
    ///     .max_keys(10_000)
    ///     .build()?;
    /// let small = Tenant { id: 7, model: "small" };
    /// assert_eq!(limiter.try_acquire(&small, 4_000)?.tightest().remaining(), 6_000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> RateLimiterBuilder<K> {
        RateLimiterBuilder::default()
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A keyed limiter: one limit named `"default"`, one state per key, at most 100,000 keys.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::QuotaTooLong`] if `burst × interval` overflows.
    pub fn keyed(quota: Quota) -> Result<Self, InvalidConfig> {
        Self::builder().limit(Limit::new("default", quota)).build()
    }

    /// Decides now: admits and charges `cost` cells (one for per-request limits) on every
    /// limit of `key`, or charges nothing.
    ///
    /// A cost of 0 is admitted and charges nothing on cost limits. Reads the clock once.
    ///
    /// The key is looked up by any borrowed form of `K`, as in `HashMap::get`: a
    /// `RateLimiter<String>` is asked with a `&str`. It is copied (`to_owned`) only when the
    /// limiter starts holding a new key, so a decision on a key already held allocates
    /// nothing.
    ///
    /// # Errors
    ///
    /// - [`AcquireError::Rejected`]: over quota, with `retry_after` and the most restrictive
    ///   limit; also while earlier callers wait on the key and this one would delay them.
    /// - [`AcquireError::Unsatisfiable`]: the cost exceeds a limit's burst.
    /// - [`AcquireError::KeysExhausted`]: a new key, its shard is full of limited keys, and
    ///   the limiter refuses new keys then ([`WhenFull::RefuseNewKeys`]); or every key of
    ///   its shard has callers waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use brigade_limit::{Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter: RateLimiter<String> =
    ///     RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(60).unwrap())).unwrap();
    /// let api_key: &str = "sk-alice"; // borrowed from the request
    /// assert!(limiter.try_acquire(api_key, 1).is_ok()); // holds a copy from now on
    /// assert_eq!(limiter.try_acquire(api_key, 1).unwrap().tightest().remaining(), 58);
    /// # }
    /// ```
    pub fn try_acquire<Q>(&self, key: &Q, cost: u32) -> Result<Admitted, AcquireError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.now();
        if let Some(direct) = &self.inner.direct {
            // The lock-free path: no waiters, no reconfiguration under way.
            if direct.queued.load(Ordering::Acquire) == 0
                && let Some(one) =
                    direct.try_update(|gcra, tat| self.decide_one(gcra, tat, now, cost))
            {
                return self.finish_one(one, now, cost);
            }
        }
        let hash = self.hash(key);
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        if let Some(entry) = shard.table.find_mut(hash, |e| e.key.borrow() == key) {
            if self.inner.len == 1 && self.inner.direct.is_none() && entry.queue().is_none() {
                let mut tat = entry.first_tat();
                let one = self.decide_one(shard.limits.gcra[0], &mut tat, now, cost);
                entry.set_first_tat(tat);
                drop(guard);
                return self.finish_one(one, now, cost);
            }
            let ahead = entry.ahead();
            let limits = &shard.limits;
            let outcome =
                self.update_tats(entry, |tats| self.decide(limits, tats, ahead, now, cost));
            drop(guard);
            return self.finish(outcome);
        }
        if let Some(direct) = &self.inner.direct {
            let limits = &shard.limits;
            let outcome =
                direct.update(|tats| self.decide(limits, tats, Ahead::default(), now, cost));
            drop(guard);
            return self.finish(outcome);
        }
        let mut tats = [0; MAX_LIMITS];
        let outcome = self.decide(&shard.limits, &mut tats, Ahead::default(), now, cost);
        if matches!(outcome, Outcome::Admit(_)) && tats.iter().any(|&t| t > now) {
            let entry = Entry::new(key.to_owned(), tats);
            let inner = &self.inner;
            if let Err(at) = shard
                .insert(hash, entry, now, inner.cap, inner.evict, |k| inner.hash(k))
                .map(drop)
            {
                return Err(self.keys_exhausted(&shard.limits, at, now));
            }
        }
        self.finish(outcome)
    }

    /// Like [`try_acquire`](Self::try_acquire), but returns a [`Reservation`] to settle with
    /// the actual cost once it is known.
    ///
    /// The reservation owns a copy of the key (`to_owned`), to find it again when settled.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use brigade_limit::{Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let tokens = RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(1000).unwrap())).unwrap();
    /// let reservation = tokens.try_reserve(&"alice", 800).unwrap(); // max_tokens
    /// assert_eq!(reservation.admitted().tightest().remaining(), 200);
    /// reservation.settle(300); // the stream ended after 300 tokens: 500 come back
    /// assert_eq!(tokens.try_acquire(&"alice", 0).unwrap().tightest().remaining(), 700);
    /// # }
    /// ```
    pub fn try_reserve<Q>(&self, key: &Q, estimate: u32) -> Result<Reservation<K>, AcquireError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let admitted = self.try_acquire(key, estimate)?;
        Ok(Reservation::new(
            self.clone(),
            key.to_owned(),
            estimate,
            admitted,
        ))
    }

    /// Changes the quota of the limit `name` without losing state.
    ///
    /// Every key keeps the cells it has used: its debt (the time until its TAT) is rescaled
    /// to the new interval, so a key that used 40 of 100 has used 40 of the new burst too.
    /// Waiters are woken to recompute their wait. Takes each shard lock in turn and touches
    /// every held key: a rare operation.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::UnknownLimit`] if no limit has this name,
    /// [`InvalidConfig::QuotaTooLong`] if the quota overflows.
    pub fn set_quota(&self, name: &str, quota: Quota) -> Result<(), InvalidConfig> {
        let i = self.inner.names[..self.inner.len]
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| InvalidConfig::UnknownLimit(name.to_owned()))?;
        let new = Gcra::new(quota)?;
        let now = self.now();
        for shard in &self.inner.shards {
            let mut shard = lock(shard);
            let old = shard.limits.gcra[i];
            shard.limits.gcra[i] = new;
            if let Some(direct) = &self.inner.direct {
                direct.reconfigure(old, new, now);
            }
            // Every idle time moves: the eviction order starts again.
            shard.forget_order();
            for entry in shard.table.iter_mut() {
                // A direct limiter's TAT is not in its entry (rescaled above).
                if self.inner.direct.is_none() {
                    let mut tats = entry.tats();
                    tats[i] = old.rescale(&new, tats[i], now);
                    entry.set_tats(tats);
                }
                if let Some(queue) = entry.queue() {
                    queue.wake_head();
                }
            }
        }
        Ok(())
    }

    /// The current quota of the limit `name`.
    pub fn quota(&self, name: &str) -> Option<Quota> {
        let i = self.inner.names[..self.inner.len]
            .iter()
            .position(|n| *n == name)?;
        Some(lock(&self.inner.shards[0]).limits.gcra[i].quota())
    }

    /// The number of keys held (idle ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every idle key now (keys also go on their own as new keys need room).
    pub fn evict_idle(&self) {
        let now = self.now();
        for shard in &self.inner.shards {
            let inner = &*self.inner;
            lock(shard).sweep(now, inner.cap, |k| inner.hash(k));
        }
    }

    /// Bytes of heap the key tables hold: buckets, control bytes, wait queues and the
    /// eviction order, not the keys' own heap data (a `String` key's text).
    pub fn memory_bytes(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).memory()).sum()
    }
}

impl<K> RateLimiter<K> {
    /// The limits' names, in the order they were declared.
    pub fn limit_names(&self) -> &[&'static str] {
        &self.inner.names[..self.inner.len]
    }

    /// Whether shadow mode is on: decide and report, never reject.
    pub fn is_shadow(&self) -> bool {
        self.inner.shadow.load(Ordering::Relaxed)
    }

    /// Turns shadow mode on or off, at run time.
    ///
    /// Turning it on releases the callers waiting in [`acquire`](RateLimiter::acquire)
    /// (admitted uncharged, as any call over quota in shadow mode): each key's head is woken,
    /// and each admission wakes the next. That takes each shard lock in turn.
    pub fn set_shadow(&self, shadow: bool) {
        let was = self.inner.shadow.swap(shadow, Ordering::Relaxed);
        if shadow && !was {
            for shard in &self.inner.shards {
                for entry in lock(shard).table.iter() {
                    if let Some(queue) = entry.queue() {
                        queue.wake_head();
                    }
                }
            }
        }
    }

    /// The refusal of a new key whose shard expects room at `at` (`u64::MAX`: no estimate),
    /// with the hint [`AcquireError::KeysExhausted`] documents.
    #[cold]
    fn keys_exhausted(&self, limits: &Limits, at: u64, now: u64) -> AcquireError {
        // A window is `t × burst`, which fits (checked when built).
        let longest = limits.gcra[..self.inner.len]
            .iter()
            .map(|g| g.t.saturating_mul(u64::from(g.burst)))
            .max()
            .unwrap_or(u64::MAX);
        let wait = if at == u64::MAX {
            NO_ROOM_ESTIMATE
        } else {
            at.saturating_sub(now)
        };
        AcquireError::KeysExhausted {
            retry_after: Duration::from_nanos(wait.min(longest).max(1)),
        }
    }

    /// Nanoseconds since the limiter was built, on tokio's clock.
    #[inline]
    fn now(&self) -> u64 {
        // Saturates after 584 years.
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.inner.start)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<Shard<K>> {
        &self.inner.shards[(hash >> 32) as usize & self.inner.mask]
    }

    /// The cells limit `i` charges for a call of `cost`.
    #[inline]
    fn cells(&self, i: usize, cost: u32) -> u32 {
        if self.inner.per_request[i] { 1 } else { cost }
    }

    // Indexing: limit `i` lives at `i` of three parallel arrays (names, limits, TATs).
    #[allow(clippy::needless_range_loop)]
    /// The decision, under the shard lock. Charges `tats` only when admitting (and not in
    /// shadow mode's would-be rejections). `queue` holds the callers ahead of this one.
    // Inlined so the decision is built in the caller's return slot, not copied.
    #[inline(always)]
    pub(crate) fn decide(
        &self,
        limits: &Limits,
        tats: &mut [u64; MAX_LIMITS],
        ahead: Ahead,
        now: u64,
        cost: u32,
    ) -> Outcome {
        let inner = &*self.inner;
        let mut wait = 0u64;
        let mut worst = 0u8;
        // The cells the callers ahead hold on limit `i`: charged first, in effect.
        let held = |i: usize| {
            if inner.per_request[i] {
                ahead.waiters
            } else {
                ahead.cells
            }
        };
        for i in 0..inner.len {
            let g = &limits.gcra[i];
            let n = self.cells(i, cost);
            if n > g.burst {
                return Outcome::Unsatisfiable(Unsatisfiable {
                    limit: inner.names[i],
                    cost: u64::from(n),
                    burst: g.burst,
                });
            }
            if n == 0 {
                continue;
            }
            let tat = if ahead.waiters == 0 {
                tats[i]
            } else {
                g.charge(tats[i], now, held(i))
            };
            let earliest = g.earliest(tat, n);
            if earliest > now && earliest - now > wait {
                wait = earliest - now;
                worst = i as u8;
            }
        }
        // The reported state is what a later caller would find: with the callers ahead
        // counted as charged, so `remaining` agrees with the decisions it would get.
        let mut snapshot = Snapshot::new(now);
        if ahead.waiters > 0 {
            snapshot.set_ahead(ahead, inner.per_request_mask);
        }
        if wait > 0 {
            for i in 0..inner.len {
                snapshot.push(inner.names[i], limits.gcra[i], tats[i]);
            }
            return Outcome::Reject(Rejected {
                snapshot: Box::new(snapshot),
                retry_after: Duration::from_nanos(wait),
                limit: worst,
            });
        }
        for i in 0..inner.len {
            let g = &limits.gcra[i];
            let n = self.cells(i, cost);
            if n > 0 {
                tats[i] = g.charge(tats[i], now, u64::from(n));
            }
            snapshot.push(inner.names[i], *g, tats[i]);
        }
        Outcome::Admit(snapshot)
    }

    /// [`decide`](Self::decide) for a limiter with a single limit and no waiters ahead: the
    /// same arithmetic without the loops over limits. Returns a compact [`One`] (the
    /// compare-and-swap loop may run it more than once); [`finish_one`](Self::finish_one)
    /// builds the decision value once, in the caller's return slot.
    #[inline(always)]
    fn decide_one(&self, g: Gcra, tat: &mut u64, now: u64, cost: u32) -> One {
        let n = self.cells(0, cost);
        if n > g.burst {
            return One::Unsatisfiable(g);
        }
        if n > 0 {
            let earliest = g.earliest(*tat, n);
            if earliest > now {
                return One::Reject(g, *tat, earliest - now);
            }
            *tat = g.charge(*tat, now, u64::from(n));
        }
        One::Admit(g, *tat)
    }

    /// Turns a [`One`] into the public result, applying shadow mode.
    #[inline(always)]
    fn finish_one(&self, one: One, now: u64, cost: u32) -> Result<Admitted, AcquireError> {
        let name = self.inner.names[0];
        let mut snapshot = Snapshot::new(now);
        match one {
            One::Admit(g, tat) => {
                snapshot.push(name, g, tat);
                Ok(Admitted {
                    snapshot,
                    shadow: None,
                })
            }
            One::Reject(g, tat, wait) => {
                snapshot.push(name, g, tat);
                self.finish(Outcome::Reject(Rejected {
                    snapshot: Box::new(snapshot),
                    retry_after: Duration::from_nanos(wait),
                    limit: 0,
                }))
            }
            One::Unsatisfiable(g) => Err(AcquireError::Unsatisfiable(Unsatisfiable {
                limit: name,
                cost: u64::from(self.cells(0, cost)),
                burst: g.burst,
            })),
        }
    }

    /// Runs `f` on an entry's TATs and stores the result; for a direct single-limit limiter,
    /// on the lock-free TAT (`f` may run again if it races a lock-free decision).
    #[inline]
    pub(crate) fn update_tats<R>(
        &self,
        entry: &mut Entry<K>,
        mut f: impl FnMut(&mut [u64; MAX_LIMITS]) -> R,
    ) -> R {
        if let Some(direct) = &self.inner.direct {
            return direct.update(f);
        }
        let mut tats = entry.tats();
        let result = f(&mut tats);
        entry.set_tats(tats);
        result
    }

    /// Turns an outcome into the public result, applying shadow mode.
    // Inlined so the decision is built in the caller's return slot, not copied.
    #[inline(always)]
    pub(crate) fn finish(&self, outcome: Outcome) -> Result<Admitted, AcquireError> {
        match outcome {
            Outcome::Admit(snapshot) => Ok(Admitted {
                snapshot,
                shadow: None,
            }),
            Outcome::Reject(rejected) if self.is_shadow() => Ok(Admitted {
                snapshot: *rejected.snapshot,
                shadow: Some(Box::new(rejected)),
            }),
            Outcome::Reject(rejected) => Err(AcquireError::Rejected(rejected)),
            Outcome::Unsatisfiable(u) => Err(AcquireError::Unsatisfiable(u)),
        }
    }
}

impl<K> Inner<K> {
    /// The hash of a key, or of any borrowed form of it (which hashes alike).
    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        if self.zero_sized {
            0
        } else {
            self.hasher.hash_one(key)
        }
    }
}

impl<K> RateLimiter<K> {
    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.inner.hash(key)
    }
}
