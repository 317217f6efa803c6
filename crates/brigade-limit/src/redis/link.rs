//! The connection to Redis and the switch between Redis and the fallback.
//!
//! # States
//!
//! - **up**: `slot` holds a live connection and `up` is set. Every decision goes to Redis,
//!   each round trip bounded by the call timeout. A failed round trip (see
//!   [`Failure::is_outage_evidence`]) is answered by the fallback and adds one to `failures`;
//!   a round trip Redis answers sets it back to zero. The failure that brings `failures` to
//!   `outage_after` takes the connection out of the slot (only if it is still the one that
//!   failed: `generation` tells), clears `up`, and schedules the next probe one
//!   `probe_interval` ahead. A connection whose batching task is gone is taken out at once
//!   (no call can be made on it). An error about the request only counts. Batches are
//!   judged by their round trip, in the batching task (through a [`Health`], which holds
//!   this link weakly); a caller shed or out of time waiting for its batch (load) only
//!   counts.
//! - **down**: `slot` is empty. Decisions go to the fallback, except one: the first call
//!   after `next_probe` that wins the `probing` flag opens a new connection (bounded by the
//!   connect timeout) and sends its own decision over it (bounded by the call timeout). If
//!   both succeed, the connection goes into the slot and the limiter is up again; otherwise
//!   (or if that call is dropped half-way) the next probe is scheduled and the call is
//!   answered by the fallback.
//!
//! The limiter starts down with a probe due at once, so the first call connects (or
//! [`connect`](super::RedisRateLimiter::connect) does it ahead of traffic).
//!
//! # Invariants
//!
//! - `up` is set only while `slot` holds a connection; both change under the `slot` write
//!   lock, which is never held across an `.await` or while calling the listener, and so do
//!   `current` (the generation in the slot) and the reset of `failures`.
//! - `failures` counts the failed round trips of the connection of generation `current`
//!   only: a late failure of a connection already replaced counts for nothing.
//! - At most one probe is in flight: the `probing` flag, taken by compare-and-swap and
//!   released by [`Probe`]'s `Drop`.
//! - Each switch (down to up, up to down) counts once, logs once and calls the listener
//!   once, outside the lock.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::time::{Instant, timeout};

use super::batch::Batcher;
use super::error::Failure;
use super::{Backend, Counters, State};

/// A listener for state switches.
pub(crate) type Listener = Arc<dyn Fn(State) + Send + Sync>;

/// A connection in use, and what it decides with.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) backend: Backend,
    generation: u64,
    /// The connection's batching task, on the script path with batches of more than one.
    pub(crate) batcher: Option<Batcher>,
}

/// Where a call goes.
pub(crate) enum Route<'a> {
    Redis(Live),
    /// Down, and this call is the probe.
    Probe(Probe<'a>),
    Fallback,
}

/// The right to probe; gives it back (and schedules the next probe unless it succeeded)
/// when dropped.
pub(crate) struct Probe<'a> {
    link: &'a Link,
    succeeded: bool,
}

impl Probe<'_> {
    pub(crate) fn succeeded(mut self, live: Live) {
        self.succeeded = true;
        self.link.set_up(live);
    }

    pub(crate) fn failed(self, failure: &Failure) {
        let link = self.link;
        link.count_failure(failure);
        if link.counters.to_redis.load(Ordering::Relaxed) == 0
            && !link.warned.swap(true, Ordering::Relaxed)
        {
            // Never connected: the first failure is news, the ones after it are not.
            tracing::warn!(
                error = %DisplayFailure(failure),
                "redis rate limiter: cannot connect, deciding on the fallback"
            );
        } else {
            tracing::debug!(error = %DisplayFailure(failure), "redis rate limiter: probe failed");
        }
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.succeeded {
            self.link.schedule_probe();
        }
        self.link.probing.store(false, Ordering::Release);
    }
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub(crate) redis_decisions: AtomicU64,
    pub(crate) fallback_decisions: AtomicU64,
    to_fallback: AtomicU64,
    to_redis: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    wait_timeouts: AtomicU64,
    sheds: AtomicU64,
    pub(crate) overloaded: AtomicU64,
}

/// The link's durations and its outage threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) call_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) probe_interval: Duration,
    /// Failed round trips in a row that switch to the fallback; at least 1.
    pub(crate) outage_after: u32,
}

