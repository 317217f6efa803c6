//! `DisconnectBody`: a body dropped before its end cancels its scope; one that ended does not.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope, CancellationToken, DisconnectBody};
use bytes::Bytes;
use futures::StreamExt;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A body of `n` frames, then an optional error of its own.
fn frames(n: usize) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    StreamBody::new(futures::stream::iter(
        (0..n).map(|i| Ok(Frame::data(Bytes::from(format!("frame {i}"))))),
    ))
}

#[tokio::test]
async fn dropped_before_its_end_cancels_with_client_disconnected() {
    let scope = CancelScope::new();
    let work = scope.child();
    let mut body = DisconnectBody::new(frames(3), scope.clone());
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "frame 0");
    assert!(!scope.is_cancelled());
    drop(body);
    assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
    assert_eq!(work.reason(), Some(CancelReason::ClientDisconnected));
}

#[tokio::test]
async fn read_to_the_end_cancels_nothing() {
    let scope = CancelScope::new();
    let body = DisconnectBody::new(frames(3), scope.clone());
    let collected = body.collect().await.unwrap().to_bytes();
    assert_eq!(collected, "frame 0frame 1frame 2");
    assert!(!scope.is_cancelled());
}

#[tokio::test]
async fn a_body_that_says_it_ended_is_not_a_disconnect() {
    // hyper stops polling once `is_end_stream` is true, and drops the body.
    let scope = CancelScope::new();
    let mut body = DisconnectBody::new(Full::new(Bytes::from("all of it")), scope.clone());
    let _ = body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    drop(body);
    assert!(!scope.is_cancelled());
}

struct Failing;

impl Body for Failing {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        Poll::Ready(Some(Err("upstream broke")))
    }
}

#[tokio::test]
async fn an_error_of_the_body_own_is_not_a_disconnect() {
    let scope = CancelScope::new();
    let mut body = DisconnectBody::new(Failing, scope.clone());
    assert_eq!(body.frame().await.unwrap().unwrap_err(), "upstream broke");
    assert!(body.is_ended());
    drop(body);
    assert!(!scope.is_cancelled());
}

#[test]
fn an_unpolled_body_at_its_end_cancels_nothing() {
    // A 304 or a 204: hyper sees `is_end_stream()` and drops the body without polling it.
    let scope = CancelScope::new();
    drop(DisconnectBody::new(Empty::<Bytes>::new(), scope.clone()));
    assert!(!scope.is_cancelled());

    let body = DisconnectBody::new(Full::new(Bytes::new()), scope.clone());
    assert!(body.is_end_stream());
    drop(body);
    assert!(!scope.is_cancelled());
}

#[test]
fn a_body_dropped_before_its_first_poll_cancels_nothing() {
    // The answer to a HEAD request: hyper sends the head and drops the body unpolled.
    let scope = CancelScope::new();
    let body = DisconnectBody::new(Full::new(Bytes::from("tokens")), scope.clone());
    assert!(!body.is_end_stream());
    drop(body);
    assert!(!scope.is_cancelled());
}

#[tokio::test]
async fn a_body_whose_last_frame_was_read_is_not_a_disconnect() {
    // hyper may drop a body whose inner body says it ended without asking the wrapper.
    let scope = CancelScope::new();
    let mut body = DisconnectBody::new(Full::new(Bytes::from("all of it")), scope.clone());
    let _ = body.frame().await.unwrap().unwrap();
    assert!(body.is_ended());
    drop(body);
    assert!(!scope.is_cancelled());
}

#[tokio::test]
async fn dropped_while_waiting_for_its_first_frame_cancels() {
    // A client that leaves before the first token of a slow answer.
    let scope = CancelScope::new();
    let mut body = DisconnectBody::new(
        StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>()),
        scope.clone(),
    );
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
    assert!(first.is_pending());
    drop(body);
    assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
}

/// A client that goes away mid-stream, through a real hyper server: the generation stops.
#[tokio::test(start_paused = true)]
async fn hyper_dropping_a_streamed_response_cancels_the_generation() {
    let (client_io, server_io) = tokio::io::duplex(1024);
    let request_scope = CancelScope::new();
    let generation = request_scope.child();

    let server_scope = request_scope.clone();
    let server = tokio::spawn(async move {
        let service = service_fn(move |_request| {
            let scope = server_scope.clone();
            async move {
                // One token every 100 ms, for as long as the scope lives.
                let tokens = futures::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("t{n} ")))),
                        n + 1,
                    ))
                });
                let body = DisconnectBody::new(StreamBody::new(tokens), scope);
                Ok::<_, Infallible>(hyper::Response::new(body))
            }
        });
        // The connection errors out when the client leaves; that is the point.
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    let client_connection = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get("/v1/chat/completions")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut frames = response.into_body().into_data_stream();
    let first = frames.next().await.unwrap().unwrap();
    assert_eq!(first, "t0 ");
    let second = frames.next().await.unwrap().unwrap();
    assert_eq!(second, "t1 ");
    assert!(!generation.is_cancelled());

    // The client goes away.
    drop(frames);
    drop(sender);
    client_connection.abort();
    let _ = client_connection.await;

    let reason = tokio::time::timeout(Duration::from_secs(5), generation.cancelled())
        .await
        .expect("the server noticed the disconnect");
    assert_eq!(reason, CancelReason::ClientDisconnected);
    server.await.unwrap();
}

/// A token stream that says when it is dropped.
fn endless_tokens(
    dropped: CancellationToken,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let guard = dropped.drop_guard();
    futures::stream::unfold((0u32, guard), |(n, guard)| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok(Frame::data(Bytes::from(format!("t{n} ")))),
            (n + 1, guard),
        ))
    })
}

/// The answer to a HEAD request, through a real hyper server: hyper writes the head and drops
/// the body without polling it. The client did not go away, so nothing is cancelled.
#[tokio::test(start_paused = true)]
async fn hyper_dropping_the_body_of_a_head_response_cancels_nothing() {
    let (client_io, server_io) = tokio::io::duplex(1024);
    let request_scope = CancelScope::new();
    let body_dropped = CancellationToken::new();

    let server_scope = request_scope.clone();
    let server_dropped = body_dropped.clone();
    let server = tokio::spawn(async move {
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            assert_eq!(request.method(), http::Method::HEAD);
            let body = DisconnectBody::new(
                StreamBody::new(endless_tokens(server_dropped.clone())),
                server_scope.clone(),
            );
            async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await
    });

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    let client_connection = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::head("/v1/models")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());

    tokio::time::timeout(Duration::from_secs(5), body_dropped.cancelled())
        .await
        .expect("hyper dropped the response body");
    assert!(
        !request_scope.is_cancelled(),
        "a HEAD answer is not a disconnect: {:?}",
        request_scope.reason()
    );

    // The connection stays usable, and ends cleanly when the client closes it.
    drop(sender);
    client_connection.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
    assert!(!request_scope.is_cancelled());
}
