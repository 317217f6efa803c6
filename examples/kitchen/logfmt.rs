//! The kitchen's log line format: the shape of tracing-subscriber's default (`Full`) format,
//! written without its formatting machinery.
//!
//! ```text
//! 2026-11-22T07:05:30.937305Z  INFO request{id=2 route=chat method=POST}: kitchen::routes: request done status=200 latency_us=4364 tokens=64
//! ```
//!
//! The default format costs about 16,000 instructions for the request span and its one line
//! (measured with callgrind on the kitchen: each field name goes through nu-ansi-term's
//! `Display` even with colours off, every string through `Debug`'s escaper, every integer
//! and the timestamp through `core::fmt`). Here integers and the timestamp are written as
//! digits by hand, and a string is written bare unless it needs quotes (empty, or holding a
//! space, a quote, `=`, a backslash or a control character), then as `Debug` writes it. What
//! the fields hold is unchanged; only colours are gone.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: timestamp, level, the span scope with its fields, target, fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Line;

/// The field format, for events and for spans.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fields;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut stamp = [0_u8; 27];
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        rfc3339_micros(
            since_epoch.as_secs(),
            since_epoch.subsec_micros(),
            &mut stamp,
        );
        // Only ASCII digits and separators were written.
        writer.write_str(std::str::from_utf8(&stamp).map_err(|_| fmt::Error)?)?;
        let meta = event.metadata();
        writer.write_str(level(*meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// The level between the timestamp and the scope, padded as the default format pads it.
fn level(level: Level) -> &'static str {
    match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Starts a field: the separator, then `name=` (nothing for the message).
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !self.first {
            self.writer.write_char(' ')?;
        }
        self.first = false;
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }

    fn integer(&mut self, field: &Field, negative: bool, value: u64) {
        if self.result.is_err() {
            return;
        }
        self.result = self.name(field).and_then(|()| {
            if negative {
                self.writer.write_char('-')?;
            }
            let mut digits = [0_u8; 20];
            self.writer.write_str(decimal(value, &mut digits))
        });
    }
}

impl Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, false, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value < 0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = self.name(field).and_then(|()| {
            if field.name() == "message" || is_bare(value) {
                self.writer.write_str(value)
            } else {
                write!(self.writer, "{value:?}")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// Whether a string value can go out without quotes and still be read back as one value.
fn is_bare(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'))
}

/// `value` in decimal, written into the end of `digits`.
pub(crate) fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&digits[at..]).unwrap_or("")
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a time since the Unix epoch, in UTC (the proleptic
/// Gregorian calendar; days to a civil date as in Howard Hinnant's `civil_from_days`).
fn rfc3339_micros(secs: u64, micros: u32, out: &mut [u8; 27]) {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Shifted to 0000-03-01, so that the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);

    let mut put = |at: usize, width: usize, mut value: u64| {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, u64::from(micros));
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = separator;
    }
    out[26] = b'Z';
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    fn stamp(secs: u64, micros: u32) -> String {
        let mut out = [0_u8; 27];
        rfc3339_micros(secs, micros, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn timestamps_match_the_calendar() {
        // Checked against `date -u -d @SECS +%FT%TZ`.
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(stamp(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(stamp(1_763_790_330, 937_305), "2025-11-22T05:45:30.937305Z");
        assert_eq!(stamp(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
        // Every day of a leap and a common year, against a plain day-by-day count.
        let mut secs = 946_684_800; // 2000-01-01
        for year in [2000_u64, 2001] {
            let leap = year == 2000;
            let lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (month, &len) in lengths.iter().enumerate() {
                for day in 1..=len {
                    let expected = format!("{year}-{:02}-{day:02}T00:00:00.000000Z", month + 1);
                    assert_eq!(stamp(secs, 0), expected);
                    secs += 86_400;
                }
            }
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn a_line_has_the_default_shape_with_values_quoted_only_when_needed() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .event_format(Line)
            .fmt_fields(Fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = 7_u64, route = "chat", method = %"POST");
            tracing::info!(
                parent: &span,
                status = 200_u16,
                delta = -3_i64,
                ok = true,
                name = "two words",
                empty = "",
                quoted = "a\"b",
                debug = ?Some(1),
                "request done"
            );
            tracing::warn!("no span");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        // 2026-11-22T07:05:30.937305Z, then the rest.
        let (stamp, rest) = lines[0].split_at(27);
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        assert_eq!(
            rest,
            "  INFO request{id=7 route=chat method=POST}: kitchen::logfmt::tests: request done \
             status=200 delta=-3 ok=true name=\"two words\" empty=\"\" quoted=\"a\\\"b\" \
             debug=Some(1)"
                .replace("kitchen::logfmt::tests", module_path!())
        );
        assert_eq!(
            &lines[1][27..],
            format!("  WARN {}: no span", module_path!())
        );
    }
}
