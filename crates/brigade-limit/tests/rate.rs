//! Decisions through the public API: quotas, costs, multi-limits, settle, shadow mode,
//! reconfiguration and address keys. Time is tokio's paused clock.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::{AcquireError, IpKey, IpKeyer, Limit, Quota, RateLimiter};
use tokio::time::advance;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn rejected(result: Result<brigade_limit::Admitted, AcquireError>) -> brigade_limit::Rejected {
    match result {
        Err(AcquireError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn tokens_and_requests() -> RateLimiter<&'static str> {
    RateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(3))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(1000))))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_admitted_then_one_cell_per_interval() {
    let limiter = RateLimiter::direct(Quota::per_second(nz(5))).unwrap();
    for left in (0..5).rev() {
        assert_eq!(
            limiter.try_acquire(&(), 1).unwrap().tightest().remaining(),
            left
        );
    }
    let r = rejected(limiter.try_acquire(&(), 1));
    assert_eq!(r.retry_after(), Duration::from_millis(200));
    assert_eq!(r.limit().limit(), 5);
    assert_eq!(r.limit().remaining(), 0);
    assert_eq!(r.limit().reset(), Duration::from_secs(1));
    advance(Duration::from_millis(199)).await;
    assert!(limiter.try_acquire(&(), 1).is_err());
    advance(Duration::from_millis(1)).await;
    assert!(limiter.try_acquire(&(), 1).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_weighted_cost_takes_that_many_cells() {
    let limiter = RateLimiter::direct(Quota::per_second(nz(10))).unwrap();
    assert_eq!(
        limiter.try_acquire(&(), 7).unwrap().tightest().remaining(),
        3
    );
    let r = rejected(limiter.try_acquire(&(), 5));
    // 2 more cells must come back, 100 ms each.
    assert_eq!(r.retry_after(), Duration::from_millis(200));
    assert_eq!(
        limiter.try_acquire(&(), 3).unwrap().tightest().remaining(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_cost_over_the_burst_is_unsatisfiable_not_a_wait() {
    let limiter = tokens_and_requests();
    match limiter.try_acquire(&"k", 1001) {
        Err(AcquireError::Unsatisfiable(u)) => {
            assert_eq!((u.limit(), u.cost(), u.burst()), ("tokens", 1001, 1000));
        }
        other => panic!("{other:?}"),
    }
    assert!(limiter.is_empty(), "nothing charged, no key held");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_multi_limit_consumes_nothing_and_names_the_tightest() {
    let limiter = tokens_and_requests();
    limiter.try_acquire(&"k", 900).unwrap();
    // Tokens say no (needs 800, has 100); requests would say yes.
    let r = rejected(limiter.try_acquire(&"k", 800));
    assert_eq!(r.limit().name(), "tokens");
    assert_eq!(r.retry_after(), Duration::from_millis(700 * 60));
    let statuses: Vec<_> = r.limits().map(|s| (s.name(), s.remaining())).collect();
    assert_eq!(statuses, [("requests", 2), ("tokens", 100)]);
    // Nothing was charged: the requests limit still has 2, the tokens limit 100.
    let a = limiter.try_acquire(&"k", 100).unwrap();
    let statuses: Vec<_> = a.limits().map(|s| (s.name(), s.remaining())).collect();
    assert_eq!(statuses, [("requests", 1), ("tokens", 0)]);
}

#[tokio::test(start_paused = true)]
async fn the_limit_with_the_longest_wait_is_named() {
    let limiter = tokens_and_requests();
    for _ in 0..3 {
        limiter.try_acquire(&"k", 300).unwrap();
    }
    // Both reject: requests needs 20 s, tokens (200 more than the 100 left) 12 s.
    let r = rejected(limiter.try_acquire(&"k", 200));
    assert_eq!(r.limit().name(), "requests");
    assert_eq!(r.retry_after(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn settle_refunds_the_unused_part() {
    let limiter = tokens_and_requests();
    let reservation = limiter.try_reserve(&"k", 800).unwrap();
    assert_eq!(reservation.admitted().tightest().name(), "tokens");
    reservation.settle(300);
    let statuses: Vec<_> = limiter
        .try_acquire(&"k", 0)
        .unwrap()
        .limits()
        .map(|s| s.remaining())
        .collect();
    // One request (plus this 0-cost one), 300 tokens.
    assert_eq!(statuses, [1, 700]);
}

#[tokio::test(start_paused = true)]
async fn settle_charges_the_extra_even_past_the_burst() {
    let limiter = tokens_and_requests();
    limiter.try_reserve(&"k", 100).unwrap().settle(1500);
    let r = rejected(limiter.try_acquire(&"k", 1));
    assert_eq!(r.limit().name(), "tokens");
    // 1500 used of a 1000 burst: 500 cells of debt plus one more, at 60 ms each.
    assert_eq!(r.retry_after(), Duration::from_millis(501 * 60));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_reservation_keeps_its_charge() {
    let limiter = tokens_and_requests();
    drop(limiter.try_reserve(&"k", 600).unwrap());
    let a = limiter.try_acquire(&"k", 0).unwrap();
    assert_eq!(a.limits().nth(1).unwrap().remaining(), 400);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_never_rejects_but_reports_and_does_not_charge() {
    let limiter: RateLimiter<&str> = RateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(2))))
        .shadow(true)
        .build()
        .unwrap();
    for _ in 0..2 {
        assert!(
            limiter
                .try_acquire(&"k", 1)
                .unwrap()
                .shadow_rejection()
                .is_none()
        );
    }
    for _ in 0..10 {
        let a = limiter.try_acquire(&"k", 1).unwrap();
        let would = a.shadow_rejection().expect("over quota is reported");
        assert_eq!(would.retry_after(), Duration::from_millis(500));
    }
    // Switch to enforcing: the state is what the admitted calls left.
    limiter.set_shadow(false);
    assert!(limiter.try_acquire(&"k", 1).is_err());
    advance(Duration::from_millis(500)).await;
    assert!(limiter.try_acquire(&"k", 1).is_ok());
}

#[tokio::test(start_paused = true)]
async fn reconfiguration_keeps_the_cells_used() {
    let limiter = RateLimiter::keyed(Quota::per_minute(nz(100))).unwrap();
    limiter.try_acquire(&"k", 40).unwrap();
    limiter
        .set_quota("default", Quota::per_minute(nz(200)))
        .unwrap();
    assert_eq!(limiter.quota("default"), Some(Quota::per_minute(nz(200))));
    let a = limiter.try_acquire(&"k", 0).unwrap();
    assert_eq!(a.tightest().limit(), 200);
    assert_eq!(a.tightest().remaining(), 160);
    // A smaller quota: the key is over it until its 40 cells come back.
    limiter
        .set_quota("default", Quota::per_minute(nz(30)))
        .unwrap();
    let r = rejected(limiter.try_acquire(&"k", 1));
    assert_eq!(r.retry_after(), Duration::from_secs(22)); // 11 cells at 2 s
    assert!(matches!(
        limiter.set_quota("nope", Quota::per_minute(nz(1))),
        Err(brigade_limit::InvalidConfig::UnknownLimit(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn ipv6_clients_are_keyed_by_their_64() {
    let limiter = RateLimiter::keyed(Quota::per_minute(nz(1))).unwrap();
    let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
    let same_64: IpAddr = "2001:db8:0:1:ffff:ffff:ffff:ffff".parse().unwrap();
    let other_64: IpAddr = "2001:db8:0:2::1".parse().unwrap();
    limiter.try_acquire(&IpKey::from(a), 1).unwrap();
    assert!(limiter.try_acquire(&IpKey::from(same_64), 1).is_err());
    assert!(limiter.try_acquire(&IpKey::from(other_64), 1).is_ok());

    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(IpKey::from(v4), IpKey::from(mapped));
    assert_ne!(
        IpKey::from(v4),
        IpKey::from("192.0.2.2".parse::<IpAddr>().unwrap())
    );

    let wide = IpKeyer::new().with_ipv6_prefix(48).unwrap();
    assert_eq!(wide.key(a), wide.key(other_64));
    assert_eq!(wide.key(a).to_string(), "2001:db8::/48");
    assert!(IpKeyer::new().with_ipv6_prefix(129).is_err());
    assert!(IpKeyer::new().with_ipv4_prefix(33).is_err());
}

#[test]
fn bad_configuration_is_rejected_when_built() {
    use brigade_limit::InvalidConfig;
    let q = Quota::per_second(nz(1));
    assert_eq!(
        RateLimiter::<()>::builder().build().unwrap_err(),
        InvalidConfig::NoLimits
    );
    assert_eq!(
        RateLimiter::<()>::builder()
            .limit(Limit::new("a", q))
            .limit(Limit::new("a", q))
            .build()
            .unwrap_err(),
        InvalidConfig::DuplicateLimit("a")
    );
    let mut five = RateLimiter::<()>::builder();
    for name in ["a", "b", "c", "d", "e"] {
        five = five.limit(Limit::new(name, q));
    }
    assert_eq!(five.build().unwrap_err(), InvalidConfig::TooManyLimits);
    assert_eq!(
        RateLimiter::<u64>::builder()
            .limit(Limit::new("a", q))
            .max_keys(0)
            .build()
            .unwrap_err(),
        InvalidConfig::ZeroMaxKeys
    );
    assert_eq!(
        Quota::with_period(Duration::ZERO).unwrap_err(),
        InvalidConfig::ZeroPeriod
    );
    assert_eq!(
        RateLimiter::direct(Quota::per_hour(nz(1)).allow_burst(NonZeroU32::MAX)).unwrap_err(),
        InvalidConfig::QuotaTooLong
    );
}

#[tokio::test(start_paused = true)]
async fn a_direct_limiter_settles_and_reconfigures_like_a_keyed_one() {
    let limiter = RateLimiter::direct(Quota::per_minute(nz(100))).unwrap();
    limiter.try_reserve(&(), 60).unwrap().settle(20);
    assert_eq!(
        limiter.try_acquire(&(), 0).unwrap().tightest().remaining(),
        80
    );
    limiter.try_reserve(&(), 10).unwrap().settle(30);
    assert_eq!(
        limiter.try_acquire(&(), 0).unwrap().tightest().remaining(),
        50
    );
    limiter
        .set_quota("default", Quota::per_minute(nz(200)))
        .unwrap();
    let a = limiter.try_acquire(&(), 0).unwrap();
    assert_eq!((a.tightest().limit(), a.tightest().remaining()), (200, 150));
    limiter.set_shadow(true);
    let a = limiter.try_acquire(&(), 200).unwrap();
    assert!(a.shadow_rejection().is_some());
    limiter.set_shadow(false);
    assert_eq!(
        limiter
            .try_acquire(&(), 150)
            .unwrap()
            .tightest()
            .remaining(),
        0
    );
}

#[test]
fn limiters_and_their_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let limiter: RateLimiter<String> = RateLimiter::keyed(Quota::per_second(nz(1))).unwrap();
    send_sync(&limiter);
    let key = "k".to_owned();
    let cancel = tokio_util::sync::CancellationToken::new();
    send(&limiter.acquire(&key, 1, &cancel, None));
    send_sync(&limiter.try_reserve(&key, 1).unwrap());
    send_sync(&brigade_limit::ConcurrencyLimit::builder().build().unwrap());
}

/// Quotas and charges at the edges of `u64` nanoseconds: every decision and every header
/// value is computed without overflowing (a debug build panics on overflow).
#[tokio::test(start_paused = true)]
async fn extreme_quotas_and_charges_never_overflow() {
    use brigade_limit::headers::RateLimitHeaders;

    // One cell per 584 years: `now + burst × interval` does not fit in a u64.
    let centuries = Quota::with_period(Duration::from_nanos(u64::MAX)).unwrap();
    let limiter = RateLimiter::direct(centuries).unwrap();
    advance(Duration::from_secs(1)).await;
    let a = limiter.try_acquire(&(), 1).unwrap();
    assert_eq!(a.tightest().remaining(), 0);
    let r = rejected(limiter.try_acquire(&(), 1));
    assert_eq!(r.limit().remaining(), 0);
    let mut headers = http::HeaderMap::new();
    RateLimitHeaders::new()
        .openai(true)
        .rejected(&r, &mut headers);
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1 << 33
    );

    // A settle far past the burst saturates the debt instead of wrapping it to a fresh key.
    let limiter = RateLimiter::keyed(Quota::per_hour(nz(1))).unwrap();
    limiter.try_reserve(&"k", 1).unwrap().settle(u32::MAX);
    limiter.try_reserve(&"k2", 1).unwrap().settle(u32::MAX);
    let r = rejected(limiter.try_acquire(&"k", 1));
    assert!(r.retry_after() > Duration::from_secs(500 * 365 * 24 * 3600));
    advance(Duration::from_secs(3600)).await;
    assert!(limiter.try_acquire(&"k2", 1).is_err());
    assert!(matches!(
        limiter.try_acquire(&"k", u32::MAX),
        Err(AcquireError::Unsatisfiable(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn limit_names_are_checked_when_built_and_quoted_in_header_fields() {
    use brigade_limit::InvalidConfig;
    use brigade_limit::headers::RateLimitHeaders;

    let q = Quota::per_second(nz(1));
    assert_eq!(
        RateLimiter::<()>::builder()
            .limit(Limit::new("tökens", q))
            .build()
            .unwrap_err(),
        InvalidConfig::InvalidLimitName("tökens")
    );
    assert_eq!(
        RateLimiter::<()>::builder()
            .limit(Limit::new("a\nb", q))
            .build()
            .unwrap_err(),
        InvalidConfig::InvalidLimitName("a\nb")
    );
    // `"` and `\` are printable: escaped in the structured-field string.
    let limiter = RateLimiter::<()>::builder()
        .limit(Limit::new(r#"a"b\c"#, q))
        .build()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    RateLimitHeaders::new().admitted(&limiter.try_acquire(&(), 1).unwrap(), &mut headers);
    assert_eq!(headers["ratelimit-policy"], r#""a\"b\\c";q=1;w=1"#);
    assert_eq!(headers["ratelimit"], r#""a\"b\\c";r=0;t=1"#);
}

/// A reservation's cells come back over time whether or not it is settled; a settle after
/// they came back refunds nothing, so the cells later calls took stay charged.
#[tokio::test(start_paused = true)]
async fn a_late_settle_refunds_only_the_cells_not_yet_back() {
    // 1,000 tokens a minute: one every 60 ms.
    let limiter = RateLimiter::keyed(Quota::per_minute(nz(1000))).unwrap();
    let reservation = limiter.try_reserve(&"k", 900).unwrap(); // back after 54 s
    // A long stream: 60 s later every reserved cell is back, and another call takes 800.
    advance(Duration::from_secs(60)).await;
    limiter.try_acquire(&"k", 800).unwrap();
    reservation.settle(100); // 800 unused, but none of them is still owed
    assert_eq!(
        limiter.try_acquire(&"k", 0).unwrap().tightest().remaining(),
        200,
        "the later call's 800 cells stay charged"
    );

    // Half-way: of 900 reserved, 450 are back after 27 s; settling with 100 refunds the
    // 450 still owed (less than the 800 unused).
    let limiter = RateLimiter::keyed(Quota::per_minute(nz(1000))).unwrap();
    let reservation = limiter.try_reserve(&"k", 900).unwrap();
    advance(Duration::from_secs(27)).await;
    assert_eq!(
        limiter.try_acquire(&"k", 0).unwrap().tightest().remaining(),
        550
    );
    reservation.settle(100);
    assert_eq!(
        limiter.try_acquire(&"k", 0).unwrap().tightest().remaining(),
        1000
    );
}

/// Threads racing on one key: every limit is charged exactly the admitted calls, so no
/// rejection charged anything and no admission was charged on one limit but not another.
#[test]
fn racing_threads_charge_all_limits_or_none() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    // Nothing comes back during the test: one request per 36 s, one token per 18 s.
    let multi: RateLimiter<()> = RateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_hour(nz(100))))
        .limit(Limit::new("tokens", Quota::per_hour(nz(200))))
        .build()
        .unwrap();
    let single = RateLimiter::direct(Quota::per_hour(nz(200))).unwrap();
    for limiter in [multi, single] {
        let (calls, cells) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|seed: u32| {
                let (limiter, calls, cells) =
                    (limiter.clone(), Arc::clone(&calls), Arc::clone(&cells));
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let cost = (i * 7 + seed * 3) % 9 + 1;
                        if limiter.try_acquire(&(), cost).is_ok() {
                            calls.fetch_add(1, Ordering::Relaxed);
                            cells.fetch_add(u64::from(cost), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (calls, cells) = (calls.load(Ordering::Relaxed), cells.load(Ordering::Relaxed));
        let now = limiter.try_acquire(&(), 0).unwrap();
        for status in now.limits() {
            let used = u64::from(status.limit() - status.remaining());
            match status.name() {
                // This last 0-cost call counts as one request.
                "requests" => assert_eq!(used, calls + 1),
                _ => assert_eq!(used, cells, "{}", status.name()),
            }
        }
    }
}
