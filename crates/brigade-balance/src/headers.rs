//! Cooldowns from response headers: `Retry-After`, and OpenAI's `x-ratelimit-reset-*`.
//!
//! - `Retry-After` (RFC 9110): delta-seconds or an HTTP-date, read by brigade-retry's
//!   [`RetryAfter`]; it wins when present and readable.
//! - `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens` (OpenAI, and providers that
//!   copy its headers): a Go-style duration, `1s`, `6m0s`, `20ms`, `1h2m3.5s`. Each counts if
//!   its `x-ratelimit-remaining-*` is `0` or absent (that limit is the one exhausted, or nothing
//!   says otherwise); the longest counting reset is the cooldown.

use std::time::Duration;

use brigade_retry::RetryAfter;
use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The cooldown `headers` ask for, if they say; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_balance::headers::cooldown;
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(cooldown(&headers), None);
/// headers.insert("x-ratelimit-reset-requests", "1m0s".parse().unwrap());
/// headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
/// headers.insert("x-ratelimit-remaining-tokens", "52000".parse().unwrap());
/// assert_eq!(cooldown(&headers), Some(Duration::from_secs(60))); // tokens remain
/// headers.insert("retry-after", "2".parse().unwrap());
/// assert_eq!(cooldown(&headers), Some(Duration::from_secs(2)));
/// ```
pub fn cooldown(headers: &HeaderMap) -> Option<Duration> {
    if let Some(after) = headers
        .get(RETRY_AFTER)
        .and_then(RetryAfter::parse)
        .map(RetryAfter::delay)
    {
        return Some(after);
    }
    let reset = |limit: &str, remaining: &str| {
        let exhausted = headers
            .get(remaining)
            .is_none_or(|value| value.as_bytes().trim_ascii() == b"0");
        if !exhausted {
            return None;
        }
        headers
            .get(limit)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_duration)
    };
    let requests = reset(
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-requests",
    );
    let tokens = reset("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens");
    requests.max(tokens)
}

/// Parses a Go-style duration as OpenAI writes its resets: one or more numbers, each with a
/// unit (`h`, `m`, `s`, `ms`, `us` or `µs`, `ns`), the number a decimal (`3.5s`). Returns `None`
/// for anything else (no unit, a sign, an empty value), or a value too large for a `Duration`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_balance::headers::parse_duration;
///
/// assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_duration("20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(parse_duration("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim_ascii();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = number.mul_add(seconds, total);
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_examples_openai_sends() {
        let cases = [
            ("1s", 1_000),
            ("6m0s", 360_000),
            ("20ms", 20),
            ("1h2m3.5s", 3_723_500),
            ("0.5s", 500),
            ("59.999s", 59_999),
        ];
        for (value, millis) in cases {
            assert_eq!(
                parse_duration(value),
                Some(Duration::from_millis(millis)),
                "{value}"
            );
        }
        for value in [
            "", "1", "s", "1x", "-1s", "1.2.3s", ".s", "1 s", "1e3s", "1h 2m",
        ] {
            assert_eq!(parse_duration(value), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_wins_and_remaining_tokens_exclude_their_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        assert_eq!(cooldown(&headers), Some(Duration::from_secs(360)));
        headers.insert("x-ratelimit-remaining-tokens", "10".parse().unwrap());
        assert_eq!(cooldown(&headers), None);
        headers.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(cooldown(&headers), Some(Duration::from_secs(360)));
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(cooldown(&headers), Some(Duration::from_secs(3)));
    }

    proptest! {
        #[test]
        fn hours_minutes_millis_round_trip(h in 0_u64..100, m in 0_u64..60, ms in 0_u64..60_000) {
            let text = format!("{h}h{m}m{}.{:03}s", ms / 1000, ms % 1000);
            let expected = Duration::from_millis(((h * 60 + m) * 60) * 1000 + ms);
            let parsed = parse_duration(&text).unwrap();
            let error = parsed.abs_diff(expected);
            prop_assert!(error < Duration::from_micros(1), "{text}: {parsed:?}");
        }

        #[test]
        fn never_panics(value in "\\PC{0,24}") {
            let _ = parse_duration(&value);
        }
    }
}
