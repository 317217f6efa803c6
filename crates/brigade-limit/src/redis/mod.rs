//! Rate limits kept in Redis: one quota per key shared by every replica of a service, with a
//! fallback when Redis is down.
//!
//! A per-key quota held in each process lets a client through N times over when a service
//! runs as N replicas behind a load balancer. [`RedisRateLimiter`] keeps the state in Redis and
//! decides exactly as the in-process [`RateLimiter`] does: the same [`Quota`] and burst
//! meaning, weighted costs, up to [`MAX_LIMITS`] limits per key checked all or nothing,
//! reserve then settle, and the same [`Admitted`] / [`Rejected`] values, so
//! [`headers`](crate::headers) writes the same fields.
//!
//! # Example
//!
//! ```no_run
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use brigade_limit::redis::{Fallback, RedisRateLimiter};
//! use brigade_limit::{Limit, Quota};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let per_minute = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
//! let limiter: RedisRateLimiter<String> = RedisRateLimiter::builder()
//!     .limit(Limit::per_request("requests", per_minute(60)))
//!     .limit(Limit::new("tokens", per_minute(10_000)))
//!     .call_timeout(Duration::from_millis(50))
//!     .fallback(Fallback::Local { replicas: 3 })
//!     .build("redis://127.0.0.1:6379/")?;
//! limiter.connect().await?; // optional: connect before the first request
//!
//! let key = "api-key-1".to_owned();
//! let reservation = limiter.try_reserve(&key, 2_000).await?; // prompt + max_tokens
//! // ... stream the answer ...
//! reservation.settle(640).await?; // 1,360 tokens come back
//! # Ok(())
//! # }
//! ```
//!
//! # One round trip per decision
//!
//! A decision is one `EVALSHA` of a Lua script loaded when the connection opens: it reads
//! every limit's theoretical arrival time (TAT), checks them all, and charges them all or
//! none, atomically (a script runs alone on the server). A server that lost the script
//! (restarted, `SCRIPT FLUSH`) answers `NOSCRIPT`; the call loads it again and resends,
//! inside the same timeout. The connection is one multiplexed connection per limiter, shared
//! by every caller.
//!
//! # Batches
//!
//! Most of what a script call costs Redis does not depend on how many keys it touches: the
//! call itself, reading the clock, the reply. So concurrent decisions share calls: while a
//! batch is on the wire (at most two at once per connection), the decisions that arrive wait
//! for the next `EVALSHA`, which carries up to
//! [`max_batch`](RedisRateLimiterBuilder::max_batch) of them (default 16), done in order, each
//! all or nothing on its own key and each answered on its own. A lone caller waits for nobody:
//! its batch holds its decision alone. A batch reads the clock once, so its decisions share one
//! `now`. One batch touches the keys of several callers, which a Redis Cluster would refuse
//! unless they share a slot: this limiter talks to one server (or a primary), not to a
//! cluster; behind a proxy that routes scripts by slot, build with `max_batch(1)`.
//!
//! A batch is judged as one round trip: bounded by the call timeout from when it is sent, and
//! a failed round trip if it fails or times out (see
//! [When Redis is down](#when-redis-is-down)). Waiting for a batch is [load](#load), not a
//! round trip.
//!
//! # Load
//!
//! While Redis answers, a decision is Redis's, or it is refused: it is never handed to the
//! fallback for being slow to get a turn, so a busy limiter never becomes an unlimited one
//! under [`Fallback::FailOpen`]. How long a decision may wait for its batch (queued behind the
//! two on the wire, then on the wire) is its patience: the call timeout under
//! [`Overload::Refuse`] (the default), `up_to` under [`Overload::Wait`], set with
//! [`on_overload`](RedisRateLimiterBuilder::on_overload).
//!
//! - A decision that would wait longer than its patience is not queued at all: when the
//!   batches ahead of it (half a round trip for the round on the wire, then the queue's rounds
//!   of two batches, then its own) would take longer than that by the recent round trips
//!   (each new one, a batch's or a lone call's, weighing half), it is refused at once with
//!   [`AcquireError::Overloaded`], uncharged. [`Counters::batch_sheds`] counts those.
//! - A decision that runs out of its patience while it waits (a burst outran the estimate) is
//!   refused with [`AcquireError::Overloaded`] too. [`Counters::batch_wait_timeouts`] counts
//!   those. One that gives up while its batch is on the wire may still be charged in Redis,
//!   as any call that timed out may.
//!
//! Both carry a `retry_after`: the queue's expected wait. Neither counts against Redis: they
//! switch nothing, and are not in [`Counters::redis_errors`]. Settles are never shed (an
//! extra charge would be lost); they wait their turn, and one that runs out of its patience
//! returns [`RedisUnavailable`] (a timeout). So under sustained overload the limiter stays on
//! Redis, which decides what it can carry in time, and the rest is refused. A
//! [`Counters::overloaded`] that keeps growing says Redis is short of capacity: raise
//! `max_batch` or add capacity.
//!
//! # Time is the server's
//!
//! The script reads Redis's clock (`TIME`; Redis 5 and later replicate a script's effects, so
//! a script may read the clock and then write). No replica's clock enters a decision, so
//! replicas whose clocks disagree still agree on every key.
//!
//! # Keys
//!
//! Limit `name` of key `k` is the Redis string `{prefix}{k}:{name}` (the prefix defaults to
//! `brigade:limit:`; `k` is written with its `Display`). The key sits in a hash tag, so all
//! the limits of one key share a cluster slot (see [Batches](#batches) for a batch's keys).
//! The value is the TAT in nanoseconds since the Unix epoch, in decimal, at most 19 digits:
//! the script saturates every time it computes at 9,999,999,999,999,999,999 ns (in the year
//! 2286), as the in-process limiter saturates at `u64::MAX`, so however large a settle it
//! never writes a time it would then refuse to read. Every write sets the key to expire
//! (`PX`) when its TAT passes, the moment its state becomes a fresh key's: an idle key costs
//! Redis nothing, and a key that expired decides exactly as before. Lua numbers are doubles,
//! so the script does its arithmetic on whole milliseconds and the nanoseconds within, both
//! exact: the same nanoseconds as the in-process limiter.
//!
//! # Burst: ours and redis-cell's
//!
//! A [`Quota`] with burst `b` admits `b` cells at once, as governor and the in-process
//! limiter do; every decision reports `limit = b`. redis-cell's `CL.THROTTLE` (and Redis's
//! `GCRA`, derived from it) take a `max_burst` that counts the cells *beyond the first*: they
//! admit `max_burst + 1` at once and report `max_burst + 1` as the limit. So our
//! `Quota::per_minute(10)` is `CL.THROTTLE key 9 10 60`, and `CL.THROTTLE key 10 10 60`
//! would admit 11. The native path passes `max_burst = b - 1`.
//!
//! # Native `GCRA`
//!
//! Redis 8.8's development line carries a native `GCRA` command derived from redis-cell.
//! Built with [`NativeGcra::Auto`] (experimental; the default is [`NativeGcra::Never`], the
//! script), the limiter asks `COMMAND INFO GCRA` when connecting; if the server has it and
//! the limiter has a single limit, decisions use it instead of the script. A multi-limit
//! decision needs the script even then: one command per limit could not charge all or none.
//! The command has no refund and answers times in whole seconds, so on the native path:
//!
//! - `limit`, `remaining` and admit or reject are exact; `reset` and `retry_after` are
//!   rebuilt from `remaining` and are late by less than one interval (never early);
//! - a settle charges extra cells when they fit the burst, and cannot refund;
//! - the arithmetic is in microseconds, and a cost of 0 reads the state with an oversized
//!   `TOKENS` (which the command rejects without charging).
//!
//! Its keys end in `:gcra` (another value format), so a fleet must not mix native and script
//! replicas on one prefix. The command was held out of the 8.8 release while this was
//! written, and its reply units have changed during development: this path is tested against
//! a fake server that answers as the command's documentation says, not against a real Redis
//! with `GCRA`, which is why it is not the default.
//!
//! # When Redis is down
//!
//! Every round trip to Redis is bounded by the call timeout, and opening a connection by the
//! connect timeout. The [`Fallback`] decides exactly these calls:
//!
//! 1. **A failed round trip's own calls.** A round trip fails when Redis does not answer it
//!    within the call timeout (a call sent alone from when it is sent, a [batch](#batches)
//!    from when it is sent), when the connection fails, or when Redis answers with an error
//!    that is not about the request: a generic `ERR` (a Lua runtime error in the script, for
//!    instance), `READONLY`, `OOM`, `NOPERM`, or a reply of the wrong shape. The calls of that
//!    round trip (one, or a batch's) are answered by the fallback: Redis did not answer them.
//! 2. **Every call once the limiter has switched.** [`outage_after`] failed round trips in a
//!    row (default 3; a round trip Redis answers starts the count again) switch the limiter
//!    to its fallback, which then decides every call until a probe brings Redis back. A
//!    connection whose batching task is gone (its runtime has ended) switches at once.
//! 3. **A call whose key the script cannot read.** A key overwritten with something that is
//!    not a time (the script answers that operation alone with its own error), or of the
//!    wrong type (`WRONGTYPE` on the native path): the fallback answers that call alone.
//!    Redis answered, so this is not a failed round trip.
//!
//! Nothing else reaches the fallback: a decision that is shed or runs out of its patience
//! waiting for its batch is [load](#load), refused with [`AcquireError::Overloaded`], and
//! never evidence of an outage. The fallbacks:
//!
//! - [`Fallback::FailOpen`]: admit every call (reported as a fresh key's first call);
//! - [`Fallback::FailClosed`]: refuse every call with [`AcquireError::Unavailable`], whose
//!   `retry_after` is the next probe (at least a millisecond);
//! - [`Fallback::Local`]: the in-process [`RateLimiter`] with each quota divided by the
//!   number of replicas (burst and rate, rounded down, at least one cell), so that the
//!   replicas together stay near the quota; a cost over a divided burst is refused with
//!   [`AcquireError::Unavailable`] rather than called unsatisfiable.
//!
//! While switched, the first call after each `probe_interval` is the probe (never more than
//! one in flight): it reconnects and, if Redis answers within the timeouts, its decision is
//! Redis's and the limiter is back on Redis. Each switch logs a `tracing` line (warn going to
//! the fallback, info coming back), counts in [`Counters`], and calls the listener set with
//! [`on_switch`](RedisRateLimiterBuilder::on_switch). A failed round trip that does not switch
//! logs at debug level. No call waits longer than the call timeout (or, queued for a batch,
//! its patience), plus the connect timeout for the probe.
//!
//! [`outage_after`]: RedisRateLimiterBuilder::outage_after
//!
//! # Cancel safety
//!
//! A decision dropped before Redis answered may or may not have been charged (the script
//! runs whole or not at all); a dropped settle may or may not have been applied. A dropped
//! probe schedules the next one.
//!
//! # What the in-process limiter has and this one does not
//!
//! No waiting queue per key (`acquire`): callers retry after `retry_after`. No shadow mode
//! and no `set_quota`: the quota travels with every call, so replicas restarted with a new
//! quota use it at once (each key's TAT carries over, unscaled).

