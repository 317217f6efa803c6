//! The tower integration: `RetryLayer` and `Retry` retry cloneable requests, pass the inner
//! service's readiness through, honour `Retry-After` on 429 and 503 by default, and
//! `buffer_request` makes an `http::Request` with a streaming body replayable.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use brigade_retry::tower::{Retry, RetryLayer, buffer_request};
use brigade_retry::{Action, Backoff, RetryCause, RetryEvent, RetryOnError, StopReason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::load_shed::{LoadShed, error::Overloaded};
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn policy(max_attempts: u32) -> brigade_retry::Retry {
    brigade_retry::Retry::builder()
        .schedule(Backoff::constant(MS * 100))
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
    let service = RetryLayer::new(policy(2))
        .classify(RetryOnError)
        .layer(service_fn(|_: u32| async {
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

/// A service that is ready only while its gate is open, counting its calls.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Service<u32> for Gate {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::Relaxed) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        ready(Ok(request))
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_the_inner_services() {
    let gate = Gate::default();
    let mut service = Retry::new(gate.clone(), policy(3)).classify(RetryOnError);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    gate.open.store(true, Ordering::Relaxed);
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(service.call(7).await.unwrap(), 7);
}

/// `LoadShed` over the middleware sheds at once when the inner service is not ready, instead
/// of queueing the request behind it.
#[tokio::test(start_paused = true)]
async fn load_shed_sheds_while_the_inner_service_is_not_ready() {
    let gate = Gate::default();
    let service = LoadShed::new(Retry::new(gate.clone(), policy(3)).classify(RetryOnError));
    let shed = tokio::time::timeout(SEC, service.clone().oneshot(1)).await;
    let err = shed
        .expect("not shed: waited for the closed gate")
        .unwrap_err();
    assert!(err.is::<Overloaded>(), "{err}");
    assert_eq!(gate.calls.load(Ordering::Relaxed), 0);

    gate.open.store(true, Ordering::Relaxed);
    assert_eq!(service.oneshot(2).await.unwrap(), 2);
    assert_eq!(gate.calls.load(Ordering::Relaxed), 1);
}

/// A service whose readiness belongs to the instance polled (as a concurrency limit's permit
/// does): calling an instance that was not polled ready is a bug it reports.
#[derive(Clone, Default)]
struct Reserving {
    reserved: bool,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl Service<u32> for Reserving {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.reserved = true;
        self.log.lock().unwrap().push("ready");
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: u32) -> Self::Future {
        assert!(
            std::mem::take(&mut self.reserved),
            "called without poll_ready"
        );
        let mut log = self.log.lock().unwrap();
        log.push("call");
        let status = if log.len() < 6 { 503 } else { 200 };
        let response = http::Response::builder().status(status).body(()).unwrap();
        ready(Ok(response))
    }
}

/// The first attempt is made by the instance the caller polled ready, without polling it
/// again; every retry polls before it calls.
#[tokio::test(start_paused = true)]
async fn each_attempt_calls_an_instance_polled_ready() {
    let inner = Reserving::default();
    let log = Arc::clone(&inner.log);
    let response = Retry::new(inner, policy(3)).oneshot(1).await.unwrap();
    assert_eq!(response.status(), 200);
    let log = log.lock().unwrap().clone();
    assert_eq!(log, ["ready", "call", "ready", "call", "ready", "call"]);
}

/// An error from the inner service's `poll_ready` comes back from the middleware's.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_is_returned_from_poll_ready() {
    #[derive(Clone)]
    struct Broken;
    impl Service<u32> for Broken {
        type Response = u32;
        type Error = std::io::Error;
        type Future = Ready<Result<u32, std::io::Error>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
            Poll::Ready(Err(std::io::Error::other("closed")))
        }
        fn call(&mut self, _request: u32) -> Self::Future {
            unreachable!("never ready")
        }
    }

    let mut service = Retry::new(Broken, policy(3)).classify(RetryOnError);
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Err(err)) = service.poll_ready(&mut cx) else {
        panic!("ready or pending");
    };
    assert_eq!(err.stop(), StopReason::NotReady);
    assert_eq!(err.attempts(), 0);
    assert_eq!(
        err.error().map(ToString::to_string).as_deref(),
        Some("closed")
    );
}

/// An upstream that answers with the given responses in turn; each is a status and an
/// optional `Retry-After`.
fn scripted(
    script: Vec<(u16, Option<String>)>,
) -> (
    Arc<AtomicU32>,
    impl Service<(), Response = http::Response<()>, Error = Infallible, Future: Send> + Clone + Send,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let script = Arc::new(script);
    let upstream = service_fn(move |()| {
        let n = seen.fetch_add(1, Ordering::Relaxed) as usize;
        let (status, retry_after) = script[n.min(script.len() - 1)].clone();
        let mut response = http::Response::builder().status(status);
        if let Some(value) = retry_after {
            response = response.header(http::header::RETRY_AFTER, value);
        }
        ready(Ok::<_, Infallible>(response.body(()).unwrap()))
    });
    (calls, upstream)
}

/// The default classifier: a 429 or 503 waits as its `Retry-After` asks (seconds or a date;
/// a date in the past asks for no wait), or as the schedule says without one.
#[tokio::test(start_paused = true)]
async fn the_default_classifier_honours_retry_after_on_429_and_503() {
    let past = httpdate::fmt_http_date(SystemTime::now() - SEC * 3600);
    let (calls, upstream) = scripted(vec![
        (429, Some("3".into())),
        (503, Some(past)),
        (503, None),
        (429, Some("soon".into())),
        (200, None),
    ]);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let policy = brigade_retry::Retry::builder()
        .schedule(Backoff::constant(MS * 100))
        .max_attempts(5)
        .budget(None)
        .on_retry(move |event: &RetryEvent| sink.lock().unwrap().push(event.cause))
        .build()
        .unwrap();

    let start = tokio::time::Instant::now();
    let response = RetryLayer::new(policy)
        .layer(upstream)
        .oneshot(())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::Relaxed), 5);
    assert_eq!(
        *events.lock().unwrap(),
        [
            RetryCause::Throttled(SEC * 3),
            RetryCause::Throttled(Duration::ZERO),
            RetryCause::Failed,
            RetryCause::Failed,
        ]
    );
    // 3 s, then the schedule's 100 ms three times.
    assert_eq!(start.elapsed(), MS * 3300);
}

