//! Hedged requests: another request when the first is slow to its first byte.
//!
//! # Why hedge
//!
//! Most of a service's slow answers are not slow because of the request: a replica was
//! collecting garbage, a queue was briefly long, a model server was loading. Sending the same
//! request again, to another upstream, once the first has gone longer than most requests take,
//! and keeping whichever answers first, cuts the tail at a small cost ("The Tail at Scale",
//! Dean and Barroso, 2013: a hedge after 10 ms cut the 99.9th percentile from 1,800 ms to
//! 74 ms for 2 % more requests).
//!
//! # How a hedged call runs
//!
//! A [`Hedge`] is a policy used through a retry policy: [`Retry::hedge`](crate::Retry::hedge)
//! (or [`Call::hedge`](crate::Call::hedge)) gives a [`HedgedCall`](crate::HedgedCall), whose
//! every attempt is a *round* of hedged requests:
//!
//! - The round starts one request. When none in flight has sent its first byte (called
//!   [`commit`](HedgeAttempt::commit)) for the [delay](HedgeDelay) since the latest one
//!   started, and fewer than [`max_in_flight`](HedgeBuilder::max_in_flight) are in flight,
//!   it starts another, a *hedge*. The operation is told which request it runs
//!   ([`HedgeAttempt::number`], [`HedgeAttempt::is_hedge`]), so it can send each to another
//!   upstream.
//! - The **first request to commit wins**: every other is cancelled at once (its token
//!   cancelled, its future dropped) and no hedge starts after it. A request that finishes with
//!   an outcome the classifier accepts ([`Action::Stop`](crate::Action::Stop)) wins the same
//!   way, commit or not.
//! - A request that fails before committing leaves the others running; the round fails when
//!   the last one in flight fails, with that failure, and the retry policy decides whether to
//!   retry it (after its backoff, within its budget). A committed winner that fails is never
//!   retried ([`StopReason::Committed`](crate::StopReason::Committed)).
//! - Time is tokio's: the delay, the attempt timeout and the deadline pause with the clock.
//!
//! # Hedges draw on the retry budget
//!
//! A hedge is an extra request, as a retry is, so it draws on the same
//! [`RetryBudget`](crate::RetryBudget): the retry policy's. A call deposits once, and every
//! retry and every hedge withdraws one; a hedge the budget refuses is not started, and its round
//! starts no other. When the fleet is sick and the budget runs dry, hedges and retries stop
//! together: the upstreams see at most `1 + ratio` times the calls, not twice that.
//!
//! # Cancellation, and brigade-cancel
//!
//! Each request may ask for its own [`CancellationToken`](tokio_util::sync::CancellationToken)
//! ([`HedgeAttempt::token`]): a child of the call's token
//! ([`cancel_on`](crate::HedgedCall::cancel_on)), if any, cancelled when the request loses, when
//! it fails, and when the call is dropped; the winner's is left alone, so a stream it returned
//! keeps running. [`HedgeAttempt::stopped`] says why a request was stopped: [`Stopped::Lost`]
//! (another one won), [`Stopped::Cancelled`] (the call's token) or [`Stopped::Abandoned`] (the
//! call was dropped or timed out). This crate does not depend on `brigade-cancel`; a caller
//! holding a `CancelScope` passes `scope.token()` to `cancel_on`, and gives each request a
//! child scope that it cancels, with a reason of its own, when the request is stopped (a drop
//! guard that reads `stopped()`, or a task waiting on the request's token).
//!
//! # The delay
//!
//! A [fixed](HedgeDelay::Fixed) delay, or a [percentile](LatencyPercentile) of recent
//! first-byte latencies: the time from a request's start to its commit (or to its accepted
//! outcome, if it never commits). A request that loses counts too, with the time it had run
//! when it lost (a lower bound of its latency): without it, the slow requests that hedging
//! cuts short would vanish from the samples, the percentile would fall, hedges would start
//! earlier, and more of them. The estimator is a ring of the last samples (128 by default)
//! shared by every clone of the [`Hedge`]; it gives no delay (so no hedge) until it holds
//! [`min_samples`](LatencyPercentile::min_samples), unless a
//! [`fallback`](LatencyPercentile::fallback) is set. [`Hedge::record`] adds samples measured
//! elsewhere.

mod attempt;
mod latency;
pub(crate) mod round;

pub use self::attempt::{HedgeAttempt, Stopped};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use self::latency::{Latencies, MAX_WINDOW};
use crate::InvalidConfig;

