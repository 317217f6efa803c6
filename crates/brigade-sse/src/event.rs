//! The event builder and the encoder.
//!
//! Encoding is written for the hot path of a token stream: [`Event::encode`] appends to the
//! caller's `BytesMut` (reserving once for the event's size), scans each text value once with
//! `memchr` for line breaks, and allocates nothing of its own. Values that could corrupt the stream
//! (a line break in an id or event type) are refused when the event is built, so encoding cannot
//! fail.

use std::borrow::Cow;
use std::ops::Deref;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use crate::error::{EventField, InvalidEvent};

/// One server-sent event, built with chained setters and written with [`encode`](Self::encode).
///
/// Text fields take anything that converts into `Cow<'static, str>`: a `&'static str` is used
/// in place, a `String` is moved in, neither is copied before encoding. Data may also be text
/// shared by reference count ([`shared_data`](Self::shared_data)).
///
/// What each setter writes:
///
/// | setter | on the wire |
/// | --- | --- |
/// | [`data`](Self::data), [`shared_data`](Self::shared_data) | one `data:` line per line of the text; every LF, CR and CRLF starts a new line |
/// | [`event`](Self::event) | `event: <type>` (fallible: no CR or LF) |
/// | [`id`](Self::id) | `id: <id>` (fallible: no NUL, CR or LF) |
/// | [`retry`](Self::retry) | `retry: <milliseconds>` |
/// | [`comment`](Self::comment) | one `:` line per line of the text |
///
/// An event ends with a blank line. A reader dispatches an event only if it has data: an event
/// with [`data("")`](Self::data) is dispatched with empty data, an event without `data` only
/// updates the reader's last event id or reconnection time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_sse::Event;
/// use bytes::BytesMut;
///
/// let event = Event::default()
///     .event("delta")?
///     .id("42")?
///     .retry(Duration::from_secs(3))
///     .data("two\nlines");
///
/// let mut buf = BytesMut::new();
/// event.encode(&mut buf);
/// assert_eq!(
///     &buf[..],
///     b"id: 42\nevent: delta\nretry: 3000\ndata: two\ndata: lines\n\n"
/// );
/// # Ok::<(), brigade_sse::InvalidEvent>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    comment: Option<Cow<'static, str>>,
    id: Option<Cow<'static, str>>,
    event: Option<Cow<'static, str>>,
    retry: Option<Duration>,
    data: Option<Text>,
}

/// An event's data: text owned or static, or text shared by reference count.
#[derive(Clone, Debug)]
enum Text {
    Cow(Cow<'static, str>),
    Shared(ByteString),
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Cow(text) => text,
            Self::Shared(text) => text,
        }
    }
}

