//! WebSocket chat: `GET /v1/ws` upgrades to a WebSocket over which a client asks for chat
//! answers, gets their tokens as messages, and may cancel one mid-answer.
//!
//! # Protocol
//!
//! Every data message is a JSON text message.
//!
//! Client to server:
//!
//! - a chat request: the body of a chat completion (`model`, `messages`, `max_tokens`), with
//!   `"type":"chat"` or no `type`. One generation runs at a time per socket.
//! - `{"type":"cancel"}`: stops the running generation (ignored when none runs).
//!
//! Server to client, for each generation (`id` names it: the upgrade request's id, a dash and
//! the generation's number, which an upstream gets as its `x-request-id`):
//! `{"type":"start","id","model"}`, then
//! `{"type":"token","id","index","text"}` for each token, in order, then exactly one of
//! `{"type":"done","id","finish_reason","usage"}`, `{"type":"error","id","status","error"}` or
//! `{"type":"cancelled","id","reason","completion_tokens"}`. A request that starts no
//! generation (malformed, busy, shutting down) gets `{"type":"error","status","error"}`, where
//! `status` and `error` are those the same request would get over HTTP (`error` in OpenAI's
//! shape; a 429 or 503 adds `retry_after`, in seconds).
//!
//! # Design
//!
//! The socket is a hyper upgrade (answered 101 after validating the handshake headers) run by
//! tokio-tungstenite. One task per connection, a task of the shutdown so that the shutdown
//! joins it, owns the socket: it reads the client's messages, writes the generation's messages,
//! pings, and closes. Each generation is a task of its own (tracked too) that sends its
//! messages through a small bounded channel, so a client that reads slowly slows the line cook
//! instead of filling memory, and a generation's messages keep their order.
//!
//! The cancel bell, through brigade-cancel: each generation runs in a scope that is a child of
//! the connection's scope, itself a child of the shutdown's. A cancel message cancels the
//! generation's scope (reason `client_cancel`); a closed or broken socket, or one whose pongs
//! stopped, cancels the connection's scope (`client_disconnected`); the end of the shutdown's
//! grace period cancels both (`shutdown`). The line cook stops at once in every case.
//!
//! A generation is admitted as an HTTP chat request is, through the same path
//! (`admission.rs`): the rate limits of the key (API key or client address, checked at the
//! upgrade), the estimate reserved and settled with the line cook's usage (refunded if the
//! generation is refused before its first token); a bulkhead slot for its length; a breaker
//! permit; retries before the first chunk only. It reads the content of each of the line
//! cook's chunks to send its token messages. The request deadline (`--deadline-secs`)
//! applies to each generation.
//!
//! Liveness: the server pings every `--ws-ping-secs` (20 by default); a connection that has
//! not answered (any frame counts) by the next ping is closed with 1008 (policy); one that
//! stops reading, so that a write does not complete within that time, is dropped. On shutdown
//! an idle connection is closed at once with 1001 (going away); one with a generation running
//! lets it finish within the grace period (then it is cancelled with reason `shutdown`), and
//! closes with 1001 after its last message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use headers::{
    Connection as ConnectionHeader, HeaderMapExt, SecWebsocketAccept, SecWebsocketKey,
    SecWebsocketVersion, Upgrade,
};
use http::header::{HeaderValue, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::admission::{Admitted, Refusal, Streamed, Ticket, admit};
use crate::api::{ChatRequest, ChunkView, Usage};
use crate::cook::{CookError, Cooked};
use crate::error::{ApiError, ErrorFields};
use crate::ids::RequestId;
use crate::metrics::add;
use crate::routes::{App, Body, full};

/// How long the server waits for the client's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages a generation may have written ahead of the socket.
const OUTBOX: usize = 16;

/// The reason of a cancel message.
const CLIENT_CANCEL: &str = "client_cancel";

type Labels = Vec<(&'static str, String)>;

/// Metrics of the WebSocket chat.
#[derive(Debug)]
pub(crate) struct WsMetrics {
    /// WebSocket connections open now.
    pub(crate) connections_open: Gauge,
    /// WebSocket connections accepted.
    pub(crate) connections: Counter,
    /// Data messages, by direction (`in`, `out`).
    pub(crate) messages: Family<Labels, Counter>,
    /// Generations started.
    pub(crate) generations: Counter,
    /// Generations stopped before their end, by reason.
    pub(crate) cancelled: Family<Labels, Counter>,
    /// Token messages written to sockets.
    pub(crate) tokens_sent: Counter,
}

impl WsMetrics {
    pub(crate) fn register(r: &mut Registry) -> Self {
        Self {
            connections_open: add(r, "ws_connections_open", "WebSocket connections open now"),
            connections: add(r, "ws_connections", "WebSocket connections accepted"),
            messages: add(r, "ws_messages", "WebSocket data messages, by direction"),
            generations: add(r, "ws_generations", "Generations started over WebSockets"),
            cancelled: add(
                r,
                "ws_generations_cancelled",
                "WebSocket generations stopped before their end, by reason",
            ),
            tokens_sent: add(r, "ws_tokens_sent", "Token messages written to WebSockets"),
        }
    }

    fn message(&self, direction: &'static str) {
        self.messages
            .get_or_create(&vec![("direction", direction.to_owned())])
            .inc();
    }

    fn cancel(&self, reason: &CancelReason) {
        self.cancelled
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc();
    }
}

/// `GET /v1/ws`: validates the handshake, answers 101 and serves the socket in a task.
pub(crate) async fn upgrade(
    app: Arc<App>,
    mut request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    id: RequestId,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    let connection_upgrade = headers
        .typed_get::<ConnectionHeader>()
        .is_some_and(|connection| connection.contains("upgrade"));
    if request.version() != Version::HTTP_11
        || !connection_upgrade
        || !has_token(headers, &UPGRADE, "websocket")
    {
        return Err(upgrade_required(
            "this endpoint is a WebSocket: send an HTTP/1.1 GET with `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers.typed_get::<SecWebsocketVersion>() != Some(SecWebsocketVersion::V13) {
        return Err(upgrade_required("`Sec-WebSocket-Version` must be 13")
            .header(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|key| is_websocket_key(key.as_bytes()))
        .and_then(|_| headers.typed_get::<SecWebsocketKey>());
    let Some(key) = key else {
        return Err(ApiError::invalid(
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        ));
    };
    let client = crate::auth::authorize(&app, headers, peer)?.into_string();
    if app.shutdown.is_draining() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            app.config.grace(),
        ));
    }

    let on_upgrade = hyper::upgrade::on(&mut request);
    let connection = Connection {
        scope: app.shutdown.scope().child(),
        app: Arc::clone(&app),
        client,
        id,
        generations: 0,
        current: None,
        draining: false,
    };
    let limit = app.config.body_limit;
    app.shutdown.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(limit))
                    .max_frame_size(Some(limit));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection.run(socket).await;
            }
            Err(error) => {
                tracing::debug!(%error, id = %connection.id, "WebSocket upgrade failed");
            }
        }
    });

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.typed_insert(ConnectionHeader::upgrade());
    headers.typed_insert(Upgrade::websocket());
    headers.typed_insert(SecWebsocketAccept::from(key));
    Ok(response)
}

