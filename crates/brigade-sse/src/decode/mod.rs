//! The incremental decoder: WHATWG's event-stream interpretation, byte by byte.
//!
//! # How it reads
//!
//! Bytes are appended to one buffer. A *scan position* marks how far the buffer has been
//! searched for a line end; a search resumes there, so every byte is looked at once, however the
//! input is chunked (a 16 MiB line fed one byte at a time is still linear). Complete lines are
//! interpreted in place and consumed; the consumed prefix is dropped lazily, only once it is at
//! least as long as what is left, so moving bytes costs amortized O(1) per byte.
//!
//! # Why per line
//!
//! The specification decodes the whole stream as UTF-8 and then splits it into lines. CR and LF
//! are ASCII and never part of a multi-byte sequence, so splitting the bytes first and decoding
//! each complete line with replacement gives the same text: a sequence split across chunks is
//! whole by the time its line ends, and an invalid one is replaced exactly as the stream-level
//! decoder would (both replace each maximal invalid subpart with one U+FFFD).
//!
//! # Invariants
//!
//! - `start <= scan <= buf.len()`; `buf[start..scan]` holds no CR or LF.
//! - `skip_lf` is set only right after a line that ended with a CR at the end of the buffer: a
//!   LF arriving next belongs to that CRLF and is dropped.
//! - While `skipping`, nothing is kept of the lines read: the oversized event is dropped up to
//!   its blank line.

mod stream;

pub use self::stream::EventStream;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::EventTooLarge;

/// The default maximum event size of a [`Decoder`]: 4 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An event read by a [`Decoder`].
///
/// Created only for events with data, as a browser's `EventSource` dispatches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedEvent {
    event: String,
    data: String,
    id: Option<Arc<str>>,
    retry: Option<Duration>,
}

impl DecodedEvent {
    /// The event type; `message` when the event had none (or an empty one).
    pub fn event_type(&self) -> &str {
        if self.event.is_empty() {
            "message"
        } else {
            &self.event
        }
    }

    /// The data: the event's `data:` lines joined with LF.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Takes the data out.
    pub fn into_data(self) -> String {
        self.data
    }

    /// The stream's last event id when this event was dispatched: set by this event's `id:`
    /// line or kept from an earlier event; `None` if there is none (or it was reset by an empty
    /// `id:`).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection time set by a valid `retry:` line of this event, if it had one.
    ///
    /// A `retry:` in lines that dispatch nothing is not lost: see [`Decoder::retry`].
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }
}

/// An incremental, linear-time decoder for `text/event-stream`.
///
/// [`feed`](Self::feed) it byte chunks of any size and take events with
/// [`next_event`](Self::next_event). The events are the same however the bytes are chunked,
/// including a CRLF, a BOM or a UTF-8 sequence split between chunks. A line ended by a lone CR
/// is interpreted at once, without waiting for the next byte.
///
/// Every rule of the WHATWG specification is followed: one leading BOM is stripped; CR, LF and
/// CRLF end lines; lines starting with `:` are comments; a line without a colon is a field with
/// an empty value; exactly one space after the colon is stripped; unknown fields are ignored; an
/// `id` containing NUL is ignored; the id is committed at each blank line and kept for the
/// following events (an empty `id` resets it); `retry` is accepted only as ASCII digits; the
/// event type is reset after each event; an event without data is not dispatched; invalid UTF-8
/// is replaced with U+FFFD.
///
/// # Examples
///
/// ```
/// use brigade_sse::Decoder;
///
/// let mut decoder = Decoder::new();
/// decoder.feed(b"id: 1\nevent: delta\ndata: hel");
/// assert!(decoder.next_event()?.is_none()); // not complete yet
///
/// decoder.feed(b"lo\r\n\r\ndata: again\n\n");
/// let first = decoder.next_event()?.unwrap();
/// assert_eq!((first.event_type(), first.data(), first.id()), ("delta", "hello", Some("1")));
///
/// let second = decoder.next_event()?.unwrap();
/// assert_eq!((second.event_type(), second.data(), second.id()), ("message", "again", Some("1")));
/// assert!(decoder.next_event()?.is_none());
/// # Ok::<(), brigade_sse::EventTooLarge>(())
/// ```
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    start: usize,
    /// Bytes before this have been searched for a line end.
    scan: usize,
    /// A line ended with CR at the end of the buffer: a LF coming next is part of it.
    skip_lf: bool,
    /// No line has been interpreted since the stream started: a BOM may lead the next line.
    at_stream_start: bool,
    /// Dropping an oversized event up to its blank line.
    skipping: bool,
    /// While skipping: bytes of the current line were dropped, so it is not blank.
    dropped_partial: bool,
    max_event_size: usize,

    data: String,
    event: String,
    id_buffer: String,
    id_changed: bool,
    event_retry: Option<Duration>,

    last_event_id: Option<Arc<str>>,
    retry: Option<Duration>,
}

