//! Rate limits and the bulkhead, through brigade-limit: per-key requests-per-minute and
//! tokens-per-minute checked together (the token estimate reserved, then settled with the real
//! count), and a concurrency limit with a bounded queue whose permit the response body holds.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use brigade_limit::headers::{RateLimitHeaders, retry_after_secs};
use brigade_limit::{
    AcquireError, ConcurrencyLimit, ConcurrencyPermit, Limit, OverloadReason, Overloaded, Quota,
    RateLimiter, RateLimiterBuilder, Reservation,
};
use http::header::{CONNECTION, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::routes::Body;

/// Per-key rate limits and the stream bulkhead.
#[derive(Debug)]
pub(crate) struct Limits {
    rate: Option<Rate>,
    bulkhead: ConcurrencyLimit,
    /// The refusal rate under which a refusal keeps its connection (`None`: none does).
    shedding: Option<RateLimiter>,
    headers: RateLimitHeaders,
    metrics: Arc<Metrics>,
}

/// Where the per-key limits live: this process, or Redis (shared by every replica).
#[derive(Debug)]
enum Rate {
    Memory(RateLimiter<String>),
    #[cfg(feature = "redis")]
    Redis(brigade_limit::redis::RedisRateLimiter<String>),
}

/// A reservation of the request's token estimate, settled with the real count.
#[derive(Debug)]
pub(crate) struct Reserved(Option<Held>);

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per request; boxing the in-process reservation would allocate on every request"
)]
enum Held {
    Memory(Reservation<String>),
    // Boxed: it carries its limiter and key beside the decision.
    #[cfg(feature = "redis")]
    Redis(Box<brigade_limit::redis::RedisReservation<String>>),
}

impl Reserved {
    pub(crate) fn settle(self, tokens: u32) {
        match self.0 {
            None => {}
            Some(Held::Memory(reservation)) => reservation.settle(tokens),
            // A round trip: settled on its own task, so the stream's end never waits on Redis.
            #[cfg(feature = "redis")]
            Some(Held::Redis(reservation)) => {
                tokio::spawn(async move {
                    if let Err(error) = reservation.settle(tokens).await {
                        tracing::debug!(%error, "settling on Redis failed; the estimate stays charged");
                    }
                });
            }
        }
    }
}

/// A bulkhead slot, held by the response body until the stream ends.
pub(crate) type Slot = ConcurrencyPermit;

