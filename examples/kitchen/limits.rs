//! Rate limits and the bulkhead, through brigade-limit: per-key requests-per-minute and
//! tokens-per-minute checked together (the token estimate reserved, then settled with the real
//! count), and a concurrency limit with a bounded queue whose permit the response body holds.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use brigade_limit::headers::{RateLimitHeaders, retry_after_secs};
use brigade_limit::{
    AcquireError, ConcurrencyLimit, ConcurrencyPermit, Limit, OverloadReason, Quota, RateLimiter,
    Reservation,
};
use http::{HeaderMap, StatusCode};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Per-key rate limits and the stream bulkhead.
#[derive(Debug)]
pub(crate) struct Limits {
    rate: Option<RateLimiter<String>>,
    bulkhead: ConcurrencyLimit,
    headers: RateLimitHeaders,
    metrics: Arc<Metrics>,
}

/// A reservation of the request's token estimate, settled with the real count.
#[derive(Debug)]
pub(crate) struct Reserved(Option<Reservation<String>>);

impl Reserved {
    pub(crate) fn settle(self, tokens: u32) {
        if let Some(reservation) = self.0 {
            reservation.settle(tokens);
        }
    }
}

/// A bulkhead slot, held by the response body until the stream ends.
pub(crate) type Slot = ConcurrencyPermit;

impl Limits {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut builder = RateLimiter::builder();
        let mut any = false;
        if let Some(n) = NonZeroU32::new(config.requests_per_min) {
            builder = builder.limit(Limit::per_request("requests", Quota::per_minute(n)));
            any = true;
        }
        if let Some(n) = NonZeroU32::new(config.tokens_per_min) {
            builder = builder.limit(Limit::new("tokens", Quota::per_minute(n)));
            any = true;
        }
        let rate = any
            .then(|| builder.build())
            .transpose()
            .map_err(|e| format!("rate limits: {e}"))?;
        let bulkhead = ConcurrencyLimit::builder()
            .max_in_flight(config.max_streams)
            .max_queue(config.queue_size)
            .queue_timeout(Duration::from_millis(config.queue_timeout_ms))
            .build()
            .map_err(|e| format!("bulkhead: {e}"))?;
        Ok(Self {
            rate,
            bulkhead,
            headers: RateLimitHeaders::new().openai(true),
            metrics,
        })
    }

    /// Reserves `tokens` (prompt plus `max_tokens`) and one request for `key`; the header
    /// fields of the decision go on the answer.
    pub(crate) fn reserve(
        &self,
        key: &str,
        tokens: u32,
    ) -> Result<(Reserved, HeaderMap), ApiError> {
        let mut headers = HeaderMap::new();
        let Some(rate) = &self.rate else {
            return Ok((Reserved(None), headers));
        };
        match rate.try_reserve(&key.to_owned(), tokens) {
            Ok(reservation) => {
                self.headers.admitted(reservation.admitted(), &mut headers);
                Ok((Reserved(Some(reservation)), headers))
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

    /// A stream slot, waiting in the bulkhead's bounded queue if all are taken.
    pub(crate) async fn slot(&self) -> Result<Slot, ApiError> {
        let overloaded = match self.bulkhead.acquire().await {
            Ok(permit) => return Ok(permit),
            Err(overloaded) => overloaded,
        };
        let message = match overloaded.reason() {
            OverloadReason::QueueTimeout => "overloaded: timed out waiting for a stream slot",
            _ => "overloaded: every stream slot is taken and the queue is full",
        };
        Err(ApiError::unavailable(
            "overloaded",
            message,
            overloaded.retry_after(),
        ))
    }
}
