//! The incremental decoder: WHATWG's event-stream interpretation, byte by byte.
//!
//! # How it reads
//!
//! Bytes are appended to one `BytesMut`. A *scan position* marks how far it has been searched
//! for a line end; a search resumes there, so every byte is looked at once, however the input is
//! chunked (a 16 MiB line fed one byte at a time is still linear). Complete lines are interpreted
//! in place and consumed by moving a start index; the value of a `data:` or `event:` line is
//! split off the front of the buffer and becomes the event's text without a copy (a `ByteString`
//! sharing the buffer's allocation). When a [`Decoder::feed`] finds no room left, the consumed
//! prefix is given back to the `BytesMut`, which moves the unconsumed rest to the front of its
//! allocation only if the consumed prefix is at least as long as the rest, and otherwise grows by
//! doubling, so moving bytes costs amortized O(1) per byte; when handed-out events still share
//! the allocation, it starts a new one (of at least 8 KiB) instead.
//!
//! # Why shared slices
//!
//! Nearly every event of an LLM stream is one `data:` line and a blank line. Its data is then a
//! slice of the input: no allocation and no copy per event (a reference count instead), one
//! UTF-8 check of the slice, and a gateway forwards the same bytes
//! ([`DecodedEvent::data_bytes`]). Only data of several lines (joined with LF) or with invalid
//! UTF-8 (replaced) is copied into a buffer of its own. The searcher for line ends is built once
//! per decoder.
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
//! - `start <= scan <= buf.len()`; `buf[start..scan]` holds no CR or LF; `buf[..start]` is
//!   consumed.
//! - No handed-out event shares a byte of `buf`: text is split off its front first, so `buf`
//!   may be cleared and written over.
//! - `skip_lf` is set only right after a line that ended with a CR at the end of the buffer: a
//!   LF arriving next belongs to that CRLF and is dropped.
//! - While `skipping`, nothing is kept of the lines read: the oversized event is dropped up to
//!   its blank line.

mod stream;

pub use self::stream::EventStream;

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::EventTooLarge;

/// The default maximum event size of a [`Decoder`]: 4 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The room made for input at the first chunk; the buffer grows as needed.
const INITIAL_BUFFER: usize = 8 * 1024;

/// An event read by a [`Decoder`].
///
/// Created only for events with data, as a browser's `EventSource` dispatches them.
///
/// The data of an event with one `data:` line (and its event type) is not copied: it is a slice
/// of the decoder's input buffer, shared by reference count. Holding the event holds that
/// buffer's allocation (the input read with it, up to the decoder's buffer size); to keep data
/// long without it, copy it (`data().to_owned()`, `Bytes::copy_from_slice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedEvent {
    /// `None` for the default, `message`.
    event: Option<ByteString>,
    data: ByteString,
    id: Option<Arc<str>>,
    retry: Option<Duration>,
}

impl DecodedEvent {
    /// The event type; `message` when the event had none (or an empty one).
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// The data: the event's `data:` lines joined with LF.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The data as bytes (UTF-8, the same as [`data`](Self::data)), for forwarding without a
    /// copy: cloning the `Bytes` is a reference count increment.
    ///
    /// # Examples
    ///
    /// A gateway hands an upstream's chunk on (to a channel, to another connection) without
    /// copying it:
    ///
    /// ```
    /// use brigade_sse::Decoder;
    /// use bytes::Bytes;
    ///
    /// let mut decoder = Decoder::new();
    /// decoder.feed(b"data: {\"content\":\"hi\"}\n\n");
    /// let event = decoder.next_event()?.unwrap();
    /// let chunk: Bytes = event.data_bytes().clone();
    /// assert_eq!(chunk, &b"{\"content\":\"hi\"}"[..]);
    /// # Ok::<(), brigade_sse::EventTooLarge>(())
    /// ```
    pub fn data_bytes(&self) -> &Bytes {
        self.data.as_bytes()
    }