impl Limits {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut limits = Vec::new();
        if let Some(n) = NonZeroU32::new(config.requests_per_min) {
            limits.push(Limit::per_request("requests", Quota::per_minute(n)));
        }
        if let Some(n) = NonZeroU32::new(config.tokens_per_min) {
            limits.push(Limit::new("tokens", Quota::per_minute(n)));
        }
        let rate = match (&config.redis, limits.is_empty()) {
            (_, true) => None,
            (None, false) => {
                metrics.set_rate_store("memory");
                let builder = limits
                    .into_iter()
                    .fold(RateLimiter::builder(), RateLimiterBuilder::limit);
                Some(Rate::Memory(
                    builder.build().map_err(|e| format!("rate limits: {e}"))?,
                ))
            }
            (Some(url), false) => Some(redis_rate(config, url, limits, &metrics)?),
        };
        let mut bulkhead = ConcurrencyLimit::builder()
            .max_in_flight(config.max_streams)
            .max_queue(config.queue_size)
            .queue_timeout(Duration::from_millis(config.queue_timeout_ms));
        if config.queue_per_key > 0 {
            bulkhead = bulkhead.max_queue_per_key(config.queue_per_key);
        }
        let bulkhead = bulkhead.build().map_err(|e| format!("bulkhead: {e}"))?;
        let shedding = NonZeroU32::new(config.shed_refusals_per_sec)
            .map(|n| RateLimiter::direct(Quota::per_second(n)))
            .transpose()
            .map_err(|e| format!("shedding: {e}"))?;
        Ok(Self {
            rate,
            bulkhead,
            shedding,
            headers: RateLimitHeaders::new().openai(true),
            metrics,
        })
    }

    /// Copies the Redis limiter's counts into the metrics, when the limits live there.
    #[cfg_attr(
        not(feature = "redis"),
        allow(
            clippy::unused_self,
            reason = "only a Redis limiter has counts to copy"
        )
    )]
    pub(crate) fn export_counts(&self) {
        #[cfg(feature = "redis")]
        if let Some(Rate::Redis(limiter)) = &self.rate {
            self.metrics.rate_store_counts.set(&limiter.counters());
        }
    }

    /// Connects to Redis now, when the limits live there, rather than on the first request.
    /// A Redis that is down is not fatal: the fallback answers until it comes back.
    pub(crate) async fn connect(&self) {
        #[cfg(feature = "redis")]
        if let Some(Rate::Redis(limiter)) = &self.rate {
            match limiter.connect().await {
                Ok(backend) => tracing::info!(?backend, "rate limits kept in Redis"),
                Err(error) => {
                    tracing::warn!(%error, "Redis is unavailable; the fallback limits until it answers");
                }
            }
        }
    }

    /// Reserves `tokens` (prompt plus `max_tokens`) and one request for `key`; the header
    /// fields of the decision go on the answer.
    ///
    /// `key` is a [`ClientKey`](crate::auth::ClientKey)'s text (`key:` and a digest of the API
    /// key, or `ip:` and an address), never an API key: in Redis it is part of a key name.
    pub(crate) async fn reserve(
        &self,
        key: &str,
        tokens: u32,
    ) -> Result<(Reserved, HeaderMap), ApiError> {
        // Room for the IETF and OpenAI fields of two limits, without growing.
        let mut headers = HeaderMap::with_capacity(8);
        let decided = match &self.rate {
            None => return Ok((Reserved(None), headers)),
            Some(Rate::Memory(rate)) => rate.try_reserve(key, tokens).map(Held::Memory),
            #[cfg(feature = "redis")]
            Some(Rate::Redis(rate)) => rate
                .try_reserve(&key.to_owned(), tokens)
                .await
                .map(|reservation| Held::Redis(Box::new(reservation))),
        };
        match decided {
            Ok(held) => {
                let admitted = match &held {
                    Held::Memory(reservation) => reservation.admitted(),
                    #[cfg(feature = "redis")]
                    Held::Redis(reservation) => reservation.admitted(),
                };
                self.headers.admitted(admitted, &mut headers);
                Ok((Reserved(Some(held)), headers))
            }
            Err(AcquireError::Rejected(rejected) | AcquireError::QueueFull(rejected)) => {
                let limit = rejected.limit().name();
                self.metrics
                    .rate_limited
                    .get_or_create(&vec![("limit", limit.to_owned())])
                    .inc();
                self.headers.rejected(&rejected, &mut headers);
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    format!(
                        "rate limit reached on {limit}; retry after {} s",
                        retry_after_secs(rejected.retry_after())
                    ),
                );
                error.headers.extend(
                    headers
                        .into_iter()
                        .filter_map(|(name, value)| Some((name?, value))),
                );
                Err(error)
            }
            Err(AcquireError::Unsatisfiable(unsatisfiable)) => Err(ApiError::invalid(format!(
                "`max_tokens` plus the prompt ({} tokens) exceed the {} limit ({} per minute)",
                unsatisfiable.cost(),
                unsatisfiable.limit(),
                unsatisfiable.burst()
            ))),
            // The shared store is down and the fallback refuses: the server's fault, not the
            // client's quota.
            Err(AcquireError::Unavailable { retry_after }) => Err(ApiError::unavailable(
                "rate_limit_store_unavailable",
                "the rate-limit store is unavailable",
                retry_after,
            )),
            // The shared store answers, but too many requests wait for it to decide this one
            // in time: overloaded, not the client's quota, and never a free pass.
            Err(AcquireError::Overloaded { retry_after }) => {
                self.metrics.rate_limit_overloaded.inc();
                Err(ApiError::unavailable(
                    "rate_limit_store_overloaded",
                    "overloaded: the rate-limit store cannot decide in time",
                    retry_after,
                ))
            }
            Err(other) => {
                self.metrics
                    .rate_limited
                    .get_or_create(&vec![("limit", "keys".to_owned())])
                    .inc();
                let error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    format!("rate limited: {other}"),
                );
                Err(error.retry_after(other.retry_after().unwrap_or(Duration::from_secs(1))))
            }
        }
    }

    /// Requests waiting for a stream slot now.
    pub(crate) fn queued(&self) -> usize {
        self.bulkhead.queued()
    }

    /// A stream slot for the client `key`, waiting in the bulkhead's bounded queue if all are
    /// taken (at most `--queue-per-key` places per client); the wait of an admitted request
    /// goes to the queue-wait histogram.
    pub(crate) async fn slot(&self, key: &str) -> Result<Slot, ApiError> {
        let queued = Instant::now();
        match self.bulkhead.acquire_as(key).await {
            Ok(permit) => {
                self.metrics
                    .queue_wait
                    .observe(queued.elapsed().as_secs_f64());
                Ok(permit)
            }
            Err(overloaded) => Err(self.overloaded(&overloaded)),
        }
    }

    /// The refusal a stream slot would get now, without queueing: asked before the request's
    /// body is read, so that a surge is refused for the price of its headers (brigade-limit's
    /// `would_refuse`: a few atomic loads).
    pub(crate) fn refuse_early(&self) -> Option<ApiError> {
        let overloaded = self.bulkhead.would_refuse()?;
        Some(self.overloaded(&overloaded))
    }

    /// Connection-level shedding, for every refusal (429, 503) the kitchen answers: counts it
    /// against `--shed-refusals-per-sec` and, over that rate, closes its connection. A refusal
    /// that already closes (its body unread) still counts.
    pub(crate) fn shed(&self, response: &mut Response<Body>) {
        let over = self
            .shedding
            .as_ref()
            .is_none_or(|refusals| refusals.try_acquire(&(), 1).is_err());
        let headers = response.headers_mut();
        if over && !headers.contains_key(CONNECTION) {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
            self.metrics.refusal_close("shedding");
        }
    }

    /// The 503 of a bulkhead refusal, counted by reason; its `Retry-After` is the predicted
    /// wait in the queue.
    fn overloaded(&self, overloaded: &Overloaded) -> ApiError {
        let (reason, message) = match overloaded.reason() {
            OverloadReason::QueueTimeout => (
                "queue_timeout",
                "overloaded: timed out waiting for a stream slot",
            ),
            OverloadReason::PredictedTimeout => (
                "predicted_timeout",
                "overloaded: the wait for a stream slot would outlast the queue timeout",
            ),
            OverloadReason::KeyQueueFull => (
                "key_queue_full",
                "overloaded: this client already has its most requests waiting for a stream slot",
            ),
            _ => (
                "queue_full",
                "overloaded: every stream slot is taken and the queue is full",
            ),
        };
        self.metrics.overload(reason);
        ApiError::unavailable("overloaded", message, overloaded.retry_after())
    }
}