/// A hedging policy: when to start another request, and how many may run at once.
///
/// Build one with [`Hedge::builder`] and use it through a retry policy:
/// [`Retry::hedge`](crate::Retry::hedge). Cloning is cheap (an `Arc`) and clones share the
/// latency estimator, so build one per upstream pool and clone it into every request. The
/// [module docs](self) explain how a hedged call runs.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use brigade_retry::{Hedge, HedgeDelay, Retry};
/// use tokio::time::sleep;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let retry = Retry::builder().build().unwrap();
/// let hedge = Hedge::builder()
///     .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
///     .max_in_flight(2)
///     .build()
///     .unwrap();
///
/// // Upstream 1 takes a second to its first token, upstream 2 takes 10 ms.
/// let sent = AtomicU32::new(0);
/// let start = tokio::time::Instant::now();
/// let answer = retry
///     .hedge(&hedge)
///     .run(async |attempt| {
///         sent.fetch_add(1, Ordering::Relaxed);
///         let upstream = attempt.number();
///         sleep(Duration::from_millis(if upstream == 1 { 1000 } else { 10 })).await;
///         attempt.commit(); // the first token: this request wins
///         Ok::<_, std::io::Error>(upstream)
///     })
///     .await
///     .unwrap();
/// assert_eq!(answer, 2);
/// assert_eq!(start.elapsed(), Duration::from_millis(60)); // 50 ms delay + 10 ms
/// assert_eq!(sent.into_inner(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct Hedge {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    delay: Delay,
    pub(crate) max_in_flight: u32,
}

enum Delay {
    Fixed(Duration),
    Tracked {
        latencies: Latencies,
        floor: Duration,
        ceiling: Duration,
        fallback: Option<Duration>,
    },
}

impl Hedge {
    /// A builder with the defaults: the 95th percentile of recent first-byte latencies
    /// ([`LatencyPercentile::new(95.0)`](LatencyPercentile::new) with its defaults), at most 2
    /// requests in flight.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder::default()
    }

    /// The delay a request started now would wait before its hedge: the fixed delay, or the
    /// percentile of recent latencies within its clamp; `None` when no hedge would start (a
    /// percentile without enough samples and no fallback).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_retry::{Hedge, LatencyPercentile};
    ///
    /// let ms = Duration::from_millis;
    /// let hedge = Hedge::builder()
    ///     .delay(LatencyPercentile::new(90.0).min_samples(10).clamp(ms(20), ms(500)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(hedge.current_delay(), None); // no data: no hedge
    /// for latency in 1..=10 {
    ///     hedge.record(ms(latency * 10)); // 10, 20, ... 100 ms
    /// }
    /// assert_eq!(hedge.current_delay(), Some(ms(90)));
    /// ```
    pub fn current_delay(&self) -> Option<Duration> {
        self.inner.delay()
    }

    /// Records a first-byte latency measured elsewhere (to warm the estimator up from history,
    /// say). Hedged calls record their own; a fixed delay ignores samples.
    pub fn record(&self, latency: Duration) {
        self.inner.record(latency);
    }

    /// The most requests a round runs at once, the first included.
    pub fn max_in_flight(&self) -> u32 {
        self.inner.max_in_flight
    }
}

impl Inner {
    pub(crate) fn delay(&self) -> Option<Duration> {
        match &self.delay {
            Delay::Fixed(delay) => Some(*delay),
            Delay::Tracked {
                latencies,
                floor,
                ceiling,
                fallback,
            } => latencies
                .estimate()
                .map(|estimate| estimate.clamp(*floor, *ceiling))
                .or(*fallback),
        }
    }

    /// Whether the delay follows recorded latencies (and so calls should record them).
    pub(crate) const fn is_tracked(&self) -> bool {
        matches!(self.delay, Delay::Tracked { .. })
    }

    pub(crate) fn record(&self, latency: Duration) {
        if let Delay::Tracked { latencies, .. } = &self.delay {
            latencies.record(latency);
        }
    }
}

impl fmt::Debug for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Hedge");
        match &self.inner.delay {
            Delay::Fixed(delay) => s.field("delay", delay),
            Delay::Tracked {
                latencies,
                floor,
                ceiling,
                fallback,
            } => s
                .field("percentile", &latencies.percentile())
                .field("floor", floor)
                .field("ceiling", ceiling)
                .field("fallback", fallback)
                .field("samples", &latencies.recorded())
                .field("current_delay", &self.current_delay()),
        };
        s.field("max_in_flight", &self.inner.max_in_flight).finish()
    }
}

/// When a round starts its next request: a fixed delay, or a percentile of recent first-byte
/// latencies.
///
/// A [`Duration`] or a [`LatencyPercentile`] converts into one, so
/// [`HedgeBuilder::delay`] takes either.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// Always this long after the latest request started. Zero starts every request at once.
    Fixed(Duration),
    /// A percentile of recent first-byte latencies.
    Percentile(LatencyPercentile),
}

impl From<Duration> for HedgeDelay {
    fn from(delay: Duration) -> Self {
        Self::Fixed(delay)
    }
}

impl From<LatencyPercentile> for HedgeDelay {
    fn from(percentile: LatencyPercentile) -> Self {
        Self::Percentile(percentile)
    }
}