pub(crate) struct Link {
    client: Client,
    config: AsyncConnectionConfig,
    pub(crate) call_timeout: Duration,
    connect_timeout: Duration,
    probe_interval: Duration,
    outage_after: u32,
    slot: RwLock<Option<Live>>,
    up: AtomicBool,
    /// The generation of the connection in the slot (0: none; generations start at 1).
    current: AtomicU64,
    /// Failed round trips in a row on the connection of generation `current`.
    failures: AtomicU32,
    probing: AtomicBool,
    /// When the next probe is due, in nanoseconds since `start`.
    next_probe: AtomicU64,
    start: Instant,
    generation: AtomicU64,
    pub(crate) counters: AtomicCounters,
    listener: Option<Listener>,
    /// Whether a failure to connect at all has been logged.
    warned: AtomicBool,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("state", &self.state())
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("outage_after", &self.outage_after)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(client: Client, timing: Timing, listener: Option<Listener>) -> Self {
        let Timing {
            call_timeout,
            connect_timeout,
            probe_interval,
            outage_after,
        } = timing;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(call_timeout));
        Self {
            client,
            config,
            call_timeout,
            connect_timeout,
            probe_interval,
            outage_after: outage_after.max(1),
            slot: RwLock::new(None),
            up: AtomicBool::new(false),
            current: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            start: Instant::now(),
            generation: AtomicU64::new(0),
            counters: AtomicCounters::default(),
            listener,
            warned: AtomicBool::new(false),
        }
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Where the next call goes.
    pub(crate) fn route(&self) -> Route<'_> {
        if self.up.load(Ordering::Acquire)
            && let Some(live) = self.live()
        {
            return Route::Redis(live);
        }
        if self.elapsed() >= self.next_probe.load(Ordering::Acquire)
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // A probe that just succeeded may have put a connection back: use it.
            if let Some(live) = self.live() {
                self.probing.store(false, Ordering::Release);
                return Route::Redis(live);
            }
            return Route::Probe(Probe {
                link: self,
                succeeded: false,
            });
        }
        Route::Fallback
    }

    fn live(&self) -> Option<Live> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Opens a connection, checks for a native `GCRA` command if `native` is wanted, and
    /// loads the script otherwise; all within the connect timeout.
    pub(crate) async fn open(&self, native: bool, script: &Script) -> Result<Live, Failure> {
        let open = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            let backend = if native && has_gcra(&mut conn).await? {
                Backend::NativeGcra
            } else {
                script.load_async(&mut conn).await?;
                Backend::Lua
            };
            Ok(Live {
                conn,
                backend,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                batcher: None,
            })
        };
        timeout(self.connect_timeout, open)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    /// Puts a connection in the slot: up.
    pub(crate) fn set_up(&self, live: Live) {
        let backend = live.backend;
        let was_up = {
            let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
            self.current.store(live.generation, Ordering::Release);
            self.failures.store(0, Ordering::Relaxed);
            *slot = Some(live);
            self.up.swap(true, Ordering::AcqRel)
        };
        if was_up {
            return;
        }
        self.counters.to_redis.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?backend, "redis rate limiter: deciding on Redis");
        if let Some(listener) = &self.listener {
            listener(State::Redis(backend));
        }
    }

    /// Redis is down, by a failure over the connection of `generation`: down, unless
    /// another call already took that connection out.
    fn set_down(&self, generation: u64, failure: &Failure) {
        {
            let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().map(|l| l.generation) != Some(generation) {
                return;
            }
            *slot = None;
            self.up.store(false, Ordering::Release);
            // The late failures of that connection count for nothing.
            self.current.store(0, Ordering::Release);
            self.failures.store(0, Ordering::Relaxed);
            self.schedule_probe();
        }
        self.counters.to_fallback.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            error = %DisplayFailure(failure),
            probe_in = ?self.probe_interval,
            "redis rate limiter: switching to the fallback"
        );
        if let Some(listener) = &self.listener {
            listener(State::Fallback);
        }
    }

    fn schedule_probe(&self) {
        let at = self
            .elapsed()
            .saturating_add(u64::try_from(self.probe_interval.as_nanos()).unwrap_or(u64::MAX));
        self.next_probe.store(at, Ordering::Release);
    }

    /// Judges Redis by a failed call over `live`: an error about the request only counts (and
    /// Redis answered); a failed round trip counts towards `outage_after`, and takes the
    /// connection down when it reaches it; a batching task that is gone takes it down at once.
    pub(crate) fn judge(&self, live: &Live, failure: &Failure) {
        self.judge_at(live.generation, failure);
    }

    /// [`judge`](Self::judge), for the connection of `generation`.
    fn judge_at(&self, generation: u64, failure: &Failure) {
        self.count_failure(failure);
        if matches!(failure, Failure::Gone) {
            self.set_down(generation, failure);
            return;
        }
        if !failure.is_outage_evidence() {
            self.answered_at(generation);
            return;
        }
        if self.current.load(Ordering::Acquire) != generation {
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.outage_after {
            self.set_down(generation, failure);
        } else {
            tracing::debug!(
                error = %DisplayFailure(failure),
                failures,
                outage_after = self.outage_after,
                "redis rate limiter: a round trip failed; its call falls back"
            );
        }
    }

    /// Redis answered a round trip over `live`: the failures in a row start again.
    pub(crate) fn answered(&self, live: &Live) {
        self.answered_at(live.generation);
    }

    fn answered_at(&self, generation: u64) {
        // A read first: on the hot path the count is zero, and the line stays shared.
        if self.failures.load(Ordering::Relaxed) != 0
            && self.current.load(Ordering::Acquire) == generation
        {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// What a connection's batching task judges Redis with: it holds the link weakly, as the
    /// link holds the task's sender.
    pub(crate) fn health(self: &Arc<Self>, live: &Live) -> Health {
        Health {
            link: Arc::downgrade(self),
            generation: live.generation,
        }
    }

    /// A call gave up waiting for its batch (load: it is refused), and the batch's own
    /// outcome judges Redis.
    pub(crate) fn count_wait_timeout(&self) {
        self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A call was not queued for a batch, the queue being too long (load: it is refused).
    pub(crate) fn count_shed(&self) {
        self.counters.sheds.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_failure(&self, failure: &Failure) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if matches!(failure, Failure::Timeout) {
            self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The time until the next probe (at least a millisecond): the `retry_after` of a call
    /// the fallback refuses.
    pub(crate) fn retry_after(&self) -> Duration {
        let wait = self
            .next_probe
            .load(Ordering::Acquire)
            .saturating_sub(self.elapsed());
        Duration::from_nanos(wait).max(Duration::from_millis(1))
    }

    pub(crate) fn state(&self) -> State {
        match self.live() {
            Some(live) if self.up.load(Ordering::Acquire) => State::Redis(live.backend),
            _ => State::Fallback,
        }
    }

    pub(crate) fn counters(&self) -> Counters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            redis_decisions: get(&c.redis_decisions),
            fallback_decisions: get(&c.fallback_decisions),
            switches_to_fallback: get(&c.to_fallback),
            switches_to_redis: get(&c.to_redis),
            redis_errors: get(&c.errors),
            redis_timeouts: get(&c.timeouts),
            batch_wait_timeouts: get(&c.wait_timeouts),
            batch_sheds: get(&c.sheds),
            overloaded: get(&c.overloaded),
        }
    }
}

/// How a batching task reports a batch that failed or timed out, as a call of its own would.
pub(crate) struct Health {
    link: Weak<Link>,
    generation: u64,
}

impl Health {
    /// Judges Redis by a batch that failed (see [`Link::judge`]); nothing once the limiter
    /// is gone.
    pub(crate) fn report(&self, failure: &Failure) {
        if let Some(link) = self.link.upgrade() {
            link.judge_at(self.generation, failure);
        }
    }

    /// Redis answered a batch (see [`Link::answered`]).
    pub(crate) fn answered(&self) {
        if let Some(link) = self.link.upgrade() {
            link.answered_at(self.generation);
        }
    }
}

/// `COMMAND INFO GCRA`: `[nil]` on a server without the command, `[[name, arity, ...]]`
/// with it.
async fn has_gcra(conn: &mut MultiplexedConnection) -> Result<bool, Failure> {
    let reply: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("GCRA")
        .query_async(conn)
        .await?;
    Ok(match reply {
        Value::Array(items) => matches!(items.first(), Some(Value::Array(_))),
        _ => false,
    })
}

/// `Failure` with its source, for a log line.
struct DisplayFailure<'a>(&'a Failure);

impl fmt::Display for DisplayFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Failure::Redis(e) => write!(f, "{}: {e}", self.0),
            other => fmt::Display::fmt(other, f),
        }
    }
}
