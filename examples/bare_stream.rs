//! A bare hyper server that streams the same paced `chat.completion.chunk` events as the
//! kitchen's mock, with no middleware at all: no limits, no breaker, no retries, no cancel
//! scopes, no metrics. The baseline the kitchen is measured against with `loadgen`.
//!
//! ```text
//! cargo run --release --example bare_stream -- --addr 127.0.0.1:8081
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A bare streaming server, the kitchen's baseline.
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
    /// Tokens per answer.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
}

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

fn chunk(delta: &str, finish: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bare\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bare\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

async fn answer(
    args: Args,
    request: Request<Incoming>,
) -> Result<Response<UnsyncBoxBody<Bytes, Infallible>>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    let n = args.tokens;
    if !stream {
        if args.ttft_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.ttft_ms)).await;
        }
        let content = " token".repeat(n as usize);
        let json = format!(
            "{{\"id\":\"chatcmpl-bare\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"bare\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":6,\"completion_tokens\":{n},\"total_tokens\":{}}}}}",
            n + 6
        );
        let mut response = Response::new(Full::new(Bytes::from(json)).boxed_unsync());
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let ttft = Duration::from_millis(args.ttft_ms);
    let interval = Duration::from_millis(args.token_ms);
    let frames = futures::stream::unfold(0u32, move |i| async move {
        let data = match i {
            0 => chunk(r#"{"role":"assistant","content":""}"#, "null"),
            i if i <= n => {
                let pause = if i == 1 { ttft } else { interval };
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                chunk(r#"{"content":" token"}"#, "null")
            }
            i if i == n + 1 => chunk("{}", "\"stop\""),
            i if i == n + 2 => Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-bare\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bare\",\"choices\":[],\"usage\":{{\"prompt_tokens\":6,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                n + 6
            )),
            i if i == n + 3 => Bytes::from_static(b"data: [DONE]\n\n"),
            _ => return None,
        };
        Some((Ok::<_, Infallible>(Frame::data(data)), i + 1))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}
