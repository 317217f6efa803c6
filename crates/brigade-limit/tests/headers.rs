//! Header values: Retry-After rounded up, the IETF fields, OpenAI's.

use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::headers::{RateLimitHeaders, openai_duration, retry_after, retry_after_secs};
use brigade_limit::{AcquireError, Limit, Quota, RateLimiter};
use http::HeaderMap;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn retry_after_rounds_up_and_is_never_zero_for_a_wait() {
    let cases = [
        (Duration::ZERO, 0),
        (Duration::from_nanos(1), 1),
        (Duration::from_millis(200), 1),
        (Duration::from_secs(1), 1),
        (Duration::from_millis(1001), 2),
        (Duration::from_millis(59_999), 60),
    ];
    for (wait, secs) in cases {
        assert_eq!(retry_after_secs(wait), secs, "{wait:?}");
        assert_eq!(retry_after(wait), secs.to_string().as_str());
    }
}

#[test]
fn openai_durations_read_like_openai_s() {
    assert_eq!(openai_duration(Duration::ZERO), "0ms");
    assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
    assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
    assert_eq!(openai_duration(Duration::from_millis(8_640)), "8.64s");
    assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
}

fn limiter() -> RateLimiter<&'static str> {
    RateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(60))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(10_000))))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_admitted_call_gets_both_ietf_fields_for_every_limit() {
    let limiter = limiter();
    let admitted = limiter.try_acquire(&"k", 500).unwrap();
    let mut headers = HeaderMap::new();
    RateLimitHeaders::new().admitted(&admitted, &mut headers);
    assert_eq!(
        headers["ratelimit-policy"],
        r#""requests";q=60;w=60, "tokens";q=10000;w=60"#
    );
    // 500 tokens come back in 3 s; one request in 1 s.
    assert_eq!(
        headers["ratelimit"],
        r#""requests";r=59;t=1, "tokens";r=9500;t=3"#
    );
    assert!(!headers.contains_key("retry-after"));
    assert!(!headers.contains_key("x-ratelimit-limit-requests"));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_call_gets_retry_after_rounded_up_and_openai_fields() {
    let limiter: RateLimiter<&str> = RateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_second(nz(5))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(10_000))))
        .build()
        .unwrap();
    for _ in 0..5 {
        limiter.try_acquire(&"k", 1).unwrap();
    }
    let Err(AcquireError::Rejected(rejected)) = limiter.try_acquire(&"k", 1) else {
        panic!("over quota")
    };
    assert_eq!(rejected.retry_after(), Duration::from_millis(200));
    let mut headers = HeaderMap::new();
    RateLimitHeaders::new()
        .openai(true)
        .rejected(&rejected, &mut headers);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        headers["ratelimit"],
        r#""requests";r=0;t=1, "tokens";r=9995;t=1"#
    );
    assert_eq!(headers["x-ratelimit-limit-requests"], "5");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-reset-requests"], "1s");
    assert_eq!(headers["x-ratelimit-limit-tokens"], "10000");
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "9995");
    assert_eq!(headers["x-ratelimit-reset-tokens"], "30ms");
}

#[tokio::test(start_paused = true)]
async fn ietf_fields_can_be_turned_off() {
    let limiter = limiter();
    let admitted = limiter.try_acquire(&"k", 1).unwrap();
    let mut headers = HeaderMap::new();
    RateLimitHeaders::new()
        .ietf(false)
        .openai(true)
        .admitted(&admitted, &mut headers);
    assert!(!headers.contains_key("ratelimit"));
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "9999");
}

