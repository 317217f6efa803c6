//! A bare OpenAI-compatible upstream: a hyper server with no middleware at all (no limits, no
//! breaker, no retries, no cancel scopes, no metrics) that answers chat completions with paced
//! tokens. It is the baseline the kitchen is measured against with `loadgen`, and the upstream
//! of the gateway-overhead bench (the kitchen with `--upstream` in front of it).
//!
//! A streamed answer is what OpenAI sends: a role chunk, one `chat.completion.chunk` per token
//! (each `" token"`), a finish chunk (`stop`, or `length` when `max_tokens` cut the answer), a
//! usage chunk (`choices: []`) only when the request asks (`stream_options.include_usage`),
//! then `data: [DONE]`. A request with `tools` (whose last message is not a tool's result) is
//! answered with a call of its first tool instead, as the official clients expect one
//! (`finish_reason: "tool_calls"`). A non-streamed request gets one `chat.completion`, after
//! the time the stream would take.
//!
//! ```text
//! cargo run --release --example bare_stream -- --addr 127.0.0.1:8081 --ttft-ms 20 --token-ms 10 --tokens 32
//! ```
//!
//! Faults for chaos runs, drawn per chat request from `--seed`: `--slow-fraction` of the answers
//! are `--slow-factor` times slower, and `--fail-fraction` of the requests fail with a 500 before
//! their first token.
//!
//! The chunks of an answer are written once, with serde, when it starts; each token sends the
//! same bytes again (a reference count), so the server spends its time on the network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A bare OpenAI-compatible streaming server, the kitchen's baseline and upstream.
#[derive(Clone, Copy, Debug, Parser)]
#[command(name = "bare_stream")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 50)]
    ttft_ms: u64,
    /// Time between tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    token_ms: u64,
    /// Tokens per answer (fewer when `max_tokens` asks).
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Fault: the share of chat requests (0 to 1) answered `--slow-factor` times slower, to the
    /// first token and between tokens.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    slow_fraction: f64,
    /// Fault: how many times slower a slow answer is.
    #[arg(long, default_value_t = 10)]
    slow_factor: u32,
    /// Fault: the share of chat requests (0 to 1) that fail before their first token, with a
    /// 500 and OpenAI's error JSON, after `--fail-after-ms`.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    fail_fraction: f64,
    /// Fault: how long a failing request takes to fail, in milliseconds.
    #[arg(long, default_value_t = 0)]
    fail_after_ms: u64,
    /// The seed of the faults' draws: the same seed draws the same faults for the same
    /// sequence of requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A share between 0 and 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

/// The faults drawn for one request.
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// The answer's pacing is multiplied by this (1 when not slow).
    slowdown: u32,
    fail: bool,
}

impl Faults {
    /// Draws the faults of the `n`th chat request: two independent uniform draws from a
    /// SplitMix64 of the seed and `n`.
    fn draw(args: &Args, n: u64) -> Self {
        let uniform = |stream: u64| {
            let mut z = args.seed.wrapping_add(
                n.wrapping_mul(2)
                    .wrapping_add(stream)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1_u64 << 53) as f64
        };
        Self {
            slowdown: if uniform(0) < args.slow_fraction {
                args.slow_factor
            } else {
                1
            },
            fail: uniform(1) < args.fail_fraction,
        }
    }
}

