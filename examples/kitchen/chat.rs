//! `POST /v1/chat/completions`: the order ticket and the pass window.
//!
//! The flow of DESIGN.md, outer to inner: front desk (auth 401, content type 415, body limit
//! 413, JSON and fields 400) → a cancel scope for the request (child of the shutdown scope,
//! with the deadline) → rate limits (reserve the estimate, settle at the end) → bulkhead slot
//! (held by the body) → breaker permit (held by the body; a client's cancel records nothing)
//! → retries only before the first token (the commit point) → the line cook → an SSE body
//! with keep-alive inside a `DisconnectBody`, so a body dropped mid-stream cancels the scope with
//! `ClientDisconnected` and the line cook stops at once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brigade_breaker::{Outcome, OwnedPermit};
use brigade_cancel::{CancelReason, CancelScope, DisconnectBody, WaitCancelledOwned};
use brigade_limit::PermitBody;
use brigade_retry::{Action, Attempt, RetryError, StopReason};
use brigade_sse::{Event, KeepAlive, SseBody};
use futures::{Stream, StreamExt};
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::{ApiError, error_json};
use crate::limits::{Reserved, Slot};
use crate::mock::{CookError, Order, Token, TokenStream, count_tokens};
use crate::routes::{App, Body, LogSlot, Streaming, Tokens};

/// The first token (if any) and the rest of the stream: what a successful attempt yields.
pub(crate) type Opened = (Option<Token>, TokenStream);

/// A validated chat request.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub(crate) order: Order,
    stream: bool,
    include_usage: bool,
}

pub(crate) async fn chat(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    id: u64,
) -> Result<Response<Body>, ApiError> {
    // Front desk.
    let key = authorize(&app, request.headers(), peer)?;
    let timeout = request_timeout(&app, request.headers());
    let bytes = crate::routes::json_request_body(&app, request).await?;
    let chat = parse(&bytes, app.config.default_max_tokens)?;
    if app.shutdown.is_draining() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            app.config.grace(),
        ));
    }

    // Order ticket: the request's scope. Until the body takes it over, dropping this handler
    // (the client went away) cancels it.
    let scope = match timeout {
        Some(timeout) => app.shutdown.scope().child_with_timeout(timeout),
        None => app.shutdown.scope().child(),
    };
    let guard = scope.clone().drop_guard(CancelReason::ClientDisconnected);

    // Rate limits: reserve the estimate now, settle with the real count at the end.
    let prompt_tokens = count_tokens(&chat.order.prompt);
    let (reserved, limit_headers) = app
        .limits
        .reserve(&key, prompt_tokens.saturating_add(chat.order.max_tokens))
        .await?;

    // Bulkhead: a slot for the whole stream, waited for within the deadline.
    let slot = match scope.run_until_cancelled(app.limits.slot()).await {
        Ok(slot) => slot?,
        Err(cancelled) => return Err(cancelled_error(&app, cancelled.reason())),
    };

    // Breaker: one permit per request, carried by the stream to its end.
    let permit = app.breaker.try_acquire_owned().map_err(|rejected| {
        ApiError::unavailable(
            "circuit_open",
            format!("the upstream is unavailable ({})", rejected.state()),
            rejected.retry_after(),
        )
    })?;

    // A bug in the handler, on demand (`--panic-prompt`), with every permit taken: the catch
    // in `App::handle` turns it into a 500, and unwinding hands every permit back.
    if let Some(trigger) = &app.config.panic_prompt
        && chat.order.prompt.ends_with(trigger.as_str())
    {
        panic!("the line cook dropped the pan (panic prompt)");
    }

    // Retries, before the first token only.
    let order = Arc::new(chat.order);
    let cook = Arc::clone(&app);
    let attempt_order = Arc::clone(&order);
    let opened = app
        .retry
        .classify(classify)
        .cancel_on(scope.token())
        .run(async move |attempt: &Attempt| {
            let mut tokens = cook.open(&attempt_order).await?;
            match tokens.next().await {
                Some(Ok(token)) => {
                    // The commit point: from here on this answer is never retried.
                    attempt.commit();
                    Ok((Some(token), tokens))
                }
                Some(Err(error)) => Err(error),
                None => Ok((None, tokens)),
            }
        })
        .await;
    let (first, tokens) = match opened {
        Ok(opened) => opened,
        Err(error) => return Err(attempts_failed(&app, &scope, permit, error)),
    };

    let generation = Generation {
        metrics_app: Arc::clone(&app),
        cancelled: Box::pin(scope.clone().cancelled_owned()),
        scope: scope.clone(),
        tokens,
        first,
        id: format!("chatcmpl-{id}"),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: order.model.clone(),
        max_tokens: order.max_tokens,
        include_usage: chat.include_usage,
        prompt_tokens,
        completion_tokens: 0,
        phase: Phase::Role,
        permit: Some(permit),
        reserved: Some(reserved),
        slot: Some(slot),
        log: LogSlot::default(),
        log_tokens: chat.stream,
        chunk_tail: None,
    };
    app.metrics.streams_in_flight.inc();

    if !chat.stream {
        let response = generation.collect_json().await;
        let _ = guard.disarm();
        return response.map(|mut response| {
            with_headers(&mut response, limit_headers);
            response
        });
    }

    // The pass window: SSE with keep-alive, in a body that cancels the scope if dropped before
    // its end, holding the bulkhead slot until then.
    let mut generation = generation;
    let slot = generation.slot.take().expect("the slot is taken once");
    let log = generation.log.clone();
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(app.config.keep_alive_secs));
    let mut response = SseBody::new(generation)
        .keep_alive(keep_alive)
        .into_response()
        .map(|body| PermitBody::new(DisconnectBody::new(body, scope), slot).boxed_unsync());
    let _ = guard.disarm();
    with_headers(&mut response, limit_headers);
    response.extensions_mut().insert(Streaming);
    response.extensions_mut().insert(log);
    Ok(response)
}