/// Whether a comma-separated header holds `token` (case-insensitive; `headers::Upgrade`
/// compares the whole value, case included).
fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// 16 bytes in base64: 22 characters of the alphabet, then `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// 426, with the `Upgrade` header RFC 9110 asks for.
fn upgrade_required(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "invalid_request_error",
        "upgrade_required",
        message,
    )
    .header(UPGRADE, HeaderValue::from_static("websocket"))
}

/// One message a generation hands to its connection.
#[derive(Debug)]
struct Out {
    /// A token message (counted when written).
    token: bool,
    text: String,
}

/// The generation running on a connection.
#[derive(Debug)]
struct Current {
    scope: CancelScope,
    outbox: mpsc::Receiver<Out>,
}

/// Counts an open connection for as long as it lives.
#[derive(Debug)]
struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One WebSocket connection.
#[derive(Debug)]
struct Connection {
    app: Arc<App>,
    /// The rate-limit key: the API key, or the client's address.
    client: String,
    /// The upgrade request's id; a generation's is it and the generation's number.
    id: RequestId,
    /// Child of the shutdown's scope; the parent of every generation's.
    scope: CancelScope,
    generations: u64,
    current: Option<Current>,
    draining: bool,
}

/// Why the connection loop ended, and the close frame to send if any.
#[derive(Debug)]
enum Ended {
    /// The socket is broken: nothing more to send.
    Gone,
    /// The client sent a close frame: tungstenite has queued the answer, to flush.
    ClosedByClient,
    /// The server closes.
    Close(CloseCode, &'static str),
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

impl Connection {
    async fn run(mut self, mut socket: Socket) {
        let app = Arc::clone(&self.app);
        let metrics = &app.metrics.ws;
        metrics.connections.inc();
        metrics.connections_open.inc();
        let _open = Open(metrics.connections_open.clone());
        // However this task ends (even dropped by the runtime), the generation stops.
        let _bell = self
            .scope
            .clone()
            .drop_guard(CancelReason::ClientDisconnected);
        let every = app.config.ws_ping();
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut answered = true;
        tracing::debug!(id = %self.id, "WebSocket open");

        let ended = loop {
            tokio::select! {
                incoming = socket.next() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            tracing::debug!(%error, id = %self.id, "WebSocket read failed");
                            break Ended::Gone;
                        }
                        None => break Ended::Gone,
                    };
                    answered = true;
                    let reply = match message {
                        Message::Text(text) => {
                            metrics.message("in");
                            self.on_text(text.as_str())
                        }
                        Message::Binary(_) => {
                            metrics.message("in");
                            Some(error_message(
                                &ApiError::invalid("binary messages are not supported; send JSON text"),
                                None,
                            ))
                        }
                        // tungstenite answers pings and close frames by itself.
                        Message::Close(_) => break Ended::ClosedByClient,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
                    };
                    if let Some(reply) = reply
                        && !self.send(&mut socket, Message::text(reply)).await
                    {
                        break Ended::Gone;
                    }
                }
                out = next_out(self.current.as_mut()) => match out {
                    Some(out) => {
                        if !self.send(&mut socket, Message::text(out.text)).await {
                            break Ended::Gone;
                        }
                        if out.token {
                            metrics.tokens_sent.inc();
                        }
                    }
                    None => {
                        // The generation ended and every message of it is written.
                        self.current = None;
                        if self.draining {
                            break Ended::Close(CloseCode::Away, "the server is shutting down");
                        }
                    }
                },
                _ = ping.tick() => {
                    if !answered {
                        break Ended::Close(CloseCode::Policy, "no pong");
                    }
                    answered = false;
                    if !self.send(&mut socket, Message::Ping(Bytes::new())).await {
                        break Ended::Gone;
                    }
                }
                () = app.shutdown.draining(), if !self.draining => {
                    self.draining = true;
                    if self.current.is_none() {
                        break Ended::Close(CloseCode::Away, "the server is shutting down");
                    }
                }
            }
        };

