//! Prometheus metrics through `prometheus-client` (OpenMetrics text).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// Tokens the line cook produced.
    pub(crate) tokens: Counter,
    /// Generations stopped before their end, by reason.
    pub(crate) cancelled: Family<Labels, Counter>,
    /// Rate-limit rejections, by limit.
    pub(crate) rate_limited: Family<Labels, Counter>,
    /// The breaker's state: 1 for the current one.
    pub(crate) breaker_state: Family<Labels, Gauge>,
    /// Retries before the first token.
    pub(crate) retries: Counter,
    /// Requests waiting for a bulkhead slot.
    pub(crate) bulkhead_queue: Gauge,
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
    /// The prep shelf's metrics.
    pub(crate) jobs: crate::jobs::JobMetrics,
    /// The WebSocket chat's metrics.
    pub(crate) ws: crate::ws::WsMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("kitchen");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let streams_in_flight = Gauge::default();
        registry.register(
            "streams_in_flight",
            "Streams open now",
            streams_in_flight.clone(),
        );
        let tokens = Counter::default();
        registry.register(
            "tokens_generated",
            "Tokens produced by the line cook",
            tokens.clone(),
        );
        let cancelled = Family::<Labels, Counter>::default();
        registry.register(
            "generations_cancelled",
            "Generations stopped before their end, by reason",
            cancelled.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limit_rejections",
            "Requests rejected by a rate limit, by limit",
            rate_limited.clone(),
        );
        let breaker_state = Family::<Labels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state (1 for the current one)",
            breaker_state.clone(),
        );
        let retries = Counter::default();
        registry.register("retries", "Retries before the first token", retries.clone());
        let bulkhead_queue = Gauge::default();
        registry.register(
            "bulkhead_queue_depth",
            "Requests waiting for a stream slot",
            bulkhead_queue.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "handler_panics",
            "Handler panics answered with 500",
            panics.clone(),
        );
        let rate_store = Family::<Labels, Gauge>::default();
        registry.register(
            "rate_limit_store",
            "Where the rate limits are decided: memory, redis or fallback (1 for the current one)",
            rate_store.clone(),
        );
        let rate_store_switches = Counter::default();
        registry.register(
            "rate_limit_store_switches",
            "Switches between Redis and its fallback",
            rate_store_switches.clone(),
        );
        let jobs = crate::jobs::JobMetrics::register(&mut registry);
        let ws = crate::ws::WsMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            streams_in_flight,
            tokens,
            cancelled,
            rate_limited,
            breaker_state,
            retries,
            bulkhead_queue,
            panics,
            rate_store,
            rate_store_switches,
            jobs,
            ws,
        }
    }

    pub(crate) fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&([("route", route)], [("status", status)]))
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
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
