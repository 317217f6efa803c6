//! The front desk: the shared state, routing, health, readiness, metrics and models, the
//! request's id (`ids.rs`: taken from `x-request-id` or made, returned in the answer, printed
//! in the log line), and the catch-unwind that turns a handler panic into a 500.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use brigade_breaker::CircuitBreaker;
use brigade_cancel::Shutdown;
use brigade_retry::{Backoff, Jitter, Retry};
use bytes::Bytes;
use futures::FutureExt;
use headers::{ContentLength, ContentType, HeaderMapExt};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::Endpoint;
use crate::config::Config;
use crate::cook::LineCook;
use crate::error::ApiError;
use crate::ids::{REQUEST_ID, RequestId};
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Every response body of the kitchen.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).boxed_unsync()
}

/// The token count of a whole (non-streamed) answer, for its log line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tokens(pub(crate) u32);

/// Marks a streaming response: its log line is written when the stream ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streaming;

/// The kitchen's shared state: configuration, the crates' policies, the line cook, metrics.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: Shutdown,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) retry: Retry,
    pub(crate) limits: Limits,
    pub(crate) cook: LineCook,
    /// Background jobs.
    pub(crate) jobs: crate::jobs::Shelf,
    /// The fan-out's sources.
    pub(crate) fanout: crate::fanout::Sources,
}

