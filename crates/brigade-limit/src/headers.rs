//! HTTP header fields for rate-limit decisions.
//!
//! - `Retry-After`: whole seconds, **rounded up**: a wait of 0.2 s is `1`, never `0` (a
//!   client told `0` retries at once and is rejected again).
//! - `RateLimit-Policy` and `RateLimit`, from the IETF draft
//!   (draft-ietf-httpapi-ratelimit-headers): one list member per limit, with the quota `q`
//!   and window `w` (the time the whole burst takes to come back), the remaining cells `r`
//!   and the seconds `t` until the burst is full again, rounded up.
//!   `RateLimit-Policy: "requests";q=60;w=60, "tokens";q=10000;w=60`.
//! - Optionally OpenAI's `x-ratelimit-limit-<name>`, `x-ratelimit-remaining-<name>` and
//!   `x-ratelimit-reset-<name>` (reset as `1s`, `6m0s`, `20ms`), which clients written for
//!   OpenAI already read when the limits are named `requests` and `tokens`.

use std::cell::RefCell;
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
    let mut out = String::with_capacity(12);
    write_openai_duration(&mut out, d);
    out
}

/// [`openai_duration`] into `out`, without formatting machinery.
fn write_openai_duration(out: &mut String, d: Duration) {
    let ms = d.as_nanos().div_ceil(1_000_000);
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    if ms < 1000 {
        push_u64(out, ms);
        out.push_str("ms");
        return;
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        push_u64(out, h);
        out.push('h');
    }
    if h > 0 || m > 0 {
        push_u64(out, m);
        out.push('m');
    }
    push_u64(out, s);
    if frac > 0 {
        // Three digits, trailing zeros dropped: 500 ms is ".5", 640 ms ".64".
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let used = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        out.push('.');
        for digit in &digits[..used] {
            out.push(char::from(b'0' + *digit as u8));
        }
    }
    out.push('s');
}

/// Appends `n` in decimal (itoa: two digits at a time, and no UTF-8 check of the result, which
/// safe code of our own would need).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
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
        self.write(|| admitted.limits(), headers);
    }

    /// The fields of a rejected call, `Retry-After` included.
    pub fn rejected(&self, rejected: &Rejected, headers: &mut HeaderMap) {
        headers.insert(RETRY_AFTER, retry_after(rejected.retry_after()));
        self.write(|| rejected.limits(), headers);
    }

    // No `format!` and no collection: the fields are written into a buffer kept per thread,
    // each value one allocation. The fields that are the same on every call of a limiter
    // (the policy, the OpenAI limits of `requests` and `tokens`) reuse the value last
    // written on this thread when it is the same: a reference count, not a new copy.
    fn write<I>(&self, limits: impl Fn() -> I, headers: &mut HeaderMap)
    where
        I: Iterator<Item = LimitStatus>,
    {
        let written = SCRATCH
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => {
                    self.write_with(&mut scratch, &limits, headers);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !written {
            // The thread is ending: a scratch of this call's own.
            self.write_with(&mut Scratch::new(), &limits, headers);
        }
    }

    fn write_with<I>(&self, scratch: &mut Scratch, limits: &impl Fn() -> I, headers: &mut HeaderMap)
    where
        I: Iterator<Item = LimitStatus>,
    {
        let buf = &mut scratch.buf;
        if self.ietf {
            buf.clear();
            for (i, s) in limits().enumerate() {
                if i > 0 {
                    buf.push_str(", ");
                }
                sf_string(buf, s.name());
                buf.push_str(";q=");
                push_u64(buf, u64::from(s.limit()));
                buf.push_str(";w=");
                push_u64(buf, retry_after_secs(s.window()).max(1));
            }
            let policy = match &scratch.policy {
                Some((text, value)) if text == buf => Some(value.clone()),
                _ => HeaderValue::from_str(buf).ok().inspect(|value| {
                    scratch.policy = Some((buf.clone(), value.clone()));
                }),
            };
            if let Some(policy) = policy {
                headers.insert(RATELIMIT_POLICY, policy);
            }
            buf.clear();
            for (i, s) in limits().enumerate() {
                if i > 0 {
                    buf.push_str(", ");
                }
                sf_string(buf, s.name());
                buf.push_str(";r=");
                push_u64(buf, u64::from(s.remaining()));
                buf.push_str(";t=");
                push_u64(buf, retry_after_secs(s.reset()));
            }
            insert(headers, RATELIMIT, buf);
        }
        if self.openai {
            for s in limits() {
                let (slot, [limit, remaining, reset]) = match s.name() {
                    // Constants, so that the names are checked when compiling, not on every
                    // call.
                    "requests" => (Some(0), OPENAI_REQUESTS),
                    "tokens" => (Some(1), OPENAI_TOKENS),
                    other => match openai_names(other) {
                        Some(names) => (None, names),
                        None => continue,
                    },
                };
                let value = match slot.map(|i| &mut scratch.limits[i]) {
                    Some(Some((n, value))) if *n == s.limit() => value.clone(),
                    Some(cached) => {
                        let value = decimal(buf, s.limit());
                        *cached = Some((s.limit(), value.clone()));
                        value
                    }
                    None => decimal(buf, s.limit()),
                };
                headers.insert(limit, value);
                headers.insert(remaining, decimal(buf, s.remaining()));
                buf.clear();
                write_openai_duration(buf, s.reset());
                insert(headers, reset, buf);
            }
        }
    }
}

/// A buffer for the fields, and the values that repeat from call to call, per thread.
struct Scratch {
    buf: String,
    /// The last `RateLimit-Policy` value, with the text it was made from.
    policy: Option<(String, HeaderValue)>,
    /// The last `x-ratelimit-limit-requests` and `x-ratelimit-limit-tokens` values.
    limits: [Option<(u32, HeaderValue)>; 2],
}

impl Scratch {
    const fn new() -> Self {
        Self {
            buf: String::new(),
            policy: None,
            limits: [None, None],
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

const OPENAI_REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const OPENAI_TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// `x-ratelimit-{limit,remaining,reset}-<name>` for a name other than `requests` and
/// `tokens` (whose names are constants); `None` for a name that is not a valid header name.
fn openai_names(name: &str) -> Option<[HeaderName; 3]> {
    let build = |what: &str| {
        let mut field = String::with_capacity(24 + name.len());
        field.push_str("x-ratelimit-");
        field.push_str(what);
        field.push('-');
        field.push_str(name);
        HeaderName::from_bytes(field.as_bytes()).ok()
    };
    Some([build("limit")?, build("remaining")?, build("reset")?])
}

fn sf_string(out: &mut String, name: &str) {
    out.push('"');
    if name.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in name.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    } else {
        out.push_str(name);
    }
    out.push('"');
}

/// `n` as a header value: one allocation of its digits (`HeaderValue::from(n)` takes two).
fn decimal(buf: &mut String, n: u32) -> HeaderValue {
    buf.clear();
    push_u64(buf, u64::from(n));
    HeaderValue::from_str(buf).unwrap_or_else(|_| HeaderValue::from(n))
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Names are printable ASCII (checked when the limiter is built), so this always succeeds.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
