//! The parallel fetch sprint: `GET /v1/fanout` calls three slow mock sources (weather, image,
//! chat) at once and merges their answers into one JSON.
//!
//! Each source call goes through the crates, as a real fan-out's would:
//!
//! - brigade-cancel: a scope per source call, child of the request's scope (itself a child of
//!   the shutdown's), with the source's timeout as its deadline. A source that passes it is cut
//!   off with reason `DeadlineExceeded` and reported as `"status":"timeout"`; the shutdown
//!   cancels every call when its grace period is over (`"status":"cancelled"`); a client that
//!   goes away drops the handler, and with it every call.
//! - brigade-retry: a failed attempt is retried after a short constant backoff
//!   (`--fanout-attempts`, 2 by default; `--fanout-retry-ms`, 20), inside the source's
//!   deadline (the deadline bounds the attempts and the backoff together).
//! - brigade-breaker: one breaker per source. A source that keeps failing or timing out is
//!   skipped at once (`"status":"circuit_open"`) instead of costing its whole timeout on every
//!   request, and is probed again after the open period (`--fanout-breaker-window`,
//!   `--fanout-breaker-min-calls` and `--fanout-breaker-open-secs`: 10 calls, 5 of them before
//!   it may trip at 50% failures, 10 s open).
//!
//! A source that fails, times out or is skipped makes the answer partial (`"partial": true`),
//! never a failed request: the other sources' results are still worth returning.
//! `?mode=sequential` awaits the sources one after another, for comparison: the total is then
//! the sum of the latencies instead of the slowest one.
//!
//! Query parameters, all optional (anything else is a 400 naming the parameter):
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `mode` | `concurrent` (default) or `sequential` |
//! | `weather_ms`, `image_ms`, `chat_ms` | that source's latency for this request, 0 to 60000 |
//! | `timeout_ms` | every source's timeout for this request, 1 to 60000 |
//! | `fail` | sources whose every attempt fails (`fail=image` or `fail=image,chat`) |
//! | `flaky` | sources whose first attempt fails (the retry answers) |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brigade_breaker::{CircuitBreaker, OpenDuration, Window};
use brigade_cancel::{CancelReason, CancelScope};
use brigade_retry::{Attempt, Backoff, Retry, RetryError};
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::mock::Mock;
use crate::routes::{App, Body};

/// The longest latency or timeout a query may ask for, in milliseconds.
const MAX_QUERY_MS: u64 = 60_000;

/// Flags of the fan-out sources.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct FanoutConfig {
    /// Fan-out: latency of the weather source, in milliseconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) fanout_weather_ms: u64,

    /// Fan-out: latency of the image source, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) fanout_image_ms: u64,

    /// Fan-out: latency of the chat source, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub(crate) fanout_chat_ms: u64,

    /// Fan-out: timeout of a weather call, retries included, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) fanout_weather_timeout_ms: u64,

    /// Fan-out: timeout of an image call, retries included, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) fanout_image_timeout_ms: u64,

    /// Fan-out: timeout of a chat call, retries included, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) fanout_chat_timeout_ms: u64,

    /// Fan-out: attempts per source call, the first included (1: no retry).
    #[arg(long, default_value_t = 2)]
    pub(crate) fanout_attempts: u32,

    /// Fan-out: the wait before retrying a failed source call, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) fanout_retry_ms: u64,

    /// Fan-out: calls in each source's breaker window.
    #[arg(long, default_value_t = 10)]
    pub(crate) fanout_breaker_window: u32,

    /// Fan-out: calls in the window before a source's breaker may trip (at 50% failures).
    #[arg(long, default_value_t = 5)]
    pub(crate) fanout_breaker_min_calls: u32,

    /// Fan-out: how long a tripped source is skipped before a probe, in seconds, from 1 to
    /// 86,400.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) fanout_breaker_open_secs: u64,
}

/// A source's answer and the attempts it took, or why retrying stopped.
type Fetched = Result<(Value, u32), RetryError<(Value, u32), String>>;

/// One mock source: its latency, its timeout and its breaker.
#[derive(Debug)]
struct Source {
    name: &'static str,
    latency: Duration,
    timeout: Duration,
    breaker: CircuitBreaker,
}

/// The fan-out sources, and the retry policy their calls share.
#[derive(Debug)]
pub(crate) struct Sources {
    sources: [Source; 3],
    retry: Retry,
}

/// The sources' names, in call order (the order of `?mode=sequential`).
const NAMES: [&str; 3] = ["weather", "image", "chat"];