/// The same text is the same data, however it is held.
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl Event {
    /// Sets the event's data, replacing any set before.
    ///
    /// Any text is accepted: each LF, CR and CRLF starts a new `data:` line, so a reader gets the
    /// text back with its line breaks as LF (the only line break an event stream can carry). Empty
    /// data is written as one empty `data:` line, which a reader dispatches; a trailing line break
    /// is written as a last empty `data:` line, so it survives.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let mut buf = BytesMut::new();
    /// Event::default().data("a\r\nb\n").encode(&mut buf);
    /// assert_eq!(&buf[..], b"data: a\ndata: b\ndata:\n\n");
    /// ```
    #[must_use]
    pub fn data(mut self, data: impl Into<Cow<'static, str>>) -> Self {
        self.data = Some(Text::Cow(data.into()));
        self
    }

    /// Sets the event's data to text shared by reference count, replacing any set before: it is
    /// written as [`data`](Self::data) writes text, and never copied before that.
    ///
    /// For a gateway, whose data already sits in a `Bytes` (an upstream's event from
    /// [`DecodedEvent::data_bytes`](crate::DecodedEvent::data_bytes), a chunk cut from a
    /// buffer): [`ByteString::try_from`] checks that the bytes are UTF-8 and takes them as they
    /// are, where `data(String)` would need them copied into a `String`.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::{ByteString, Decoder, Event};
    /// use bytes::BytesMut;
    ///
    /// let mut decoder = Decoder::new();
    /// decoder.feed(b"data: {\"content\":\"hi\"}\n\n");
    /// let upstream = decoder.next_event()?.unwrap();
    ///
    /// let text = ByteString::try_from(upstream.into_data_bytes()).expect("decoded data is UTF-8");
    /// let mut buf = BytesMut::new();
    /// Event::default().shared_data(text).encode(&mut buf);
    /// assert_eq!(&buf[..], b"data: {\"content\":\"hi\"}\n\n");
    /// # Ok::<(), brigade_sse::EventTooLarge>(())
    /// ```
    #[must_use]
    pub fn shared_data(mut self, data: ByteString) -> Self {
        self.data = Some(Text::Shared(data));
        self
    }

    /// Sets the event's data to the JSON serialization of `value`.
    ///
    /// Compact JSON never contains a raw line break, so this is always a single `data:` line.
    ///
    /// # Errors
    ///
    /// Returns `serde_json`'s error if `value` cannot be serialized (a map with non-string keys,
    /// or a failing `Serialize` implementation).
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let mut buf = BytesMut::new();
    /// Event::default().json_data(&serde_json::json!({"content": "hi"}))?.encode(&mut buf);
    /// assert_eq!(&buf[..], b"data: {\"content\":\"hi\"}\n\n");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn json_data<T>(mut self, value: &T) -> Result<Self, serde_json::Error>
    where
        T: serde::Serialize + ?Sized,
    {
        self.data = Some(Text::Cow(Cow::Owned(serde_json::to_string(value)?)));
        Ok(self)
    }

    /// Sets the event type (`event:`), which readers use to route the event; without one it is
    /// `message`.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidEvent`] if `event` contains a CR or LF, which would end the field early
    /// and let the rest be read as other fields.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    ///
    /// assert!(Event::default().event("delta").is_ok());
    /// assert!(Event::default().event("delta\rdata: forged").is_err());
    /// ```
    pub fn event(mut self, event: impl Into<Cow<'static, str>>) -> Result<Self, InvalidEvent> {
        let event = event.into();
        if let Some(position) = memchr::memchr2(b'\r', b'\n', event.as_bytes()) {
            let found = char::from(event.as_bytes()[position]);
            return Err(InvalidEvent::new(EventField::Event, found, position));
        }
        self.event = Some(event);
        Ok(self)
    }

    /// Sets the event id (`id:`), which the reader sends back as `Last-Event-ID` when it
    /// reconnects. An empty id resets the reader's last event id.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidEvent`] if `id` contains a NUL (readers ignore such an id), a CR or a LF
    /// (which would end the field early).
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    ///
    /// assert!(Event::default().id("42").is_ok());
    /// assert!(Event::default().id("4\02").is_err());
    /// ```
    pub fn id(mut self, id: impl Into<Cow<'static, str>>) -> Result<Self, InvalidEvent> {
        let id = id.into();
        let bytes = id.as_bytes();
        let bad = memchr::memchr3(b'\0', b'\r', b'\n', bytes);
        if let Some(position) = bad {
            let found = char::from(bytes[position]);
            return Err(InvalidEvent::new(EventField::Id, found, position));
        }
        self.id = Some(id);
        Ok(self)
    }

    /// Removes the id.
    pub(crate) fn clear_id(&mut self) {
        self.id = None;
    }

    /// Sets an id known to be valid (no NUL, CR or LF).
    pub(crate) fn set_valid_id(&mut self, id: String) {
        debug_assert!(memchr::memchr3(b'\0', b'\r', b'\n', id.as_bytes()).is_none());
        self.id = Some(Cow::Owned(id));
    }

    /// Sets the reader's reconnection time (`retry:`), written in whole milliseconds (rounded
    /// down, saturating at `u64::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let mut buf = BytesMut::new();
    /// Event::default().retry(Duration::from_millis(1500)).encode(&mut buf);
    /// assert_eq!(&buf[..], b"retry: 1500\n\n");
    /// ```
    #[must_use]
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets a comment, which readers ignore (keep-alives are comments). Each line of the text
    /// becomes its own `:` line.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let mut buf = BytesMut::new();
    /// Event::default().comment("one\ntwo").encode(&mut buf);
    /// assert_eq!(&buf[..], b": one\n: two\n\n");
    /// ```
    #[must_use]
    pub fn comment(mut self, comment: impl Into<Cow<'static, str>>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Appends the event to `buf`, ending with a blank line. An event with nothing set writes
    /// nothing.
    ///
    /// `buf` is grown at most once per event for its size; nothing else is allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let mut buf = BytesMut::new();
    /// Event::default().data("tok").encode(&mut buf);
    /// Event::default().data("").encode(&mut buf);
    /// assert_eq!(&buf[..], b"data: tok\n\ndata:\n\n");
    /// ```
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.size_hint());
        let start = buf.len();
        if let Some(comment) = &self.comment {
            put_lines(buf, b": ", comment);
        }
        if let Some(id) = &self.id {
            put_field(buf, b"id: ", id.as_bytes());
        }
        if let Some(event) = &self.event {
            put_field(buf, b"event: ", event.as_bytes());
        }
        if let Some(retry) = self.retry {
            let millis = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
            buf.put_slice(b"retry: ");
            put_decimal(buf, millis);
            buf.put_u8(b'\n');
        }
        if let Some(data) = &self.data {
            put_lines(buf, b"data: ", data);
        }
        if buf.len() != start {
            buf.put_u8(b'\n');
        }
    }

    /// The number of bytes [`encode`](Self::encode) writes for this event.
    ///
    /// Exact: data and a comment are scanned for line breaks, as `encode` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::Event;
    /// use bytes::BytesMut;
    ///
    /// let event = Event::default().id("7")?.data("two\nlines");
    /// let mut buf = BytesMut::new();
    /// event.encode(&mut buf);
    /// assert_eq!(event.encoded_len(), buf.len()); // "id: 7\ndata: two\ndata: lines\n\n"
    /// assert_eq!(Event::default().encoded_len(), 0);
    /// # Ok::<(), brigade_sse::InvalidEvent>(())
    /// ```
    pub fn encoded_len(&self) -> usize {
        let mut len = 0;
        if let Some(comment) = &self.comment {
            len += lines_len(b": ".len(), comment);
        }
        if let Some(id) = &self.id {
            len += field_len(b"id: ".len(), id.len());
        }
        if let Some(event) = &self.event {
            len += field_len(b"event: ".len(), event.len());
        }
        if let Some(retry) = self.retry {
            let millis = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
            len += b"retry: ".len() + decimal_len(millis) + 1;
        }
        if let Some(data) = &self.data {
            len += lines_len(b"data: ".len(), data);
        }
        if len > 0 {
            len += 1; // the blank line
        }
        len
    }

    /// An estimate of the encoded size: exact for single-line values, a little short when data
    /// or a comment spans several lines.
    fn size_hint(&self) -> usize {
        // "data: " + "\n", "id: " + "\n", ... plus the blank line.
        let text = |value: Option<&str>, overhead: usize| value.map_or(0, |v| v.len() + overhead);
        text(self.comment.as_deref(), 3)
            + text(self.id.as_deref(), 5)
            + text(self.event.as_deref(), 8)
            + self.retry.map_or(0, |_| 28)
            + text(self.data.as_deref(), 7)
            + 1
    }
}

