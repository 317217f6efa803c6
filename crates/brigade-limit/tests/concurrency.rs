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

/// Two permits, each held for `hold` and released: the limit has seen releases, and both
/// permits are taken again (held by the returned values).
async fn taught(limit: &ConcurrencyLimit, hold: Duration) -> Vec<brigade_limit::ConcurrencyPermit> {
    let first = vec![
        limit.acquire().await.unwrap(),
        limit.acquire().await.unwrap(),
    ];
    tokio::time::sleep(hold).await;
    drop(first);
    vec![
        limit.acquire().await.unwrap(),
        limit.acquire().await.unwrap(),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_wait_predicted_past_the_timeout_is_refused_at_once() {
    // Two in flight, held 2 s each: a place in line costs 1 s; the timeout is 2 s.
    let limit = bulkhead(2, 8);
    let _held = taught(&limit, Duration::from_secs(2)).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire().await.map(drop) })
        })
        .collect();
    tokio::task::yield_now().await;
    // Places 1 and 2 are predicted 1 s and 2 s: within the timeout, they wait.
    assert_eq!(limit.queued(), 2);
    // Place 3 is predicted 3 s: refused now, told to come back then.
    let start = Instant::now();
    let refused = limit.acquire().await.unwrap_err();
    assert_eq!(refused.reason(), OverloadReason::PredictedTimeout);
    assert_eq!(refused.retry_after(), Duration::from_secs(3));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(limit.queued(), 2, "the refused caller left no place taken");
    let hint = limit.would_refuse().unwrap();
    assert_eq!(hint.reason(), OverloadReason::PredictedTimeout);
    for waiter in waiters {
        assert_eq!(
            waiter.await.unwrap().unwrap_err().reason(),
            OverloadReason::QueueTimeout
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_release_seen_callers_queue_and_the_hint_is_the_configured_one() {
    let limit = bulkhead(1, 4);
    let _held = limit.acquire().await.unwrap();
    assert!(limit.would_refuse().is_none(), "a queue place is free");
    let err = limit.acquire().await.unwrap_err();
    assert_eq!(err.reason(), OverloadReason::QueueTimeout);
    assert_eq!(err.retry_after(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn predictions_off_keep_the_wait_and_the_configured_hint() {
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(2)
        .max_queue(8)
        .queue_timeout(Duration::from_secs(2))
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap();
    let _held = taught(&limit, Duration::from_secs(10)).await;
    assert!(limit.would_refuse().is_none());
    let start = Instant::now();
    let err = limit.acquire().await.unwrap_err();
    assert_eq!(err.reason(), OverloadReason::QueueTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(err.retry_after(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_refused_with_the_predicted_wait_of_the_next_place() {
    // Held 4 s each by two: a place costs 2 s, so place 1 fits the 2 s timeout and waits; the
    // queue holds one, so the next caller is refused, told the wait of place 2.
    let limit = bulkhead(2, 1);
    let _held = taught(&limit, Duration::from_secs(4)).await;
    let waiter = tokio::spawn({
        let limit = limit.clone();
        async move { limit.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert_eq!(limit.queued(), 1);
    let hint = limit.would_refuse().unwrap();
    assert_eq!(hint.reason(), OverloadReason::QueueFull);
    let refused = limit.acquire().await.unwrap_err();
    assert_eq!(refused.reason(), OverloadReason::QueueFull);
    assert_eq!(refused.retry_after(), Duration::from_secs(4));
    drop(waiter);
}

#[tokio::test(start_paused = true)]
async fn the_hold_time_follows_a_change_in_how_long_permits_are_held() {
    // Taught 8 s holds, then many 0.5 s holds: the prediction comes down and callers queue.
    let limit = bulkhead(2, 8);
    drop(taught(&limit, Duration::from_secs(8)).await);
    assert_eq!(limit.would_refuse(), None, "permits are free");
    let held = vec![
        limit.acquire().await.unwrap(),
        limit.acquire().await.unwrap(),
    ];
    assert_eq!(
        limit.would_refuse().map(|r| r.reason()),
        Some(OverloadReason::PredictedTimeout),
        "8 s holds: place 1 is predicted 4 s, past the 2 s timeout"
    );
    drop(held);
    for _ in 0..40 {
        let held = vec![
            limit.acquire().await.unwrap(),
            limit.acquire().await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held);
    }
    let _held = [
        limit.acquire().await.unwrap(),
        limit.acquire().await.unwrap(),
    ];
    assert_eq!(
        limit.would_refuse(),
        None,
        "0.5 s holds: place 1 waits about 0.25 s"
    );
}

#[tokio::test(start_paused = true)]
async fn one_key_cannot_fill_the_queue_and_others_still_queue() {
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(1)
        .max_queue(8)
        .max_queue_per_key(2)
        .queue_timeout(Duration::from_secs(10))
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap();
    let held = limit.acquire_as("alice").await.unwrap();
    let waiter = |key: &'static str| {
        let limit = limit.clone();
        tokio::spawn(async move { limit.acquire_as(key).await })
    };
    let alice = [waiter("alice"), waiter("alice")];
    tokio::task::yield_now().await;
    assert_eq!(limit.queued(), 2);
    // Her third waiting call is refused at once; the queue still has room for bob.
    let start = Instant::now();
    let refused = limit.acquire_as("alice").await.unwrap_err();
    assert_eq!(refused.reason(), OverloadReason::KeyQueueFull);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let bob = waiter("bob");
    tokio::task::yield_now().await;
    assert_eq!(limit.queued(), 3);
    // Served in turn across keys: alice's first, then bob, then alice's second.
    drop(held);
    let [first, second] = alice;
    drop(first.await.unwrap().unwrap());
    drop(bob.await.unwrap().unwrap());
    drop(second.await.unwrap().unwrap());
    assert_eq!(limit.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_s_places_come_back_when_its_calls_leave_the_queue() {
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(1)
        .max_queue(8)
        .max_queue_per_key(1)
        .queue_timeout(Duration::from_secs(1))
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap();
    let _held = limit.acquire().await.unwrap();
    {
        let mut waiting = std::pin::pin!(limit.acquire_as("alice"));
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
        assert_eq!(
            limit.acquire_as("alice").await.unwrap_err().reason(),
            OverloadReason::KeyQueueFull
        );
    }
    // Dropped: her place is back. Timed out: back again.
    let timed_out = limit.acquire_as("alice").await.unwrap_err();
    assert_eq!(timed_out.reason(), OverloadReason::QueueTimeout);
    let timed_out = limit.acquire_as("alice").await.unwrap_err();
    assert_eq!(timed_out.reason(), OverloadReason::QueueTimeout);
    // Plain `acquire` is not counted against any key.
    let mut plain = std::pin::pin!(limit.acquire());
    assert!(futures::FutureExt::now_or_never(plain.as_mut()).is_none());
    let mut alice = std::pin::pin!(limit.acquire_as("alice"));
    assert!(futures::FutureExt::now_or_never(alice.as_mut()).is_none());
}