mod batch;
mod error;
mod link;
mod native;
mod reservation;
mod script;
// The tests' redis-server helper, for the unit tests of this module and of `batch`.
#[cfg(test)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;
#[cfg(test)]
mod tests;

use std::fmt::{self, Display};
use std::hash::Hash;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{Client, IntoConnectionInfo, Script, Value};
use tokio::time::{Instant, timeout};

use self::batch::{Batcher, Bounds, Shape};
use self::error::Failure;
pub use self::error::RedisUnavailable;
use self::link::{Link, Listener, Live, Route, Timing};
pub use self::reservation::RedisReservation;
use self::script::{Adjust, KeyArg, Limits, Operation};
#[cfg(test)]
use self::tests::TestClock;
use crate::gcra::Gcra;
use crate::rate::Snapshot;
use crate::{
    AcquireError, Admitted, InvalidConfig, Limit, MAX_LIMITS, Quota, RateLimiter, Rejected,
    Reservation, Unsatisfiable,
};

/// What a [`RedisRateLimiter`] does while Redis is down or slower than the call timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Admit every call: availability over limits.
    FailOpen,
    /// Refuse every call with [`AcquireError::Unavailable`].
    FailClosed,
    /// Decide in process, each quota divided by `replicas` (burst and rate, rounded down, at
    /// least one cell): the replicas together stay near the shared quota.
    Local {
        /// How many replicas share the quota; at least 1.
        replicas: u32,
    },
}

