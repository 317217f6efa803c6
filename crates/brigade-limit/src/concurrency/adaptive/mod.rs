//! Adaptive concurrency: a limit that finds the upstream's capacity from what its calls show.
//!
//! A fixed bulkhead needs its capacity told, and an upstream's capacity moves: a model
//! server scales out, a provider throttles, a replica shares a GPU with a batch job. An
//! [`AdaptiveLimit`] starts at a guess and moves the limit from two signals:
//!
//! - **latency samples**: by default the time from the permit's grant to the call's
//!   [`Outcome::Success`] (record it at the first byte: time to first byte), or any
//!   latency the caller measures ([`Outcome::Latency`]: time to first token, time per
//!   output token);
//! - **drops**: [`Outcome::Dropped`] for a 429, a 503 or a timeout.
//!
//! A permit dropped without an outcome (a cancelled call) records nothing.
//!
//! # Windows, and the two latencies
//!
//! Samples are gathered into windows: a window closes once it holds
//! [`window_samples`](AdaptiveLimitBuilder::window_samples) samples and has lasted at
//! least one recent latency, so a change of the limit shows in the next window rather than
//! being reacted to twice. Each closed window gives:
//!
//! - the **latency**: the window's mean latency (smoothed over windows by [`Aimd`]; the
//!   [`Gradient`] smooths its limit instead);
//! - the **no-load latency**: the lowest latency seen since the last probe (below).
//!
//! Their ratio is the congestion signal: an upstream working within its capacity answers
//! near its no-load latency; past it, calls queue and the latency rises.
//!
//! # The policies
//!
//! - [`Gradient`] (the default), in the spirit of Netflix's Gradient2 and Envoy's adaptive
//!   concurrency filter: the limit is scaled by `tolerance × no_load / latency` (kept
//!   between 0.5 and 1), a queue allowance of `queue × √limit` lets it grow while the
//!   latency is within tolerance, and the result is smoothed. A window with a drop scales
//!   the limit by 0.5 before smoothing.
//! - [`Aimd`]: a window with a drop, or a latency over `tolerance × no_load`, multiplies
//!   the limit by `backoff`; any other window adds `increase`.
//!
//! Both stay between [`min_limit`](AdaptiveLimitBuilder::min_limit) and
//! [`max_limit`](AdaptiveLimitBuilder::max_limit), and neither raises a limit the calls
//! in flight never reached half of (an idle limit proves nothing). With its tolerance `t`,
//! a policy holds the upstream's latency near `t` times its no-load latency: for an
//! upstream whose latency climbs steeply past its capacity (a model server's time to first
//! token, once requests wait for a batch slot) that is close to the capacity; for one whose
//! latency grows only in proportion to the load beyond it, it is up to `t` times it.
//!
//! # Traps avoided
//!
//! The anchors of this design have known failure modes; each is avoided here:
//!
//! - **The limit climbing to its maximum under steady timeouts.** A limit that reads a
//!   timed-out call as a latency sample sees a flat latency (every call takes the timeout)
//!   and reads no congestion, so it grows. Here a timeout is a drop, never a sample; a
//!   window of drops only lowers the limit, and a drop never sets the no-load latency.
//! - **The queue allowance growing the limit without bound under modest overload.** When
//!   the allowance is added on every update, a latency a little over the reference (a
//!   gradient of 0.8, say) still finds the limit grown by the allowance, and the reference
//!   drifting up with the latency does the rest. Here the allowance is added only while
//!   the latency is within tolerance of the *no-load* latency, which does not follow the
//!   load (next point): under any overload beyond the tolerance the limit only falls.
//! - **A no-load latency that only drifts upward.** A long-term average of the latency
//!   follows a long overload up, and then comes down slowly if at all. Here the no-load
//!   latency is the lowest window latency since the last *probe*: it falls as soon as a
//!   faster window is seen, and it does not rise between probes at all. A probe, every
//!   [`probe_interval`](AdaptiveLimitBuilder::probe_interval) (up to a quarter later, at
//!   random, so replicas do not probe in step), halves the limit for one window, measures
//!   the latency of the calls granted under it (calls granted before are left out), and
//!   takes that as the new no-load latency, higher or lower: an upstream that really got
//!   slower is learnt, one that got faster again too. A limit held at its minimum for five
//!   windows in a row by a high latency probes at once (its no-load latency may be out of
//!   date, and the limit cannot go lower anyway).
//!
//! # Queue or reject
//!
//! [`try_acquire`](AdaptiveLimit::try_acquire) answers at once;
//! [`acquire`](AdaptiveLimit::acquire) waits first come, first served in a queue bounded
//! by [`max_queue`](AdaptiveLimitBuilder::max_queue), at most
//! [`queue_timeout`](AdaptiveLimitBuilder::queue_timeout). Both refuse with the bulkhead's
//! [`Overloaded`]. When the limit falls below the calls in flight, nothing is cut: the next
//! calls wait until enough permits come back.
//!
//! # Cost
//!
//! A grant is one compare-and-swap on tokio's semaphore, an atomic load and a clock read,
//! and allocates nothing unless it queues; giving a permit back is the semaphore's own
//! release. Recording an outcome takes one lock, held for a few arithmetic operations.
//! Nothing runs in the background: windows close and probes start as samples arrive.

