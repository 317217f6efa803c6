//! The tower layers: 429 and header fields from `RateLimitLayer`, the body-held permit and
//! the 503 from `ConcurrencyLimitLayer`.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::tower::{ConcurrencyLimitLayer, RateLimitLayer};
use brigade_limit::{ConcurrencyLimit, Quota, RateLimiter};
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

    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hi");
    assert_eq!(limit.in_flight(), 0);
    let again = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    drop(again); // a client that goes away releases it too
    assert_eq!(limit.in_flight(), 0);
}