impl Sources {
    pub(crate) fn new(config: &FanoutConfig) -> Result<Self, String> {
        let source = |name: &'static str, latency_ms: u64, timeout_ms: u64| {
            if timeout_ms == 0 {
                return Err(format!(
                    "--fanout-{name}-timeout-ms must be at least 1 millisecond"
                ));
            }
            let breaker = CircuitBreaker::builder()
                .window(Window::count(config.fanout_breaker_window))
                .minimum_calls(config.fanout_breaker_min_calls)
                .failure_rate_threshold(50.0)
                .open_duration(OpenDuration::fixed(Duration::from_secs(
                    config.fanout_breaker_open_secs,
                )))
                .half_open_probes(1)
                .half_open_successes(1)
                .build()
                .map_err(|e| format!("fan-out breaker: {e}"))?;
            Ok(Source {
                name,
                latency: Duration::from_millis(latency_ms),
                timeout: Duration::from_millis(timeout_ms),
                breaker,
            })
        };
        let retry = Retry::builder()
            .schedule(Backoff::constant(Duration::from_millis(
                config.fanout_retry_ms,
            )))
            .max_attempts(config.fanout_attempts)
            .build()
            .map_err(|e| format!("fan-out retry: {e}"))?;
        Ok(Self {
            sources: [
                source(
                    "weather",
                    config.fanout_weather_ms,
                    config.fanout_weather_timeout_ms,
                )?,
                source(
                    "image",
                    config.fanout_image_ms,
                    config.fanout_image_timeout_ms,
                )?,
                source("chat", config.fanout_chat_ms, config.fanout_chat_timeout_ms)?,
            ],
            retry,
        })
    }

    /// Calls one source within `parent`, and describes the outcome as JSON.
    async fn call(
        &self,
        index: usize,
        plan: &SourcePlan,
        parent: &CancelScope,
        request_start: Instant,
    ) -> (bool, Value) {
        let source = &self.sources[index];
        let start = Instant::now();
        let started_ms = ms(start.saturating_duration_since(request_start));
        let timeout = plan.timeout.unwrap_or(source.timeout);
        let mut report = json!({
            "started_ms": started_ms,
            "timeout_ms": timeout.as_millis() as u64,
        });
        let permit = match source.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                report["status"] = json!("circuit_open");
                report["latency_ms"] = json!(0.0);
                report["attempts"] = json!(0);
                report["retry_after_ms"] = json!(rejected.retry_after().as_millis() as u64);
                report["error"] = json!(format!("skipped: {rejected}"));
                return (false, report);
            }
        };
        let scope = parent.child_with_timeout(timeout);
        let latency = plan.latency.unwrap_or(source.latency);
        let (name, fail, flaky) = (source.name, plan.fail, plan.flaky);
        // Boxed as `Send` here, where every lifetime is known: left to the caller, the async
        // closure's higher-ranked signature trips rustc's "`Send` is not general enough".
        let attempts: Pin<Box<dyn Future<Output = Fetched> + Send + '_>> =
            Box::pin(self.retry.run(async move |attempt: &Attempt| {
                let fails = fail || (flaky && !attempt.is_retry());
                let result = fetch(name, latency, fails).await?;
                Ok((result, attempt.number()))
            }));
        let outcome = scope.run_until_cancelled(attempts).await;
        report["latency_ms"] = json!(ms(start.elapsed()));
        let ok = match outcome {
            Ok(Ok((result, attempts))) => {
                permit.success();
                report["status"] = json!("ok");
                report["attempts"] = json!(attempts);
                report["result"] = result;
                true
            }
            Ok(Err(failed)) => {
                permit.failure();
                report["status"] = json!("error");
                report["attempts"] = json!(failed.attempts());
                report["error"] = json!(failed.error().map_or_else(
                    || format!("the source failed ({})", failed.stop()),
                    |e| format!("{e} ({} attempts, {})", failed.attempts(), failed.stop())
                ));
                false
            }
            Err(cancelled) if *cancelled.reason() == CancelReason::DeadlineExceeded => {
                // A source too slow to answer in time is sick as far as the breaker knows.
                permit.failure();
                report["status"] = json!("timeout");
                report["error"] = json!(format!("no answer within {} ms", timeout.as_millis()));
                false
            }
            Err(cancelled) => {
                // Shut down, or the client left: not the source's fault, the breaker records
                // nothing.
                drop(permit);
                report["status"] = json!("cancelled");
                report["error"] = json!(cancelled.reason().as_str());
                false
            }
        };
        (ok, report)
    }
}

