//! The bulkhead: in-flight bound, bounded queue, timeout, and permits held by the body.

use std::time::Duration;

use brigade_limit::{ConcurrencyLimit, OverloadReason, PermitBody};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;

fn bulkhead(in_flight: usize, queue: usize) -> ConcurrencyLimit {
    ConcurrencyLimit::builder()
        .max_in_flight(in_flight)
        .max_queue(queue)
        .queue_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_immediately() {
    let limit = bulkhead(1, 1);
    let _held = limit.acquire().await.unwrap();
    let queued = tokio::spawn({
        let limit = limit.clone();
        async move { limit.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert_eq!(limit.queued(), 1);
    let start = Instant::now();
    let err = limit.acquire().await.unwrap_err();
    assert_eq!(err.reason(), OverloadReason::QueueFull);
    assert_eq!(err.retry_after(), Duration::from_secs(1));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        queued.await.unwrap().unwrap_err().reason(),
        OverloadReason::QueueTimeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_times_out_then_leaves_the_queue() {
    let limit = bulkhead(1, 4);
    let _held = limit.acquire().await.unwrap();
    let start = Instant::now();
    let err = limit.acquire().await.unwrap_err();
    assert_eq!(err.reason(), OverloadReason::QueueTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(limit.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_gets_the_released_permit() {
    let limit = bulkhead(1, 4);
    let held = limit.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let limit = limit.clone();
        async move { limit.acquire().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_queued_call_frees_its_queue_slot() {
    let limit = bulkhead(1, 1);
    let _held = limit.acquire().await.unwrap();
    {
        let mut waiting = std::pin::pin!(limit.acquire());
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
        assert_eq!(limit.queued(), 1);
    }
    assert_eq!(limit.queued(), 0);
}

type Chunks =
    futures::channel::mpsc::UnboundedReceiver<Result<http_body::Frame<Bytes>, std::io::Error>>;

fn streaming_body() -> (
    futures::channel::mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, std::io::Error>>,
    StreamBody<Chunks>,
) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    (tx, StreamBody::new(rx))
}

#[tokio::test(start_paused = true)]
async fn the_body_holds_the_permit_until_the_stream_ends() {
    let limit = bulkhead(1, 0);
    let (tx, inner) = streaming_body();
    let mut body = PermitBody::new(inner, limit.try_acquire().unwrap());
    tx.unbounded_send(Ok(http_body::Frame::data(Bytes::from("a"))))
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "a");
    // Headers long sent, the stream still open: the permit is held.
    assert_eq!(limit.in_flight(), 1);
    assert!(limit.try_acquire().is_err());
    drop(tx);
    assert!(body.frame().await.is_none());
    assert!(!body.holds_permit());
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_body_releases_the_permit_when_dropped_mid_stream() {
    let limit = bulkhead(1, 0);
    let (tx, inner) = streaming_body();
    let mut body = PermitBody::new(inner, limit.try_acquire().unwrap());
    tx.unbounded_send(Ok(http_body::Frame::data(Bytes::from("a"))))
        .unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(limit.in_flight(), 1);
    drop(body); // the client went away
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_body_releases_the_permit_on_an_error() {
    let limit = bulkhead(1, 0);
    let (tx, inner) = streaming_body();
    let mut body = PermitBody::new(inner, limit.try_acquire().unwrap());
    tx.unbounded_send(Err(std::io::Error::other("upstream failed")))
        .unwrap();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(limit.in_flight(), 0);
    drop(tx);
}

#[test]
fn zero_concurrency_is_rejected_when_built() {
    assert_eq!(
        ConcurrencyLimit::builder()
            .max_in_flight(0)
            .build()
            .unwrap_err(),
        brigade_limit::InvalidConfig::ZeroConcurrency
    );
}