/// Adds the rate-limit fields to a response: the response's few fields are moved into the
/// rate-limit map (eight fields), rather than the other way round.
fn with_headers<B>(response: &mut Response<B>, mut headers: HeaderMap) {
    std::mem::swap(response.headers_mut(), &mut headers);
    response.headers_mut().extend(headers);
}

/// The rate-limit key: the API key, or the client's address when no keys are configured.
pub(crate) fn authorize(
    app: &App,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, ApiError> {
    if app.config.api_keys.is_empty() {
        return Ok(peer.ip().to_string());
    }
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(key) if app.config.api_keys.iter().any(|k| k == key) => Ok(key.to_owned()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// The configured deadline, or less if the request asks (`x-request-timeout-ms`).
fn request_timeout(app: &App, headers: &HeaderMap) -> Option<Duration> {
    let configured = app.config.deadline();
    let asked = headers
        .get("x-request-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    match (configured, asked) {
        (Some(configured), Some(asked)) => Some(configured.min(asked)),
        (configured, asked) => configured.or(asked),
    }
}

/// Which outcomes of an attempt are retried: retryable failures, honouring a `Retry-After`.
pub(crate) fn classify(outcome: &Result<Opened, CookError>) -> Action {
    match outcome {
        Ok(_) => Action::Stop,
        Err(error) if error.retryable => error.retry_after.map_or(Action::Retry, Action::Throttled),
        Err(_) => Action::Stop,
    }
}

/// The answer when no attempt produced a first token.
pub(crate) fn attempts_failed(
    app: &App,
    scope: &CancelScope,
    permit: OwnedPermit,
    error: RetryError<Opened, CookError>,
) -> ApiError {
    if error.stop() == StopReason::Cancelled {
        // The client, the deadline or the shutdown: the upstream is not to blame.
        drop(permit);
        return cancelled_error(
            app,
            &scope.reason().unwrap_or(CancelReason::ClientDisconnected),
        );
    }
    if error.stop() == StopReason::DeadlineExceeded {
        drop(permit);
        return ApiError::deadline();
    }
    let attempts = error.attempts();
    let stop = error.stop();
    match error.into_error() {
        Some(cook) => {
            if cook.retryable {
                permit.record(
                    cook.retry_after
                        .map_or(Outcome::FAILURE, Outcome::failure_retry_after),
                );
            } else {
                permit.record(Outcome::Ignored);
            }
            ApiError::bad_gateway(format!(
                "the line cook failed after {attempts} attempt(s) ({stop}): {}",
                cook.message
            ))
        }
        None => {
            permit.failure();
            ApiError::bad_gateway(format!("the line cook failed ({stop})"))
        }
    }
}

/// The error for a request cancelled before its first token.
fn cancelled_error(app: &App, reason: &CancelReason) -> ApiError {
    app.metrics.cancel(reason.as_str());
    match reason {
        CancelReason::DeadlineExceeded => ApiError::deadline(),
        CancelReason::Shutdown => ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            app.config.grace(),
        ),
        // Nobody reads this answer: the client is gone (logged as 499, nginx's convention).
        _ => ApiError::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            "client_disconnected",
            "client disconnected",
        ),
    }
}

pub(crate) fn parse(bytes: &[u8], default_max_tokens: u32) -> Result<ChatRequest, ApiError> {
    // A well-formed request is read in one typed pass (the messages in a second), strings
    // borrowed; anything that does not fit is read again field by field, to name the field.
    parse_fast(bytes, default_max_tokens)
        .map_or_else(|| parse_checked(bytes, default_max_tokens), Ok)
}

/// The typed pass: `None` for anything it does not accept, valid or not.
fn parse_fast(bytes: &[u8], default_max_tokens: u32) -> Option<ChatRequest> {
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        model: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        messages: &'a RawValue,
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        max_tokens: Option<u32>,
        #[serde(default)]
        max_completion_tokens: Option<u32>,
        #[serde(borrow, default)]
        stream_options: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Options {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    /// A message: an object only (a derived struct would also read `["user", "hi"]`).
    struct Message<'a> {
        role: std::borrow::Cow<'a, str>,
        content: Option<&'a RawValue>,
    }
    impl<'de> serde::Deserialize<'de> for Message<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Message<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a message object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Message<'de>, A::Error> {
                    use serde::de::Error as _;
                    let (mut role, mut content) = (None, None);
                    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                        match &*key {
                            "role" if role.is_none() => role = Some(map.next_value()?),
                            "content" if content.is_none() => content = Some(map.next_value()?),
                            "role" | "content" => return Err(A::Error::custom("duplicate field")),
                            _ => {
                                map.next_value::<serde::de::IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(Message {
                        role: role.ok_or_else(|| A::Error::missing_field("role"))?,
                        content: content.flatten(),
                    })
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }

    // A struct also reads from an array: only objects go this way.
    if first_byte(bytes) != Some(b'{') {
        return None;
    }
    let request: Request<'_> = serde_json::from_slice(bytes).ok()?;
    if request.model.is_empty() || !request.messages.get().starts_with('[') {
        return None;
    }
    let messages: Vec<Message<'_>> = serde_json::from_str(request.messages.get()).ok()?;
    if messages.is_empty() {
        return None;
    }
    let mut prompt = String::new();
    for message in &messages {
        if !matches!(
            &*message.role,
            "system" | "user" | "assistant" | "tool" | "developer" | "function"
        ) {
            return None;
        }
        match message.content.map(text_of) {
            None => {}
            Some(Some(text)) => push_text(&mut prompt, &text),
            // Parts, or an error: the checked pass knows.
            Some(None) => return None,
        }
    }
    // An object only, as for a message.
    let include_usage = match request.stream_options {
        None => false,
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str::<Options>(raw.get())
            .ok()?
            .include_usage
            .unwrap_or(false),
        Some(_) => return None,
    };
    let mut max_tokens = default_max_tokens;
    for n in [request.max_tokens, request.max_completion_tokens]
        .into_iter()
        .flatten()
    {
        if n == 0 {
            return None;
        }
        max_tokens = n;
    }
    Some(ChatRequest {
        order: Order {
            model: request.model.into_owned(),
            messages: request.messages.to_owned(),
            prompt,
            max_tokens,
        },
        stream: request.stream.unwrap_or(false),
        include_usage,
    })
}

/// The field-by-field pass, which names what is wrong.
pub(crate) fn parse_checked(
    bytes: &[u8],
    default_max_tokens: u32,
) -> Result<ChatRequest, ApiError> {
    // One pass over the body finds the fields and checks the JSON (each field kept as its raw
    // text, nothing allocated); each field is then read on its own, so an error names it.
    let body: Fields<'_> = match serde_json::from_slice(bytes) {
        Ok(body) if first_byte(bytes) == Some(b'{') => body,
        Ok(_) => return Err(ApiError::invalid("the body must be a JSON object")),
        Err(e) => {
            // A valid JSON value that is not an object fails the struct, not the syntax; an
            // object fails it only by its syntax or a repeated field.
            return Err(
                if first_byte(bytes) != Some(b'{')
                    && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
                {
                    ApiError::invalid("the body must be a JSON object")
                } else {
                    ApiError::invalid(format!("malformed JSON: {e}"))
                },
            );
        }
    };
    let model = match body.model {
        None => return Err(ApiError::invalid("`model` is required")),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(model) if !model.is_empty() => model,
            _ => return Err(ApiError::invalid("`model` must be a non-empty string")),
        },
    };
    let Some(messages_raw) = body.messages else {
        return Err(ApiError::invalid("`messages` is required"));
    };
    let messages: Vec<&RawValue> = match serde_json::from_str(messages_raw.get()) {
        Ok(messages) if !Vec::is_empty(&messages) => messages,
        _ => return Err(ApiError::invalid("`messages` must be a non-empty array")),
    };
    let mut prompt = String::new();
    for (i, message) in messages.iter().enumerate() {
        // A struct also reads from an array (`[role, content]`): only an object will do.
        let parsed = match message.get().starts_with('{') {
            true => serde_json::from_str::<MessageFields<'_>>(message.get()).ok(),
            false => None,
        };
        let message = match parsed {
            Some(message) => message,
            None => {
                return Err(ApiError::invalid(format!(
                    "`messages[{i}]` must be an object"
                )));
            }
        };
        match message.role.map(text_of) {
            Some(Some(role))
                if matches!(
                    &*role,
                    "system" | "user" | "assistant" | "tool" | "developer" | "function"
                ) => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "`messages[{i}].role` must be one of system, user, assistant, tool, developer"
                )));
            }
        }
        let Some(content) = message.content else {
            continue;
        };
        if let Some(text) = text_of(content) {
            push_text(&mut prompt, &text);
        } else if let Ok(parts) = serde_json::from_str::<Vec<Part<'_>>>(content.get()) {
            for text in parts
                .iter()
                .filter_map(|part| part.text)
                .filter_map(text_of)
            {
                push_text(&mut prompt, &text);
            }
        } else {
            return Err(ApiError::invalid(format!(
                "`messages[{i}].content` must be a string or an array of parts"
            )));
        }
    }
    let stream = match body
        .stream
        .map(|raw| serde_json::from_str::<bool>(raw.get()))
    {
        None => false,
        Some(Ok(stream)) => stream,
        Some(Err(_)) => return Err(ApiError::invalid("`stream` must be a boolean")),
    };
    let mut max_tokens = default_max_tokens;
    for (field, raw) in [
        ("max_tokens", body.max_tokens),
        ("max_completion_tokens", body.max_completion_tokens),
    ] {
        let Some(raw) = raw else { continue };
        match serde_json::from_str::<u32>(raw.get()) {
            Ok(n) if n > 0 => max_tokens = n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "`{field}` must be a positive integer"
                )));
            }
        }
    }
    let include_usage = match body.stream_options {
        None => false,
        Some(raw) => match serde_json::from_str::<StreamOptions<'_>>(raw.get()) {
            Ok(options) if raw.get().starts_with('{') => match options.include_usage {
                None => false,
                Some(raw) => match serde_json::from_str::<bool>(raw.get()) {
                    Ok(include) => include,
                    Err(_) => {
                        return Err(ApiError::invalid(
                            "`stream_options.include_usage` must be a boolean",
                        ));
                    }
                },
            },
            _ => return Err(ApiError::invalid("`stream_options` must be an object")),
        },
    };
    Ok(ChatRequest {
        order: Order {
            model,
            // Kept as received (one copy of its text) for a proxied upstream.
            messages: messages_raw.to_owned(),
            prompt,
            max_tokens,
        },
        stream,
        include_usage,
    })
}