#[tokio::test(start_paused = true)]
async fn a_limit_with_its_own_name_gets_openai_fields_under_that_name() {
    let limiter: RateLimiter<&str> = RateLimiter::builder()
        .limit(Limit::new("embeddings", Quota::per_second(nz(4))))
        .build()
        .unwrap();
    let admitted = limiter.try_acquire(&"k", 1).unwrap();
    let mut headers = HeaderMap::new();
    RateLimitHeaders::new()
        .openai(true)
        .admitted(&admitted, &mut headers);
    assert_eq!(headers["x-ratelimit-limit-embeddings"], "4");
    assert_eq!(headers["x-ratelimit-remaining-embeddings"], "3");
    assert_eq!(headers["x-ratelimit-reset-embeddings"], "250ms");
    assert_eq!(headers["ratelimit-policy"], "\"embeddings\";q=4;w=1");
    assert_eq!(headers["ratelimit"], "\"embeddings\";r=3;t=1");
}

#[test]
fn openai_durations_drop_trailing_zeros_of_the_fraction() {
    assert_eq!(openai_duration(Duration::from_millis(1_500)), "1.5s");
    assert_eq!(openai_duration(Duration::from_millis(1_050)), "1.05s");
    assert_eq!(openai_duration(Duration::from_millis(1_005)), "1.005s");
    assert_eq!(openai_duration(Duration::from_millis(61_010)), "1m1.01s");
    assert_eq!(openai_duration(Duration::from_micros(999_001)), "1s");
    assert_eq!(openai_duration(Duration::from_nanos(1)), "1ms");
    assert_eq!(
        openai_duration(Duration::from_secs(u64::MAX)),
        openai_duration(Duration::from_millis(u64::MAX))
    );
}

proptest::proptest! {
    /// The hand-written formatter agrees with a plain `format!` one on every duration.
    #[test]
    fn openai_duration_matches_a_reference(ms in 0_u64..10_000_000_000) {
        let reference = if ms < 1000 {
            format!("{ms}ms")
        } else {
            let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
            let mut out = String::new();
            if h > 0 {
                out += &format!("{h}h");
            }
            if h > 0 || m > 0 {
                out += &format!("{m}m");
            }
            out += &format!("{s}");
            if frac > 0 {
                out += &format!(".{}", format!("{frac:03}").trim_end_matches('0'));
            }
            out + "s"
        };
        proptest::prop_assert_eq!(openai_duration(Duration::from_millis(ms)), reference);
    }
}

#[tokio::test(start_paused = true)]
async fn limiters_of_different_quotas_on_one_thread_each_get_their_own_fields() {
    // The policy and the OpenAI limits are reused from the last call on the thread when they
    // are the same: alternating limiters must never see each other's.
    let small = limiter();
    let large: RateLimiter<&'static str> = RateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(600))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(90_000))))
        .build()
        .unwrap();
    let fields = RateLimitHeaders::new().openai(true);
    for _ in 0..3 {
        for (limiter, policy, requests, tokens) in [
            (
                &small,
                r#""requests";q=60;w=60, "tokens";q=10000;w=60"#,
                "60",
                "10000",
            ),
            (
                &large,
                r#""requests";q=600;w=60, "tokens";q=90000;w=60"#,
                "600",
                "90000",
            ),
        ] {
            let mut headers = HeaderMap::new();
            fields.admitted(&limiter.try_acquire(&"k", 1).unwrap(), &mut headers);
            assert_eq!(headers["ratelimit-policy"], policy);
            assert_eq!(headers["x-ratelimit-limit-requests"], requests);
            assert_eq!(headers["x-ratelimit-limit-tokens"], tokens);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_name_with_a_quote_or_a_backslash_is_escaped_in_the_ietf_fields() {
    let limiter: RateLimiter<&'static str> = RateLimiter::builder()
        .limit(Limit::new(r#"a"b\c"#, Quota::per_minute(nz(60))))
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    RateLimitHeaders::new().admitted(&limiter.try_acquire(&"k", 1).unwrap(), &mut headers);
    assert_eq!(headers["ratelimit-policy"], r#""a\"b\\c";q=60;w=60"#);
    assert_eq!(headers["ratelimit"], r#""a\"b\\c";r=59;t=1"#);
}
