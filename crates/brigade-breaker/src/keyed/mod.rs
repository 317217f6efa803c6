//! One breaker per key: per upstream, model or provider.
//!
//! # Invariants
//!
//! The table sits behind one `std` mutex, held only for a lookup, an insertion or an eviction
//! (never across an `.await`, never while a breaker's own lock is taken), and every one of
//! those does bounded work: a new key at capacity looks at most at [`table::SCAN`] breakers.
//! A caller on a hot path keeps the [`CircuitBreaker`] it got and calls through it directly.
//!
//! Only the table hands out clones of the breakers it holds, under the lock. So a breaker
//! nothing else holds cannot be cloned, switched or called behind the table's back while the
//! table decides whether to evict it; its state can only move from open to half-open as time
//! passes.

mod table;
#[cfg(all(test, not(loom)))]
mod tests;

use std::fmt;
use std::future::IntoFuture;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use self::table::{Room, Table};
use crate::{CircuitBreaker, CircuitBreakerBuilder, Error, InvalidConfig, Metrics};

/// A breaker per key, made from one configuration on first use.
///
/// # Capacity and eviction
///
/// At most `max_keys` keys have a breaker. A lookup moves its key to the front of an order of
/// use. A new key at capacity makes room from the back of that order, looking at no more than
/// 16 breakers: the breakers idle for `evict_idle_after` or longer among them go, or failing
/// those, the least recently used one. An evicted breaker's state is forgotten: the key starts
/// closed when it comes back.
///
/// Some breakers are never evicted, since forgetting them would undo what they are for; they
/// are passed over (and moved to the front):
///
/// - an open breaker, until its open period ends: evicting it would let calls through to an
///   upstream it just found sick;
/// - a breaker in a state set by hand through its [`Handle`](crate::Handle) (forced open,
///   disabled, metrics only), until it is reset;
/// - a breaker in use: a clone of it, its handle or one of its permits is held outside the
///   table, and the outcomes recorded through it must land in the breaker the key keeps.
///
/// When every breaker looked at must stay (every breaker at capacity is open or in use, say),
/// the new key gets the shared [overflow breaker](Self::overflow): one breaker, from the same
/// configuration, shared by every key that found no room. It is not stored under the key, so
/// the key asks again at its next lookup and gets a breaker of its own once room is made.
/// Keys that overflow share one health record; size `max_keys` so that they rarely do.
///
/// Listeners configured on the template hear every key's transitions (without the key).
///
/// Cloning is cheap, and clones share the table.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_breaker::{CircuitBreaker, KeyedCircuitBreaker, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let template = CircuitBreaker::builder().minimum_calls(1);
/// let upstreams = KeyedCircuitBreaker::new(template, 100, Duration::from_secs(600)).unwrap();
///
/// let _ = upstreams.call("openai", async { Err::<(), _>("503") }).await;
/// upstreams.call("anthropic", async { Ok::<_, &str>(()) }).await.unwrap();
///
/// assert_eq!(upstreams.get("openai").state(), State::Open);
/// assert_eq!(upstreams.get("anthropic").state(), State::Closed);
/// # }
/// ```
///
/// At capacity, an open breaker stays and a new key shares the overflow breaker:
///
/// ```
/// use std::time::Duration;
/// use brigade_breaker::{CircuitBreaker, KeyedCircuitBreaker, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let template = CircuitBreaker::builder().minimum_calls(1);
/// let upstreams = KeyedCircuitBreaker::new(template, 1, Duration::from_secs(600)).unwrap();
/// upstreams.get("openai").try_acquire().unwrap().failure();
///
/// let mistral = upstreams.get("mistral"); // no room: the overflow breaker
/// mistral.try_acquire().unwrap().success();
/// assert_eq!(upstreams.overflow().metrics().calls, 1);
/// assert_eq!(upstreams.get("openai").state(), State::Open);
/// # }
/// ```
pub struct KeyedCircuitBreaker<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    template: CircuitBreakerBuilder,
    max_keys: usize,
    idle: Duration,
    overflow: CircuitBreaker,
    table: Mutex<State<K>>,
}

struct State<K> {
    table: Table<K>,
    /// Breakers made, for each one's jitter seed.
    made: u64,
}

