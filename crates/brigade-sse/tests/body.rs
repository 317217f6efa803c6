//! `SseBody`: frames, coalescing, keep-alive timing (on tokio's paused clock), errors, headers.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use brigade_sse::{Event, KeepAlive, SseBody};
use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::{self, Instant};

type Sender = mpsc::UnboundedSender<Result<Event, &'static str>>;

fn channel_body(
    keep_alive: KeepAlive,
) -> (
    Sender,
    SseBody<mpsc::UnboundedReceiver<Result<Event, &'static str>>>,
) {
    let (tx, rx) = mpsc::unbounded();
    (tx, SseBody::new(rx).keep_alive(keep_alive))
}

/// The next frame's data, or `None` at the end.
async fn next_data<B>(body: &mut B) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let frame = body.frame().await?.unwrap();
    Some(frame.into_data().unwrap())
}

fn event(data: &'static str) -> Result<Event, &'static str> {
    Ok(Event::default().data(data))
}

#[tokio::test(start_paused = true)]
async fn events_ready_together_go_out_in_one_frame() {
    let (tx, mut body) = channel_body(KeepAlive::disabled());
    for data in ["a", "b", "c"] {
        tx.unbounded_send(event(data)).unwrap();
    }
    assert_eq!(
        next_data(&mut body).await.unwrap(),
        "data: a\n\ndata: b\n\ndata: c\n\n"
    );
    tx.unbounded_send(event("d")).unwrap();
    assert_eq!(next_data(&mut body).await.unwrap(), "data: d\n\n");
}

#[tokio::test(start_paused = true)]
async fn frame_stops_growing_at_the_maximum_frame_size() {
    let (tx, body) = channel_body(KeepAlive::disabled());
    let mut body = body.max_frame_size(20);
    for data in ["0123456789", "0123456789", "x"] {
        tx.unbounded_send(event(data)).unwrap();
    }
    drop(tx);
    // Each event is 18 bytes: the first alone stays under 20, the second pushes it over.
    assert_eq!(
        next_data(&mut body).await.unwrap(),
        "data: 0123456789\n\ndata: 0123456789\n\n"
    );
    assert_eq!(next_data(&mut body).await.unwrap(), "data: x\n\n");
    assert!(next_data(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comment_after_the_default_fifteen_idle_seconds() {
    let (_tx, mut body) = channel_body(KeepAlive::new());
    let start = Instant::now();
    assert_eq!(next_data(&mut body).await.unwrap(), ":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    assert_eq!(next_data(&mut body).await.unwrap(), ":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_is_reset_by_every_event() {
    let (tx, mut body) = channel_body(KeepAlive::new().interval(Duration::from_secs(10)));
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        time::sleep(Duration::from_secs(8)).await;
        tx.unbounded_send(event("x")).unwrap();
        time::sleep(Duration::from_secs(60)).await;
        drop(tx);
    });
    assert_eq!(next_data(&mut body).await.unwrap(), "data: x\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(8));
    // Not at 10 s from the start: 10 s from the event.
    assert_eq!(next_data(&mut body).await.unwrap(), ":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(18));
    sender.abort();
}

#[tokio::test(start_paused = true)]
async fn keep_alive_text_is_written_as_comment_lines() {
    let (_tx, mut body) = channel_body(
        KeepAlive::new()
            .interval(Duration::from_secs(1))
            .text("ping\nnot-a-field"),
    );
    assert_eq!(
        next_data(&mut body).await.unwrap(),
        ": ping\n: not-a-field\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_keep_alive_sends_nothing_while_idle() {
    let (tx, mut body) = channel_body(KeepAlive::disabled());
    let idle = time::timeout(Duration::from_secs(3600), next_data(&mut body)).await;
    assert!(idle.is_err(), "no frame in an idle hour");
    drop(tx);
    assert!(next_data(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn zero_interval_disables_keep_alive() {
    assert_eq!(
        KeepAlive::new().interval(Duration::ZERO).get_interval(),
        None
    );
    let (_tx, mut body) = channel_body(KeepAlive::new().interval(Duration::ZERO));
    assert!(
        time::timeout(Duration::from_secs(60), next_data(&mut body))
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn stream_error_comes_after_the_events_before_it() {
    let (tx, mut body) = channel_body(KeepAlive::disabled());
    tx.unbounded_send(event("a")).unwrap();
    tx.unbounded_send(Err("upstream failed")).unwrap();
    tx.unbounded_send(event("never")).unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: a\n\n"
    );
    assert_eq!(body.frame().await.unwrap().unwrap_err(), "upstream failed");
    assert!(
        body.frame().await.is_none(),
        "the body ends after its error"
    );
    assert!(body.is_end_stream());
}

#[tokio::test(start_paused = true)]
async fn end_of_stream_ends_the_body() {
    let (tx, mut body) = channel_body(KeepAlive::new());
    tx.unbounded_send(event("last")).unwrap();
    drop(tx);
    assert_eq!(next_data(&mut body).await.unwrap(), "data: last\n\n");
    assert!(body.is_end_stream());
    assert!(next_data(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn response_helper_sets_the_sse_headers() {
    let events = futures::stream::empty::<Result<Event, Infallible>>();
    let response = SseBody::new(events).into_response();
    assert_eq!(response.status(), http::StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
}

#[tokio::test(start_paused = true)]
async fn body_can_be_built_outside_a_runtime_and_polled_inside() {
    let body = std::thread::spawn(|| {
        SseBody::new(futures::stream::iter([Ok::<_, Infallible>(
            Event::default().data("x"),
        )]))
    })
    .join()
    .unwrap();
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "data: x\n\n");
}

#[tokio::test(start_paused = true)]
async fn served_through_hyper_the_client_reads_events_and_keep_alives() {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;

    let (client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper::service::service_fn(|_request| async {
        let ticks = futures::stream::iter(1..=2).then(|n| async move {
            time::sleep(Duration::from_secs(20)).await;
            Ok::<_, Infallible>(Event::default().id(n.to_string()).unwrap().data("tick"))
        });
        let body =
            SseBody::new(ticks).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
        Ok::<_, Infallible>(body.into_response())
    });
    tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(server), service));

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/events")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // 15 s: keep-alive; 20 s: tick 1; 35 s: keep-alive; 40 s: tick 2; end.
    assert_eq!(
        bytes,
        ":\n\nid: 1\ndata: tick\n\n:\n\nid: 2\ndata: tick\n\n"
    );
}

#[test]
fn debug_does_not_require_a_debug_stream() {
    struct NotDebug;
    impl futures::Stream for NotDebug {
        type Item = Result<Event, Infallible>;
        fn poll_next(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(None)
        }
    }
    let debug = format!("{:?}", SseBody::new(NotDebug));
    assert!(debug.starts_with("SseBody"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn zero_maximum_frame_size_sends_each_event_in_its_own_frame() {
    let (tx, body) = channel_body(KeepAlive::disabled());
    let mut body = body.max_frame_size(0);
    tx.unbounded_send(event("a")).unwrap();
    tx.unbounded_send(event("b")).unwrap();
    drop(tx);
    let frames = time::timeout(Duration::from_secs(1), async {
        let mut frames = Vec::new();
        while let Some(data) = next_data(&mut body).await {
            frames.push(data);
        }
        frames
    })
    .await
    .expect("a zero frame size must not stall the body");
    assert_eq!(frames, ["data: a\n\n", "data: b\n\n"]);
}

#[tokio::test(start_paused = true)]
async fn stream_always_ready_with_empty_events_does_not_hold_the_thread() {
    // Event::default() encodes to nothing: without a budget per poll, poll_frame would spin on
    // an endless stream of them and never return.
    let endless = futures::stream::repeat_with(|| Ok::<_, Infallible>(Event::default()));
    let mut body = SseBody::new(endless).keep_alive(KeepAlive::disabled());
    let frame = futures::FutureExt::now_or_never(body.frame());
    assert!(frame.is_none(), "pending, not a frame");

    // And the body comes back by itself (it woke its task) to send what follows the no-ops.
    let events = futures::stream::iter(
        std::iter::repeat_with(Event::default)
            .take(10_000)
            .chain([Event::default().data("after")])
            .map(Ok::<_, Infallible>),
    );
    let body = SseBody::new(events).keep_alive(KeepAlive::disabled());
    let bytes = time::timeout(Duration::from_secs(1), body.collect())
        .await
        .expect("the body woke itself")
        .unwrap()
        .to_bytes();
    assert_eq!(bytes, "data: after\n\n");
}

#[tokio::test(start_paused = true)]
async fn keep_alive_counts_from_a_frame_sent_before_the_body_was_ever_idle() {
    let (tx, mut body) = channel_body(KeepAlive::new());
    tx.unbounded_send(event("first")).unwrap();
    let start = Instant::now();
    assert_eq!(next_data(&mut body).await.unwrap(), "data: first\n\n");
    time::advance(Duration::from_secs(5)).await;
    tx.unbounded_send(event("second")).unwrap();
    assert_eq!(next_data(&mut body).await.unwrap(), "data: second\n\n");
    assert_eq!(next_data(&mut body).await.unwrap(), ":\n\n");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(20),
        "15 s after the last event"
    );
}

#[tokio::test(start_paused = true)]
async fn error_with_no_events_before_it_is_sent_at_once() {
    let (tx, mut body) = channel_body(KeepAlive::new());
    tx.unbounded_send(Err("refused")).unwrap();
    assert_eq!(body.frame().await.unwrap().unwrap_err(), "refused");
    assert!(body.is_end_stream());
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn ended_body_keeps_ending_and_hints_an_exact_zero_size() {
    let (tx, mut body) = channel_body(KeepAlive::new());
    assert!(!body.is_end_stream());
    assert_eq!(
        body.size_hint().upper(),
        None,
        "an open stream has no known size"
    );
    tx.unbounded_send(event("x")).unwrap();
    drop(tx);
    assert_eq!(next_data(&mut body).await.unwrap(), "data: x\n\n");
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    for _ in 0..3 {
        assert!(body.frame().await.is_none(), "polled after its end");
    }
}

#[tokio::test(start_paused = true)]
async fn huge_keep_alive_interval_does_not_overflow_the_clock() {
    // `Instant::now() + Duration::MAX` panics; the body must not.
    let (tx, mut body) = channel_body(KeepAlive::new().interval(Duration::MAX));
    assert!(futures::FutureExt::now_or_never(body.frame()).is_none());
    tx.unbounded_send(event("x")).unwrap();
    assert_eq!(next_data(&mut body).await.unwrap(), "data: x\n\n");
    let idle = time::timeout(Duration::from_secs(3600), next_data(&mut body)).await;
    assert!(idle.is_err(), "no keep-alive within an hour");
}

#[tokio::test(start_paused = true)]
async fn body_sends_the_shared_events_of_a_replay() {
    let replay = brigade_sse::Replay::builder().epoch(0xa).build().unwrap();
    let shared: Vec<_> = ["x", "y"]
        .into_iter()
        .map(|data| replay.push(Event::default().data(data)).1)
        .collect();
    let events = futures::stream::iter(shared.into_iter().map(Ok::<_, Infallible>));
    let bytes = SseBody::new(events).collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"id: a-1\ndata: x\n\nid: a-2\ndata: y\n\n");
}