/// Whether to use Redis's native `GCRA` command where the server has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NativeGcra {
    /// Experimental: use it for a single-limit limiter when the server has it (asked when
    /// connecting); the script otherwise. No released Redis has the command yet, and this
    /// path is tested against a fake server only. See the [module docs](self#native-gcra)
    /// for what changes.
    Auto,
    /// Always the script (the default).
    #[default]
    Never,
}

/// What a decision gets when Redis answers but the local queue for it is too long to decide
/// the call in time: load, not an outage. Either way the call is never handed to the
/// [`Fallback`], and never admitted uncharged. See [Load](self#load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overload {
    /// Refuse at once, with [`AcquireError::Overloaded`], a decision that the queue ahead
    /// would keep past the call timeout (by the recent round trips); and refuse one that
    /// runs out of its call timeout while it waits for its batch. The default.
    #[default]
    Refuse,
    /// Let a decision wait for its batch for up to `up_to` rather than the call timeout:
    /// refused with [`AcquireError::Overloaded`] at once only if the queue ahead would keep
    /// it longer than `up_to`, or once it has waited `up_to`. Each batch on the wire is still
    /// bounded by the call timeout.
    Wait {
        /// The longest a decision waits for its batch, queued or on the wire.
        up_to: Duration,
    },
}

/// How decisions are made on Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The Lua script, by `EVALSHA`.
    Lua,
    /// The server's `GCRA` command.
    NativeGcra,
}

/// Who is deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Redis, with this backend.
    Redis(Backend),
    /// The fallback: Redis is down (or not connected yet).
    Fallback,
}

/// Counts since the limiter was built, for metrics.
///
/// # Examples
///
/// ```no_run
/// # use brigade_limit::redis::RedisRateLimiter;
/// # fn export(limiter: &RedisRateLimiter<String>) {
/// let c = limiter.counters();
/// println!("on fallback: {} decisions, {} switches", c.fallback_decisions, c.switches_to_fallback);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Decisions Redis made (admitted or rejected).
    pub redis_decisions: u64,
    /// Decisions the fallback made.
    pub fallback_decisions: u64,
    /// Switches from Redis to the fallback.
    pub switches_to_fallback: u64,
    /// Switches from the fallback (or from not connected) to Redis.
    pub switches_to_redis: u64,
    /// Calls to Redis (decisions, settles, connects, probes) that failed or timed out, and
    /// operations whose key the script could not read; a failed
    /// [batch](crate::redis#batches) counts once, however many decisions it carried.
    pub redis_errors: u64,
    /// Of those, the ones that timed out.
    pub redis_timeouts: u64,
    /// Calls that ran out of time waiting for their batch, queued or sent: a decision was
    /// refused with [`AcquireError::Overloaded`], a settle returned [`RedisUnavailable`] (a
    /// timeout). Load, not an outage: not in `redis_errors`, and never a reason to switch
    /// (each batch is judged by its own round trip, from when it was sent). See
    /// [Load](crate::redis#load).
    pub batch_wait_timeouts: u64,
    /// Decisions refused at once with [`AcquireError::Overloaded`], never queued and never
    /// charged: the batches ahead of them would have kept them past their bound, by the
    /// recent round trips. Settles are never shed. See [Load](crate::redis#load).
    pub batch_sheds: u64,
    /// Decisions refused with [`AcquireError::Overloaded`]: the decisions among
    /// `batch_sheds` and `batch_wait_timeouts`.
    pub overloaded: u64,
}

/// Builds a [`RedisRateLimiter`] with keys of type `K`; each setter documents its default.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use brigade_limit::redis::{Fallback, RedisRateLimiter};
/// use brigade_limit::{InvalidConfig, Limit, Quota};
///
/// let rpm = Quota::per_minute(NonZeroU32::new(60).unwrap());
/// let built = RedisRateLimiter::<String>::builder()
///     .limit(Limit::per_request("requests", rpm))
///     .fallback(Fallback::Local { replicas: 0 })
///     .build("redis://127.0.0.1/");
/// assert_eq!(built.unwrap_err(), InvalidConfig::ZeroReplicas);
///
/// let built = RedisRateLimiter::<String>::builder()
///     .limit(Limit::per_request("requests", rpm))
///     .call_timeout(Duration::ZERO)
///     .build("redis://127.0.0.1/");
/// assert_eq!(built.unwrap_err(), InvalidConfig::ZeroDuration("call_timeout"));
/// ```
#[must_use]
pub struct RedisRateLimiterBuilder<K> {
    limits: Vec<Limit>,
    prefix: String,
    call_timeout: Duration,
    connect_timeout: Duration,
    probe_interval: Duration,
    fallback: Fallback,
    native: NativeGcra,
    listener: Option<Listener>,
    #[cfg(test)]
    clock: Option<TestClock>,
    max_batch: usize,
    outage_after: u32,
    overload: Overload,
    // `fn() -> K`: the builder holds no `K`, so it is `Send` and `Sync` whatever `K`.
    key: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for RedisRateLimiterBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiterBuilder")
            .field("limits", &self.limits)
            .field("prefix", &self.prefix)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("fallback", &self.fallback)
            .field("native", &self.native)
            .field("listener", &self.listener.is_some())
            .field("max_batch", &self.max_batch)
            .field("outage_after", &self.outage_after)
            .field("overload", &self.overload)
            .finish_non_exhaustive()
    }
}

