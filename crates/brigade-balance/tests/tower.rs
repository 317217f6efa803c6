//! The tower service through `oneshot`: picks, failures, a 429 cooldown, unavailable.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brigade_balance::tower::{Balance, BalanceLayer};
use brigade_balance::{EndpointConfig, Outcome, Pool, Unavailable};
use brigade_breaker::{CircuitBreaker, State};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// An upstream that answers `status` (with `headers`) after `latency`, counting its calls.
#[derive(Clone, Debug)]
struct Upstream {
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    latency: Duration,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn new(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &[],
            latency: Duration::from_millis(10),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Service<Request<()>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (status, headers, latency) = (self.status, self.headers, self.latency);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(*name, *value);
            }
            Ok(response
                .body(Full::new(Bytes::from_static(b"tokens")))
                .unwrap())
        })
    }
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder().minimum_calls(2).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn oneshot_through_three_endpoints_with_failures_and_a_429() {
    let healthy = Upstream::new(200);
    let failing = Upstream::new(500);
    let mut throttling = Upstream::new(429);
    throttling.headers = &[("retry-after", "2")];
    let pool = Pool::builder()
        .endpoint(
            "healthy",
            healthy.clone(),
            EndpointConfig::new().breaker(breaker()),
        )
        .endpoint(
            "failing",
            failing.clone(),
            EndpointConfig::new().breaker(breaker()),
        )
        .endpoint(
            "throttling",
            throttling.clone(),
            EndpointConfig::new().breaker(breaker()),
        )
        .seed(1)
        .build()
        .unwrap();
    let service = BalanceLayer::new().layer(pool.clone());

    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = service.clone().oneshot(Request::new(())).await.unwrap();
        statuses.push(response.status().as_u16());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "tokens");
    }
    // The 429 cooled its endpoint for 2 s (the test runs in 0.4 s): one call reached it.
    assert_eq!(throttling.calls(), 1);
    // Two 500s opened the failing endpoint's breaker: no more calls.
    assert_eq!(failing.calls(), 2);
    assert_eq!(healthy.calls(), 37);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 37);
    let snapshot = pool.snapshot();
    let by_id = |id: &str| snapshot.iter().find(|e| &*e.id == id).unwrap().clone();
    assert_eq!(by_id("failing").breaker, State::Open);
    assert_eq!(by_id("throttling").breaker, State::Closed);
    assert!(by_id("throttling").cooldown.is_some());
    assert_eq!(by_id("healthy").latency, Duration::from_millis(10));
    assert!(snapshot.iter().all(|e| e.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn the_response_body_holds_the_pick_until_it_ends() {
    let pool = Pool::builder()
        .endpoint("a", Upstream::new(200), EndpointConfig::new())
        .build()
        .unwrap();
    let response = Balance::new(pool.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(pool.snapshot()[0].in_flight, 1);
    assert!(response.body().pick().is_some());
    response.into_body().collect().await.unwrap();
    assert_eq!(pool.snapshot()[0].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn no_eligible_endpoint_is_an_unavailable_error_at_once_with_retry_after() {
    let mut throttling = Upstream::new(429);
    throttling.headers = &[("x-ratelimit-reset-requests", "1m0s")];
    let pool = Pool::builder()
        .endpoint("only", throttling, EndpointConfig::new())
        .build()
        .unwrap();
    let mut service = Balance::new(pool);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    // Ready at once, and the call fails at once.
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    let unavailable = error.downcast_ref::<Unavailable>().unwrap();
    assert_eq!(unavailable.cooling_down(), 1);
    assert_eq!(unavailable.retry_after(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides_the_outcome() {
    let teapot = Upstream::new(418);
    let pool = Pool::builder()
        .endpoint("teapot", teapot.clone(), EndpointConfig::new())
        .build()
        .unwrap();
    // 418 means "throttled for 5 s" to this caller.
    let classify = |result: &Result<Response<Full<Bytes>>, Infallible>| match result {
        Ok(r) if r.status() == StatusCode::IM_A_TEAPOT => {
            Outcome::Throttled(Some(Duration::from_secs(5)))
        }
        _ => Outcome::Success,
    };
    let service = Balance::new(pool.clone()).classify(classify);
    service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(pool.snapshot()[0].cooldown, Some(Duration::from_secs(5)));
    assert!(service.oneshot(Request::new(())).await.is_err());
    assert_eq!(teapot.calls(), 1);
}
