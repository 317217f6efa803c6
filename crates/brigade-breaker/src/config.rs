//! The breaker's configuration: its window, thresholds, open duration and half-open probes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{CircuitBreaker, InvalidConfig, Listener};

/// Which calls the rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub(crate) kind: WindowKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Count(u32),
    Time { length: Duration, buckets: u32 },
}

impl Window {
    /// The largest count window, in calls, that [`CircuitBreakerBuilder::build`] accepts:
    /// 2^20.
    pub const MAX_CALLS: u32 = 1 << 20;
    /// The most buckets a time window may have, that [`CircuitBreakerBuilder::build`]
    /// accepts: 2^16.
    pub const MAX_BUCKETS: u32 = 1 << 16;

    /// The last `calls` calls, at most [`MAX_CALLS`](Self::MAX_CALLS). Recording a call costs
    /// no clock read.
    pub const fn count(calls: u32) -> Self {
        Self {
            kind: WindowKind::Count(calls),
        }
    }

    /// The calls of the last `length`, in one bucket per second (rounded up, at least one;
    /// a window longer than [`MAX_BUCKETS`](Self::MAX_BUCKETS) seconds gets that many longer
    /// buckets). Calls age out a bucket at a time. Recording a call costs one clock read.
    pub fn time(length: Duration) -> Self {
        let buckets = length
            .as_secs()
            .saturating_add(u64::from(length.subsec_nanos() > 0));
        let buckets = buckets.clamp(1, u64::from(Self::MAX_BUCKETS));
        Self::time_with_buckets(length, u32::try_from(buckets).unwrap_or(Self::MAX_BUCKETS))
    }

    /// The calls of the last `length`, in `buckets` buckets of equal length: more buckets age
    /// calls out more smoothly and cost more to read when a failure is recorded. Each bucket
    /// must last at least a millisecond, and there may be at most
    /// [`MAX_BUCKETS`](Self::MAX_BUCKETS).
    pub const fn time_with_buckets(length: Duration, buckets: u32) -> Self {
        Self {
            kind: WindowKind::Time { length, buckets },
        }
    }
}

/// How long the breaker stays open after it trips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenDuration {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
}

impl OpenDuration {
    /// Always `duration`. Any duration above zero works, a millisecond included.
    pub const fn fixed(duration: Duration) -> Self {
        Self {
            base: duration,
            max: duration,
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// `base` after the first trip, doubling with each trip that follows without the breaker
    /// closing in between, never over `max`. Change the growth with
    /// [`multiplier`](Self::multiplier) and spread reopenings with [`jitter`](Self::jitter).
    pub const fn escalating(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// Growth factor between consecutive trips, finite and at least 1. Default 2.
    #[must_use]
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Random spread: each duration is scaled by a factor drawn uniformly from
    /// `[1 - jitter, 1 + jitter]`, then capped. `jitter` is in `[0, 1]`; default 0. The random
    /// source is seeded ([`CircuitBreakerBuilder::jitter_seed`]).
    #[must_use]
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }
}

/// Builds a [`CircuitBreaker`]. Every setter documents its default.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_breaker::{CircuitBreaker, OpenDuration, Window};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder()
///     .window(Window::time(Duration::from_secs(30)))
///     .failure_rate_threshold(50.0)
///     .slow_calls(Duration::from_secs(10), 80.0)
///     .consecutive_failures(5)
///     .minimum_calls(20)
///     .open_duration(OpenDuration::escalating(Duration::from_secs(5), Duration::from_secs(120)).jitter(0.2))
///     .half_open_probes(2)
///     .half_open_successes(3)
///     .build()
///     .unwrap();
/// assert_eq!(breaker.state(), brigade_breaker::State::Closed);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerBuilder {
    pub(crate) window: Window,
    pub(crate) failure_rate: f64,
    pub(crate) slow: Option<(Duration, f64)>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) minimum_calls: u32,
    pub(crate) open: OpenDuration,
    pub(crate) max_retry_after: Duration,
    pub(crate) probes: u32,
    pub(crate) successes: u32,
    pub(crate) seed: Option<u64>,
    pub(crate) listener: Option<Arc<dyn Listener>>,
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("slow", &self.slow)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("minimum_calls", &self.minimum_calls)
            .field("open", &self.open)
            .field("max_retry_after", &self.max_retry_after)
            .field("probes", &self.probes)
            .field("successes", &self.successes)
            .field("seed", &self.seed)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerBuilder {
    /// The defaults: the last 100 calls, trip at 50 % failures once 20 calls are in the window,
    /// no slow-call or consecutive-failure threshold, open for 30 s, 3 probes at once, close
    /// after 3 successful probes.
    pub fn new() -> Self {
        Self {
            window: Window::count(100),
            failure_rate: 50.0,
            slow: None,
            consecutive_failures: None,
            minimum_calls: 20,
            open: OpenDuration::fixed(Duration::from_secs(30)),
            max_retry_after: Duration::from_secs(300),
            probes: 3,
            successes: 3,
            seed: None,
            listener: None,
        }
    }

    /// The calls the rates are computed over. Default: [`Window::count(100)`](Window::count).
    #[must_use]
    pub const fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Trip when failures make up at least `percent` of the window, in `(0, 100]`. Default 50.
    ///
    /// Thresholds are checked when a failed or slow call is recorded, and, while the window
    /// holds fewer than [`minimum_calls`](Self::minimum_calls) with a failure or slow call
    /// among them, on every call. So a rate that rises only because older successes age out
    /// of a time window trips the breaker at the next failed or slow call, not before.
    #[must_use]
    pub const fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.failure_rate = percent;
        self
    }

