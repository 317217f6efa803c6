//! Two kitchens (two replicas) keeping their per-key limits in one real redis-server, then
//! on their local fallback while it is down, and back on it once it returns; and a kitchen
//! whose Redis is too slow for its traffic, refusing what it cannot decide in time (503).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_too_slow_for_the_traffic_refuses_with_503_and_never_admits_past_the_quota() {
    // Redis answers every round trip within two pauses of 0.3 s, well within the 2 s call
    // timeout, so no round trip fails; but 400 requests at once queue for it, and the ones it
    // cannot decide within 2 s are refused as overloaded (503, `Retry-After`). The fallback
    // fails open: were they handed to it, they would all be admitted.
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--redis",
        url.as_str(),
        "--redis-fallback",
        "open",
        "--redis-timeout-ms",
        "2000",
        "--requests-per-min",
        "100",
        "--tokens-per-min",
        "0",
        "--tokens",
        "2",
        "--ttft-ms",
        "0",
        "--token-ms",
        "0",
    ];
    let k = kitchen(&flags).await;
    assert_eq!(metric(k.addr, STORE_REDIS).await, 1.0);
    let started = Instant::now();
    let holder = redis.hold(Duration::from_millis(300), 10);
    let body = order("hello", false);
    let requests: Vec<_> = (0..400)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move { post(k.addr, &body, &[]).await })
        })
        .collect();
    let (mut ok, mut limited, mut overloaded) = (0_u32, 0_u32, 0_u32);
    for request in requests {
        let response = request.await.unwrap();
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry_after >= 1, "{retry_after}");
                let error = error_of(response).await;
                assert_eq!(error["code"], "rate_limit_store_overloaded", "{error}");
                assert_eq!(error["type"], "server_error", "{error}");
                overloaded += 1;
            }
            other => panic!("{other}"),
        }
    }
    let elapsed = started.elapsed();
    holder.join().unwrap();

    // 100 a minute: the burst, and one more every 0.6 s of the test at most.
    let refilled = u32::try_from(elapsed.as_millis() / 600).unwrap() + 1;
    assert!(
        ok <= 100 + refilled,
        "{ok} admitted in {elapsed:?} ({limited} limited, {overloaded} overloaded)"
    );
    assert!(overloaded > 0, "{ok} admitted, {limited} limited");
    assert_eq!(
        metric(k.addr, "kitchen_rate_limit_overloaded_total").await,
        f64::from(overloaded)
    );
    assert_eq!(metric(k.addr, DECIDED_BY_FALLBACK).await, 0.0);
    assert_eq!(metric(k.addr, REDIS_ERRORS).await, 0.0);
    assert_eq!(metric(k.addr, STORE_REDIS).await, 1.0);
    assert_eq!(
        metric(k.addr, DECIDED_BY_REDIS).await,
        f64::from(ok + limited)
    );
}

/// Everything Redis shows on a connection for `command` (a one-line command), until it has
/// been quiet for 200 ms.
fn redis_says(port: u16, command: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0_u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        said.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&said).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_appear_in_redis_key_names_or_commands() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let redis = RedisServer::start();
    let url = redis.url();
    const SECRET: &str = "sk-kitchen-raw-secret-0123456789";
    let k = kitchen(&[
        "--redis",
        url.as_str(),
        "--api-key",
        SECRET,
        "--requests-per-min",
        "100",
        "--tokens",
        "2",
        "--ttft-ms",
        "0",
        "--token-ms",
        "0",
    ])
    .await;
    assert_eq!(metric(k.addr, STORE_REDIS).await, 1.0);

    // MONITOR shows every command Redis runs, with its arguments.
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let port = redis.port();
    let (ready, monitoring) = std::sync::mpsc::channel();
    let monitor = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut said = Vec::new();
        let mut buf = [0_u8; 4096];
        let mut told = false;
        while !stopped.load(Ordering::Relaxed) {
            if let Ok(n) = stream.read(&mut buf) {
                said.extend_from_slice(&buf[..n]);
            }
            if !told && said.starts_with(b"+OK\r\n") {
                told = true;
                ready.send(()).unwrap();
            }
        }
        String::from_utf8_lossy(&said).into_owned()
    });
    monitoring.recv().unwrap();

    let bearer = format!("Bearer {SECRET}");
    for _ in 0..3 {
        let response = post(
            k.addr,
            &order("hello", false),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(requests_limit(&response), Some("100"));
    }
    let keys = redis_says(port, "KEYS *");
    stop.store(true, Ordering::Relaxed);
    let commands = monitor.join().unwrap();

    for (what, said) in [("KEYS", &keys), ("MONITOR", &commands)] {
        assert!(!said.contains(SECRET), "{what} shows the API key: {said}");
        assert!(
            !said.contains("raw-secret"),
            "{what} shows part of it: {said}"
        );
    }
    // The client's name is the digest of its API key (the first 128 bits, in hex).
    let client = format!("key:{}", &digest_hex(SECRET)[..32]);
    assert!(keys.contains(&client), "KEYS: {keys}");
    assert!(commands.contains(&client), "MONITOR: {commands}");
}

/// SHA-256 of `text`, in hex.
fn digest_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