/// A hedge delay that follows a percentile of recent first-byte latencies, within a clamp.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::LatencyPercentile;
///
/// // The 95th percentile of the last 256 requests, never under 20 ms nor over 2 s; 250 ms
/// // until 50 samples are in.
/// let delay = LatencyPercentile::new(95.0)
///     .clamp(Duration::from_millis(20), Duration::from_secs(2))
///     .window(256)
///     .min_samples(50)
///     .fallback(Duration::from_millis(250));
/// # let _ = brigade_retry::Hedge::builder().delay(delay).build().unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct LatencyPercentile {
    percentile: f64,
    floor: Duration,
    ceiling: Duration,
    window: u32,
    min_samples: u32,
    fallback: Option<Duration>,
}

impl LatencyPercentile {
    /// The `percentile` (above 0, at most 100) of recent first-byte latencies, with the
    /// defaults: no clamp, a window of 128 samples, 20 samples before the first hedge, no
    /// fallback.
    pub const fn new(percentile: f64) -> Self {
        Self {
            percentile,
            floor: Duration::ZERO,
            ceiling: Duration::MAX,
            window: 128,
            min_samples: 20,
            fallback: None,
        }
    }

    /// The shortest and the longest delay: the percentile is clamped to `floor..=ceiling`.
    ///
    /// Default: zero to [`Duration::MAX`] (no clamp).
    pub const fn clamp(mut self, floor: Duration, ceiling: Duration) -> Self {
        self.floor = floor;
        self.ceiling = ceiling;
        self
    }

    /// How many recent samples the percentile is taken over, from 1 to 512 (a ring: each
    /// new sample replaces the oldest). The percentile is recomputed every sixteenth of the
    /// window (at least every sample).
    ///
    /// Default: 128.
    pub const fn window(mut self, samples: u32) -> Self {
        self.window = samples;
        self
    }

    /// Samples needed before the percentile is used, from 1 to the window. Before that, the
    /// [`fallback`](Self::fallback) is, or no hedge starts at all.
    ///
    /// Default: 20.
    pub const fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self
    }

    /// The delay used until [`min_samples`](Self::min_samples) are in (not clamped).
    ///
    /// Default: none: no hedge starts before the estimator has data.
    pub const fn fallback(mut self, delay: Duration) -> Self {
        self.fallback = Some(delay);
        self
    }
}

/// Builds a [`Hedge`]. Every setter documents its default.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build`"]
pub struct HedgeBuilder {
    delay: HedgeDelay,
    max_in_flight: u32,
}

impl Default for HedgeBuilder {
    fn default() -> Self {
        Self {
            delay: HedgeDelay::Percentile(LatencyPercentile::new(95.0)),
            max_in_flight: 2,
        }
    }
}

impl HedgeBuilder {
    /// When to start the next request: a [`Duration`] (fixed), a [`LatencyPercentile`], or a
    /// [`HedgeDelay`].
    ///
    /// Default: [`LatencyPercentile::new(95.0)`](LatencyPercentile::new): the 95th percentile
    /// of the last 128 first-byte latencies, once 20 are in.
    pub fn delay(mut self, delay: impl Into<HedgeDelay>) -> Self {
        self.delay = delay.into();
        self
    }

    /// The most requests a round runs at once, the first included: 2 allows one hedge at a
    /// time; 1 turns hedging off.
    ///
    /// Default: 2.
    pub const fn max_in_flight(mut self, max: u32) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Builds the policy; a percentile's estimator starts empty.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroMaxInFlight`], [`InvalidConfig::HedgePercentile`],
    /// [`InvalidConfig::HedgeClamp`] or [`InvalidConfig::HedgeWindow`].
    pub fn build(self) -> Result<Hedge, InvalidConfig> {
        if self.max_in_flight == 0 {
            return Err(InvalidConfig::ZeroMaxInFlight);
        }
        let delay = match self.delay {
            HedgeDelay::Fixed(delay) => Delay::Fixed(delay),
            HedgeDelay::Percentile(p) => {
                if !(p.percentile.is_finite() && p.percentile > 0.0 && p.percentile <= 100.0) {
                    return Err(InvalidConfig::HedgePercentile);
                }
                if p.floor > p.ceiling {
                    return Err(InvalidConfig::HedgeClamp);
                }
                if !(1..=MAX_WINDOW).contains(&p.window) || !(1..=p.window).contains(&p.min_samples)
                {
                    return Err(InvalidConfig::HedgeWindow);
                }
                Delay::Tracked {
                    latencies: Latencies::new(p.window, p.percentile, p.min_samples),
                    floor: p.floor,
                    ceiling: p.ceiling,
                    fallback: p.fallback,
                }
            }
        };
        Ok(Hedge {
            inner: Arc::new(Inner {
                delay,
                max_in_flight: self.max_in_flight,
            }),
        })
    }
}
