//! The upstreams as a brigade-balance [`Pool`]: each attempt picks one, and its pick reports
//! how the attempt went.
//!
//! - **The pick**: power of two choices on latency and load within the best tier that has an
//!   eligible upstream (brigade-balance's). Each upstream has its own circuit breaker (built
//!   from the `--breaker-*` flags), its cooldown (a 429, or a 503 that says when to come
//!   back: `Retry-After`, `x-ratelimit-reset-*`), and its limit if `concurrency=` is given.
//! - **A retry** goes to an upstream not tried yet by the request ([`Upstreams::pick`] with
//!   the ids tried); once every one was tried, to any eligible one.
//! - **The report** ([`report`]): before the first chunk, a throttle cools the upstream, a 5xx
//!   or no answer is a failure for its breaker, a 4xx says nothing about it (the request's
//!   fault). After the first chunk the answer's [`Ticket`](crate::admission::Ticket) holds the
//!   pick until the answer ends: a success then, or a failure if the stream breaks. A pick
//!   dropped unreported (the client left, a hedge lost) was cancelled: nobody's failure.
//! - **Nowhere to go**: [`CookError::Unavailable`], a 503 whose `Retry-After` is when the
//!   first upstream comes back.

use std::sync::Arc;
use std::time::Duration;

use brigade_balance::{Pick, Pool};
use brigade_breaker::{CircuitBreaker, CircuitBreakerBuilder, OpenDuration, Window};
use http::StatusCode;

use crate::config::Config;
use crate::cook::CookError;
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::upstream_spec::check;

/// One attempt's claim on an upstream.
pub(crate) type UpstreamPick = Pick<Arc<Upstream>>;

/// The circuit breaker configuration of the `--breaker-*` flags: the mock's, and each
/// upstream's.
pub(crate) fn breaker(config: &Config) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .window(Window::count(config.breaker_window))
        .minimum_calls(config.breaker_min_calls)
        .failure_rate_threshold(config.breaker_failure_rate)
        .open_duration(OpenDuration::fixed(Duration::from_secs(
            config.breaker_open_secs,
        )))
        .half_open_probes(config.breaker_probes)
        .half_open_successes(config.breaker_probes)
        .jitter_seed(config.seed)
}

/// The pool of upstreams, and each in the order given.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pool: Pool<Arc<Upstream>>,
    list: Vec<Arc<Upstream>>,
}

impl Upstreams {
    /// The pool of `--upstream`s; `None` when there is none (the mock answers).
    ///
    /// # Errors
    ///
    /// Two upstreams with one id, an upstream's URL, key or CA file, or the breaker flags.
    pub(crate) fn new(config: &Config) -> Result<Option<Self>, String> {
        let specs = &config.upstreams;
        if specs.is_empty() {
            return Ok(None);
        }
        check(specs).map_err(|e| format!("--upstream: {e}"))?;
        let mut pool = Pool::builder().breaker(breaker(config)).seed(config.seed);
        let mut list = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let breaker = breaker(config)
                .jitter_seed(config.seed.wrapping_add(i as u64))
                .build()
                .map_err(|e| format!("breaker: {e}"))?;
            let upstream = Arc::new(Upstream::new(spec, config, breaker.clone())?);
            let id = spec.endpoint.id();
            let endpoint = spec
                .endpoint
                .config()
                .map_err(|e| format!("--upstream {id}: {e}"))?;
            pool = pool.endpoint(id, Arc::clone(&upstream), endpoint.breaker(breaker));
            list.push(upstream);
        }
        let pool = pool.build().map_err(|e| format!("--upstream: {e}"))?;
        Ok(Some(Self { pool, list }))
    }

    /// The upstreams, in the order given.
    pub(crate) fn list(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// The pool.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the kitchen's tests"))]
    pub(crate) fn pool(&self) -> &Pool<Arc<Upstream>> {
        &self.pool
    }

    /// Picks an upstream that is not in `tried`, or, when every eligible one was tried, any
    /// eligible one (a retry of the same upstream, as with a single one).
    ///
    /// # Errors
    ///
    /// [`CookError::Unavailable`] when no upstream is eligible.
    pub(crate) fn pick(&self, tried: &[&str]) -> Result<UpstreamPick, CookError> {
        match self.pool.pick_excluding(tried) {
            Ok(pick) => Ok(pick),
            Err(unavailable) if unavailable.excluded() > 0 => self
                .pool
                .pick()
                .map_err(|unavailable| CookError::Unavailable(Box::new(unavailable))),
            Err(unavailable) => Err(CookError::Unavailable(Box::new(unavailable))),
        }
    }

    /// Copies each upstream's state into the metrics (at a scrape).
    pub(crate) fn export(&self, metrics: &Metrics) {
        for endpoint in self.pool.snapshot() {
            metrics.upstreams.set(&endpoint);
        }
    }
}

/// Reports a failed attempt (before its first chunk) on its pick.
pub(crate) fn report(pick: UpstreamPick, error: &CookError) {
    match error {
        CookError::Answered(answer)
            if answer.status == StatusCode::TOO_MANY_REQUESTS
                || (answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && answer.cooldown.is_some()) =>
        {
            pick.record(brigade_balance::Outcome::Throttled(answer.cooldown));
        }
        error if error.is_retryable() => pick.failure(),
        // A 4xx: the request's fault, nothing about the upstream.
        _ => drop(pick),
    }
}