impl<K> Default for RedisRateLimiterBuilder<K> {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            prefix: "brigade:limit:".to_owned(),
            call_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            probe_interval: Duration::from_secs(1),
            fallback: Fallback::Local { replicas: 1 },
            native: NativeGcra::Never,
            listener: None,
            #[cfg(test)]
            clock: None,
            max_batch: 16,
            outage_after: 3,
            overload: Overload::Refuse,
            key: PhantomData,
        }
    }
}

impl<K> RedisRateLimiterBuilder<K> {
    /// Adds a limit; at least one, at most [`MAX_LIMITS`], names unique, printable ASCII and
    /// without braces. No default.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// The prefix of every Redis key, without braces. Default: `brigade:limit:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest one round trip to Redis may take (a call sent alone, or a batch from when
    /// it is sent); past it, the round trip has failed (see
    /// [When Redis is down](self#when-redis-is-down)). Also how long a decision may wait for
    /// its batch under [`Overload::Refuse`]. Default: 50 ms.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How many failed round trips in a row (each a call or a batch that Redis did not answer
    /// within the call timeout, or answered with an error that is not about the request)
    /// switch the limiter to its fallback; a round trip Redis answers starts the count again.
    /// Each failed round trip's own calls are answered by the fallback either way. At least 1
    /// (1 switches at the first failure). Default: 3. See
    /// [When Redis is down](self#when-redis-is-down).
    pub fn outage_after(mut self, failures: u32) -> Self {
        self.outage_after = failures;
        self
    }

    /// What a decision gets when the local queue for Redis is too long to decide it in time.
    /// Default: [`Overload::Refuse`]. See [Load](self#load).
    pub fn on_overload(mut self, overload: Overload) -> Self {
        self.overload = overload;
        self
    }

    /// The longest opening a connection (and loading the script) may take. Default: 250 ms.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the fallback decides, once the limiter has switched to it, before the next
    /// call probes Redis again. Default: 1 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// What decides while Redis is down, and the calls of a failed round trip. Default:
    /// `Fallback::Local { replicas: 1 }` (each replica applies the whole quota on its own: set
    /// your replica count). See [When Redis is down](self#when-redis-is-down).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Whether to use a native `GCRA` command. Default: [`NativeGcra::Never`] (the script);
    /// [`NativeGcra::Auto`] is experimental.
    pub fn native_gcra(mut self, native: NativeGcra) -> Self {
        self.native = native;
        self
    }

    /// Calls `listener` at each switch between Redis and the fallback, with the new state
    /// (for a metric or an alert; it runs on the switching call, so keep it short). No
    /// default.
    pub fn on_switch(mut self, listener: impl Fn(State) + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The most script operations (decisions, settles) sent in one `EVALSHA`, from 1 (no
    /// batching) to 1,024. Default: 16. See [Batches](self#batches).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// Decides at `clock`'s time instead of Redis's (the unit tests' clock, which they move).
    #[cfg(test)]
    pub(crate) fn test_clock(mut self, clock: TestClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the limiter. It connects on its first call, or on
    /// [`connect`](RedisRateLimiter::connect).
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] for the limits (as [`RateLimiterBuilder::build`](crate::RateLimiterBuilder::build)),
    /// a prefix or limit name with a brace, a zero timeout, probe interval or
    /// [`Overload::Wait`] bound (`ZeroDuration`), an `outage_after` of zero (`ZeroCount`), a
    /// batch size out of range, a local fallback over zero replicas (or whose divided quota
    /// overflows), or a URL that does not parse.
    pub fn build(self, url: impl IntoConnectionInfo) -> Result<RedisRateLimiter<K>, InvalidConfig> {
        // The in-process builder checks the limits (count, names, quotas).
        let mut check = RateLimiter::<()>::builder();
        for limit in &self.limits {
            check = check.limit(*limit);
        }
        check.build()?;
        let names = self.limits.iter().map(|l| -> &str { l.name() });
        for part in std::iter::once(self.prefix.as_str()).chain(names) {
            if part.contains(['{', '}']) {
                return Err(InvalidConfig::BraceInRedisKey(part.to_owned()));
            }
        }
        let patience = match self.overload {
            Overload::Refuse => self.call_timeout,
            Overload::Wait { up_to } => up_to,
        };
        for (setting, value) in [
            ("call_timeout", self.call_timeout),
            ("connect_timeout", self.connect_timeout),
            ("probe_interval", self.probe_interval),
            ("on_overload", patience),
        ] {
            if value.is_zero() {
                return Err(InvalidConfig::ZeroDuration(setting));
            }
        }
        if self.outage_after == 0 {
            return Err(InvalidConfig::ZeroCount("outage_after"));
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(InvalidConfig::BatchSize(self.max_batch));
        }
        let fallback = match self.fallback {
            Fallback::FailOpen => Fell::Open,
            Fallback::FailClosed => Fell::Closed,
            Fallback::Local { replicas } => {
                let replicas = NonZeroU32::new(replicas).ok_or(InvalidConfig::ZeroReplicas)?;
                let mut local = RateLimiter::builder();
                for limit in &self.limits {
                    let quota = divide(limit.quota(), replicas)?;
                    local = local.limit(if limit.is_per_request() {
                        Limit::per_request(limit.name(), quota)
                    } else {
                        Limit::new(limit.name(), quota)
                    });
                }
                Fell::Local(local.build()?)
            }
        };
        let client = Client::open(url).map_err(|e| InvalidConfig::RedisUrl(e.to_string()))?;
        let len = self.limits.len();
        let mut names = [""; MAX_LIMITS];
        let mut per_request = [false; MAX_LIMITS];
        let mut gcra = [Gcra {
            t: u64::MAX,
            tau: 0,
            burst: u32::MAX,
        }; MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            names[i] = limit.name();
            per_request[i] = limit.is_per_request();
            gcra[i] = Gcra::new(limit.quota())?;
        }
        Ok(RedisRateLimiter {
            inner: Arc::new(Shared {
                link: Arc::new(Link::new(
                    client,
                    Timing {
                        call_timeout: self.call_timeout,
                        connect_timeout: self.connect_timeout,
                        probe_interval: self.probe_interval,
                        outage_after: self.outage_after,
                    },
                    self.listener,
                )),
                len,
                names,
                per_request,
                gcra,
                prefix: self.prefix.into_boxed_str(),
                script: Script::new(script::SOURCE),
                native: self.native == NativeGcra::Auto && len == 1,
                native_args: native::Args::new(&gcra[0]),
                fallback,
                #[cfg(test)]
                clock: self.clock,
                max_batch: self.max_batch,
                patience,
            }),
        })
    }
}

/// The unit tests' clock (Redis's time, moved by the tests) is not public API:
///
/// ```compile_fail
/// use brigade_limit::redis::TestClock;
/// ```
///
/// ```compile_fail
/// use brigade_limit::redis::RedisRateLimiter;
/// let _ = RedisRateLimiter::<String>::builder().test_clock(todo!());
/// ```
///
/// while the builder's other setters are:
///
/// ```
/// use brigade_limit::redis::RedisRateLimiter;
/// let _ = RedisRateLimiter::<String>::builder().max_batch(1);
/// ```
#[cfg(doctest)]
struct TestClockIsNotPublic;

/// A quota shared by `replicas`: the burst divided (rounded down, at least 1), the interval
/// multiplied.
fn divide(quota: Quota, replicas: NonZeroU32) -> Result<Quota, InvalidConfig> {
    let period = quota
        .replenish_interval()
        .checked_mul(replicas.get())
        .ok_or(InvalidConfig::QuotaTooLong)?;
    let burst = NonZeroU32::new(quota.burst().get() / replicas).unwrap_or(NonZeroU32::MIN);
    Ok(Quota::with_period(period)?.allow_burst(burst))
}

/// A rate limiter whose state lives in Redis, shared by every replica.
///
/// Cloning is cheap and shares the connection. See the [module docs](self) for the design.
///
/// A decision has one of three deciders. Redis, whenever it answers the round trip that
/// carries it. The [`Fallback`], only for an outage: the calls of a round trip that failed,
/// every call once [`outage_after`](RedisRateLimiterBuilder::outage_after) round trips in a
/// row have failed (until a probe brings Redis back), and a call whose key the script cannot
/// read. And nobody, for load: a decision the queue for Redis cannot serve in time is refused
/// with [`AcquireError::Overloaded`] (or waits, by [`Overload`]), never handed to the fallback.
pub struct RedisRateLimiter<K> {
    inner: Arc<Shared<K>>,
}

impl<K> Clone for RedisRateLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for RedisRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("limits", &&self.inner.names[..self.inner.len])
            .field("prefix", &self.inner.prefix)
            .field("link", &self.inner.link)
            .finish_non_exhaustive()
    }
}

