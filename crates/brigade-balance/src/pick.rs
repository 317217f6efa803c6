//! The pick: one call's claim on an endpoint, and the report of how it went.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use brigade_breaker::OwnedPermit;
use brigade_limit::AdaptivePermit;
use brigade_limit::concurrency::adaptive::Outcome as LimitOutcome;
use http::HeaderMap;
use tokio::time::Instant;

use crate::loom::Ordering;
use crate::pool::Endpoint;
use crate::{Outcome, headers};

/// One call's claim on an endpoint, from [`Pool::pick`](crate::Pool::pick).
///
/// While it lives, the endpoint counts it in flight, and it holds the endpoint's breaker permit
/// and adaptive-limit permit (if any). Report how the call went with
/// [`success`](Self::success), [`failure`](Self::failure), [`throttled`](Self::throttled) or
/// [`cooldown_from_headers`](Self::cooldown_from_headers), and record the first byte with
/// [`first_byte`](Self::first_byte). Dropped without a report, the call was cancelled: it
/// counts as neither success nor failure, and a half-open probe slot goes back; before its
/// first byte, the time it waited is a lower bound on the endpoint's latency, and raises the
/// estimate if that was lower (a hedge that lost to a faster endpoint says this one was slow).
/// [`record`](Self::record) with [`Outcome::Ignored`] records nothing at all. To keep the
/// pick for a streamed response, move it into a [`PickBody`](crate::PickBody).
///
/// A pick of an endpoint that was [removed](crate::Pool::remove) meanwhile finishes normally.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_balance::{EndpointConfig, Pool};
/// use http::HeaderMap;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool = Pool::builder()
///     .endpoint("provider", "https://api.example.com", EndpointConfig::new())
///     .build()
///     .unwrap();
///
/// // The provider answers 429 with `Retry-After: 2`.
/// let mut headers = HeaderMap::new();
/// headers.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
/// let pick = pool.pick().unwrap();
/// assert_eq!(pick.cooldown_from_headers(&headers), Duration::from_secs(2));
///
/// assert!(pool.pick().unwrap_err().cooling_down() == 1);
/// tokio::time::sleep(Duration::from_secs(2)).await;
/// assert!(pool.pick().is_ok());
/// # }
/// ```
#[must_use = "a pick dropped at once records nothing"]
pub struct Pick<E> {
    endpoint: Arc<Endpoint<E>>,
    picked_at: Instant,
    breaker: Option<OwnedPermit>,
    limit: Option<AdaptivePermit>,
    first_byte: Option<Duration>,
    /// An outcome was recorded (`record` and the methods that call it).
    reported: bool,
}

impl<E> Pick<E> {
    pub(crate) fn new(
        endpoint: Arc<Endpoint<E>>,
        picked_at: Instant,
        breaker: OwnedPermit,
        limit: Option<AdaptivePermit>,
    ) -> Self {
        Self {
            endpoint,
            picked_at,
            breaker: Some(breaker),
            limit,
            first_byte: None,
            reported: false,
        }
    }

    /// The caller's handle on the endpoint.
    pub fn endpoint(&self) -> &E {
        &self.endpoint.endpoint
    }

    /// The endpoint's id.
    pub fn id(&self) -> &str {
        &self.endpoint.id
    }

    /// The endpoint's tier.
    pub fn tier(&self) -> u32 {
        self.endpoint.tier
    }

    /// When the pick was made.
    pub fn picked_at(&self) -> Instant {
        self.picked_at
    }

    /// Whether the breaker permit is a half-open probe: this call decides whether the
    /// endpoint's breaker closes again.
    pub fn is_probe(&self) -> bool {
        self.breaker.as_ref().is_some_and(OwnedPermit::is_probe)
    }