    /// Takes the data out, as [`data_bytes`](Self::data_bytes) without the reference count
    /// increment.
    pub fn into_data_bytes(self) -> Bytes {
        self.data.into_bytes()
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
    /// The input; `buf[..start]` is consumed.
    buf: BytesMut,
    /// Start of the unconsumed bytes: the line being read.
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
    line_ends: LineEnds,

    data: Data,
    /// The event type; `None` when unset or empty.
    event: Option<ByteString>,
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
            buf: BytesMut::new(),
            start: 0,
            scan: 0,
            skip_lf: false,
            at_stream_start: true,
            skipping: false,
            dropped_partial: false,
            max_event_size,
            line_ends: LineEnds::new(),
            data: Data::None,
            event: None,
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
    ///
    /// The chunk is copied into the decoder's buffer, whose allocation the events read from it
    /// share (see [`DecodedEvent`]).
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if self.buf.capacity() == 0 {
            // The first chunk: room for several. While handed-out events hold an allocation,
            // `BytesMut` starts new ones of this size, not one per chunk.
            self.buf = BytesMut::with_capacity(chunk.len().max(INITIAL_BUFFER));
        } else if self.start == self.buf.len() {
            // Everything is consumed: write over it.
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        } else if self.buf.capacity() - self.buf.len() < chunk.len() {
            // Out of room: give the consumed prefix back first. `BytesMut` then moves the
            // unconsumed bytes to the front only if the consumed prefix is at least as long as
            // them, and otherwise grows by doubling: amortized O(1) per byte.
            self.buf.advance(self.start);
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
                Some(_) => self.line_ends.find(rest),
                None => None,
            };
            let Some(offset) = found else {
                self.scan = self.buf.len();
                return self.check_partial_line();
            };
            // The line is `buf[line_start..end]`.
            let end = self.scan + offset;
            let mut line_start = self.start;
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

            if self.at_stream_start {
                self.at_stream_start = false;
                if self.buf[line_start..end].starts_with(BOM) {
                    line_start += BOM.len();
                }
            }
            if line_start == end {
                if let Some(event) = self.dispatch() {
                    return Ok(Some(event));
                }
                continue;
            }
            if end - line_start + self.held() > self.max_event_size {
                self.drop_event(false);
                return Err(EventTooLarge::new(self.max_event_size));
            }
            self.interpret(line_start..end);
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
            || !matches!(self.data, Data::None)
            || self.event.is_some()
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
        // A data line counts with its LF, as the specification's data buffer holds it.
        let data = match &self.data {
            Data::None => 0,
            Data::One(line) => line.len() + 1,
            Data::Joined(lines) => lines.len() + 1,
        };
        data + self.event.as_ref().map_or(0, |event| event.len())
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
        self.data = Data::None;
        self.event = None;
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
        let data = match std::mem::replace(&mut self.data, Data::None) {
            Data::None => {
                self.event = None;
                return None;
            }
            Data::One(line) => line,
            Data::Joined(lines) => ByteString::from(lines),
        };
        Some(DecodedEvent {
            event: self.event.take(),
            data,
            id: self.last_event_id.clone(),
            retry,
        })
    }

    /// Interprets the non-empty line `buf[line]`.
    fn interpret(&mut self, line: Range<usize>) {
        let (field, value) = split_field(&self.buf[line.clone()]);
        // The value's range in `buf`.
        let value = line.start + value.start..line.start + value.end;
        match field {
            Field::Data => match &mut self.data {
                Data::None => self.data = Data::One(self.split_text(value)),
                Data::One(first) => {
                    let more = text(&self.buf[value]);
                    let mut lines = String::with_capacity(first.len() + 1 + more.len());
                    lines.push_str(first);
                    lines.push('\n');
                    lines.push_str(&more);
                    self.data = Data::Joined(lines);
                }
                Data::Joined(lines) => {
                    lines.push('\n');
                    lines.push_str(&text(&self.buf[value]));
                }
            },
            Field::Event if value.is_empty() => self.event = None,
            Field::Event => self.event = Some(self.split_text(value)),
            // An id with NUL is ignored as a whole.
            Field::Id if memchr::memchr(b'\0', &self.buf[value.clone()]).is_none() => {
                let id = text(&self.buf[value]);
                if *self.id_buffer != *id {
                    self.id_buffer.clear();
                    self.id_buffer.push_str(&id);
                }
                self.id_changed = true;
            }
            Field::Retry => {
                if let Some(millis) = parse_retry(&self.buf[value]) {
                    let retry = Duration::from_millis(millis);
                    self.event_retry = Some(retry);
                    self.retry = Some(retry);
                }
            }
            Field::Id | Field::Other => {}
        }
    }