/// A date far ahead is cut to the policy's throttle cap.
#[tokio::test(start_paused = true)]
async fn a_far_retry_after_date_waits_only_the_throttle_cap() {
    let tomorrow = httpdate::fmt_http_date(SystemTime::now() + SEC * 86_400);
    let (calls, upstream) = scripted(vec![(503, Some(tomorrow)), (200, None)]);
    let policy = brigade_retry::Retry::builder()
        .schedule(Backoff::constant(MS * 100))
        .throttle_cap(SEC * 10)
        .budget(None)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let response = Retry::new(upstream, policy).oneshot(()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(start.elapsed(), SEC * 10);
}

/// Every other status is returned as it is, 5xx included, after one call.
#[tokio::test(start_paused = true)]
async fn the_default_classifier_returns_other_statuses() {
    for status in [200, 201, 400, 404, 500, 502, 504] {
        let (calls, upstream) = scripted(vec![(status, Some("1".into()))]);
        let response = Retry::new(upstream, policy(3)).oneshot(()).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(calls.load(Ordering::Relaxed), 1, "status {status}");
    }
}

/// The default classifier retries errors, as `RetryOnError` does.
#[tokio::test(start_paused = true)]
async fn the_default_classifier_retries_errors() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let upstream = service_fn(move |()| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        ready(if n == 0 {
            Err(std::io::Error::other("reset"))
        } else {
            Ok(http::Response::new(()))
        })
    });
    let response = Retry::new(upstream, policy(3)).oneshot(()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
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