/// The fields of a chat request the kitchen reads, each as its raw JSON text (a JSON `null`
/// reads as absent); every other field is skipped.
#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct MessageFields<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct StreamOptions<'a> {
    #[serde(borrow, default)]
    include_usage: Option<&'a RawValue>,
}

/// A JSON string's text: borrowed when it has no escapes. `None` if it is not a string.
fn text_of(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(text) => Some(text.into()),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Into::into),
    }
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn push_text(prompt: &mut String, text: &str) {
    if !prompt.is_empty() {
        prompt.push('\n');
    }
    prompt.push_str(text);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Role,
    Tokens,
    Finish,
    Usage,
    Done,
    Ended,
}

/// One answer in the making: the line cook's tokens as `chat.completion.chunk` events, ended
/// by `[DONE]`, or by a final error event if the line cook fails or the scope is cancelled
/// (deadline, shutdown). It holds the request's breaker permit, rate-limit reservation and
/// bulkhead slot, and gives them back when it ends or is dropped.
struct Generation {
    metrics_app: Arc<App>,
    scope: CancelScope,
    cancelled: Pin<Box<WaitCancelledOwned>>,
    tokens: TokenStream,
    first: Option<Token>,
    id: String,
    created: u64,
    model: String,
    max_tokens: u32,
    include_usage: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
    phase: Phase,
    permit: Option<OwnedPermit>,
    reserved: Option<Reserved>,
    slot: Option<Slot>,
    log: LogSlot,
    /// What every chunk's JSON ends with (`"created":…,"object":"chat.completion.chunk"}`),
    /// and what a content chunk's has after its content: written once per answer.
    chunk_tail: Option<(String, String)>,
    /// Whether dropping writes the log line (a streamed answer) or the handler does.
    log_tokens: bool,
}