/// What one request asks of one source.
#[derive(Clone, Copy, Debug, Default)]
struct SourcePlan {
    latency: Option<Duration>,
    timeout: Option<Duration>,
    fail: bool,
    flaky: bool,
}

/// The request's query, validated.
#[derive(Debug, Default)]
struct Plan {
    sequential: bool,
    sources: [SourcePlan; 3],
}

impl Plan {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut plan = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (name, value) = (&*name, &*value);
            match name {
                "mode" => {
                    plan.sequential = match value {
                        "concurrent" => false,
                        "sequential" => true,
                        _ => {
                            return Err(ApiError::invalid(
                                "`mode` must be `concurrent` or `sequential`",
                            ));
                        }
                    };
                }
                "timeout_ms" => {
                    let timeout = Some(Duration::from_millis(millis(name, value, 1)?));
                    for source in &mut plan.sources {
                        source.timeout = timeout;
                    }
                }
                "fail" | "flaky" => {
                    for listed in value.split(',') {
                        let Some(i) = NAMES.iter().position(|n| *n == listed) else {
                            return Err(ApiError::invalid(format!(
                                "`{name}` must list sources among weather, image, chat; got `{listed}`"
                            )));
                        };
                        if name == "fail" {
                            plan.sources[i].fail = true;
                        } else {
                            plan.sources[i].flaky = true;
                        }
                    }
                }
                _ => {
                    let Some(i) = name
                        .strip_suffix("_ms")
                        .and_then(|source| NAMES.iter().position(|n| *n == source))
                    else {
                        return Err(ApiError::invalid(format!(
                            "unknown query parameter `{name}`; known: mode, weather_ms, image_ms, chat_ms, timeout_ms, fail, flaky"
                        )));
                    };
                    plan.sources[i].latency = Some(Duration::from_millis(millis(name, value, 0)?));
                }
            }
        }
        Ok(plan)
    }
}

/// A whole number of milliseconds in `min..=MAX_QUERY_MS`.
fn millis(name: &str, value: &str, min: u64) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=MAX_QUERY_MS).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "`{name}` must be a whole number of milliseconds from {min} to {MAX_QUERY_MS}"
            ))
        })
}

/// A duration in milliseconds, to the microsecond.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// One attempt at a mock source: its latency on tokio's clock, then its answer.
async fn fetch(name: &'static str, latency: Duration, fails: bool) -> Result<Value, String> {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if fails {
        return Err(format!("{name}: injected failure"));
    }
    Ok(match name {
        "weather" => json!({ "city": "Lyon", "temp_c": 18, "sky": "light rain" }),
        "image" => json!({
            "url": "https://images.example/kitchen/mise-en-place.png",
            "width": 512,
            "height": 512,
        }),
        _ => json!({ "text": Mock::answer("what is on the menu tonight", 8).concat() }),
    })
}

/// `GET /v1/fanout`.
pub(crate) async fn fanout(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let plan = Plan::parse(request.uri().query())?;
    if app.shutdown.is_draining() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            app.config.grace(),
        ));
    }
    let sources = &app.fanout;
    // The request's scope: the shutdown cancels it after the grace period. A client that goes
    // away drops this future, and every call with it.
    let scope = app.shutdown.scope().child();
    let start = Instant::now();
    let results = if plan.sequential {
        let mut results = Vec::with_capacity(NAMES.len());
        for (i, source) in plan.sources.iter().enumerate() {
            results.push(sources.call(i, source, &scope, start).await);
        }
        results
    } else {
        let (weather, image, chat) = tokio::join!(
            sources.call(0, &plan.sources[0], &scope, start),
            sources.call(1, &plan.sources[1], &scope, start),
            sources.call(2, &plan.sources[2], &scope, start),
        );
        vec![weather, image, chat]
    };
    let total = start.elapsed();
    let partial = results.iter().any(|(ok, _)| !ok);
    let merged: serde_json::Map<String, Value> = NAMES
        .iter()
        .zip(results)
        .map(|(name, (_, report))| ((*name).to_owned(), report))
        .collect();
    Ok(crate::routes::json(
        StatusCode::OK,
        &json!({
            "object": "fanout",
            "mode": if plan.sequential { "sequential" } else { "concurrent" },
            "partial": partial,
            "total_ms": ms(total),
            "sources": merged,
        }),
    ))
}