    /// Records the first byte of the response: the time since the pick is the endpoint's
    /// latency sample (the peak-EWMA estimate), and the adaptive limit's sample. Only the first
    /// call counts; it returns the latency recorded.
    pub fn first_byte(&mut self) -> Duration {
        if let Some(latency) = self.first_byte {
            return latency;
        }
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.picked_at);
        self.sample(latency, now);
        latency
    }

    fn sample(&mut self, latency: Duration, now: Instant) {
        self.first_byte = Some(latency);
        let clock = &self.endpoint.clock;
        self.endpoint
            .state
            .sample(latency, clock.nanos(now), clock.decay_ns);
        if let Some(limit) = &mut self.limit {
            limit.record(LimitOutcome::Latency(latency));
        }
    }

    /// The latency recorded by [`first_byte`](Self::first_byte), if it was called.
    pub fn first_byte_latency(&self) -> Option<Duration> {
        self.first_byte
    }

    /// The call succeeded: a success for the breaker. If [`first_byte`](Self::first_byte) was
    /// not called, the time since the pick is taken as the latency sample.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed (an error, a 5xx, a timeout): a failure for the breaker, and a drop for
    /// the adaptive limit unless the first byte was already recorded.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The endpoint is throttling: it is left out of picks for `after` (at most the pool's
    /// [`max_cooldown`](crate::PoolBuilder::max_cooldown)); a drop for the adaptive limit
    /// unless the first byte was already recorded; nothing for the breaker.
    pub fn throttled(self, after: Duration) {
        self.record(Outcome::Throttled(Some(after)));
    }

    /// As [`throttled`](Self::throttled), until `until`.
    pub fn throttled_until(self, until: Instant) {
        let after = until.saturating_duration_since(Instant::now());
        self.throttled(after);
    }

    /// The endpoint is throttling (a 429, or a 503 saying when to come back): the cooldown is
    /// read from `headers` by [`headers::cooldown`], or is the pool's
    /// [`default_cooldown`](crate::PoolBuilder::default_cooldown) when they say nothing.
    /// Returns the cooldown applied (after the pool's cap).
    pub fn cooldown_from_headers(self, headers: &HeaderMap) -> Duration {
        let clock = self.endpoint.clock;
        let after = headers::cooldown(headers)
            .unwrap_or(clock.default_cooldown)
            .min(clock.max_cooldown);
        self.throttled(after);
        after
    }

    /// Records `outcome`, as the method of the same name does; [`Outcome::Ignored`] records
    /// nothing, not even the lower bound an unreported drop records.
    pub fn record(mut self, outcome: Outcome) {
        self.reported = true;
        let breaker = self.breaker.take();
        match outcome {
            Outcome::Success => {
                if self.first_byte.is_none() {
                    let now = Instant::now();
                    self.sample(now.saturating_duration_since(self.picked_at), now);
                }
                if let Some(permit) = breaker {
                    permit.success();
                }
            }
            Outcome::Failure => {
                self.drop_sample();
                if let Some(permit) = breaker {
                    permit.failure();
                }
            }
            Outcome::Throttled(after) => {
                self.drop_sample();
                let clock = self.endpoint.clock;
                let after = after
                    .unwrap_or(clock.default_cooldown)
                    .min(clock.max_cooldown);
                let now = Instant::now();
                let until = clock
                    .nanos(now)
                    .saturating_add(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
                self.endpoint.state.cool_down_until(until);
            }
            Outcome::Ignored => {}
        }
    }

    fn drop_sample(&mut self) {
        if self.first_byte.is_none()
            && let Some(limit) = &mut self.limit
        {
            limit.record(LimitOutcome::Dropped);
        }
    }
}

impl<E> Drop for Pick<E> {
    /// Counts the call out of in-flight. A pick dropped unreported before its first byte (a
    /// hedge that lost, a client that left) still says something: the endpoint's first byte
    /// takes at least the time it waited, which raises the latency estimate if it was lower.
    /// Without it, an endpoint whose slow calls are always hedged away would keep the estimate
    /// of its fast ones and draw ever more picks.
    fn drop(&mut self) {
        if !self.reported && self.first_byte.is_none() {
            let now = Instant::now();
            let clock = &self.endpoint.clock;
            self.endpoint.state.at_least(
                now.saturating_duration_since(self.picked_at),
                clock.nanos(now),
                clock.decay_ns,
            );
        }
        self.endpoint
            .state
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl<E> fmt::Debug for Pick<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("id", &self.id())
            .field("tier", &self.tier())
            .field("picked_at", &self.picked_at)
            .field("first_byte", &self.first_byte)
            .finish_non_exhaustive()
    }
}
