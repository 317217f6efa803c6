//! `POST /v1/chat/completions` (and, passed to an upstream, `POST /v1/completions` and
//! `POST /v1/embeddings`): front desk → order ticket → admission → the answer.
//!
//! The flow of DESIGN.md, outer to inner: front desk (auth 401, content type 415, body limit
//! 413, JSON and fields 400) → a cancel scope for the request (child of the shutdown scope,
//! with the deadline) → admission (`admission.rs`: rate limits, bulkhead, breaker, retries up to
//! the first chunk) → a JSON answer, or an SSE body with keep-alive (`generation.rs`) inside a
//! `DisconnectBody`, so a body dropped mid-stream cancels the scope with `ClientDisconnected`
//! and the line cook stops at once.
//!
//! Completions and embeddings take the same path; the mock answers chat only, so without an
//! upstream they are a 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope, DisconnectBody};
use brigade_sse::{KeepAlive, SseBody};
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::admission::{Admitted, Streamed, admit};
use crate::api::{ChatRequest, Endpoint, Order, ProxyRequest};
use crate::cook::Whole;
use crate::error::ApiError;
use crate::generation::Generation;
use crate::ids::RequestId;
use crate::routes::{App, Body, Streaming, Tokens, json_body, json_request_body};
use crate::upstream::REQUEST_TIMEOUT;

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let (key, timeout, id) = front_desk(&app, &request, peer)?;
    refuse_early(&app)?;
    let chat = ChatRequest::parse(json_request_body(&app, request).await?)?;
    // Boxed: the answer's future is the largest part of a request's (see `App::route`), and a
    // refusal never needs it.
    Box::pin(answer(&app, &key, timeout, &id, Arc::new(chat))).await
}

/// `POST /v1/completions` and `POST /v1/embeddings`, passed to the upstream.
pub(crate) async fn passthrough(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    endpoint: Endpoint,
) -> Result<Response<Body>, ApiError> {
    let (key, timeout, id) = front_desk(&app, &request, peer)?;
    if app.cook.upstreams.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!(
                "{} needs an upstream (--upstream URL): the mock answers chat only",
                endpoint.path()
            ),
        ));
    }
    refuse_early(&app)?;
    let order = ProxyRequest::parse(endpoint, json_request_body(&app, request).await?)?;
    Box::pin(answer(&app, &key, timeout, &id, Arc::new(order))).await
}

/// Refuses now, before the body is read or any per-key limit is asked, when the stream bulkhead
/// would refuse the request anyway (every slot taken and the queue full, or the queue's wait
/// predicted past its timeout): a surge costs its headers, not its bodies. The body left unread,
/// the connection cannot carry another request, so the answer says `Connection: close`.
fn refuse_early(app: &App) -> Result<(), ApiError> {
    match app.limits.refuse_early() {
        None => Ok(()),
        Some(refusal) => {
            app.metrics.refusal_close("body_unread");
            Err(refusal.header(CONNECTION, HeaderValue::from_static("close")))
        }
    }
}

/// The front desk before the body: the client's key (401), the request's deadline and id.
fn front_desk(
    app: &App,
    request: &Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<(String, Option<Duration>, RequestId), ApiError> {
    let key = crate::auth::authorize(app, request.headers(), peer)?.into_string();
    let timeout = request_timeout(app, request.headers());
    let id = request
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::random);
    Ok((key, timeout, id))
}

/// The order ticket and the answer, for a validated request.
async fn answer<R: Order>(
    app: &Arc<App>,
    key: &str,
    timeout: Option<Duration>,
    id: &RequestId,
    order: Arc<R>,
) -> Result<Response<Body>, ApiError> {
    if app.shutdown.is_draining() {
        return Err(ApiError::shutting_down(app.config.grace()));
    }

    // Order ticket: the request's scope. Until the body takes it over, dropping this handler
    // (the client went away) cancels it.
    let scope = match timeout {
        Some(timeout) => app.shutdown.scope().child_with_timeout(timeout),
        None => app.shutdown.scope().child(),
    };
    let guard = scope.clone().drop_guard(CancelReason::ClientDisconnected);

    let answer = if order.head().stream {
        stream(app, key, &scope, &order, id).await
    } else {
        whole(app, key, &scope, &order, id).await
    };
    let _ = guard.disarm();
    answer
}

/// A streamed answer: admitted up to its first chunk, then the pass window, SSE with
/// keep-alive in a body that cancels the scope if dropped before its end. The generation holds
/// the ticket until then.
async fn stream<R: Order>(
    app: &Arc<App>,
    key: &str,
    scope: &CancelScope,
    order: &Arc<R>,
    id: &RequestId,
) -> Result<Response<Body>, ApiError> {
    let Admitted {
        ticket,
        dish,
        headers,
    } = admit::<Streamed, R>(app, key, scope, order, id)
        .await
        .map_err(|refusal| refusal.into_error(app))?;
    let generation = Generation::new(Arc::clone(app), scope.clone(), &order.head(), dish, ticket);
    let log = generation.log();
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(app.config.keep_alive_secs));
    let mut response = SseBody::new(generation)
        .keep_alive(keep_alive)
        .into_response()
        .map(|body| DisconnectBody::new(body, scope.clone()).boxed_unsync());
    with_headers(&mut response, headers);
    response.extensions_mut().insert(Streaming);
    response.extensions_mut().insert(log);
    Ok(response)
}

/// A whole answer, admitted once the line cook has made all of it, forwarded as it came:
/// status, body, content type.
async fn whole<R: Order>(
    app: &Arc<App>,
    key: &str,
    scope: &CancelScope,
    order: &Arc<R>,
    id: &RequestId,
) -> Result<Response<Body>, ApiError> {
    let Admitted {
        mut ticket,
        dish,
        headers,
    } = admit::<Whole, R>(app, key, scope, order, id)
        .await
        .map_err(|refusal| refusal.into_error(app))?;
    ticket.succeeded();
    let Whole {
        status,
        content_type,
        json,
        usage,
    } = dish;
    let mut response = json_body(status, json);
    if let Some(content_type) = content_type {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    if let Some(usage) = usage {
        ticket.spend(usage.settled());
        app.metrics
            .tokens
            .inc_by(u64::from(usage.completion_tokens));
        response
            .extensions_mut()
            .insert(Tokens(usage.completion_tokens));
    }
    with_headers(&mut response, headers);
    Ok(response)
}

/// Adds the rate-limit fields to a response: the response's few fields are moved into the
/// rate-limit map (eight fields), rather than the other way round.
fn with_headers<B>(response: &mut Response<B>, mut headers: HeaderMap) {
    std::mem::swap(response.headers_mut(), &mut headers);
    response.headers_mut().extend(headers);
}

/// The configured deadline, or less if the request asks (`x-request-timeout-ms`).
fn request_timeout(app: &App, headers: &HeaderMap) -> Option<Duration> {
    let configured = app.config.deadline();
    let asked = headers
        .get(REQUEST_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    match (configured, asked) {
        (Some(configured), Some(asked)) => Some(configured.min(asked)),
        (configured, asked) => configured.or(asked),
    }
}
