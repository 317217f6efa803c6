//! A bare relay: a hyper server that reads each request's body, sends the request to one upstream
//! with hyper-util's pooled client and answers with the upstream's response, its body passed
//! through frame by frame. No parsing, no limits, no breaker, no retries, no timeouts, no cancel scopes, no metrics, no log.
//!
//! It is the floor of the gateway-overhead figures in `docs/benchmarks.md`: what any hyper proxy
//! pays per token (a read from the upstream, a hop from the client connection's task to the
//! server's, a write to the client) before it does anything a gateway is for. The kitchen with
//! `--upstream` is measured against it and against the upstream itself.
//!
//! ```text
//! cargo run --release --example bare_stream -- --addr 127.0.0.1:18091 --ttft-ms 20 --token-ms 10 --tokens 32
//! cargo run --release --example bare_relay -- --addr 127.0.0.1:18092 --upstream http://127.0.0.1:18091
//! ```

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A bare relay in front of one `http://` upstream, the floor of the gateway-overhead figures.
#[derive(Clone, Debug, Parser)]
#[command(name = "bare_relay")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// The upstream's root (`http://host:port`); each request's path and query are kept.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    upstream: Uri,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        // The same pool settings as the kitchen's upstream client.
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(http);
        let listener = TcpListener::bind(args.addr).await.expect("bind");
        println!(
            "bare_relay listening on {}, upstream {}",
            listener.local_addr().expect("an address"),
            args.upstream
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let upstream = args.upstream.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| relay(client.clone(), upstream.clone(), request));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Sends `request` to the upstream as it came (method, headers, body) and answers with what the
/// upstream answers; a request that cannot reach it gets a bare 502.
///
/// The body is read whole first, as a gateway must to read the request: streamed through
/// instead, the upstream connection's task may stop reading it at its `Content-Length` without
/// seeing its end, and the server then closes the client's connection after the answer.
async fn relay(
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Uri,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|body| Full::new(body.to_bytes())) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut uri = upstream.into_parts();
    uri.path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .or(Some(PathAndQuery::from_static("/")));
    let Ok(uri) = Uri::from_parts(uri) else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

/// A bare answer with `code` and no body.
fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = code;
    response
}
