//! Prometheus metrics through `prometheus-client` (OpenMetrics text).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

type Labels = Vec<(&'static str, String)>;

/// `route` and `status`: a label set that is hashed and compared without being allocated, for
/// the one metric every request touches.
type RouteStatus = ([(&'static str, &'static str); 1], [(&'static str, u16); 1]);

/// Every metric the kitchen exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub(crate) requests: Family<RouteStatus, Counter>,
    /// Streams open now.
    pub(crate) streams_in_flight: Gauge,
    /// Completion tokens the line cook produced, counted as each answer ends (from its usage).
    pub(crate) tokens: Counter,
    /// Streamed answers that reached their end without a usage chunk, settled by counting
    /// their chunks.
    pub(crate) usage_counted: Counter,
    /// Generations stopped before their end, by reason.
    pub(crate) cancelled: Family<Labels, Counter>,
    /// Rate-limit rejections, by limit.
    pub(crate) rate_limited: Family<Labels, Counter>,
    /// The breaker's state: 1 for the current one.
    pub(crate) breaker_state: Family<Labels, Gauge>,
    /// Retries before the first token.
    pub(crate) retries: Counter,
    /// Hedged requests started (`--hedge-after-ms`).
    pub(crate) hedges: Counter,
    /// Each upstream's state in the pool, copied at each scrape.
    pub(crate) upstreams: UpstreamMetrics,
    /// Requests waiting for a bulkhead slot.
    pub(crate) bulkhead_queue: Gauge,
    /// Requests refused by the bulkhead, by reason (`queue_full`, `predicted_timeout`,
    /// `queue_timeout`).
    overload_refusals: Family<[(&'static str, &'static str); 1], Counter>,
    /// How long admitted requests waited for a stream slot.
    pub(crate) queue_wait: Histogram,
    /// Refusals that closed their connection, by reason (`body_unread`, `shedding`).
    refusal_closes: Family<[(&'static str, &'static str); 1], Counter>,
    /// The process's CPU time, read at each scrape.
    process_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Handler panics turned into 500s.
    pub(crate) panics: Counter,
    /// Where the rate limits are decided: 1 for the current store.
    pub(crate) rate_store: Family<Labels, Gauge>,
    /// Switches between Redis and its fallback.
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "counted by the Redis limiter's listener")
    )]
    pub(crate) rate_store_switches: Counter,
    /// Requests refused with 503 because the rate-limit store could not decide them in time.
    pub(crate) rate_limit_overloaded: Counter,
    /// The Redis limiter's own counts, copied at each scrape.
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "filled from the Redis limiter's counters")
    )]
    pub(crate) rate_store_counts: RateStoreCounts,
    /// The prep shelf's metrics.
    pub(crate) jobs: crate::jobs::JobMetrics,
    /// The WebSocket chat's metrics.
    pub(crate) ws: crate::ws::WsMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut r = Registry::with_prefix("kitchen");
        let queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 13)); // 1 ms to 4 s
        r.register(
            "queue_wait_seconds",
            "How long admitted requests waited for a stream slot",
            queue_wait.clone(),
        );
        Self {
            requests: add(&mut r, "requests", "HTTP requests by route and status"),
            streams_in_flight: add(&mut r, "streams_in_flight", "Streams open now"),
            tokens: add(
                &mut r,
                "tokens_generated",
                "Completion tokens produced by the line cook, counted as each answer ends",
            ),
            usage_counted: add(
                &mut r,
                "usage_counted",
                "Streamed answers that ended without the line cook's usage, settled by counting \
                 their chunks as tokens",
            ),
            cancelled: add(
                &mut r,
                "generations_cancelled",
                "Generations stopped before their end, by reason",
            ),
            rate_limited: add(
                &mut r,
                "rate_limit_rejections",
                "Requests rejected by a rate limit, by limit",
            ),
            breaker_state: add(
                &mut r,
                "breaker_state",
                "Circuit breaker state (1 for the current one)",
            ),
            retries: add(&mut r, "retries", "Retries before the first token"),
            hedges: add(
                &mut r,
                "hedges",
                "Hedged requests started: another upstream asked while an attempt had no first chunk",
            ),
            upstreams: UpstreamMetrics::register(&mut r),
            bulkhead_queue: add(
                &mut r,
                "bulkhead_queue_depth",
                "Requests waiting for a stream slot",
            ),
            overload_refusals: add(
                &mut r,
                "overload_refusals",
                "Requests refused by the stream bulkhead, by reason: queue_full, predicted_timeout \
                 (the queue's wait would outlast its timeout), queue_timeout, key_queue_full",
            ),
            queue_wait,
            refusal_closes: add(
                &mut r,
                "refusal_closes",
                "Refusals (429, 503) that closed their connection, by reason: body_unread (refused \
                 before the body was read), shedding (refusals over --shed-refusals-per-sec)",
            ),
            process_cpu: add(
                &mut r,
                "process_cpu_seconds",
                "CPU time (user and system) the process has used, from /proc/self/stat (Linux; 0 \
                 elsewhere)",
            ),
            panics: add(&mut r, "handler_panics", "Handler panics answered with 500"),
            rate_store: add(
                &mut r,
                "rate_limit_store",
                "Where the rate limits are decided: memory, redis or fallback (1 for the current one)",
            ),
            rate_store_switches: add(
                &mut r,
                "rate_limit_store_switches",
                "Switches between Redis and its fallback",
            ),
            rate_limit_overloaded: add(
                &mut r,
                "rate_limit_overloaded",
                "Requests refused with 503 because the rate-limit store could not decide them in time \
                 (its queue was too long; not a quota, not an outage)",
            ),
            rate_store_counts: RateStoreCounts::register(&mut r),
            jobs: crate::jobs::JobMetrics::register(&mut r),
            ws: crate::ws::WsMetrics::register(&mut r),
            registry: r,
        }
    }

    pub(crate) fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&([("route", route)], [("status", status)]))
            .inc();
    }

    /// A refusal that closed its connection, and why.
    pub(crate) fn refusal_close(&self, reason: &'static str) {
        self.refusal_closes
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A bulkhead refusal, by reason.
    pub(crate) fn overload(&self, reason: &'static str) {
        self.overload_refusals
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub(crate) fn cancel(&self, reason: &str) {
        self.cancelled
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    pub(crate) fn set_breaker_state(&self, current: &str) {
        for state in [
            "closed",
            "open",
            "half-open",
            "forced open",
            "disabled",
            "metrics only",
        ] {
            self.breaker_state
                .get_or_create(&vec![("state", state.to_owned())])
                .set(i64::from(state == current));
        }
    }

    pub(crate) fn set_rate_store(&self, current: &str) {
        for store in ["memory", "redis", "fallback"] {
            self.rate_store
                .get_or_create(&vec![("store", store.to_owned())])
                .set(i64::from(store == current));
        }
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        if let Some(cpu) = process_cpu_seconds() {
            self.process_cpu.set(cpu);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// A new metric, registered under `name` (the registry keeps a clone: they share the value).
pub(crate) fn add<M: Metric + Clone + Default>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// The CPU time (user and system) this process has used, from `/proc/self/stat`: fields 14 and
/// 15, in clock ticks of 10 ms (Linux's `USER_HZ`, 100 on every architecture it exports).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// `upstream`: an upstream's id.
type UpstreamLabel = [(&'static str, String); 1];

/// `upstream` and `state`.
type UpstreamState = (
    [(&'static str, String); 1],
    [(&'static str, &'static str); 1],
);

/// Each upstream of the pool, from `Pool::snapshot` at each scrape (never per request).
#[derive(Debug)]
pub(crate) struct UpstreamMetrics {
    picks: Family<UpstreamLabel, Counter>,
    in_flight: Family<UpstreamLabel, Gauge>,
    latency: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    limit: Family<UpstreamLabel, Gauge>,
    breaker: Family<UpstreamState, Gauge>,
    cooling_down: Family<UpstreamLabel, Gauge>,
    cooldowns: Family<UpstreamLabel, Counter>,
}

impl UpstreamMetrics {
    fn register(r: &mut Registry) -> Self {
        Self {
            picks: add(
                r,
                "upstream_picks",
                "Attempts sent to each upstream (hedges included)",
            ),
            in_flight: add(
                r,
                "upstream_in_flight",
                "Calls in flight on each upstream, streams until their end",
            ),
            latency: add(
                r,
                "upstream_latency_seconds",
                "Each upstream's peak-EWMA time to first byte, as the pool estimates it",
            ),
            limit: add(
                r,
                "upstream_limit",
                "Each upstream's concurrency limit (adaptive, or fixed), for those that have one",
            ),
            breaker: add(
                r,
                "upstream_breaker_state",
                "Each upstream's circuit breaker state (1 for the current one)",
            ),
            cooling_down: add(
                r,
                "upstream_cooling_down",
                "1 while an upstream cools down after a throttle (429, Retry-After)",
            ),
            cooldowns: add(
                r,
                "upstream_cooldowns",
                "Throttles each upstream reported, each starting or extending a cooldown",
            ),
        }
    }

    /// Copies one upstream's snapshot in (the counters only grow, as counters must).
    pub(crate) fn set(&self, endpoint: &brigade_balance::EndpointSnapshot) {
        use std::sync::atomic::Ordering;

        let label = [("upstream", endpoint.id.to_string())];
        let count = |family: &Family<UpstreamLabel, Counter>, value: u64| {
            family
                .get_or_create(&label)
                .inner()
                .store(value, Ordering::Relaxed);
        };
        count(&self.picks, endpoint.picks);
        count(&self.cooldowns, endpoint.cooldowns);
        self.in_flight
            .get_or_create(&label)
            .set(i64::try_from(endpoint.in_flight).unwrap_or(i64::MAX));
        self.latency
            .get_or_create(&label)
            .set(endpoint.latency.as_secs_f64());
        if let Some(limit) = endpoint.limit {
            self.limit
                .get_or_create(&label)
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        self.cooling_down
            .get_or_create(&label)
            .set(i64::from(endpoint.cooldown.is_some()));
        let current = endpoint.breaker.to_string();
        for state in [
            "closed",
            "open",
            "half-open",
            "forced open",
            "disabled",
            "metrics only",
        ] {
            self.breaker
                .get_or_create(&(label.clone(), [("state", state)]))
                .set(i64::from(state == current));
        }
    }
}

/// What the Redis limiter counts (`brigade_limit::redis::Counters`), as counters; zero when the
/// limits live in memory.
#[derive(Debug)]
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only a Redis limiter has counts to copy in")
)]
pub(crate) struct RateStoreCounts {
    /// Decisions by who made them: `redis` or `fallback`.
    pub(crate) decisions: Family<Labels, Counter>,
    /// Calls to Redis that failed or timed out (a failed batch counts once).
    pub(crate) errors: Counter,
    /// Of those, the ones that timed out.
    pub(crate) timeouts: Counter,
    /// Calls that ran out of time waiting for their batch (refused as overloaded).
    pub(crate) batch_wait_timeouts: Counter,
    /// Decisions refused at once as overloaded, their batch queue being too long.
    pub(crate) batch_sheds: Counter,
}

impl RateStoreCounts {
    fn register(r: &mut Registry) -> Self {
        Self {
            decisions: add(
                r,
                "rate_limit_decisions",
                "Rate-limit decisions kept in Redis, by who made them: redis or fallback",
            ),
            errors: add(
                r,
                "rate_limit_redis_errors",
                "Calls to Redis that failed or timed out (a failed batch counts once)",
            ),
            timeouts: add(
                r,
                "rate_limit_redis_timeouts",
                "Calls to Redis that timed out",
            ),
            batch_wait_timeouts: add(
                r,
                "rate_limit_batch_wait_timeouts",
                "Calls that ran out of time waiting for their Redis batch (refused as overloaded)",
            ),
            batch_sheds: add(
                r,
                "rate_limit_batch_sheds",
                "Decisions refused at once as overloaded, their Redis batch queue being too long",
            ),
        }
    }

    /// Copies `counts` in (they only grow, as counters must).
    #[cfg(feature = "redis")]
    pub(crate) fn set(&self, counts: &brigade_limit::redis::Counters) {
        use std::sync::atomic::Ordering;

        let set = |counter: &Counter, value: u64| counter.inner().store(value, Ordering::Relaxed);
        for (by, value) in [
            ("redis", counts.redis_decisions),
            ("fallback", counts.fallback_decisions),
        ] {
            set(
                &self.decisions.get_or_create(&vec![("by", by.to_owned())]),
                value,
            );
        }
        set(&self.errors, counts.redis_errors);
        set(&self.timeouts, counts.redis_timeouts);
        set(&self.batch_wait_timeouts, counts.batch_wait_timeouts);
        set(&self.batch_sheds, counts.batch_sheds);
    }
}