impl Decoder {
    /// A decoder with the [default maximum event size](DEFAULT_MAX_EVENT_SIZE) of 4 MiB.
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A decoder that refuses events larger than `max_event_size` bytes.
    ///
    /// An event's size is what the decoder must hold for it: its data, its event type and the
    /// line being read, line ends excluded. Memory stays within a small multiple of the limit
    /// whatever the peer sends; an event over it is reported as [`EventTooLarge`] and dropped
    /// up to its blank line, its `id:` included (the last event id stays that of the event
    /// before, so a client reconnecting with it asks for the dropped event again).
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Decoder;
    ///
    /// let mut decoder = Decoder::with_max_event_size(16);
    /// decoder.feed(b"data: this line is far too long\n\ndata: ok\n\n");
    /// assert_eq!(decoder.next_event().unwrap_err().limit(), 16);
    /// assert_eq!(decoder.next_event()?.unwrap().data(), "ok");
    /// # Ok::<(), brigade_sse::EventTooLarge>(())
    /// ```
    pub fn with_max_event_size(max_event_size: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scan: 0,
            skip_lf: false,
            at_stream_start: true,
            skipping: false,
            dropped_partial: false,
            max_event_size,
            data: String::new(),
            event: String::new(),
            id_buffer: String::new(),
            id_changed: false,
            event_retry: None,
            last_event_id: None,
            retry: None,
        }
    }

    /// The maximum event size, in bytes.
    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// Appends a chunk of the stream. Nothing is interpreted until
    /// [`next_event`](Self::next_event).
    ///
    /// Call `next_event` until it returns `Ok(None)` after each chunk: the maximum event size
    /// bounds what the decoder keeps, not bytes fed and never read.
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        } else if self.start > 0 && self.start >= self.buf.len() - self.start {
            // The consumed prefix is at least as long as what is left: moving the rest is paid
            // for by the bytes consumed.
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event from the bytes fed so far, or `None` if more are needed.
    ///
    /// # Errors
    ///
    /// Returns [`EventTooLarge`] once for an event beyond the
    /// [maximum event size](Self::with_max_event_size). The event is dropped, and the next call
    /// goes on after it.
    pub fn next_event(&mut self) -> Result<Option<DecodedEvent>, EventTooLarge> {
        loop {
            if self.skip_lf && self.start < self.buf.len() {
                self.skip_lf = false;
                if self.buf[self.start] == b'\n' {
                    self.start += 1;
                    self.scan = self.start;
                }
            }
            let rest = &self.buf[self.scan..];
            // A blank line (the end of nearly every event) needs no search.
            let found = match rest.first() {
                Some(b'\n' | b'\r') => Some(0),
                Some(_) => memchr::memchr2(b'\n', b'\r', rest),
                None => None,
            };
            let Some(offset) = found else {
                self.scan = self.buf.len();
                return self.check_partial_line();
            };
            let end = self.scan + offset;
            let line_start = self.start;
            self.start = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => self.start += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.scan = self.start;

            if self.skipping {
                let blank = line_start == end && !self.dropped_partial;
                self.dropped_partial = false;
                if blank {
                    self.skipping = false;
                }
                continue;
            }

            let mut line = &self.buf[line_start..end];
            if self.at_stream_start {
                self.at_stream_start = false;
                line = line.strip_prefix(BOM).unwrap_or(line);
            }
            if line.is_empty() {
                if let Some(event) = self.dispatch() {
                    return Ok(Some(event));
                }
                continue;
            }
            if line.len() + self.held() > self.max_event_size {
                self.drop_event(false);
                return Err(EventTooLarge::new(self.max_event_size));
            }
            interpret(
                line,
                &mut Fields {
                    data: &mut self.data,
                    event: &mut self.event,
                    id_buffer: &mut self.id_buffer,
                    id_changed: &mut self.id_changed,
                    event_retry: &mut self.event_retry,
                    retry: &mut self.retry,
                },
            );
        }
    }

    /// Ends the stream: an unterminated event (and any partial line) is discarded, as the
    /// specification requires, and the decoder is ready for a new connection's stream (a BOM may
    /// lead it again). The last event id and the reconnection time are kept, as a browser keeps
    /// them across reconnects.
    ///
    /// Returns `true` if something was discarded: bytes of an unterminated line, or lines of an
    /// event that never got its blank line. A stream that ends cleanly returns `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Decoder;
    ///
    /// let mut decoder = Decoder::new();
    /// decoder.feed(b"data: complete\n\ndata: cut off\n");
    /// assert_eq!(decoder.next_event()?.unwrap().data(), "complete");
    /// assert!(decoder.next_event()?.is_none());
    /// assert!(decoder.finish()); // the second event never ended
    /// # Ok::<(), brigade_sse::EventTooLarge>(())
    /// ```
    pub fn finish(&mut self) -> bool {
        let discarded = self.start < self.buf.len()
            || !self.data.is_empty()
            || !self.event.is_empty()
            || self.id_changed
            || self.event_retry.is_some()
            || self.skipping;
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
        self.skip_lf = false;
        self.at_stream_start = true;
        self.drop_event(true);
        discarded
    }

    /// The last event id committed so far (at a blank line, whether or not an event was
    /// dispatched): what a client sends back as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Sets the last event id, as when resuming a stream read before.
    pub fn set_last_event_id(&mut self, id: Option<&str>) {
        let id = id.filter(|id| !id.is_empty());
        self.id_buffer.clear();
        self.id_buffer.push_str(id.unwrap_or(""));
        self.id_changed = false;
        self.last_event_id = id.map(Arc::from);
    }

    /// The latest reconnection time set by a valid `retry:` line, whether or not its event was
    /// dispatched.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The bytes held for the event being read (the line being read aside). Replacement
    /// characters can make this up to three times the input bytes it came from, so memory stays
    /// within a small multiple of the limit.
    fn held(&self) -> usize {
        self.data.len() + self.event.len()
    }

    fn check_partial_line(&mut self) -> Result<Option<DecodedEvent>, EventTooLarge> {
        let pending = &self.buf[self.start..];
        let mut partial = pending.len();
        if self.at_stream_start {
            // Count the line as it will be read: without a leading BOM (or what may become one).
            let n = partial.min(BOM.len());
            if pending[..n] == BOM[..n] {
                partial -= n;
            }
        }
        if self.skipping {
            if !pending.is_empty() {
                self.dropped_partial = true;
                self.start = self.buf.len();
                self.scan = self.start;
            }
            return Ok(None);
        }
        if partial > 0 && partial + self.held() > self.max_event_size {
            self.dropped_partial = true;
            self.start = self.buf.len();
            self.scan = self.start;
            self.at_stream_start = false;
            self.drop_event(false);
            return Err(EventTooLarge::new(self.max_event_size));
        }
        Ok(None)
    }

    /// Forgets the event being read. Unless `at_end`, the rest of it, up to its blank line, is
    /// skipped.
    fn drop_event(&mut self, at_end: bool) {
        self.skipping = !at_end;
        if at_end {
            self.dropped_partial = false;
        }
        self.data = String::new();
        self.event = String::new();
        self.event_retry = None;
        if self.id_changed {
            self.id_changed = false;
            self.id_buffer.clear();
            self.id_buffer
                .push_str(self.last_event_id.as_deref().unwrap_or(""));
        }
    }

    /// A blank line: commit the id, dispatch the event if it has data.
    fn dispatch(&mut self) -> Option<DecodedEvent> {
        if self.id_changed {
            self.id_changed = false;
            let same = self.last_event_id.as_deref().unwrap_or("") == self.id_buffer;
            if !same {
                self.last_event_id = if self.id_buffer.is_empty() {
                    None
                } else {
                    Some(Arc::from(self.id_buffer.as_str()))
                };
            }
        }
        let retry = self.event_retry.take();
        if self.data.is_empty() {
            self.event.clear();
            return None;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        Some(DecodedEvent {
            event: std::mem::take(&mut self.event),
            data: std::mem::take(&mut self.data),
            id: self.last_event_id.clone(),
            retry,
        })
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &(self.buf.len() - self.start))
            .field("max_event_size", &self.max_event_size)
            .field("last_event_id", &self.last_event_id)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The event-building state a line writes to.
struct Fields<'a> {
    data: &'a mut String,
    event: &'a mut String,
    id_buffer: &'a mut String,
    id_changed: &'a mut bool,
    event_retry: &'a mut Option<Duration>,
    retry: &'a mut Option<Duration>,
}

/// Interprets one non-empty line (no line end).
fn interpret(line: &[u8], fields: &mut Fields<'_>) {
    let (name, value) = match line.strip_prefix(b"data:") {
        // The line of nearly every event, recognized without a search.
        Some(value) => (&b"data"[..], value.strip_prefix(b" ").unwrap_or(value)),
        None => split_field(line),
    };
    match name {
        b"data" => {
            let value = text(value);
            if fields.data.capacity() == 0 {
                *fields.data = String::with_capacity(value.len() + 1);
            } else {
                fields.data.reserve(value.len() + 1);
            }
            fields.data.push_str(&value);
            fields.data.push('\n');
        }
        b"event" => {
            fields.event.clear();
            fields.event.push_str(&text(value));
        }
        // An id with NUL is ignored as a whole.
        b"id" if memchr::memchr(b'\0', value).is_none() => {
            let value = text(value);
            if *fields.id_buffer != *value {
                fields.id_buffer.clear();
                fields.id_buffer.push_str(&value);
            }
            *fields.id_changed = true;
        }
        b"retry" => {
            if let Some(millis) = parse_retry(value) {
                let retry = Duration::from_millis(millis);
                *fields.event_retry = Some(retry);
                *fields.retry = Some(retry);
            }
        }
        _ => {}
    }
}

/// Splits a line at its first colon into a field name and a value without its one leading space;
/// a line without a colon is a name with an empty value.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b':', line) {
        Some(0) => (&line[..0], &line[..0]), // a comment: an empty name, matching no field
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &b""[..]),
    }
}