/// Chat requests so far: the index of each one's fault draws.
static CHAT_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// What the server reads of a request.
#[derive(Debug, Default, Deserialize)]
struct Order {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    tools: Vec<Tool>,
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct Tool {
    function: Function,
}

#[derive(Debug, Deserialize)]
struct Function {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
}

/// The prompt tokens every answer reports.
const PROMPT_TOKENS: u32 = 6;

/// The arguments of every tool call.
const ARGUMENTS: &str = r#"{"city":"Paris"}"#;

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.addr).await.expect("bind");
        println!(
            "bare_stream listening on {}",
            listener.local_addr().expect("an address")
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(args, request));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn answer(args: Args, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/v1/models" {
        let models = json!({ "object": "list", "data": [
            { "id": "bare", "object": "model", "created": 0, "owned_by": "brigade" },
        ] });
        return Ok(json_response(StatusCode::OK, &models));
    }
    if path != "/v1/chat/completions" {
        let error = json!({ "error": {
            "message": format!("no route for {path}"), "type": "invalid_request_error", "code": "not_found",
        } });
        return Ok(json_response(StatusCode::NOT_FOUND, &error));
    }
    let order: Order = match serde_json::from_slice(&body) {
        Ok(order) => order,
        Err(e) => {
            let error = json!({ "error": {
                "message": format!("invalid request: {e}"), "type": "invalid_request_error", "code": "invalid_request",
            } });
            return Ok(json_response(StatusCode::BAD_REQUEST, &error));
        }
    };
    let faults = Faults::draw(&args, CHAT_REQUESTS.fetch_add(1, Ordering::Relaxed));
    if faults.fail {
        if args.fail_after_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.fail_after_ms)).await;
        }
        let error = json!({ "error": {
            "message": "bare_stream: an injected failure (--fail-fraction)", "type": "server_error", "code": null,
        } });
        return Ok(json_response(StatusCode::INTERNAL_SERVER_ERROR, &error));
    }
    let tokens = args.tokens.min(
        order
            .max_completion_tokens
            .or(order.max_tokens)
            .unwrap_or(u32::MAX),
    );
    let finish = if tokens < args.tokens {
        "length"
    } else {
        "stop"
    };
    // A tool call, unless the tools have answered already.
    let tool = order
        .tools
        .first()
        .filter(|_| order.messages.last().is_none_or(|m| m.role != "tool"))
        .map(|tool| tool.function.name.as_str());
    let ttft = Duration::from_millis(args.ttft_ms) * faults.slowdown;
    let interval = Duration::from_millis(args.token_ms) * faults.slowdown;
    if !order.stream {
        let pause = ttft + interval * tokens.saturating_sub(1);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        return Ok(json_response(
            StatusCode::OK,
            &whole(&order, tokens, finish, tool),
        ));
    }
    let chunks = Chunks::new(&order, tool);
    // The tool call is one chunk (the call, its arguments whole); an answer, one per token.
    let n = if chunks.tool { 1 } else { tokens };
    let usage = order
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage)
        .then(|| chunks.usage(n));
    let finish = chunks.finish(if chunks.tool { "tool_calls" } else { finish });
    let (role, token) = (chunks.role, chunks.token);
    let frames = futures::stream::unfold(0_u32, move |i| {
        let data = match i {
            0 => Some(role.clone()),
            i if i <= n => Some(token.clone()),
            i if i == n + 1 => Some(finish.clone()),
            i if i == n + 2 => usage.clone(),
            _ => None,
        };
        // The role chunk at once, the first token after the time to first token, each next
        // one after the token interval.
        let pause = match i {
            0 => Duration::ZERO,
            1 => ttft,
            i if i <= n => interval,
            _ => Duration::ZERO,
        };
        async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(data?)), i + 1))
        }
    })
    .chain(futures::stream::once(async {
        Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
    }));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(response)
}

/// The events of one streamed answer, written once.
#[derive(Clone, Debug)]
struct Chunks {
    model: String,
    role: Bytes,
    token: Bytes,
    tool: bool,
}

impl Chunks {
    fn new(order: &Order, tool: Option<&str>) -> Self {
        let model = order.model.clone();
        let role = chunk(&model, &json!({ "role": "assistant", "content": "" }), None);
        let token = match &tool {
            Some(name) => chunk(
                &model,
                &json!({ "tool_calls": [{
                    "index": 0, "id": "call_bare", "type": "function",
                    "function": { "name": name, "arguments": ARGUMENTS },
                }] }),
                None,
            ),
            None => chunk(&model, &json!({ "content": " token" }), None),
        };
        Self {
            model,
            role,
            token,
            tool: tool.is_some(),
        }
    }

    fn finish(&self, reason: &str) -> Bytes {
        chunk(&self.model, &json!({}), Some(reason))
    }

    fn usage(&self, tokens: u32) -> Bytes {
        event(&json!({
            "id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": 0,
            "model": self.model, "choices": [], "usage": usage(tokens),
        }))
    }
}

/// A `chat.completion.chunk` event with one choice.
fn chunk(model: &str, delta: &Value, finish_reason: Option<&str>) -> Bytes {
    event(&json!({
        "id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
    }))
}

fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn usage(tokens: u32) -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "total_tokens": PROMPT_TOKENS + tokens,
    })
}

/// A whole `chat.completion`.
fn whole(order: &Order, tokens: u32, finish: &str, tool: Option<&str>) -> Value {
    let (message, finish) = match tool {
        Some(name) => (
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "id": "call_bare", "type": "function",
                "function": { "name": name, "arguments": ARGUMENTS },
            }] }),
            "tool_calls",
        ),
        None => (
            json!({ "role": "assistant", "content": " token".repeat(tokens as usize) }),
            finish,
        ),
    };
    let completion_tokens = if finish == "tool_calls" { 1 } else { tokens };
    json!({
        "id": "chatcmpl-bare", "object": "chat.completion", "created": 0, "model": order.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
        "usage": usage(completion_tokens),
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