struct Shared<K> {
    /// Shared with the batching tasks, which hold it weakly.
    link: Arc<Link>,
    len: usize,
    names: [&'static str; MAX_LIMITS],
    per_request: [bool; MAX_LIMITS],
    gcra: [Gcra; MAX_LIMITS],
    prefix: Box<str>,
    script: Script,
    /// Ask for the native command when connecting.
    native: bool,
    native_args: native::Args,
    fallback: Fell<K>,
    /// The unit tests' clock, in place of Redis's.
    #[cfg(test)]
    clock: Option<TestClock>,
    max_batch: usize,
    /// How long a decision may wait for its batch (see [`Overload`]).
    patience: Duration,
}

/// The largest batch [`RedisRateLimiterBuilder::max_batch`] takes.
const MAX_BATCH: usize = 1024;

/// The fallback, built.
enum Fell<K> {
    Open,
    Closed,
    Local(RateLimiter<K>),
}

/// What goes to Redis.
enum Op<'a, K> {
    Acquire(&'a K, [u32; MAX_LIMITS]),
    Settle(&'a K, [Adjust; MAX_LIMITS]),
}

/// What a decision came from.
pub(crate) enum Decided<K> {
    Redis(Admitted, Backend),
    Local(Admitted),
    LocalReserved(Reservation<K>),
    Open(Admitted),
}

/// How a call to Redis went out, which says who judges Redis by its failure.
#[derive(Clone, Copy)]
enum Waited {
    /// Sent by the caller: the caller judges.
    Alone,
    /// Queued for a batch: the batch's task judges Redis by the batch; a shed or a wait
    /// timeout of the caller's only counts (load), an error in the caller's own reply is
    /// about the request, and a task that is gone takes the connection down.
    Batch,
    /// Its batch failed, and the task has judged Redis by it already.
    BatchFailed,
}

impl<K> RedisRateLimiter<K> {
    /// A builder, for keys of any type (`K: Hash + Eq + Clone + Display` to decide: the key's
    /// `Display` is its part of the Redis key, see [Keys](self#keys)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::fmt;
    /// use std::num::NonZeroU32;
    /// use brigade_limit::redis::{RedisRateLimiter, State};
    /// use brigade_limit::{AcquireError, Admitted, Limit, Quota};
    ///
    /// /// A tenant and a model: each pair has its own quota.
    /// #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    /// struct Tenant {
    ///     id: u32,
    ///     model: &'static str,
    /// }
    ///
    /// // Its part of the Redis key: `brigade:limit:{7/small}:tokens`.
    /// impl fmt::Display for Tenant {
    ///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    ///         write!(f, "{}/{}", self.id, self.model)
    ///     }
    /// }
    ///
    /// async fn charge(
    ///     limiter: &RedisRateLimiter<Tenant>,
    ///     tenant: &Tenant,
    ///     tokens: u32,
    /// ) -> Result<Admitted, AcquireError> {
    ///     limiter.try_acquire(tenant, tokens).await
    /// }
    ///
    /// let tokens = Quota::per_minute(NonZeroU32::new(10_000).unwrap());
    /// let limiter = RedisRateLimiter::<Tenant>::builder()
    ///     .limit(Limit::new("tokens", tokens))
    ///     .build("redis://127.0.0.1:6379/")?;
    /// // Building does not connect: the first call (or `connect`) does.
    /// assert_eq!(limiter.state(), State::Fallback);
    /// # let _ = charge;
    /// # Ok::<(), brigade_limit::InvalidConfig>(())
    /// ```
    pub fn builder() -> RedisRateLimiterBuilder<K> {
        RedisRateLimiterBuilder::default()
    }

    /// Who decides now: Redis (and how), or the fallback.
    pub fn state(&self) -> State {
        self.inner.link.state()
    }

    /// Counts since the limiter was built.
    pub fn counters(&self) -> Counters {
        self.inner.link.counters()
    }

    /// The limits' names, in the order they were declared.
    pub fn limit_names(&self) -> &[&'static str] {
        &self.inner.names[..self.inner.len]
    }

    /// The prefix of every Redis key.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The time the script decides at, in nanoseconds since the Unix epoch: `None` for
    /// Redis's own (`TIME`), or the unit tests' clock.
    #[cfg(not(test))]
    #[inline]
    #[allow(
        clippy::unused_self,
        reason = "the unit tests' version reads the limiter's test clock"
    )]
    fn clock(&self) -> Option<u64> {
        None
    }