mod capacity;
mod classify;
mod controller;
mod policy;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::capacity::Capacity;
pub use self::classify::{Classify, HttpClassifier, Outcome};
use self::controller::{Controller, Sample, Settings};
pub use self::policy::{AdaptivePolicy, Aimd, Gradient};
use super::slots::Slots;
use super::{OverloadReason, Overloaded};
use crate::InvalidConfig;

/// A concurrency limit that adapts to the upstream: it grows while the upstream answers at
/// its no-load latency, and falls when the latency rises or calls are dropped.
///
/// Cloning is cheap and shares the limit. The [module docs](self) explain the policies and
/// their parameters.
///
/// # Examples
///
/// ```
/// use brigade_limit::AdaptiveLimit;
/// use brigade_limit::concurrency::adaptive::Outcome;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limit = AdaptiveLimit::builder().initial_limit(4).build().unwrap();
/// let mut permit = limit.acquire().await.unwrap();
/// assert_eq!((limit.limit(), limit.in_flight()), (4, 1));
/// // ... call the upstream; at its first byte:
/// permit.record(Outcome::Success);
/// drop(permit); // at the end of the stream
/// assert_eq!(limit.in_flight(), 0);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

/// Lock order: `controller`, then the semaphore's own lock (a limit change made under the
/// controller moves the semaphore); nothing takes the controller while holding the semaphore.
#[derive(Debug)]
struct Inner {
    capacity: Capacity,
    controller: Mutex<Controller>,
    queue: Slots,
    queue_timeout: Duration,
    retry_after: Duration,
    min: usize,
    max: usize,
}

/// Builds an [`AdaptiveLimit`]; each setter documents its default.
#[derive(Clone, Debug)]
#[must_use]
pub struct AdaptiveLimitBuilder {
    policy: AdaptivePolicy,
    initial: usize,
    min: usize,
    max: usize,
    max_queue: usize,
    queue_timeout: Duration,
    retry_after: Duration,
    window_samples: u32,
    probe_interval: Duration,
    seed: Option<u64>,
}

impl AdaptiveLimitBuilder {
    /// How the limit moves: [`Gradient`] or [`Aimd`], with their settings. Default:
    /// `Gradient::new()`.
    pub fn policy(mut self, policy: impl Into<AdaptivePolicy>) -> Self {
        self.policy = policy.into();
        self
    }

    /// The limit before any sample. Default: 20.
    pub fn initial_limit(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }

    /// The lowest the limit goes; at least 1. Default: 1.
    pub fn min_limit(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The highest the limit goes. Default: 200.
    pub fn max_limit(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// The most calls waiting for a permit; 0 refuses at once when all are taken.
    /// Default: 64.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// The longest a call waits in the queue. Default: 5 s.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The `Retry-After` a refused caller is given. Default: 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The fewest samples (latencies and drops) a window closes with; a window also lasts
    /// at least one recent latency. At least 1. Default: 20.
    pub fn window_samples(mut self, n: u32) -> Self {
        self.window_samples = n;
        self
    }

    /// How often the no-load latency is measured again, by a window at half the limit
    /// (each probe comes up to a quarter of this later, at random). Above zero.
    /// Default: 60 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Seeds the random delay of each probe, for repeatable tests. Default: a random seed.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the limit.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::InvalidLimits`] unless `1 <= min <= initial <= max` (and `max`
    /// within tokio's semaphore); [`InvalidConfig::OutOfRange`] naming a policy setting
    /// outside its range, `window_samples(0)` or a zero `probe_interval`.
    pub fn build(self) -> Result<AdaptiveLimit, InvalidConfig> {
        let (min, initial, max) = (self.min, self.initial, self.max);
        if min == 0 || min > initial || initial > max || max > Semaphore::MAX_PERMITS {
            return Err(InvalidConfig::InvalidLimits { min, initial, max });
        }
        if self.window_samples == 0 {
            return Err(InvalidConfig::OutOfRange {
                setting: "window_samples",
                range: "at least 1",
            });
        }
        if self.probe_interval.is_zero() {
            return Err(InvalidConfig::OutOfRange {
                setting: "probe_interval",
                range: "above zero",
            });
        }
        self.policy.validate()?;
        let controller = Controller::new(Settings {
            policy: self.policy,
            min,
            initial,
            max,
            window_samples: self.window_samples,
            probe_interval: self.probe_interval,
            seed: self.seed.unwrap_or_else(random_seed),
        });
        Ok(AdaptiveLimit {
            inner: Arc::new(Inner {
                capacity: Capacity::new(initial),
                controller: Mutex::new(controller),
                queue: Slots::new(self.max_queue),
                queue_timeout: self.queue_timeout,
                retry_after: self.retry_after,
                min,
                max,
            }),
        })
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0x5eed_u64)
}

impl AdaptiveLimit {
    /// A builder: the [`Gradient`] policy, limit 20 within 1 to 200, 64 queued at most 5 s,
    /// 1 s `Retry-After`, windows of 20 samples, a probe every 60 s.
    pub fn builder() -> AdaptiveLimitBuilder {
        AdaptiveLimitBuilder {
            policy: AdaptivePolicy::default(),
            initial: 20,
            min: 1,
            max: 200,
            max_queue: 64,
            queue_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            window_samples: 20,
            probe_interval: Duration::from_secs(60),
            seed: None,
        }
    }

    /// A permit now, if the limit has room.
    ///
    /// # Errors
    ///
    /// [`Overloaded`] with [`OverloadReason::QueueFull`] when the limit is reached (or
    /// callers are queued: they are served first).
    pub fn try_acquire(&self) -> Result<AdaptivePermit, Overloaded> {
        match self.inner.capacity.try_take() {
            Some(epoch) => Ok(self.permit(epoch)),
            None => Err(self.overloaded(OverloadReason::QueueFull)),
        }
    }

    /// A permit, waiting in the queue if the limit is reached.
    ///
    /// # Errors
    ///
    /// [`Overloaded`]: [`OverloadReason::QueueFull`] at once when `max_queue` callers
    /// already wait, [`OverloadReason::QueueTimeout`] after waiting `queue_timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves the queue, and holds no permit.
    pub async fn acquire(&self) -> Result<AdaptivePermit, Overloaded> {
        if let Ok(permit) = self.try_acquire() {
            return Ok(permit);
        }
        let inner = &*self.inner;
        // The queue slot is given back when this future ends or is dropped.
        let Some(_slot) = inner.queue.try_take() else {
            return Err(self.overloaded(OverloadReason::QueueFull));
        };
        match tokio::time::timeout(inner.queue_timeout, inner.capacity.take()).await {
            Ok(epoch) => Ok(self.permit(epoch)),
            Err(_) => Err(self.overloaded(OverloadReason::QueueTimeout)),
        }
    }

    fn permit(&self, epoch: u32) -> AdaptivePermit {
        AdaptivePermit {
            inner: Arc::clone(&self.inner),
            granted: Instant::now(),
            epoch,
            recorded: false,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner.capacity.limit()
    }

    /// Calls in flight now (permits held).
    pub fn in_flight(&self) -> usize {
        self.inner.capacity.in_flight()
    }

    /// Calls waiting now.
    pub fn queued(&self) -> usize {
        self.inner.queue.taken()
    }

    /// The lowest the limit goes.
    pub fn min_limit(&self) -> usize {
        self.inner.min
    }

    /// The highest the limit goes.
    pub fn max_limit(&self) -> usize {
        self.inner.max
    }

    /// The latency the limit compares with the no-load latency (the last windows', smoothed
    /// as the policy does); `None` before the first window with a success.
    pub fn latency(&self) -> Option<Duration> {
        self.lock().latency()
    }

    /// The estimate of the upstream's latency without load; `None` before the first window
    /// with a success.
    pub fn no_load_latency(&self) -> Option<Duration> {
        self.lock().no_load()
    }

    /// Whether a probe is measuring the no-load latency now (the limit is halved for it).
    pub fn is_probing(&self) -> bool {
        !self.inner.capacity.epoch().is_multiple_of(2)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.inner
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn overloaded(&self, reason: OverloadReason) -> Overloaded {
        Overloaded {
            reason,
            retry_after: self.inner.retry_after,
        }
    }
}

/// The right to one call in flight under an [`AdaptiveLimit`]; released when dropped.
///
/// Record what the call showed with [`record`](Self::record), as soon as it is known (the
/// first byte, a 503, a timeout); keep the permit until the call really ends (move it into a
/// [`PermitBody`](super::PermitBody) to hold it for the response stream). A permit dropped
/// without an outcome records nothing: a cancelled call says nothing about the upstream.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct AdaptivePermit {
    inner: Arc<Inner>,
    granted: Instant,
    epoch: u32,
    recorded: bool,
}

impl AdaptivePermit {
    /// Records the call's outcome; only the first one counts, later ones are ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_limit::AdaptiveLimit;
    /// use brigade_limit::concurrency::adaptive::Outcome;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limit = AdaptiveLimit::builder().window_samples(1).build().unwrap();
    /// let mut permit = limit.try_acquire().unwrap();
    /// match tokio::time::timeout(Duration::from_secs(2), std::future::pending::<()>()).await {
    ///     Ok(()) => permit.record(Outcome::Success),
    ///     Err(_) => permit.record(Outcome::Dropped), // a timeout is a drop
    /// }
    /// assert!(permit.is_recorded());
    /// drop(permit);
    /// assert!(limit.limit() < 20);
    /// # }
    /// ```
    pub fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let now = Instant::now();
        let sample = match outcome {
            Outcome::Success => Sample::Latency(now.saturating_duration_since(self.granted)),
            Outcome::Latency(latency) => Sample::Latency(latency),
            Outcome::Dropped => Sample::Dropped,
            Outcome::Ignored => return,
        };
        let inner = &*self.inner;
        let in_flight = inner.capacity.in_flight();
        let mut controller = inner
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let update = controller.record(sample, self.epoch, in_flight, now);
        // Limit first, then epoch: a call that reads a probe's epoch is granted under the
        // probe's limit.
        if let Some(limit) = update.limit {
            inner.capacity.set_limit(limit);
        }
        if let Some(epoch) = update.epoch {
            inner.capacity.set_epoch(epoch);
        }
    }

    /// Whether an outcome was recorded.
    pub fn is_recorded(&self) -> bool {
        self.recorded
    }

    /// The time since the permit was granted.
    pub fn elapsed(&self) -> Duration {
        self.granted.elapsed()
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.inner.capacity.give_back();
    }
}

impl fmt::Debug for AdaptivePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("granted", &self.granted)
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}
