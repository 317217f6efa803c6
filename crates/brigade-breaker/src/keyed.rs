//! One breaker per key: per upstream, model or provider.
//!
//! # Invariants
//!
//! The map sits behind one `std` mutex, held only for a lookup or an insertion (never across
//! an `.await`, never while a breaker's own lock is taken). Lookups cost that lock; a caller
//! on a hot path keeps the [`CircuitBreaker`] it got and calls through it directly.

use std::collections::HashMap;
use std::fmt;
use std::future::IntoFuture;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Builder, CircuitBreaker, Error, InvalidConfig, Metrics};

/// A breaker per key, made from one configuration on first use, evicted when idle.
///
/// When a new key would exceed `max_keys`, breakers idle for longer than `evict_idle_after`
/// are dropped first, then the least recently used. An evicted breaker's state is forgotten:
/// the key starts closed when it comes back. Listeners configured on the template hear every
/// key's transitions (without the key).
///
/// Cloning is cheap, and clones share the map.
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
pub struct KeyedCircuitBreaker<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    template: Builder,
    max_keys: usize,
    idle: Duration,
    map: Mutex<Map<K>>,
}

struct Map<K> {
    breakers: HashMap<K, Entry>,
    made: u64,
}

struct Entry {
    breaker: CircuitBreaker,
    last_used: Instant,
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
            .field("keys", &self.lock().breakers.len())
            .field("max_keys", &self.inner.max_keys)
            .field("evict_idle_after", &self.inner.idle)
            .finish_non_exhaustive()
    }
}

impl<K> KeyedCircuitBreaker<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map<K>> {
        // No code panics while holding the lock.
        self.inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> KeyedCircuitBreaker<K> {
    /// Breakers built from `template`, at most `max_keys` of them, evicted after
    /// `evict_idle_after` without a lookup when room is needed.
    ///
    /// With a [`jitter_seed`](Builder::jitter_seed) on the template, each key's breaker gets
    /// its own seed derived from it, so keys do not reopen in lockstep.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the template is invalid, or `max_keys` is zero.
    pub fn new(
        template: Builder,
        max_keys: usize,
        evict_idle_after: Duration,
    ) -> Result<Self, InvalidConfig> {
        template.validate()?;
        if max_keys == 0 {
            return Err(InvalidConfig::ZeroMaxKeys);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                template,
                max_keys,
                idle: evict_idle_after,
                map: Mutex::new(Map {
                    breakers: HashMap::new(),
                    made: 0,
                }),
            }),
        })
    }

    /// The breaker of `key`, made if it has none.
    pub fn get<Q>(&self, key: &Q) -> CircuitBreaker
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(entry) = map.breakers.get_mut(key) {
            entry.last_used = now;
            return entry.breaker.clone();
        }
        if map.breakers.len() >= self.inner.max_keys {
            let idle = self.inner.idle;
            map.breakers
                .retain(|_, entry| now.saturating_duration_since(entry.last_used) < idle);
        }
        if map.breakers.len() >= self.inner.max_keys {
            let oldest = map
                .breakers
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                map.breakers.remove::<K>(&oldest);
            }
        }
        map.made += 1;
        let mut builder = self.inner.template.clone();
        if let Some(seed) = builder.seed {
            builder.seed = Some(seed ^ map.made.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let breaker = CircuitBreaker::from_builder(builder);
        map.breakers.insert(
            key.to_owned(),
            Entry {
                breaker: breaker.clone(),
                last_used: now,
            },
        );
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
        self.lock()
            .breakers
            .get(key)
            .map(|entry| entry.breaker.metrics())
    }

    /// Forgets `key`'s breaker. Returns whether it had one.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().breakers.remove(key).is_some()
    }

    /// Drops every breaker idle for longer than `evict_idle_after`, now (also done when a new
    /// key needs room).
    pub fn evict_idle(&self) {
        let now = Instant::now();
        let idle = self.inner.idle;
        self.lock()
            .breakers
            .retain(|_, entry| now.saturating_duration_since(entry.last_used) < idle);
    }

    /// How many keys have a breaker.
    pub fn len(&self) -> usize {
        self.lock().breakers.len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