        // Nobody will read what is left: any running generation stops (a shutdown's reason,
        // set first, stays).
        self.scope.cancel(CancelReason::ClientDisconnected);
        match ended {
            Ended::Gone => {}
            Ended::ClosedByClient => {
                // Writes the answer tungstenite queued (`close` would refuse: already closing).
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
            }
            Ended::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                // Send the close frame, then wait a little for the client's.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    if socket.send(Message::Close(Some(frame))).await.is_ok() {
                        while let Some(Ok(_)) = socket.next().await {}
                    }
                })
                .await;
            }
        }
        tracing::debug!(
            id = %self.id,
            generations = self.generations,
            "WebSocket closed"
        );
    }

    /// Writes one message; `false` if the socket is gone or the client stopped reading (the
    /// write took longer than a ping interval).
    async fn send(&self, socket: &mut Socket, message: Message) -> bool {
        let data = matches!(message, Message::Text(_));
        let limit = self.app.config.ws_ping();
        match tokio::time::timeout(limit, socket.send(message)).await {
            Ok(Ok(())) => {
                if data {
                    self.app.metrics.ws.message("out");
                }
                true
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, id = %self.id, "WebSocket write failed");
                false
            }
            Err(_) => {
                tracing::debug!(id = %self.id, "WebSocket client stopped reading");
                false
            }
        }
    }

    /// A client's text message: a chat request or a cancel. Returns the reply, if any.
    fn on_text(&mut self, text: &str) -> Option<String> {
        /// The message's `type`, read before the rest.
        #[derive(Deserialize)]
        struct Kind {
            #[serde(default, rename = "type")]
            kind: Option<String>,
        }
        let mut json = serde_json::Deserializer::from_str(text);
        let kind = match serde_path_to_error::deserialize(&mut json) {
            Ok(Kind { kind }) => kind,
            // A `type` that is not a string is no type we know.
            Err(error) if error.path().to_string() == "type" => Some(String::new()),
            // Not JSON, or not an object: the chat request's parser names what is wrong.
            Err(_) => None,
        };
        match kind.as_deref() {
            None | Some("chat") => {}
            Some("cancel") => {
                if let Some(current) = &self.current {
                    current.scope.cancel(CancelReason::custom(CLIENT_CANCEL));
                }
                return None;
            }
            Some(_) => {
                return Some(error_message(
                    &ApiError::invalid("`type` must be `chat` or `cancel`"),
                    None,
                ));
            }
        }
        let chat = match ChatRequest::parse(Bytes::copy_from_slice(text.as_bytes())) {
            Ok(chat) => chat,
            Err(error) => return Some(error_message(&error, None)),
        };
        if self.draining {
            return Some(error_message(
                &ApiError::shutting_down(self.app.config.grace()),
                None,
            ));
        }
        if self.current.is_some() {
            return Some(error_message(
                &ApiError::new(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    "generation_in_progress",
                    "a generation is already running on this socket: cancel it or wait for its end",
                ),
                None,
            ));
        }
        self.start(chat);
        None
    }

    /// Starts a generation in a task of its own.
    fn start(&mut self, chat: ChatRequest) {
        self.generations += 1;
        let scope = match self.app.config.deadline() {
            Some(deadline) => self.scope.child_with_timeout(deadline),
            None => self.scope.child(),
        };
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        let generation = Generation {
            app: Arc::clone(&self.app),
            client: self.client.clone(),
            id: self.id.nth(self.generations),
            prompt_tokens: chat.prompt_tokens(),
            chat: Arc::new(chat),
            scope: scope.clone(),
            outbox,
            completion_tokens: 0,
            finish_reason: None,
            usage: None,
        };
        self.app.metrics.ws.generations.inc();
        self.app.shutdown.spawn(generation.run());
        self.current = Some(Current {
            scope,
            outbox: receiver,
        });
    }
}

