//! The `Retry-After` header (RFC 9110, section 10.2.3).

use std::time::{Duration, SystemTime};

/// A `Retry-After` value: how long a server asks its client to wait before trying again
/// (RFC 9110, section 10.2.3), as a number of seconds or as a date.
///
/// [`parse`](Self::parse) reads a header value; [`delay`](Self::delay) turns it into a wait,
/// for an [`Action::Throttled`](crate::Action::Throttled). A date needs the current time to
/// become a wait: [`delay`](Self::delay) reads the system clock, [`delay_from`](Self::delay_from)
/// takes the time as an argument (for tests, or to read the clock once for many values).
///
/// # Examples
///
/// A classifier for `http` responses that honours the header on 429 and 503 (with the `tower`
/// feature, the middleware's default classifier, `tower::RetryOnErrorOrThrottle`, does this):
///
/// ```
/// use brigade_retry::{Action, RetryAfter};
/// use http::{Response, StatusCode, header::RETRY_AFTER};
///
/// fn classify<E>(outcome: &Result<Response<()>, E>) -> Action {
///     match outcome {
///         Ok(r) if matches!(r.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
///             match r.headers().get(RETRY_AFTER).and_then(RetryAfter::parse) {
///                 Some(hint) => Action::Throttled(hint.delay()),
///                 None => Action::Retry,
///             }
///         }
///         Ok(_) => Action::Stop,
///         Err(_) => Action::Retry,
///     }
/// }
///
/// let busy = Response::builder().status(429).header(RETRY_AFTER, "2").body(()).unwrap();
/// assert_eq!(
///     classify::<()>(&Ok(busy)),
///     Action::Throttled(std::time::Duration::from_secs(2)),
/// );
/// ```
///
/// Both forms, with the time given:
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use brigade_retry::RetryAfter;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_717); // Sun, 06 Nov 1994 08:48:37 GMT
///
/// let seconds = RetryAfter::parse("120").unwrap();
/// assert_eq!(seconds, RetryAfter::Delay(Duration::from_secs(120)));
/// assert_eq!(seconds.delay_from(now), Duration::from_secs(120));
///
/// let date = RetryAfter::parse("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
/// assert_eq!(date.delay_from(now), Duration::from_secs(60));
/// // A date in the past asks for no wait.
/// assert_eq!(date.delay_from(now + Duration::from_secs(3600)), Duration::ZERO);
///
/// assert_eq!(RetryAfter::parse("soon"), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// `delta-seconds`: wait this long. A number of seconds too large for a `u64` is taken as
    /// `u64::MAX` seconds.
    Delay(Duration),
    /// An `HTTP-date`: wait until then.
    Date(SystemTime),
}

impl RetryAfter {
    /// Parses a `Retry-After` header value: `delta-seconds` (one or more ASCII digits) or an
    /// `HTTP-date` in any of the three formats RFC 9110 requires a recipient to accept
    /// (IMF-fixdate, RFC 850, asctime). Leading and trailing ASCII whitespace is ignored.
    ///
    /// Takes anything that is bytes: a `&str`, a `&[u8]`, or an `&http::HeaderValue`.
    ///
    /// Returns `None` for anything else (a sign, a fraction, an empty value, an invalid date):
    /// a value that cannot be read is no hint. Never panics.
    pub fn parse(value: impl AsRef<[u8]>) -> Option<Self> {
        let value = value.as_ref().trim_ascii();
        if value.is_empty() {
            return None;
        }
        if value.iter().all(u8::is_ascii_digit) {
            let seconds = value.iter().fold(0_u64, |n, digit| {
                n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
            });
            return Some(Self::Delay(Duration::from_secs(seconds)));
        }
        let text = std::str::from_utf8(value).ok()?;
        httpdate::parse_http_date(text).ok().map(Self::Date)
    }

