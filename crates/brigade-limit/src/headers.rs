//! HTTP header fields for rate-limit decisions.
//!
//! - `Retry-After`: whole seconds, **rounded up**: a wait of 0.2 s is `1`, never `0` (a
//!   client told `0` retries at once and is rejected again; tower_governor rounds down).
//! - `RateLimit-Policy` and `RateLimit`, from the IETF draft
//!   (draft-ietf-httpapi-ratelimit-headers): one list member per limit, with the quota `q`
//!   and window `w` (the time the whole burst takes to come back), the remaining cells `r`
//!   and the seconds `t` until the burst is full again, rounded up.
//!   `RateLimit-Policy: "requests";q=60;w=60, "tokens";q=10000;w=60`.
//! - Optionally OpenAI's `x-ratelimit-limit-<name>`, `x-ratelimit-remaining-<name>` and
//!   `x-ratelimit-reset-<name>` (reset as `1s`, `6m0s`, `20ms`), which clients written for
//!   OpenAI already read when the limits are named `requests` and `tokens`.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::{Admitted, LimitStatus, Rejected};

/// The `RateLimit-Policy` header field name.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header field name.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds to wait, rounded up: 0 only for no wait at all.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_limit::headers::retry_after_secs;
///
/// assert_eq!(retry_after_secs(Duration::ZERO), 0);
/// assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
/// assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
/// assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
/// ```
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
}

/// A `Retry-After` value: [`retry_after_secs`] as a header value.
pub fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(retry_after_secs(wait))
}

/// A duration as OpenAI writes its reset headers: `20ms`, `1.5s`, `6m0s`, `1h2m3s`
/// (milliseconds rounded up).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_limit::headers::openai_duration;
///
/// assert_eq!(openai_duration(Duration::from_micros(19_200)), "20ms");
/// assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
/// assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
/// ```
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}");
    if frac > 0 {
        let digits = format!("{frac:03}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Which header fields to write; a small value type with chained setters.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use brigade_limit::{Quota, RateLimiter};
/// use brigade_limit::headers::RateLimitHeaders;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = RateLimiter::direct(Quota::per_minute(NonZeroU32::new(100).unwrap())).unwrap();
/// let admitted = limiter.try_acquire(&(), 1).unwrap();
/// let mut headers = http::HeaderMap::new();
/// RateLimitHeaders::new().admitted(&admitted, &mut headers);
/// assert_eq!(headers["ratelimit-policy"], r#""default";q=100;w=60"#);
/// assert_eq!(headers["ratelimit"], r#""default";r=99;t=1"#);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitHeaders {
    ietf: bool,
    openai: bool,
}

impl Default for RateLimitHeaders {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitHeaders {
    /// The IETF fields on, OpenAI's off.
    pub const fn new() -> Self {
        Self {
            ietf: true,
            openai: false,
        }
    }

    /// Writes `RateLimit-Policy` and `RateLimit` (default: on).
    #[must_use]
    pub const fn ietf(self, on: bool) -> Self {
        Self { ietf: on, ..self }
    }

    /// Writes `x-ratelimit-{limit,remaining,reset}-<name>` (default: off).
    #[must_use]
    pub const fn openai(self, on: bool) -> Self {
        Self { openai: on, ..self }
    }

    /// The fields of an admitted call.
    pub fn admitted(&self, admitted: &Admitted, headers: &mut HeaderMap) {
        self.write(&admitted.limits().collect::<Vec<_>>(), headers);
    }

    /// The fields of a rejected call, `Retry-After` included.
    pub fn rejected(&self, rejected: &Rejected, headers: &mut HeaderMap) {
        headers.insert(RETRY_AFTER, retry_after(rejected.retry_after()));
        self.write(&rejected.limits().collect::<Vec<_>>(), headers);
    }

    fn write(&self, limits: &[LimitStatus], headers: &mut HeaderMap) {
        if self.ietf {
            let mut policy = String::new();
            let mut state = String::new();
            for (i, s) in limits.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                policy.push_str(sep);
                sf_string(&mut policy, s.name());
                let _ = write!(
                    policy,
                    ";q={};w={}",
                    s.limit(),
                    retry_after_secs(s.window()).max(1)
                );
                state.push_str(sep);
                sf_string(&mut state, s.name());
                let _ = write!(
                    state,
                    ";r={};t={}",
                    s.remaining(),
                    retry_after_secs(s.reset())
                );
            }
            insert(headers, RATELIMIT_POLICY, &policy);
            insert(headers, RATELIMIT, &state);
        }
        if self.openai {
            for s in limits {
                let name = |what: &str| {
                    HeaderName::from_bytes(format!("x-ratelimit-{what}-{}", s.name()).as_bytes())
                };
                if let (Ok(limit), Ok(remaining), Ok(reset)) =
                    (name("limit"), name("remaining"), name("reset"))
                {
                    headers.insert(limit, HeaderValue::from(s.limit()));
                    headers.insert(remaining, HeaderValue::from(s.remaining()));
                    insert(headers, reset, &openai_duration(s.reset()));
                }
            }
        }
    }
}

/// Writes `name` as a structured-field string (RFC 8941 §3.3.3): quoted, with `"` and `\`
/// escaped. Names are printable ASCII, checked when the limiter is built.
fn sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Names are printable ASCII (checked when the limiter is built), so this always succeeds.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