impl<K> Clone for KeyedCircuitBreaker<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreaker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("keys", &self.lock().table.len())
            .field("max_keys", &self.inner.max_keys)
            .field("evict_idle_after", &self.inner.idle)
            .finish_non_exhaustive()
    }
}

impl<K> KeyedCircuitBreaker<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // No code panics while holding the lock.
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The breaker shared by new keys that find no room (see
    /// [capacity and eviction](Self#capacity-and-eviction)): read its metrics, or switch it by
    /// hand, like any other.
    pub fn overflow(&self) -> &CircuitBreaker {
        &self.inner.overflow
    }
}

impl<K: Hash + Eq + Clone> KeyedCircuitBreaker<K> {
    /// Breakers built from `template`, at most `max_keys` of them; when a new key needs room,
    /// those idle for `evict_idle_after` are evicted first (see
    /// [capacity and eviction](Self#capacity-and-eviction)).
    ///
    /// With a [`jitter_seed`](CircuitBreakerBuilder::jitter_seed) on the template, each key's
    /// breaker gets its own seed derived from it, so keys do not reopen in lockstep.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the template is invalid, or `max_keys` is zero.
    pub fn new(
        template: CircuitBreakerBuilder,
        max_keys: usize,
        evict_idle_after: Duration,
    ) -> Result<Self, InvalidConfig> {
        template.validate()?;
        if max_keys == 0 {
            return Err(InvalidConfig::ZeroMaxKeys);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                overflow: CircuitBreaker::from_builder(derive(&template, 0)),
                template,
                max_keys,
                idle: evict_idle_after,
                table: Mutex::new(State {
                    table: Table::new(),
                    made: 0,
                }),
            }),
        })
    }

    /// The breaker of `key`, made if it has none; at capacity with no room to be made, the
    /// shared [overflow breaker](Self::overflow).
    pub fn get<Q>(&self, key: &Q) -> CircuitBreaker
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(breaker) = state.table.lookup(key, now) {
            return breaker;
        }
        if state.table.len() >= self.inner.max_keys
            && state.table.make_room(now, self.inner.idle) == Room::None
        {
            drop(state);
            tracing::debug!(
                target: "brigade_breaker",
                max_keys = self.inner.max_keys,
                "keyed circuit breaker full: a new key shares the overflow breaker"
            );
            return self.inner.overflow.clone();
        }
        state.made += 1;
        let breaker = CircuitBreaker::from_builder(derive(&self.inner.template, state.made));
        state.table.insert(key.to_owned(), breaker.clone(), now);
        breaker
    }

    /// Runs `future` through the breaker of `key`; see [`CircuitBreaker::call`].
    ///
    /// # Errors
    ///
    /// As [`CircuitBreaker::call`].
    ///
    /// # Cancel safety
    ///
    /// As [`CircuitBreaker::call`]: dropped, it records nothing.
    pub async fn call<Q, F, T, E>(&self, key: &Q, future: F) -> Result<T, Error<E>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: IntoFuture<Output = Result<T, E>>,
    {
        let breaker = self.get(key);
        breaker.call(future).await
    }

    /// The metrics of `key`'s breaker, if it has one; does not count as a use.
    pub fn metrics<Q>(&self, key: &Q) -> Option<Metrics>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().table.peek(key).map(CircuitBreaker::metrics)
    }

    /// Forgets `key`'s breaker, whatever its state. Returns whether it had one.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().table.remove(key)
    }

    /// Evicts, now, every breaker idle for `evict_idle_after` or longer, except those that must
    /// stay (see [capacity and eviction](Self#capacity-and-eviction)). Takes time in proportion
    /// to the number of keys, under the table's lock.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        self.lock().table.evict_idle(now, self.inner.idle);
    }

    /// How many keys have a breaker (the overflow breaker is not counted).
    pub fn len(&self) -> usize {
        self.lock().table.len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The template for the `n`th breaker made: its jitter seed, if any, derived from the
/// template's, so keys do not reopen in lockstep.
fn derive(template: &CircuitBreakerBuilder, n: u64) -> CircuitBreakerBuilder {
    let mut builder = template.clone();
    if let Some(seed) = builder.seed {
        builder.seed = Some(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    builder
}
