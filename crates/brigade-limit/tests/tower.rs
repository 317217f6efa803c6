//! The tower middleware: 429 and header fields from `RateLimit`, the body-held permit and
//! the 503 from `ConcurrencyLimit` and `AdaptiveConcurrencyLimit` (which also records what
//! each response showed), built by their layers or by `new`.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::tower::{ConcurrencyLimitLayer, RateLimit, RateLimitLayer};
use brigade_limit::{AcquireError, ConcurrencyLimit, Overloaded, Quota, RateLimiter};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};

async fn ok(_req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from("hi"))))
}

fn api_key(req: &Request<()>) -> Option<String> {
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn request(key: &str) -> Request<()> {
    Request::builder()
        .header("x-api-key", key)
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn over_quota_is_a_429_with_retry_after_and_header_fields() {
    let limiter = RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(2).unwrap())).unwrap();
    let service = RateLimitLayer::new(limiter, api_key).layer(service_fn(ok));

    let first = service.clone().oneshot(request("a")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], r#""default";q=2;w=60"#);
    assert_eq!(first.headers()["ratelimit"], r#""default";r=1;t=30"#);
    service.clone().oneshot(request("a")).await.unwrap();

    let third = service.clone().oneshot(request("a")).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "30");
    assert_eq!(third.headers()["ratelimit"], r#""default";r=0;t=60"#);
    // The whole rejection travels with the 429.
    let Some(AcquireError::Rejected(rejected)) = third.extensions().get::<AcquireError>() else {
        panic!("no rejection in {:?}", third.extensions())
    };
    assert_eq!(rejected.retry_after(), Duration::from_secs(30));
    assert_eq!(rejected.limit().remaining(), 0);

    // Another key, and a request without a key, pass.
    let other = service.clone().oneshot(request("b")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    let unkeyed = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(unkeyed.status(), StatusCode::OK);
    assert!(!unkeyed.headers().contains_key("ratelimit"));
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_permit_lives_with_the_response_body() {
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(1)
        .max_queue(0)
        .retry_after(Duration::from_millis(1500))
        .build()
        .unwrap();
    let service = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(ok));

    let response = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The handler is done, the body not yet sent: still in flight.
    assert_eq!(limit.in_flight(), 1);
    let refused = service.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "2");
    let overloaded = refused.extensions().get::<Overloaded>().unwrap();
    assert_eq!(overloaded.retry_after(), Duration::from_millis(1500));

    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hi");
    assert_eq!(limit.in_flight(), 0);
    let again = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    drop(again); // a client that goes away releases it too
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_built_with_new_keys_by_the_extractor_and_exposes_its_service() {
    let limiter: RateLimiter<String> =
        RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(1).unwrap())).unwrap();
    let mut service = RateLimit::new(service_fn(ok), limiter, api_key);
    let _: &mut _ = service.get_mut();
    let _: &_ = service.get_ref();
    assert_eq!(
        service
            .clone()
            .oneshot(request("a"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        service
            .clone()
            .oneshot(request("a"))
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let inner = service.into_inner();
    assert_eq!(
        inner.oneshot(request("a")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_called_when_a_permit_comes_back() {
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(1)
        .max_queue(1)
        .build()
        .unwrap();
    let service = brigade_limit::tower::ConcurrencyLimit::new(service_fn(ok), limit.clone());
    let first = service.clone().oneshot(Request::new(())).await.unwrap();
    let second = tokio::spawn(service.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    assert_eq!((limit.in_flight(), limit.queued()), (1, 1));
    drop(first); // its stream ends: the permit goes to the queued request
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert!(second.body().holds_permit());
    assert_eq!((limit.in_flight(), limit.queued()), (1, 0));
    drop(second);
    assert_eq!(limit.in_flight(), 0);
}

mod adaptive {
    use std::time::Duration;

    use brigade_limit::concurrency::adaptive::Outcome;
    use brigade_limit::tower::{AdaptiveConcurrencyLimit, AdaptiveConcurrencyLimitLayer};
    use brigade_limit::{AdaptiveLimit, Overloaded};
    use http::{Request, Response, StatusCode};
    use tower::{Layer, ServiceExt, service_fn};

    const MS: Duration = Duration::from_millis(1);

    /// Answers with the status in the request body, after 50 ms; 0 is an error.
    async fn upstream(req: Request<u16>) -> Result<Response<()>, std::io::Error> {
        tokio::time::sleep(50 * MS).await;
        if *req.body() == 0 {
            return Err(std::io::Error::other("connection reset"));
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(*req.body()).unwrap();
        Ok(response)
    }

    fn limit(initial: usize) -> AdaptiveLimit {
        AdaptiveLimit::builder()
            .initial_limit(initial)
            .max_queue(1)
            .window_samples(1)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_to_the_headers_is_the_sample_and_the_body_holds_the_permit() {
        let limit = limit(4);
        let service = AdaptiveConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(upstream));
        let response = service.clone().oneshot(Request::new(200)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(limit.latency(), Some(50 * MS));
        tokio::time::sleep(Duration::from_secs(10)).await; // the stream goes on
        assert!(response.body().holds_permit());
        assert_eq!(limit.in_flight(), 1);
        drop(response);
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(
            limit.latency(),
            Some(50 * MS),
            "the stream's length is no sample"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_unavailability_and_errors_are_drops_and_other_5xx_are_ignored() {
        for (status, dropped) in [
            (429, true),
            (503, true),
            (504, true),
            (0, true),
            (500, false),
        ] {
            let limit = limit(10);
            let service = AdaptiveConcurrencyLimit::new(service_fn(upstream), limit.clone());
            let _ = service.oneshot(Request::new(status)).await;
            let expected = if dropped { 9 } else { 10 };
            assert_eq!(limit.limit(), expected, "status {status}");
            assert_eq!(limit.latency(), None, "status {status}: never a sample");
            assert_eq!(limit.in_flight(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_classifier_decides_what_counts() {
        let limit = limit(10);
        let service = AdaptiveConcurrencyLimit::new(service_fn(upstream), limit.clone()).classify(
            |result: &Result<Response<()>, std::io::Error>| match result {
                Ok(r) if r.status() == StatusCode::IM_A_TEAPOT => Outcome::Dropped,
                _ => Outcome::Ignored,
            },
        );
        let _ = service.clone().oneshot(Request::new(503)).await.unwrap();
        assert_eq!(limit.limit(), 10);
        let _ = service.oneshot(Request::new(418)).await.unwrap();
        assert_eq!(limit.limit(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_limit_and_queue_is_a_503_and_a_queued_request_is_called_later() {
        let limit = limit(1);
        let service = AdaptiveConcurrencyLimit::new(service_fn(upstream), limit.clone());
        let first = service.clone().oneshot(Request::new(200)).await.unwrap();
        let second = tokio::spawn(service.clone().oneshot(Request::new(200)));
        tokio::task::yield_now().await;
        assert_eq!((limit.in_flight(), limit.queued()), (1, 1));
        let refused = service.clone().oneshot(Request::new(200)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert!(refused.extensions().get::<Overloaded>().is_some());
        assert!(!refused.body().holds_permit());
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert!(second.body().holds_permit());
        drop(second);
        assert_eq!((limit.in_flight(), limit.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_future_dropped_mid_call_records_nothing() {
        let limit = limit(10);
        let service = AdaptiveConcurrencyLimit::new(service_fn(upstream), limit.clone());
        let call = service.clone().oneshot(Request::new(503));
        assert!(tokio::time::timeout(10 * MS, call).await.is_err()); // the client went away
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(limit.limit(), 10);
        let inner = service.into_inner();
        assert_eq!(
            inner.oneshot(Request::new(204)).await.unwrap().status(),
            StatusCode::NO_CONTENT
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_shares_one_limit_between_its_services() {
        let limit = limit(2);
        let layer = AdaptiveConcurrencyLimitLayer::new(limit.clone());
        let a = layer.layer(service_fn(upstream));
        let b = layer.layer(service_fn(upstream));
        let _one = a.oneshot(Request::new(200)).await.unwrap();
        let _two = b.clone().oneshot(Request::new(200)).await.unwrap();
        assert_eq!(limit.in_flight(), 2);
        assert_eq!(b.limit().in_flight(), 2);
    }
}