impl Generation {
    /// The chunk JSON's tails (see `chunk_tail`), made on first use. The keys are in the order
    /// serde_json writes a `json!` object: sorted.
    fn tails(&mut self) -> &(String, String) {
        let (id, created, model) = (&self.id, self.created, &self.model);
        self.chunk_tail.get_or_insert_with(|| {
            let mut end = String::with_capacity(96 + id.len() + model.len());
            end.push_str("\"created\":");
            end.push_str(&created.to_string());
            end.push_str(",\"id\":");
            push_json_str(&mut end, id);
            end.push_str(",\"model\":");
            push_json_str(&mut end, model);
            end.push_str(",\"object\":\"chat.completion.chunk\"}");
            let content_end = format!("}},\"finish_reason\":null,\"index\":0}}],{end}");
            (end, content_end)
        })
    }

    /// A chunk whose JSON starts with `head` (the `choices` member and its comma).
    fn chunk(&mut self, head: &str) -> Event {
        let end = &self.tails().0;
        let mut data = String::with_capacity(head.len() + end.len());
        data.push_str(head);
        data.push_str(end);
        Event::default().data(data)
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// A content chunk, written without building a JSON tree (the hot path): the same bytes
    /// as a `json!` chunk with `"delta": {"content": text}`.
    fn token(&mut self, text: &str) -> Event {
        const HEAD: &str = "{\"choices\":[{\"delta\":{\"content\":";
        self.completion_tokens += 1;
        self.metrics_app.metrics.tokens.inc();
        let end = &self.tails().1;
        let mut data = String::with_capacity(HEAD.len() + text.len() + 2 + end.len());
        data.push_str(HEAD);
        push_json_str(&mut data, text);
        data.push_str(end);
        Event::default().data(data)
    }

    /// Ends the generation: hands back what it holds, recording `outcome` on the breaker.
    fn end(&mut self, outcome: Option<Outcome>) {
        self.phase = Phase::Ended;
        if let (Some(permit), Some(outcome)) = (self.permit.take(), outcome) {
            permit.record(outcome);
        }
        self.permit = None;
        if let Some(reserved) = self.reserved.take() {
            reserved.settle(self.prompt_tokens + self.completion_tokens);
        }
        self.slot = None;
    }

    /// A final error event: the stream ends without `[DONE]`.
    fn error_event(message: &str, kind: &str, code: &str) -> Event {
        Event::default().data(error_json(message, kind, code).to_string())
    }

    fn stopped(&mut self, reason: &CancelReason) -> Option<Event> {
        self.metrics_app.metrics.cancel(reason.as_str());
        self.end(None);
        match reason {
            CancelReason::Shutdown => Some(Self::error_event(
                "the server is shutting down",
                "server_error",
                "shutting_down",
            )),
            CancelReason::DeadlineExceeded => Some(Self::error_event(
                "the request's deadline passed",
                "server_error",
                "deadline_exceeded",
            )),
            _ => None,
        }
    }

    fn failed(&mut self, error: &CookError) -> Event {
        self.end(Some(if error.retryable {
            Outcome::FAILURE
        } else {
            Outcome::Ignored
        }));
        Self::error_event(
            &format!("the line cook failed mid-stream: {}", error.message),
            "server_error",
            "upstream_error",
        )
    }

    /// The non-streaming answer: every token, then one JSON body.
    async fn collect_json(mut self) -> Result<Response<Body>, ApiError> {
        let mut text = String::new();
        // The token counter is shared by every core: a whole answer adds to it once, when it
        // ends however it ends (dropped with the request included), not once per token.
        let mut tally = Tally(self.metrics_app.metrics.tokens.clone(), 0);
        if let Some(first) = self.first.take() {
            self.completion_tokens += 1;
            tally.1 += 1;
            text.push_str(&first);
        }
        let scope = self.scope.clone();
        loop {
            let next = scope.run_until_cancelled(self.tokens.next()).await;
            match next {
                Ok(Some(Ok(token))) => {
                    self.completion_tokens += 1;
                    tally.1 += 1;
                    text.push_str(&token);
                }
                Ok(Some(Err(error))) => {
                    self.failed(&error);
                    return Err(ApiError::bad_gateway(format!(
                        "the line cook failed: {}",
                        error.message
                    )));
                }
                Ok(None) => break,
                Err(cancelled) => {
                    let reason = cancelled.into_reason();
                    self.stopped(&reason);
                    return Err(cancelled_error_no_count(&self.metrics_app, &reason));
                }
            }
        }
        self.end(Some(Outcome::Success));
        self.log_tokens = false;
        let finish_reason = if self.completion_tokens >= self.max_tokens {
            "length"
        } else {
            "stop"
        };
        let json = completion_json(&CompletionFields {
            id: &self.id,
            created: self.created,
            model: &self.model,
            content: &text,
            finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        });
        let mut response = crate::routes::json_body(StatusCode::OK, json);
        response
            .extensions_mut()
            .insert(Tokens(self.completion_tokens));
        Ok(response)
    }
}

/// As [`cancelled_error`], the cancel already counted.
fn cancelled_error_no_count(app: &App, reason: &CancelReason) -> ApiError {
    match reason {
        CancelReason::DeadlineExceeded => ApiError::deadline(),
        _ => ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            app.config.grace(),
        ),
    }
}

