//! Two kitchens (two replicas) keeping their per-key limits in one real redis-server, then
//! on their local fallback while it is down, and back on it once it returns.
//!
//! These run on the real clock: Redis answers over a real socket, and a paused clock would
//! run each call's timeout out while the socket is read. No outcome hangs on a wall-clock
//! sleep: the waits (for Redis to come back) poll, bounded.

#[path = "../../../crates/brigade-limit/tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use http::StatusCode;

use self::redis_server::RedisServer;
use super::{error_of, kitchen, metric, order, post};

/// The requests limit a response reports, if any.
fn requests_limit(response: &http::Response<hyper::body::Incoming>) -> Option<&str> {
    response
        .headers()
        .get("x-ratelimit-limit-requests")
        .and_then(|v| v.to_str().ok())
}

const STORE_REDIS: &str = "kitchen_rate_limit_store{store=\"redis\"}";
const STORE_FALLBACK: &str = "kitchen_rate_limit_store{store=\"fallback\"}";
const DECIDED_BY_REDIS: &str = "kitchen_rate_limit_decisions_total{by=\"redis\"}";
const DECIDED_BY_FALLBACK: &str = "kitchen_rate_limit_decisions_total{by=\"fallback\"}";
const REDIS_ERRORS: &str = "kitchen_rate_limit_redis_errors_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_redis_limits_fall_back_while_it_is_down_and_return() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    // Three requests a minute per client, shared by both replicas; no token limit.
    let flags = [
        "--redis",
        url.as_str(),
        "--redis-replicas",
        "2",
        "--requests-per-min",
        "3",
        "--tokens-per-min",
        "0",
        "--tokens",
        "2",
        "--ttft-ms",
        "0",
        "--token-ms",
        "0",
    ];
    let a = kitchen(&flags).await;
    let b = kitchen(&flags).await;
    for replica in [a.addr, b.addr] {
        assert_eq!(metric(replica, STORE_REDIS).await, 1.0);
    }

    // The quota is shared: three admitted across both replicas, the fourth refused by either.
    let body = order("hello", false);
    for (i, replica) in [a.addr, b.addr, a.addr].into_iter().enumerate() {
        let response = post(replica, &body, &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let remaining = response.headers()["x-ratelimit-remaining-requests"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(remaining, (2 - i).to_string(), "request {i}");
    }
    let refused = post(b.addr, &body, &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_of(refused).await["code"], "rate_limit_exceeded");
    let refused = post(a.addr, &body, &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // The first connect counted as a switch (a limiter starts on its fallback).
    let switches = metric(a.addr, "kitchen_rate_limit_store_switches_total").await;
    assert_eq!(switches, 1.0);
    // The limiter's own counts: A's three decisions were Redis's.
    assert!(metric(a.addr, DECIDED_BY_REDIS).await >= 3.0);
    assert_eq!(metric(a.addr, DECIDED_BY_FALLBACK).await, 0.0);
    assert_eq!(metric(a.addr, REDIS_ERRORS).await, 0.0);

    // Redis goes away: each call answers within the call timeout, from the local fallback,
    // which gives each of the two replicas half the quota (one request); the third failed
    // round trip in a row switches the replica to it.
    redis.stop();
    let started = Instant::now();
    let response = post(a.addr, &body, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fallback answered after {:?}",
        started.elapsed()
    );
    assert_eq!(
        response.headers()["x-ratelimit-limit-requests"],
        "1",
        "the local fallback's share of the quota"
    );
    for _ in 0..2 {
        assert_eq!(
            post(a.addr, &body, &[]).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(metric(a.addr, STORE_FALLBACK).await, 1.0);
    assert_eq!(metric(a.addr, STORE_REDIS).await, 0.0);
    assert!(metric(a.addr, DECIDED_BY_FALLBACK).await >= 3.0);
    assert!(metric(a.addr, REDIS_ERRORS).await >= 1.0);
    assert_eq!(
        metric(a.addr, "kitchen_rate_limit_store_switches_total").await,
        switches + 1.0
    );

    // Redis returns (empty: it keeps nothing on disk); a probe after the probe interval
    // (one second) brings A back to it. B had not called during the outage: its calls find
    // the dead connection and are answered by its fallback, the third switches it, and its
    // probe brings it back too. Back on the shared quota, the limit reads three again.
    redis.restart();
    for replica in [a.addr, b.addr] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while requests_limit(&post(replica, &body, &[]).await) != Some("3") {
            assert!(
                Instant::now() < deadline,
                "{replica} never went back to Redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(metric(replica, STORE_REDIS).await, 1.0);
    }
    assert_eq!(
        metric(a.addr, "kitchen_rate_limit_store_switches_total").await,
        switches + 2.0
    );
}