impl App {
    /// The kitchen's state; opens the job store and starts this process's job workers.
    pub(crate) async fn new(config: Config) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let shutdown = Shutdown::new(config.grace());
        let breaker = crate::pool::breaker(&config)
            .build()
            .map_err(|e| format!("breaker: {e}"))?;
        let retries = metrics.retries.clone();
        let retry = Retry::builder()
            .schedule(
                Backoff::exponential(Duration::from_millis(config.retry_backoff_ms.max(1)), 2.0)
                    .max_delay(Duration::from_secs(2))
                    .jitter(Jitter::Equal),
            )
            .max_attempts(config.max_attempts)
            .rng(config.seed)
            .on_retry(move |_| {
                retries.inc();
            })
            .build()
            .map_err(|e| format!("retry: {e}"))?;
        Ok(Self {
            limits: Limits::new(&config, Arc::clone(&metrics))?,
            jobs: crate::jobs::Shelf::open(
                &config.jobs,
                Arc::clone(&metrics),
                &shutdown,
                config.grace(),
            )
            .await?,
            fanout: crate::fanout::Sources::new(&config.fanout)?,
            cook: LineCook::new(&config)?,
            metrics,
            shutdown,
            breaker,
            retry,
            config,
        })
    }

    /// Answers one request: never fails, never unwinds.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut request: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let id = RequestId::of(request.headers());
        request.extensions_mut().insert(id.clone());
        let route = route_name(request.uri().path());
        let span = tracing::info_span!("request", %id, route, method = %request.method());
        let log = LogLine {
            start,
            span: span.clone(),
        };
        let routed = AssertUnwindSafe(Arc::clone(&self).route(request, peer, id.clone(), route))
            .catch_unwind()
            .instrument(span)
            .await;
        let mut response = routed.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            self.metrics.panics.inc();
            tracing::error!(parent: &log.span, panic = %message, "handler panicked");
            ApiError::internal().into_response()
        });
        response
            .headers_mut()
            .insert(REQUEST_ID, id.header().clone());
        if matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            self.limits.shed(&mut response);
        }
        self.metrics.request(route, response.status().as_u16());
        if response.extensions().get::<Streaming>().is_none() {
            let tokens = response.extensions().get::<Tokens>().map_or(0, |t| t.0);
            log.finish(response.status().as_u16(), tokens);
        } else if let Some(slot) = response.extensions().get::<LogSlot>() {
            slot.put(log, response.status().as_u16());
        }
        response
    }

    async fn route(
        self: Arc<Self>,
        request: Request<hyper::body::Incoming>,
        peer: SocketAddr,
        id: RequestId,
        route: &'static str,
    ) -> Response<Body> {
        let method = request.method().clone();
        // hyper keeps an HTTP/1.1 connection's request future in a box of that future's size,
        // allocated with the connection, idle or not; so the large, rarer routes are boxed
        // here (and the chat path's answer in `chat.rs`): a connection then holds 3.3 KiB
        // for it instead of 7.1 KiB (23 MiB less at the default 6,144 connections, all idle).
        let result = match (route, &method) {
            ("chat", &Method::POST) => crate::chat::chat(self, request, peer).await,
            ("completions", &Method::POST) => {
                crate::chat::passthrough(self, request, peer, Endpoint::Completions).await
            }
            ("embeddings", &Method::POST) => {
                crate::chat::passthrough(self, request, peer, Endpoint::Embeddings).await
            }
            ("chat" | "completions" | "embeddings", _) => Err(ApiError::method_not_allowed("POST")),
            ("models", &Method::GET | &Method::HEAD) => Box::pin(self.cook.models()).await,
            ("jobs" | "job", _) => Box::pin(crate::jobs::route(self, request, peer)).await,
            ("fanout", &Method::GET) => Box::pin(crate::fanout::fanout(self, request)).await,
            ("fanout", _) => Err(ApiError::method_not_allowed("GET")),
            ("ws", &Method::GET) => crate::ws::upgrade(self, request, peer, id).await,
            ("ws", _) => Err(ApiError::method_not_allowed("GET")),
            ("metrics", &Method::GET | &Method::HEAD) => {
                Box::pin(self.jobs.export_counts(&self.metrics)).await;
                Ok(self.simple(route, request.uri().path()))
            }
            (_, &Method::GET | &Method::HEAD) => Ok(self.simple(route, request.uri().path())),
            ("not_found", _) => Err(ApiError::not_found(request.uri().path())),
            (_, _) => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
        result.unwrap_or_else(ApiError::into_response)
    }

    pub(crate) fn simple(&self, route: &'static str, path: &str) -> Response<Body> {
        match route {
            "healthz" => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "readyz" if self.shutdown.is_draining() => ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
                self.config.grace(),
            )
            .into_response(),
            "readyz" => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
            "metrics" => {
                self.metrics
                    .set_breaker_state(&self.breaker.state().to_string());
                self.metrics
                    .bulkhead_queue
                    .set(i64::try_from(self.limits.queued()).unwrap_or(i64::MAX));
                self.limits.export_counts();
                if let Some(upstreams) = &self.cook.upstreams {
                    upstreams.export(&self.metrics);
                }
                let mut response = Response::new(full(self.metrics.encode()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => ApiError::not_found(path).into_response(),
        }
    }

    /// What answers: the mock's model name, the upstream's root, or a pool of them.
    pub(crate) fn line_cook(&self) -> &str {
        match self
            .cook
            .upstreams
            .as_ref()
            .map(|upstreams| upstreams.list())
        {
            None => crate::mock::Mock::MODEL,
            Some([one]) => one.base(),
            Some(_) => "a pool of upstreams",
        }
    }
}

fn route_name(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/models" => "models",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/v1/jobs" => "jobs",
        "/v1/fanout" => "fanout",
        "/v1/ws" => "ws",
        _ if path.starts_with("/v1/jobs/") => "job",
        _ => "not_found",
    }
}

/// A JSON response of `value` (the kitchen's answers are strings, numbers and maps with string
/// keys: serializing them cannot fail).
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_body(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A JSON response from bytes already serialized.
pub(crate) fn json_body(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().typed_insert(ContentType::json());
    response
}

/// A JSON request's body, read within the body limit and `--body-read-timeout-ms`: 415 unless
/// the content type is `application/json`, 413 for a declared or an actual length over the
/// limit, 408 (connection closed) for a body not whole in time, 400 for a body that cannot be
/// read.
pub(crate) async fn json_request_body(
    app: &App,
    request: Request<hyper::body::Incoming>,
) -> Result<Bytes, ApiError> {
    let headers = request.headers();
    let is_json = headers
        .typed_get::<ContentType>()
        .is_some_and(|content_type| {
            mime::Mime::from(content_type).essence_str() == "application/json"
        });
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    let limit = app.config.body_limit;
    let declared = headers.typed_get::<ContentLength>();
    if declared.is_some_and(|ContentLength(len)| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let read = http_body_util::Limited::new(request.into_body(), limit).collect();
    let timeout = Duration::from_millis(app.config.body_read_timeout_ms);
    let Ok(body) = tokio::time::timeout(timeout, read).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
        .header(http::header::CONNECTION, HeaderValue::from_static("close")));
    };
    let body = body.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(format!("could not read the body: {e}"))
        }
    })?;
    Ok(body.to_bytes())
}

/// The one log line of a request, written when it ends.
#[derive(Debug)]
pub(crate) struct LogLine {
    start: Instant,
    span: tracing::Span,
}

impl LogLine {
    pub(crate) fn finish(&self, status: u16, tokens: u32) {
        // The request id, route and method are the span's fields, printed with the line.
        tracing::info!(
            parent: &self.span,
            status,
            latency_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            tokens,
            "request done"
        );
    }
}

/// Where a streaming response's body picks up its log line.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogSlot(Arc<std::sync::Mutex<Option<(LogLine, u16)>>>);

impl LogSlot {
    fn put(&self, log: LogLine, status: u16) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((log, status));
    }

    /// Writes the log line with the stream's token count.
    pub(crate) fn finish(&self, tokens: u32) {
        let taken = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((log, status)) = taken {
            log.finish(status, tokens);
        }
    }
}