    #[cfg(test)]
    fn clock(&self) -> Option<u64> {
        self.inner.clock.as_ref().map(TestClock::now)
    }
}

impl<K: Hash + Eq + Clone + Display> RedisRateLimiter<K> {
    /// Connects now (if not connected), rather than on the first call: asks for the native
    /// command and loads the script. An explicit attempt, outside the probe schedule.
    ///
    /// # Errors
    ///
    /// [`RedisUnavailable`] if Redis does not answer within the connect timeout; the limiter
    /// stays on its fallback and probes as usual.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, it leaves the limiter as it was.
    pub async fn connect(&self) -> Result<Backend, RedisUnavailable> {
        if let State::Redis(backend) = self.state() {
            return Ok(backend);
        }
        let inner = &*self.inner;
        match self.open().await {
            Ok(live) => {
                let backend = live.backend;
                inner.link.set_up(live);
                Ok(backend)
            }
            Err(failure) => {
                inner.link.count_failure(&failure);
                Err(RedisUnavailable::new(failure))
            }
        }
    }

    /// Decides now: admits and charges `cost` cells (one on per-request limits) on every limit
    /// of `key`, in Redis, or charges nothing. One round trip (alone, or shared with a
    /// [batch](self#batches)); the fallback decides if that round trip fails, if the limiter
    /// has switched to it, or if the key holds something the script cannot read (see
    /// [When Redis is down](self#when-redis-is-down)).
    ///
    /// # Errors
    ///
    /// - [`AcquireError::Rejected`]: over quota, with `retry_after` and the most restrictive
    ///   limit (from Redis or from a local fallback).
    /// - [`AcquireError::Unsatisfiable`]: the cost exceeds a limit's burst (checked before
    ///   any round trip).
    /// - [`AcquireError::Overloaded`]: Redis answers, but the queue for it would keep this
    ///   call past its patience, or did ([load](self#load)); `retry_after` is the queue's
    ///   expected wait.
    /// - [`AcquireError::Unavailable`]: the fallback decides and refuses.
    ///
    /// # Cancel safety
    ///
    /// Dropped before Redis answered, the call may or may not have been charged (the script
    /// runs whole or not at all). A dropped probe schedules the next one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::num::NonZeroU32;
    /// use brigade_limit::redis::RedisRateLimiter;
    /// use brigade_limit::{Limit, Quota};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter: RedisRateLimiter<&str> = RedisRateLimiter::builder()
    ///     .limit(Limit::new("default", Quota::per_second(NonZeroU32::new(2).unwrap())))
    ///     .build("redis://127.0.0.1/")?;
    /// let admitted = limiter.try_acquire(&"alice", 1).await?;
    /// assert_eq!(admitted.tightest().remaining(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_acquire(&self, key: &K, cost: u32) -> Result<Admitted, AcquireError> {
        Ok(match self.decide(key, cost, false).await? {
            Decided::Redis(a, _) | Decided::Local(a) | Decided::Open(a) => a,
            Decided::LocalReserved(r) => r.admitted().clone(),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), but returns a [`RedisReservation`] to settle
    /// with the actual cost once it is known.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire): a reservation dropped with its future may have
    /// been charged, and is then never settled.
    pub async fn try_reserve(
        &self,
        key: &K,
        estimate: u32,
    ) -> Result<RedisReservation<K>, AcquireError> {
        let decided = self.decide(key, estimate, true).await?;
        Ok(RedisReservation::new(
            self.clone(),
            key.clone(),
            estimate,
            decided,
        ))
    }

    /// The cells limit `i` charges for a call of `cost`.
    fn cells(&self, cost: u32) -> [u32; MAX_LIMITS] {
        let mut cells = [0; MAX_LIMITS];
        for (i, c) in cells.iter_mut().enumerate().take(self.inner.len) {
            *c = if self.inner.per_request[i] { 1 } else { cost };
        }
        cells
    }

    // Indexing: limit `i` lives at `i` of parallel arrays (names, quotas, cells).
    #[allow(clippy::needless_range_loop)]
    pub(crate) async fn decide(
        &self,
        key: &K,
        cost: u32,
        reserve: bool,
    ) -> Result<Decided<K>, AcquireError> {
        let inner = &*self.inner;
        let cells = self.cells(cost);
        for i in 0..inner.len {
            if cells[i] > inner.gcra[i].burst {
                return Err(AcquireError::Unsatisfiable(Unsatisfiable {
                    limit: inner.names[i],
                    cost: u64::from(cells[i]),
                    burst: inner.gcra[i].burst,
                }));
            }
        }
        let failure = match self.on_redis(Op::Acquire(key, cells)).await {
            Ok((decision, backend)) => {
                inner
                    .link
                    .counters
                    .redis_decisions
                    .fetch_add(1, Ordering::Relaxed);
                return match decision {
                    Ok(admitted) => Ok(Decided::Redis(admitted, backend)),
                    Err(rejected) => Err(AcquireError::Rejected(rejected)),
                };
            }
            Err(failure) => failure,
        };
        // Load: Redis answers, the queue for it is too long. Never the fallback's to answer.
        if let Some(retry_after) = failure.overloaded() {
            inner
                .link
                .counters
                .overloaded
                .fetch_add(1, Ordering::Relaxed);
            return Err(AcquireError::Overloaded { retry_after });
        }
        inner
            .link
            .counters
            .fallback_decisions
            .fetch_add(1, Ordering::Relaxed);
        let unavailable = || AcquireError::Unavailable {
            retry_after: inner.link.retry_after(),
        };
        match &inner.fallback {
            Fell::Open => {
                // A fresh key's first call: what Redis would say after a flush.
                let mut snapshot = Snapshot::new(0);
                for i in 0..inner.len {
                    let g = inner.gcra[i];
                    snapshot.push(inner.names[i], g, g.charge(0, 0, u64::from(cells[i])));
                }
                Ok(Decided::Open(Admitted {
                    snapshot,
                    shadow: None,
                }))
            }
            Fell::Closed => Err(unavailable()),
            Fell::Local(local) => {
                let decided = if reserve {
                    local.try_reserve(key, cost).map(Decided::LocalReserved)
                } else {
                    local.try_acquire(key, cost).map(Decided::Local)
                };
                decided.map_err(|e| match e {
                    AcquireError::Unsatisfiable(_) => unavailable(),
                    other => other,
                })
            }
        }
    }

    /// Sends `op` to Redis if it is up (or this call is the probe), bounded by the timeouts.
    /// An error: the fallback answers ([`Failure::Down`] if no call was made), or, for load
    /// ([`Failure::overloaded`]), the call is refused.
    async fn on_redis(
        &self,
        op: Op<'_, K>,
    ) -> Result<(Result<Admitted, Rejected>, Backend), Failure> {
        let inner = &*self.inner;
        let link = &inner.link;
        match link.route() {
            Route::Redis(mut live) => {
                let mut waited = Waited::Alone;
                let failure = match self.run(&mut live, &op, &mut waited).await {
                    Ok(decision) => {
                        // A batch's task notes its own round trips.
                        if matches!(waited, Waited::Alone) {
                            link.answered(&live);
                        }
                        return Ok((decision, live.backend));
                    }
                    Err(failure) => failure,
                };
                match (waited, &failure) {
                    // Load: no round trip of its own failed, and nothing is judged.
                    (_, Failure::Shed { .. }) => link.count_shed(),
                    (_, Failure::WaitTimeout { .. }) => link.count_wait_timeout(),
                    // The batch's task judged Redis by the batch (see `batch`).
                    (Waited::BatchFailed, _) => {}
                    // Its own round trip; or an error in this call's own reply from a batch
                    // (about the request), or the task is gone (the connection is of no more
                    // use).
                    (Waited::Alone | Waited::Batch, _) => link.judge(&live, &failure),
                }
                Err(failure)
            }
            Route::Probe(probe) => {
                let mut live = match self.open().await {
                    Ok(live) => live,
                    Err(failure) => {
                        probe.failed(&failure);
                        return Err(failure);
                    }
                };
                // A new connection: its batching task has every slot free, so the probe's call
                // goes alone, and the probe judges Redis by it.
                let mut waited = Waited::Alone;
                match self.run(&mut live, &op, &mut waited).await {
                    Ok(decision) => {
                        let backend = live.backend;
                        probe.succeeded(live);
                        Ok((decision, backend))
                    }
                    // Redis answered; the key is this call's problem alone.
                    Err(failure) if failure.is_about_the_request() => {
                        link.count_failure(&failure);
                        probe.succeeded(live);
                        Err(failure)
                    }
                    Err(failure) => {
                        probe.failed(&failure);
                        Err(failure)
                    }
                }
            }
            Route::Fallback => Err(Failure::Down),
        }
    }

    /// Opens a connection; on the script path with batches, starts its batching task.
    async fn open(&self) -> Result<Live, Failure> {
        let inner = &*self.inner;
        let mut live = inner.link.open(inner.native, &inner.script).await?;
        if live.backend == Backend::Lua && inner.max_batch > 1 {
            let shape = Shape {
                len: inner.len,
                names: inner.names,
                gcra: inner.gcra,
                prefix: inner.prefix.clone(),
            };
            live.batcher = Some(Batcher::spawn(
                live.conn.clone(),
                inner.script.clone(),
                shape,
                inner.max_batch,
                inner.link.health(&live),
                Bounds {
                    call_timeout: inner.link.call_timeout,
                    patience: inner.patience,
                },
            ));
        }
        Ok(live)
    }

    /// One script operation: alone if a slot is free (or batching is off), bounded by the
    /// call timeout; else with the connection's next batch, bounded by the patience of
    /// [`Overload`]. `waited` says which.
    async fn script_call(
        &self,
        live: &mut Live,
        key: &K,
        op: Operation,
        waited: &mut Waited,
    ) -> Result<Value, Failure> {
        let _slot = match &live.batcher {
            Some(batcher) => match batcher.free_slot() {
                Some(slot) => Some(slot),
                None => {
                    *waited = Waited::Batch;
                    let reply = batcher.call(key.to_string(), op, self.clock()).await;
                    // A batch that failed was judged by its task. `Gone` (the task's runtime
                    // ended), `Shed` and `WaitTimeout`: no batch of this call's failed.
                    if reply.as_ref().is_err_and(|f| {
                        !matches!(
                            f,
                            Failure::Gone | Failure::Shed { .. } | Failure::WaitTimeout { .. }
                        )
                    }) {
                        *waited = Waited::BatchFailed;
                    }
                    return reply;
                }
            },
            None => None,
        };
        let inner = &*self.inner;
        let limits = Limits {
            len: inner.len,
            names: &inner.names,
            gcra: &inner.gcra,
        };
        let ops = std::iter::once((key as &dyn Display, &op));
        let cmd = script::command(
            inner.script.get_hash(),
            &limits,
            &inner.prefix,
            ops,
            self.clock(),
        );
        // With batches on, a lone call's round trip counts for the queue's estimate too, so
        // that one slow stretch cannot leave it high while no batch goes out to correct it.
        let sent = live.batcher.as_ref().map(|_| Instant::now());
        let call = script::run(&mut live.conn, &inner.script, &cmd);
        let reply = timeout(inner.link.call_timeout, call)
            .await
            .unwrap_or(Err(Failure::Timeout))?;
        if let (Some(batcher), Some(sent)) = (&live.batcher, sent) {
            batcher.note_round_trip(sent.elapsed());
        }
        let mut replies = script::replies(reply, 1)?;
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    /// One round trip. A settle answers `Ok(Admitted)` of nothing (its value is unused).
    async fn run(
        &self,
        live: &mut Live,
        op: &Op<'_, K>,
        waited: &mut Waited,
    ) -> Result<Result<Admitted, Rejected>, Failure> {
        let inner = &*self.inner;
        match (live.backend, op) {
            (Backend::Lua, Op::Acquire(key, cells)) => {
                let op = Operation::Acquire(*cells);
                let reply = self.script_call(live, *key, op, waited).await?;
                let decided = script::decided(&reply, inner.len)?;
                Ok(self.outcome(&decided, cells))
            }
            (Backend::Lua, Op::Settle(key, adjust)) => {
                let op = Operation::Settle(*adjust);
                script::settled(&self.script_call(live, *key, op, waited).await?)?;
                Ok(Ok(Admitted {
                    snapshot: Snapshot::new(0),
                    shadow: None,
                }))
            }
            (Backend::NativeGcra, Op::Acquire(key, cells)) => {
                let (g, n) = (inner.gcra[0], cells[0]);
                // A cost of 0 reads the state: a count over the burst is refused uncharged.
                let tokens = if n == 0 {
                    u64::from(g.burst) + 1
                } else {
                    u64::from(n)
                };
                let cmd = native::command(&inner.native_args, self.native_key(key), tokens);
                let reply = self.native_call(live, &cmd).await?;
                let reply = native::reply(&reply)?;
                let snapshot = reply.snapshot(inner.names[0], g);
                if n == 0 || !reply.limited {
                    Ok(Ok(Admitted {
                        snapshot,
                        shadow: None,
                    }))
                } else {
                    Ok(Err(Rejected {
                        snapshot: Box::new(snapshot),
                        retry_after: Duration::from_nanos(reply.retry_after(&g, n)),
                        limit: 0,
                    }))
                }
            }
            (Backend::NativeGcra, Op::Settle(key, adjust)) => {
                // No refund on the native path; an extra charge only if it fits the burst.
                let g = inner.gcra[0];
                if let Adjust::Charge(ns) = adjust[0] {
                    let extra = ns / g.t;
                    if (1..=u64::from(g.burst)).contains(&extra) {
                        let cmd = native::command(&inner.native_args, self.native_key(key), extra);
                        native::reply(&self.native_call(live, &cmd).await?)?;
                    }
                }
                Ok(Ok(Admitted {
                    snapshot: Snapshot::new(0),
                    shadow: None,
                }))
            }
        }
    }

    /// One native command, bounded by the call timeout.
    async fn native_call(&self, live: &mut Live, cmd: &redis::Cmd) -> Result<Value, Failure> {
        match timeout(
            self.inner.link.call_timeout,
            cmd.query_async(&mut live.conn),
        )
        .await
        {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn native_key<'a>(&'a self, key: &'a K) -> KeyArg<'a, K> {
        KeyArg {
            prefix: &self.inner.prefix,
            key,
            limit: self.inner.names[0],
            native: true,
        }
    }

    /// The public decision from the script's reply, with the in-process limiter's arithmetic.
    // Indexing: limit `i` lives at `i` of parallel arrays (names, quotas, cells, TATs).
    #[allow(clippy::needless_range_loop)]
    fn outcome(
        &self,
        decided: &script::Decided,
        cells: &[u32; MAX_LIMITS],
    ) -> Result<Admitted, Rejected> {
        let inner = &*self.inner;
        let now = decided.now;
        let mut snapshot = Snapshot::new(now);
        for i in 0..inner.len {
            snapshot.push(inner.names[i], inner.gcra[i], decided.tats[i]);
        }
        if decided.admitted {
            return Ok(Admitted {
                snapshot,
                shadow: None,
            });
        }
        // As `RateLimiter::decide`: the longest wait names the limit.
        let mut wait = 0;
        let mut worst = 0;
        for i in 0..inner.len {
            if cells[i] == 0 {
                continue;
            }
            let earliest = inner.gcra[i].earliest(decided.tats[i], cells[i]);
            if earliest > now && earliest - now > wait {
                wait = earliest - now;
                worst = i as u8;
            }
        }
        Err(Rejected {
            snapshot: Box::new(snapshot),
            // The script and this arithmetic agree; a wait of at least 1 ns keeps a
            // rejection a rejection whatever a tampered key holds.
            retry_after: Duration::from_nanos(wait.max(1)),
            limit: worst,
        })
    }

    /// Settles a reservation made on Redis: `until` holds each limit's TAT right after its
    /// charge.
    pub(crate) async fn settle(
        &self,
        key: &K,
        estimate: u32,
        actual: u32,
        until: &[u64; MAX_LIMITS],
    ) -> Result<(), RedisUnavailable> {
        let inner = &*self.inner;
        let mut adjust = [Adjust::None; MAX_LIMITS];
        for i in 0..inner.len {
            if inner.per_request[i] {
                continue;
            }
            let t = inner.gcra[i].t;
            adjust[i] = if actual > estimate {
                Adjust::Charge(t.saturating_mul(u64::from(actual - estimate)))
            } else {
                Adjust::Refund {
                    amount: t.saturating_mul(u64::from(estimate - actual)),
                    until: until[i],
                }
            };
        }
        self.on_redis(Op::Settle(key, adjust))
            .await
            .map(drop)
            .map_err(RedisUnavailable::new)
    }
}
