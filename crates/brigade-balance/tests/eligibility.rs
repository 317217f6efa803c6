//! Endpoints leave and come back: an open breaker, a cooldown, a full adaptive limit; and
//! tiers fall back and return.

use std::time::Duration;

use brigade_balance::{EndpointConfig, Pool};
use brigade_breaker::{CircuitBreaker, OpenDuration, State};
use brigade_limit::AdaptiveLimit;
use http::HeaderMap;
use tokio::time::advance;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .minimum_calls(2)
        .failure_rate_threshold(50.0)
        .open_duration(OpenDuration::fixed(Duration::from_secs(5)))
        .half_open_probes(1)
        .half_open_successes(1)
        .build()
        .unwrap()
}

fn pool_ab(seed: u64) -> Pool<()> {
    Pool::builder()
        .endpoint("a", (), EndpointConfig::new().breaker(breaker()))
        .endpoint("b", (), EndpointConfig::new().breaker(breaker()))
        .seed(seed)
        .build()
        .unwrap()
}

fn picks_of(pool: &Pool<()>, id: &str, n: usize) -> usize {
    (0..n).filter(|_| pool.pick().unwrap().id() == id).count()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_removes_an_endpoint_until_its_half_open_probe_closes_it() {
    let pool = pool_ab(1);
    for _ in 0..2 {
        pool.pick_excluding(&["b"]).unwrap().failure();
    }
    assert_eq!(pool.snapshot()[0].breaker, State::Open);
    assert_eq!(picks_of(&pool, "a", 200), 0);

    advance(Duration::from_secs(5)).await;
    // Half-open: one probe at a time. While it runs, `a` is out again.
    let probe = pool.pick_excluding(&["b"]).unwrap();
    assert!(probe.is_probe());
    assert_eq!(picks_of(&pool, "a", 50), 0);
    // The refusal kept `a` out for the breaker's `retry_after` (1 s while half-open).
    probe.success();
    advance(Duration::from_secs(1)).await;
    assert_eq!(pool.snapshot()[0].breaker, State::Closed);
    assert!(picks_of(&pool, "a", 200) > 50);
}

#[tokio::test(start_paused = true)]
async fn all_open_is_unavailable_with_the_earliest_retry_time() {
    let pool = pool_ab(2);
    for id in ["a", "b"] {
        for _ in 0..2 {
            pool.pick_excluding(&[if id == "a" { "b" } else { "a" }])
                .unwrap()
                .failure();
        }
        advance(Duration::from_secs(2)).await;
    }
    let unavailable = pool.pick().unwrap_err();
    assert_eq!((unavailable.open(), unavailable.endpoints()), (2, 2));
    // `a` opened 4 s ago for 5 s, `b` 2 s ago.
    assert_eq!(unavailable.retry_after(), Duration::from_secs(1));
    advance(unavailable.retry_after()).await;
    assert_eq!(pool.pick().unwrap().id(), "a");
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_two_cools_the_endpoint_for_two_seconds() {
    let pool = pool_ab(3);
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", "2".parse().unwrap());
    let pick = pool.pick_excluding(&["b"]).unwrap();
    assert_eq!(pick.cooldown_from_headers(&headers), Duration::from_secs(2));
    assert_eq!(picks_of(&pool, "a", 100), 0);
    assert_eq!(pool.snapshot()[0].cooldown, Some(Duration::from_secs(2)));
    assert_eq!(
        (pool.snapshot()[0].cooldowns, pool.snapshot()[1].cooldowns),
        (1, 0)
    );
    // Not a breaker failure.
    assert_eq!(pool.snapshot()[0].breaker, State::Closed);

    advance(Duration::from_millis(1_999)).await;
    assert_eq!(picks_of(&pool, "a", 100), 0);
    advance(Duration::from_millis(1)).await;
    assert!(picks_of(&pool, "a", 100) > 10);
    assert_eq!(pool.snapshot()[0].cooldown, None);
    // The count stays, for a counter in `/metrics`.
    assert_eq!(pool.snapshot()[0].cooldowns, 1);
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_reset_requests_one_minute_cools_the_endpoint_for_a_minute() {
    let pool = pool_ab(4);
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-reset-requests", "1m0s".parse().unwrap());
    let pick = pool.pick_excluding(&["a"]).unwrap();
    assert_eq!(
        pick.cooldown_from_headers(&headers),
        Duration::from_secs(60)
    );
    advance(Duration::from_secs(59)).await;
    assert_eq!(picks_of(&pool, "b", 100), 0);
    advance(Duration::from_secs(1)).await;
    assert!(picks_of(&pool, "b", 100) > 10);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_without_hint_uses_the_default_cooldown_and_hints_are_capped() {
    let pool = Pool::builder()
        .endpoint("a", (), EndpointConfig::new())
        .default_cooldown(Duration::from_secs(3))
        .max_cooldown(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(
        pool.pick()
            .unwrap()
            .cooldown_from_headers(&HeaderMap::new()),
        Duration::from_secs(3)
    );
    let unavailable = pool.pick().unwrap_err();
    assert_eq!(unavailable.cooling_down(), 1);
    assert_eq!(unavailable.retry_after(), Duration::from_secs(3));
    advance(Duration::from_secs(3)).await;
    pool.pick().unwrap().throttled(Duration::from_secs(3_600));
    assert_eq!(pool.snapshot()[0].cooldown, Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn a_saturated_adaptive_limit_removes_an_endpoint_until_a_permit_returns() {
    let limit = AdaptiveLimit::builder()
        .initial_limit(2)
        .min_limit(1)
        .max_limit(4)
        .build()
        .unwrap();
    let pool = Pool::builder()
        .endpoint(
            "limited",
            (),
            EndpointConfig::new().adaptive_limit(limit.clone()),
        )
        .build()
        .unwrap();
    let first = pool.pick().unwrap();
    let _second = pool.pick().unwrap();
    let unavailable = pool.pick().unwrap_err();
    assert_eq!(unavailable.saturated(), 1);
    assert_eq!(pool.snapshot()[0].limit, Some(2));
    drop(first);
    assert_eq!(limit.in_flight(), 1);
    assert!(pool.pick().is_ok());
}

#[tokio::test(start_paused = true)]
async fn tiers_fall_back_while_tier_zero_is_out_and_return_when_it_is_eligible() {
    let pool = Pool::builder()
        .endpoint("primary-1", (), EndpointConfig::new().breaker(breaker()))
        .endpoint("primary-2", (), EndpointConfig::new().breaker(breaker()))
        .endpoint("fallback", (), EndpointConfig::new().tier(1))
        .seed(5)
        .build()
        .unwrap();
    let tiers = |n| -> Vec<u32> { (0..n).map(|_| pool.pick().unwrap().tier()).collect() };
    assert!(tiers(100).iter().all(|&t| t == 0));

    // primary-1 opens; primary-2 cools down: every tier-0 endpoint is out.
    for _ in 0..2 {
        pool.pick_excluding(&["primary-2", "fallback"])
            .unwrap()
            .failure();
    }
    pool.pick_excluding(&["primary-1", "fallback"])
        .unwrap()
        .throttled(Duration::from_secs(2));
    assert!(tiers(100).iter().all(|&t| t == 1));

    // The cooldown ends first: back to tier 0 at once, on primary-2 alone.
    advance(Duration::from_secs(2)).await;
    let back: Vec<_> = (0..50)
        .map(|_| pool.pick().unwrap().id().to_owned())
        .collect();
    assert!(back.iter().all(|id| id == "primary-2"), "{back:?}");
}

#[tokio::test(start_paused = true)]
async fn a_tier_saturated_falls_back_too() {
    let limit = AdaptiveLimit::builder()
        .initial_limit(1)
        .min_limit(1)
        .build()
        .unwrap();
    let pool = Pool::builder()
        .endpoint("small", (), EndpointConfig::new().adaptive_limit(limit))
        .endpoint("big", (), EndpointConfig::new().tier(1))
        .build()
        .unwrap();
    let first = pool.pick().unwrap();
    assert_eq!(first.id(), "small");
    assert_eq!(pool.pick().unwrap().id(), "big");
    drop(first);
    assert_eq!(pool.pick().unwrap().id(), "small");
}

#[tokio::test(start_paused = true)]
async fn excluding_every_endpoint_is_unavailable_and_says_so() {
    let pool = pool_ab(6);
    let unavailable = pool.pick_excluding(&["a", "b"]).unwrap_err();
    assert_eq!(unavailable.excluded(), 2);
    assert_eq!(unavailable.retry_after(), Duration::from_secs(1));
    assert!(
        unavailable.to_string().contains("2 excluded"),
        "{unavailable}"
    );
}