    /// The text of `buf[value]`, split off the front of the buffer (with the consumed bytes
    /// before it) so that it shares the buffer's allocation.
    fn split_text(&mut self, value: Range<usize>) -> ByteString {
        let mut text = self.buf.split_to(value.end).freeze();
        text.advance(value.start);
        self.start -= value.end;
        self.scan -= value.end;
        shared_text(text)
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

/// Finds the first CR or LF: memchr's AVX2 searcher where the CPU has one, built once per
/// decoder. (`memchr::memchr2` builds one per call, which on a line of a few dozen bytes costs
/// about as much as the search.)
#[derive(Clone, Copy)]
struct LineEnds {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
}

impl LineEnds {
    fn new() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(b'\n', b'\r'),
        }
    }

    #[inline]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = &self.avx2 {
            return avx2.find(haystack);
        }
        memchr::memchr2(b'\n', b'\r', haystack)
    }
}

/// The data of the event being read.
enum Data {
    /// No `data:` line yet: a blank line dispatches nothing.
    None,
    /// One line, the common case: its value, sharing the input buffer.
    One(ByteString),
    /// Several lines, joined with LF.
    Joined(String),
}

/// The fields a line can set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
    /// A comment or an unknown field: ignored.
    Other,
}

/// Splits a non-empty line (no line end) into its field and the range of its value: after the
/// first colon and its one following space, if any; a line without a colon is a field with an
/// empty value.
fn split_field(line: &[u8]) -> (Field, Range<usize>) {
    // The line of nearly every event, recognized without a search.
    if let Some(value) = line.strip_prefix(b"data:") {
        let start = if value.first() == Some(&b' ') { 6 } else { 5 };
        return (Field::Data, start..line.len());
    }
    let (name, value) = match memchr::memchr(b':', line) {
        Some(0) => return (Field::Other, 0..0), // a comment
        Some(colon) => {
            let start = if line.get(colon + 1) == Some(&b' ') {
                colon + 2
            } else {
                colon + 1
            };
            (&line[..colon], start..line.len())
        }
        None => (line, line.len()..line.len()),
    };
    let field = match name {
        b"data" => Field::Data,
        b"event" => Field::Event,
        b"id" => Field::Id,
        b"retry" => Field::Retry,
        _ => Field::Other,
    };
    (field, value)
}

/// The text of `bytes`, sharing them when they are valid UTF-8 (nearly always), otherwise a
/// copy with invalid sequences replaced with U+FFFD.
fn shared_text(bytes: Bytes) -> ByteString {
    // `ByteString::try_from` validates (ASCII by a fast scan) and takes the bytes, but drops them
    // when they are not UTF-8: ASCII cannot fail, anything else keeps a second handle (a
    // reference count) for the replacement.
    let spare = (!bytes.is_ascii()).then(|| bytes.clone());
    match ByteString::try_from(bytes) {
        Ok(text) => text,
        Err(_) => {
            let spare = spare.unwrap_or_default();
            ByteString::from(String::from_utf8_lossy(&spare).into_owned())
        }
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
        // 250 KB through a buffer that never needs more than its initial size.
        let mut decoder = Decoder::new();
        for _ in 0..10_000 {
            decoder.feed(b"data: x\n\ndata: partial");
            while decoder.next_event().unwrap().is_some() {}
            decoder.feed(b"\n\n");
            while decoder.next_event().unwrap().is_some() {}
        }
        assert!(
            decoder.buf.capacity() <= INITIAL_BUFFER,
            "buffer grew to {}",
            decoder.buf.capacity()
        );
    }
}