/// The limits in Redis (`--redis URL`), with the fallback of `--redis-fallback`.
#[cfg(feature = "redis")]
fn redis_rate(
    config: &Config,
    url: &str,
    limits: Vec<Limit>,
    metrics: &Arc<Metrics>,
) -> Result<Rate, String> {
    use brigade_limit::redis::{Fallback, RedisRateLimiter, RedisRateLimiterBuilder, State};

    use crate::config::RedisFallback;

    let fallback = match config.redis_fallback {
        RedisFallback::Local => Fallback::Local {
            replicas: config.redis_replicas,
        },
        RedisFallback::Open => Fallback::FailOpen,
        RedisFallback::Closed => Fallback::FailClosed,
    };
    let on_switch = Arc::clone(metrics);
    let builder = limits
        .into_iter()
        .fold(RedisRateLimiter::builder(), RedisRateLimiterBuilder::limit)
        // Names `kitchen:limit:` and the client key (a digest, never the API key itself).
        .key_prefix("kitchen:limit:")
        .call_timeout(Duration::from_millis(config.redis_timeout_ms))
        .fallback(fallback)
        .on_switch(move |state| {
            on_switch.rate_store_switches.inc();
            on_switch.set_rate_store(match state {
                State::Redis(_) => "redis",
                _ => "fallback",
            });
        });
    // Starts on the fallback until the first answer from Redis.
    metrics.set_rate_store("fallback");
    let limiter = builder
        .build(url)
        .map_err(|e| format!("rate limits in Redis: {e}"))?;
    Ok(Rate::Redis(limiter))
}

/// Without the `redis` feature, `--redis` is refused at start rather than ignored.
#[cfg(not(feature = "redis"))]
fn redis_rate(
    _config: &Config,
    _url: &str,
    _limits: Vec<Limit>,
    _metrics: &Arc<Metrics>,
) -> Result<Rate, String> {
    Err("`--redis` needs a kitchen built with the `redis` feature: \
         cargo run --release --example kitchen --features redis -- --redis URL"
        .to_owned())
}