    /// A call that takes `duration` or longer is slow, success or failure; trip when slow calls
    /// make up at least `percent` of the window, in `(0, 100]`. A slow half-open probe counts
    /// as a failed probe. Default: off (no clock read at call start).
    #[must_use]
    pub const fn slow_calls(mut self, duration: Duration, percent: f64) -> Self {
        self.slow = Some((duration, percent));
        self
    }

    /// Also trip after `failures` failures in a row. Default: off.
    #[must_use]
    pub const fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// No threshold trips before the window holds this many calls. Default 20.
    #[must_use]
    pub const fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// How long to stay open. Default: [`OpenDuration::fixed`] of 30 s.
    #[must_use]
    pub const fn open_duration(mut self, open: OpenDuration) -> Self {
        self.open = open;
        self
    }

    /// The longest upstream `Retry-After` hint honoured: a failure's hint longer than the open
    /// duration extends it, up to this cap. `Duration::ZERO` ignores hints. Default 5 minutes.
    #[must_use]
    pub const fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// At most this many probes at once while half-open. Default 3.
    #[must_use]
    pub const fn half_open_probes(mut self, probes: u32) -> Self {
        self.probes = probes;
        self
    }

    /// Close after this many successful probes. Default 3.
    #[must_use]
    pub const fn half_open_successes(mut self, successes: u32) -> Self {
        self.successes = successes;
        self
    }

    /// Seed of the open-duration jitter, for reproducible tests. Default: a seed drawn from
    /// the standard library's random hasher keys.
    #[must_use]
    pub const fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Told of every state transition and rejection. Default: none.
    #[must_use]
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the configuration.
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        let percent = |p: f64| p > 0.0 && p <= 100.0;
        if !percent(self.failure_rate) {
            return Err(InvalidConfig::FailureRateThreshold);
        }
        if let Some((duration, rate)) = self.slow {
            if !percent(rate) {
                return Err(InvalidConfig::SlowCallRateThreshold);
            }
            if duration.is_zero() {
                return Err(InvalidConfig::ZeroSlowCallDuration);
            }
        }
        match self.window.kind {
            WindowKind::Count(0) => return Err(InvalidConfig::ZeroWindow),
            WindowKind::Count(n) if n > Window::MAX_CALLS => {
                return Err(InvalidConfig::WindowTooLarge);
            }
            WindowKind::Count(n) if self.minimum_calls > n => {
                return Err(InvalidConfig::MinimumCalls);
            }
            WindowKind::Count(_) => {}
            WindowKind::Time { length, buckets } => {
                if length.is_zero() {
                    return Err(InvalidConfig::ZeroWindow);
                }
                if buckets == 0 || length / buckets < Duration::from_millis(1) {
                    return Err(InvalidConfig::BucketTooShort);
                }
                if buckets > Window::MAX_BUCKETS {
                    return Err(InvalidConfig::WindowTooLarge);
                }
            }
        }
        if self.minimum_calls == 0 {
            return Err(InvalidConfig::MinimumCalls);
        }
        if self.consecutive_failures == Some(0) {
            return Err(InvalidConfig::ZeroConsecutiveFailures);
        }
        let open = self.open;
        if open.base.is_zero() {
            return Err(InvalidConfig::ZeroOpenDuration);
        }
        if open.max < open.base
            || !open.multiplier.is_finite()
            || open.multiplier < 1.0
            || !(0.0..=1.0).contains(&open.jitter)
        {
            return Err(InvalidConfig::Escalation);
        }
        if !(1..=u32::from(u16::MAX)).contains(&self.probes) {
            return Err(InvalidConfig::HalfOpenProbes);
        }
        if !(1..=u32::from(u16::MAX)).contains(&self.successes) {
            return Err(InvalidConfig::HalfOpenSuccesses);
        }
        Ok(())
    }

    /// Builds the breaker, closed.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] names the first setting that cannot work: a threshold outside
    /// `(0, 100]`, an empty window, zero probes, and so on.
    pub fn build(self) -> Result<CircuitBreaker, InvalidConfig> {
        self.validate()?;
        Ok(CircuitBreaker::from_builder(self))
    }
}