/// The text of a value: valid UTF-8 as is, invalid sequences replaced with U+FFFD.
///
/// `str::from_utf8` first: it is several times faster than the lossy decoder on valid input,
/// which is nearly all input.
fn text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// ASCII digits only (at least one), saturating at `u64::MAX` milliseconds.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, digit| {
        n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rejects_everything_but_digits() {
        assert_eq!(parse_retry(b"1500"), Some(1500));
        assert_eq!(parse_retry(b""), None);
        assert_eq!(parse_retry(b"15s"), None);
        assert_eq!(parse_retry(b"-1"), None);
        assert_eq!(parse_retry(b" 1"), None);
        assert_eq!(parse_retry(b"99999999999999999999999"), Some(u64::MAX));
    }

    #[test]
    fn oversized_event_keeps_what_is_held_within_the_limit() {
        let mut decoder = Decoder::with_max_event_size(1024);
        let mut errors = 0;
        for round in 0..10_000 {
            // Invalid UTF-8 on data lines: held data is up to three times the bytes read. Then
            // a line without end, which is dropped as it comes.
            let piece: &[u8] = if round < 1000 {
                b"data: \xFF\xFF\n"
            } else {
                &[b'x'; 100]
            };
            decoder.feed(piece);
            while let Some(result) = decoder.next_event().transpose() {
                errors += usize::from(result.is_err());
            }
            assert!(decoder.buf.len() - decoder.start <= 1024, "round {round}");
            assert!(
                decoder.held() <= 3 * 1024,
                "round {round}: {}",
                decoder.held()
            );
        }
        assert_eq!(errors, 1, "one event, one error");
        assert!(
            decoder.skipping,
            "the oversized event is skipped up to its blank line"
        );
    }

    #[test]
    fn consumed_prefix_is_dropped_once_it_outweighs_the_rest() {
        let mut decoder = Decoder::new();
        for _ in 0..1000 {
            decoder.feed(b"data: x\n\ndata: partial");
            while decoder.next_event().unwrap().is_some() {}
            decoder.feed(b"\n\n");
            while decoder.next_event().unwrap().is_some() {}
        }
        assert!(
            decoder.buf.len() < 64,
            "buffer grew to {}",
            decoder.buf.len()
        );
    }
}
