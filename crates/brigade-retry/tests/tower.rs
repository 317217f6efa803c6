//! The tower integration: `RetryLayer` retries cloneable requests, and `buffer_request` makes
//! an `http::Request` with a streaming body replayable.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brigade_retry::tower::{RetryLayer, buffer_request};
use brigade_retry::{Action, Backoff, Retry, StopReason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, ServiceExt, service_fn};

fn policy(max_attempts: u32) -> Retry {
    Retry::builder()
        .schedule(Backoff::constant(Duration::from_millis(100)))
        .max_attempts(max_attempts)
        .budget(None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_layer_retries_until_the_upstream_answers() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let upstream = service_fn(move |request: http::Request<Full<Bytes>>| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        async move {
            // Every attempt gets the whole body again.
            let body = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "{\"prompt\":\"hi\"}");
            let status = if n < 2 { 503 } else { 200 };
            Ok::<_, Infallible>(http::Response::builder().status(status).body(()).unwrap())
        }
    });
    let service = RetryLayer::new(policy(5))
        .classify(
            |outcome: &Result<http::Response<()>, Infallible>| match outcome {
                Ok(r) if r.status() == 503 => Action::Retry,
                _ => Action::Stop,
            },
        )
        .layer(upstream);

    // A streaming body, buffered once so that it can be replayed.
    let chunks = futures_like_stream([&b"{\"prompt\""[..], &b":\"hi\"}"[..]]);
    let request = http::Request::post("/v1/chat")
        .body(StreamBody::new(chunks))
        .unwrap();
    let request = buffer_request(request).await.unwrap();

    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn the_layer_reports_why_it_stopped() {
    let service = RetryLayer::new(policy(2)).layer(service_fn(|_: u32| async {
        Err::<u32, _>(std::io::Error::other("refused"))
    }));
    let err = service.oneshot(1).await.unwrap_err();
    assert_eq!(err.stop(), StopReason::Exhausted);
    assert_eq!(err.attempts(), 2);
    assert_eq!(
        err.error().map(ToString::to_string).as_deref(),
        Some("refused")
    );
}

/// A two-chunk body stream without pulling in a stream crate.
fn futures_like_stream(
    chunks: [&'static [u8]; 2],
) -> impl futures_core::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> {
    struct Chunks(std::array::IntoIter<&'static [u8], 2>);
    impl futures_core::Stream for Chunks {
        type Item = Result<http_body::Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(
                self.0
                    .next()
                    .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c)))),
            )
        }
    }
    Chunks(chunks.into_iter())
}