/// Writes `text` as one `prefix line` per line (`prefix` is `name: `), splitting on LF, CR and
/// CRLF.
fn put_lines(buf: &mut BytesMut, prefix: &[u8], text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
        let end = start + offset;
        put_field(buf, prefix, &bytes[start..end]);
        start = end + 1;
        if bytes[end] == b'\r' && bytes.get(start) == Some(&b'\n') {
            start += 1;
        }
    }
    put_field(buf, prefix, &bytes[start..]);
}

/// Writes one line: `prefix` (`name: `) and the value, or `name:` alone when the value is empty.
///
/// The space after the colon is always written before a non-empty value, because a reader strips
/// exactly one: a value starting with a space keeps it.
fn put_field(buf: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    if value.is_empty() {
        buf.extend_from_slice(&prefix[..prefix.len() - 1]);
    } else {
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(value);
    }
    buf.put_u8(b'\n');
}

/// The length of what [`put_lines`] writes.
fn lines_len(prefix: usize, text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut len = 0;
    let mut start = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
        len += field_len(prefix, offset);
        let end = start + offset;
        start = end + 1;
        if bytes[end] == b'\r' && bytes.get(start) == Some(&b'\n') {
            start += 1;
        }
    }
    len + field_len(prefix, bytes.len() - start)
}

/// The length of what [`put_field`] writes: `name: value` and a LF, or `name:` and a LF.
fn field_len(prefix: usize, value: usize) -> usize {
    if value == 0 {
        prefix
    } else {
        prefix + value + 1
    }
}

/// The number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn put_decimal(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(event: &Event) -> BytesMut {
        let mut buf = BytesMut::new();
        event.encode(&mut buf);
        buf
    }

    #[test]
    fn decimal_covers_zero_and_max() {
        let mut buf = BytesMut::new();
        put_decimal(&mut buf, 0);
        buf.put_u8(b' ');
        put_decimal(&mut buf, u64::MAX);
        assert_eq!(&buf[..], b"0 18446744073709551615");
    }

    #[test]
    fn decimal_len_counts_digits() {
        for n in [0, 9, 10, 99, 100, 1_000_000, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }

    #[test]
    fn size_hint_is_exact_for_single_line_values() {
        let event = Event::default()
            .comment("c")
            .id("1")
            .unwrap()
            .event("e")
            .unwrap()
            .data("d");
        assert_eq!(encoded(&event).len(), event.size_hint());
    }

    #[test]
    fn shared_data_is_written_and_compared_as_the_same_text() {
        let text = "one\r\ntwo\rthree\n";
        let shared = Event::default().shared_data(ByteString::from_static(text));
        let owned = Event::default().data(text.to_owned());
        assert_eq!(encoded(&shared), encoded(&owned));
        assert_eq!(shared.encoded_len(), encoded(&shared).len());
        assert_eq!(shared, owned);
        assert_ne!(shared, Event::default().data("one"));
    }

    #[test]
    fn shared_data_is_not_copied_before_encoding() {
        let buffer = bytes::Bytes::from(String::from("data that stays where it is"));
        let text = ByteString::try_from(buffer.clone()).unwrap();
        let event = Event::default().shared_data(text);
        let Some(Text::Shared(held)) = &event.data else {
            panic!("the data is held shared");
        };
        assert_eq!(held.as_bytes().as_ptr(), buffer.as_ptr());
        assert_eq!(
            &encoded(&event)[..],
            b"data: data that stays where it is\n\n"
        );
    }
}