/// The next message of the running generation; never, when none runs.
async fn next_out(current: Option<&mut Current>) -> Option<Out> {
    match current {
        Some(current) => current.outbox.recv().await,
        None => std::future::pending().await,
    }
}

/// A message of the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerMessage<'a> {
    Start {
        id: &'a str,
        model: &'a str,
    },
    Token {
        id: &'a str,
        index: u32,
        text: &'a str,
    },
    Done {
        id: &'a str,
        finish_reason: &'a str,
        usage: Usage,
    },
    Cancelled {
        id: &'a str,
        reason: &'a str,
        completion_tokens: u32,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        status: u16,
        error: ErrorFields<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

impl ServerMessage<'_> {
    fn to_text(&self) -> String {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `{"type":"error","status","error"}` (with `id` for a generation's error, and `retry_after`
/// when the HTTP answer would carry one).
fn error_message(error: &ApiError, id: Option<&str>) -> String {
    ServerMessage::Error {
        id,
        status: error.status.as_u16(),
        error: error.fields(),
        retry_after: error.retry_after_secs(),
    }
    .to_text()
}

/// How a generation ended.
#[derive(Debug)]
enum End {
    Done,
    Failed(ApiError),
    Cancelled(CancelReason),
}

/// One answer in the making, run as a task: admitted as a chat request is (`admission.rs`),
/// then the line cook's chunks as token messages into the connection's outbox.
#[derive(Debug)]
struct Generation {
    app: Arc<App>,
    client: String,
    id: RequestId,
    chat: Arc<ChatRequest>,
    prompt_tokens: u32,
    scope: CancelScope,
    outbox: mpsc::Sender<Out>,
    completion_tokens: u32,
    /// The finish reason of the line cook's finish chunk.
    finish_reason: Option<String>,
    /// The line cook's usage chunk.
    usage: Option<Usage>,
}

impl Generation {
    async fn run(mut self) {
        let start = ServerMessage::Start {
            id: self.id.as_str(),
            model: &self.chat.model,
        }
        .to_text();
        let end = if self.emit(false, start).await {
            self.generate().await
        } else {
            // Cancelled before it started: still ends with its `cancelled` message.
            self.cancelled()
        };
        let last = match end {
            End::Done => ServerMessage::Done {
                id: self.id.as_str(),
                finish_reason: self.finish_reason.as_deref().unwrap_or("stop"),
                usage: self.usage(),
            }
            .to_text(),
            End::Failed(error) => error_message(&error, Some(self.id.as_str())),
            End::Cancelled(reason) => {
                self.app.metrics.ws.cancel(&reason);
                tracing::debug!(id = %self.id, %reason, "WebSocket generation cancelled");
                ServerMessage::Cancelled {
                    id: self.id.as_str(),
                    reason: reason.as_str(),
                    completion_tokens: self.completion_tokens,
                }
                .to_text()
            }
        };
        // The connection may be gone already; then nobody reads this.
        let _ = self
            .outbox
            .send(Out {
                token: false,
                text: last,
            })
            .await;
    }

    /// Sends one message, unless the scope is cancelled first; `false` if it was not sent.
    async fn emit(&self, token: bool, text: String) -> bool {
        match self
            .scope
            .run_until_cancelled(self.outbox.send(Out { token, text }))
            .await
        {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                // The connection task is gone.
                self.scope.cancel(CancelReason::ClientDisconnected);
                false
            }
            Err(_) => false,
        }
    }

    fn cancelled(&self) -> End {
        End::Cancelled(
            self.scope
                .reason()
                .unwrap_or(CancelReason::ClientDisconnected),
        )
    }

    /// The line cook's usage, or the tokens counted.
    fn usage(&self) -> Usage {
        self.usage
            .unwrap_or_else(|| Usage::new(self.prompt_tokens, self.completion_tokens))
    }

    /// Admission, then the chunks; the ticket is settled with what the answer used.
    async fn generate(&mut self) -> End {
        let app = Arc::clone(&self.app);
        let admitted =
            admit::<Streamed, _>(&app, &self.client, &self.scope, &self.chat, &self.id).await;
        let Admitted {
            mut ticket, dish, ..
        } = match admitted {
            Ok(admitted) => admitted,
            Err(Refusal::Refused(error)) => return End::Failed(error),
            Err(Refusal::Cancelled(reason)) => return End::Cancelled(reason),
        };
        let end = self.serve(&mut ticket, dish).await;
        ticket.spend(self.usage().total_tokens);
        end
    }

    /// Each chunk's content as a token message, until the end.
    async fn serve(&mut self, ticket: &mut Ticket, dish: Streamed) -> End {
        let Streamed { first, mut rest } = dish;
        let mut next = Some(first);
        loop {
            let cooked = match next.take() {
                Some(first) => Some(Ok(first)),
                None => match self.scope.run_until_cancelled(rest.next()).await {
                    Ok(cooked) => cooked,
                    Err(_) => return self.cancelled(),
                },
            };
            match cooked {
                Some(Ok(Cooked::Chunk(chunk))) => {
                    if !self.tokens_of(&chunk.json).await {
                        return self.cancelled();
                    }
                    if chunk.usage.is_some() {
                        self.usage = chunk.usage;
                    }
                }
                Some(Ok(Cooked::Done)) => {
                    ticket.succeeded();
                    return End::Done;
                }
                Some(Err(error)) => {
                    ticket.failed(&error);
                    return End::Failed(ApiError::bad_gateway(format!(
                        "the line cook failed mid-stream: {}",
                        error.message()
                    )));
                }
                None => {
                    let error = "the line cook's stream ended before its end";
                    ticket.failed(&CookError::failed(error));
                    return End::Failed(ApiError::bad_gateway(error));
                }
            }
        }
    }

    /// Sends the content of a chunk as token messages and notes its finish reason; `false`
    /// if the generation was cancelled meanwhile.
    async fn tokens_of(&mut self, json: &[u8]) -> bool {
        let Ok(view) = serde_json::from_slice::<ChunkView<'_>>(json) else {
            return true;
        };
        for choice in view.choices {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
            let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) else {
                continue;
            };
            self.app.metrics.tokens.inc();
            let index = self.completion_tokens;
            self.completion_tokens += 1;
            let message = ServerMessage::Token {
                id: self.id.as_str(),
                index,
                text: &text,
            }
            .to_text();
            if !self.emit(true, message).await {
                return false;
            }
        }
        true
    }
}
