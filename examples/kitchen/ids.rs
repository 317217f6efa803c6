//! Ids: the request id every answer carries, and the random bits of the mock's completion ids.
//!
//! A request's id is the client's `x-request-id` when it is a fit one, else 128 random bits:
//! never a counter, which would start again at each restart and collide across replicas. The
//! answer carries it back in `x-request-id`, the request's log line prints it, and an upstream
//! gets it in `x-request-id` too, so one id follows a request through every hop.

use std::fmt;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The header that carries a request's id, both ways.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// The longest id taken from a client.
    pub(crate) const MAX_LEN: usize = 128;

    /// The client's `x-request-id` if it has one of 1 to [`MAX_LEN`](Self::MAX_LEN) visible
    /// ASCII characters, else a new random one.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        headers
            .get(&REQUEST_ID)
            .filter(|id| {
                let id = id.as_bytes();
                (1..=Self::MAX_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
            })
            .map_or_else(Self::random, |id| Self(id.clone()))
    }

    /// 128 random bits, in hex.
    pub(crate) fn random() -> Self {
        Self::from_text(&format!("{:032x}", random_bits()))
    }

    /// `{self}-{n}`: the id of the `n`th of several answers to one request (the generations of
    /// a WebSocket).
    pub(crate) fn nth(&self, n: u64) -> Self {
        Self::from_text(&format!("{self}-{n}"))
    }

    /// The id as a header value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        // Only visible ASCII gets in (see `of` and `from_text`).
        self.0.to_str().unwrap_or("invalid")
    }

    /// The id of text made of visible ASCII (hex digits, a client's id, dashes).
    fn from_text(text: &str) -> Self {
        // Visible ASCII is always a valid header value; the fallback is never taken.
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 128 bits from the operating system's random generator.
///
/// Should the generator fail (on Linux it cannot, once the system has booted), the bits come
/// from the standard library's randomly keyed hasher over the clock and a counter: still unique,
/// no longer unguessable. Ids need the former; nothing here relies on the latter.
pub(crate) fn random_bits() -> u128 {
    let mut bits = [0_u8; 16];
    if getrandom::fill(&mut bits).is_ok() {
        return u128::from_be_bytes(bits);
    }
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let keyed = std::collections::hash_map::RandomState::new();
    let high = keyed.hash_one((now, count, 0_u8));
    let low = keyed.hash_one((now, count, 1_u8));
    (u128::from(high) << 64) | u128::from(low)
}