    /// How long to wait, counted from `now`: the delay itself, or the time from `now` to the
    /// date (zero when the date is not after `now`).
    pub fn delay_from(self, now: SystemTime) -> Duration {
        match self {
            Self::Delay(delay) => delay,
            Self::Date(date) => date.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }

    /// How long to wait from now: [`delay_from`](Self::delay_from) with the system clock's
    /// time (an HTTP-date is wall-clock time, so tokio's paused clock does not apply).
    pub fn delay(self) -> Duration {
        match self {
            Self::Delay(delay) => delay,
            Self::Date(_) => self.delay_from(SystemTime::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const EPOCH: SystemTime = SystemTime::UNIX_EPOCH;
    /// Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
    const EXAMPLE: Duration = Duration::from_secs(784_111_777);

    #[test]
    fn reads_delta_seconds() {
        for (value, seconds) in [("0", 0), ("120", 120), ("007", 7), (" 5\t", 5)] {
            assert_eq!(
                RetryAfter::parse(value),
                Some(RetryAfter::Delay(Duration::from_secs(seconds))),
                "{value:?}"
            );
        }
    }

    #[test]
    fn reads_the_three_date_formats() {
        for value in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                RetryAfter::parse(value),
                Some(RetryAfter::Date(EPOCH + EXAMPLE)),
                "{value:?}"
            );
        }
    }

    #[test]
    fn rejects_what_is_neither() {
        for value in [
            "",
            " ",
            "-1",
            "+1",
            "1.5",
            "1 2",
            "0x10",
            "١٢",
            "soon",
            "Mon, 06 Nov 1994 08:49:37 GMT", // the wrong weekday
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
        ] {
            assert_eq!(RetryAfter::parse(value), None, "{value:?}");
        }
        assert_eq!(RetryAfter::parse([0xff, b'1']), None);
    }

    #[test]
    fn a_date_is_counted_from_now() {
        let date = RetryAfter::Date(EPOCH + EXAMPLE);
        let now = EPOCH + EXAMPLE - Duration::from_secs(90);
        assert_eq!(date.delay_from(now), Duration::from_secs(90));
        assert_eq!(date.delay_from(EPOCH + EXAMPLE), Duration::ZERO);
        assert_eq!(
            date.delay_from(now + Duration::from_secs(3600)),
            Duration::ZERO
        );
        // The system clock is long past 1994.
        assert_eq!(date.delay(), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn any_u64_of_seconds_round_trips(seconds: u64, zeros in 0_usize..3) {
            let value = format!("{}{seconds}", "0".repeat(zeros));
            prop_assert_eq!(
                RetryAfter::parse(&value),
                Some(RetryAfter::Delay(Duration::from_secs(seconds)))
            );
        }

        #[test]
        fn more_seconds_than_a_u64_saturate(digits in "[1-9][0-9]{20,60}") {
            prop_assert_eq!(
                RetryAfter::parse(&digits),
                Some(RetryAfter::Delay(Duration::from_secs(u64::MAX)))
            );
        }

        #[test]
        fn a_date_before_or_after_now(offset in -4_000_000_000_i64..4_000_000_000) {
            // Whole seconds between 1970 and 2100: what an IMF-fixdate can say.
            let date = EPOCH + Duration::from_secs(4_102_444_800 / 2);
            let now = if offset >= 0 {
                date.checked_sub(Duration::from_secs(offset.unsigned_abs()))
            } else {
                date.checked_add(Duration::from_secs(offset.unsigned_abs()))
            };
            let Some(now) = now else { return Ok(()) };
            let value = httpdate::fmt_http_date(date);
            let parsed = RetryAfter::parse(&value).unwrap();
            prop_assert_eq!(parsed, RetryAfter::Date(date));
            let expected = Duration::from_secs(offset.max(0).unsigned_abs());
            prop_assert_eq!(parsed.delay_from(now), expected);
        }

        #[test]
        fn never_panics(value in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = RetryAfter::parse(&value);
        }

        #[test]
        fn never_panics_on_date_like_text(value in "[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT") {
            if let Some(parsed) = RetryAfter::parse(&value) {
                let _ = parsed.delay_from(EPOCH);
            }
        }
    }
}