impl Stream for Generation {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Role => {
                    this.phase = Phase::Tokens;
                    let event = this.chunk(
                        "{\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\
                         \"finish_reason\":null,\"index\":0}],",
                    );
                    return Poll::Ready(Some(Ok(event)));
                }
                Phase::Tokens => {
                    if let Some(first) = this.first.take() {
                        return Poll::Ready(Some(Ok(this.token(&first))));
                    }
                    // The cancel is checked with one atomic load before each token, and
                    // waited for (a lock) only when the line cook has nothing ready.
                    let next = if this.scope.is_cancelled() {
                        Poll::Pending
                    } else {
                        this.tokens.as_mut().poll_next(cx)
                    };
                    if next.is_pending()
                        && let Poll::Ready(reason) = this.cancelled.as_mut().poll(cx)
                    {
                        return Poll::Ready(this.stopped(&reason).map(Ok));
                    }
                    match next {
                        Poll::Ready(Some(Ok(token))) => {
                            return Poll::Ready(Some(Ok(this.token(&token))));
                        }
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(Some(Ok(this.failed(&error))));
                        }
                        Poll::Ready(None) => {
                            this.end(Some(Outcome::Success));
                            this.phase = Phase::Finish;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Phase::Finish => {
                    this.phase = if this.include_usage {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    let reason = if this.completion_tokens >= this.max_tokens {
                        "length"
                    } else {
                        "stop"
                    };
                    let head = if reason == "length" {
                        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"length\",\"index\":0}],"
                    } else {
                        "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],"
                    };
                    return Poll::Ready(Some(Ok(this.chunk(head))));
                }
                Phase::Usage => {
                    this.phase = Phase::Done;
                    let chunk = json!({
                        "id": this.id,
                        "object": "chat.completion.chunk",
                        "created": this.created,
                        "model": this.model,
                        "choices": [],
                        "usage": this.usage(),
                    });
                    return Poll::Ready(Some(Ok(Event::default().data(chunk.to_string()))));
                }
                Phase::Done => {
                    this.phase = Phase::Ended;
                    return Poll::Ready(Some(Ok(Event::default().data("[DONE]"))));
                }
                Phase::Ended => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let app = &self.metrics_app;
        app.metrics.streams_in_flight.dec();
        let unfinished = self.phase != Phase::Ended
            && !(self.phase == Phase::Finish
                || self.phase == Phase::Usage
                || self.phase == Phase::Done);
        if unfinished {
            // Dropped mid-answer: the body went away (`DisconnectBody` has set the reason).
            let reason = self
                .scope
                .reason()
                .unwrap_or(CancelReason::ClientDisconnected);
            app.metrics.cancel(reason.as_str());
            self.end(None);
        } else if self.phase != Phase::Ended {
            self.end(None);
        }
        if self.log_tokens {
            self.log.finish(self.completion_tokens);
        }
    }
}

/// Tokens of a whole answer, added to the counter when dropped.
struct Tally(prometheus_client::metrics::counter::Counter, u64);

impl Drop for Tally {
    fn drop(&mut self) {
        self.0.inc_by(self.1);
    }
}

/// The fields of a whole chat completion (`object: "chat.completion"`).
#[derive(Debug)]
pub(crate) struct CompletionFields<'a> {
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) content: &'a str,
    pub(crate) finish_reason: &'a str,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

/// A chat completion's JSON, written straight into one buffer sized up front, the strings
/// escaped by [`push_json_str`] (serde_json's derive spent about a tenth of a JSON request's
/// instructions in the server here; a test holds the two to the same value).
pub(crate) fn completion_json(c: &CompletionFields<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(
        320 + c.id.len() + c.model.len() + c.content.len() + c.content.len() / 8,
    );
    out.push_str(r#"{"id":"#);
    push_json_str(&mut out, c.id);
    out.push_str(r#","object":"chat.completion","created":"#);
    push_decimal(&mut out, c.created);
    out.push_str(r#","model":"#);
    push_json_str(&mut out, c.model);
    out.push_str(r#","choices":[{"index":0,"message":{"role":"assistant","content":"#);
    push_json_str(&mut out, c.content);
    out.push_str(r#"},"finish_reason":"#);
    push_json_str(&mut out, c.finish_reason);
    out.push_str(r#"}],"usage":{"prompt_tokens":"#);
    push_decimal(&mut out, u64::from(c.prompt_tokens));
    out.push_str(r#","completion_tokens":"#);
    push_decimal(&mut out, u64::from(c.completion_tokens));
    out.push_str(r#","total_tokens":"#);
    push_decimal(
        &mut out,
        u64::from(c.prompt_tokens) + u64::from(c.completion_tokens),
    );
    out.push_str("}}");
    out.into_bytes()
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: u64) {
    out.push_str(&n.to_string());
}

/// Appends `text` as a JSON string literal (quotes included), escaped as serde_json does.
///
/// Clean runs are skipped eight bytes at a time: a word with no byte below 0x20, no `"` and no
/// `\\` (tested with the zero-byte bit trick, whose false alarms only send a word to the
/// byte-by-byte path) is copied later in one piece.
pub(crate) fn push_json_str(out: &mut String, text: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    out.push('"');
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            let x = u64::from_le_bytes(word);
            let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
            if !control
                && !has_zero(x ^ (ONES * u64::from(b'"')))
                && !has_zero(x ^ (ONES * u64::from(b'\\')))
            {
                i += 8;
                continue;
            }
        }
        let byte = bytes[i];
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte: a character boundary, and so is `i + 1`.
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        i += 1;
        start = i;
    }
    out.push_str(&text[start..]);
    out.push('"');
}
