use std::error::Error;
use std::fmt;

/// The field of an [`Event`](crate::Event) that an [`InvalidEvent`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventField {
    /// The event id (`id:` line).
    Id,
    /// The event type (`event:` line).
    Event,
}

impl EventField {
    /// The field's name as it appears on the wire: `id` or `event`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Event => "event",
        }
    }
}

impl fmt::Display for EventField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that cannot be written to an event stream without corrupting it.
///
/// An id must not contain NUL, CR or LF (a reader ignores an id with NUL, and a line break would
/// end the field early and let the rest be read as new fields); an event type must not contain CR
/// or LF. Returned by [`Event::id`](crate::Event::id) and [`Event::event`](crate::Event::event).
///
/// # Examples
///
/// ```
/// use brigade_sse::{Event, EventField};
///
/// let err = Event::default().id("7\ndata: injected").unwrap_err();
/// assert_eq!(err.field(), EventField::Id);
/// assert_eq!(err.found(), '\n');
/// assert_eq!(err.position(), 1);
/// assert_eq!(err.to_string(), "event id contains a line feed at byte 1");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidEvent {
    field: EventField,
    found: char,
    position: usize,
}

impl InvalidEvent {
    pub(crate) const fn new(field: EventField, found: char, position: usize) -> Self {
        Self {
            field,
            found,
            position,
        }
    }

    /// The field whose value was rejected.
    pub const fn field(&self) -> EventField {
        self.field
    }

    /// The character that cannot appear in that field: NUL, CR or LF.
    pub const fn found(&self) -> char {
        self.found
    }

    /// The byte offset of that character in the rejected value.
    pub const fn position(&self) -> usize {
        self.position
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match self.field {
            EventField::Id => "event id",
            EventField::Event => "event type",
        };
        let found = match self.found {
            '\0' => "a nul character",
            '\r' => "a carriage return",
            '\n' => "a line feed",
            _ => "a forbidden character",
        };
        write!(f, "{field} contains {found} at byte {}", self.position)
    }
}

impl Error for InvalidEvent {}

/// An event grew beyond the decoder's maximum event size.
///
/// The decoder drops the event (its lines up to the next blank line) and goes on with the next
/// one, so memory stays bounded by the limit whatever the peer sends. See
/// [`Decoder::with_max_event_size`](crate::Decoder::with_max_event_size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTooLarge {
    limit: usize,
}

impl EventTooLarge {
    pub(crate) const fn new(limit: usize) -> Self {
        Self { limit }
    }

    /// The maximum event size, in bytes, that was exceeded.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event exceeds the maximum size of {} bytes", self.limit)
    }
}

impl Error for EventTooLarge {}

/// An [`EventStream`](crate::EventStream) could not yield an event.
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError<E> {
    /// An event exceeded the maximum event size; the stream goes on with the next event.
    TooLarge(EventTooLarge),
    /// The underlying byte stream or body failed; the cause is the [`source`](Error::source).
    Body(E),
}

impl<E: fmt::Display> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(err) => fmt::Display::fmt(err, f),
            Self::Body(_) => f.write_str("failed to read the event stream"),
        }
    }
}

impl<E: Error + 'static> Error for DecodeError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::TooLarge(_) => None,
            Self::Body(err) => Some(err),
        }
    }
}

impl<E> From<EventTooLarge> for DecodeError<E> {
    fn from(err: EventTooLarge) -> Self {
        Self::TooLarge(err)
    }
}

/// A client's `Last-Event-ID` from which a [`Replay`](crate::Replay) cannot resume.
///
/// Either way the client has missed events that cannot be sent again: the server should start it
/// afresh (send the current state, or an event telling it so), not pretend the stream is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayMiss {
    /// The id was issued by this buffer, but events after it have been evicted since.
    AgedOut {
        /// The sequence number of the oldest event the buffer still holds (an id with the
        /// sequence number before it would resume), or `None` if the buffer is empty.
        oldest_seq: Option<u64>,
    },
    /// The id was never issued by this buffer: an id of another epoch (a previous process,
    /// another server), a sequence number not issued yet, or not an id of the buffer's form.
    Unknown,
}

impl fmt::Display for ReplayMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AgedOut { .. } => f.write_str("events after the last event id have aged out"),
            Self::Unknown => f.write_str("last event id is unknown to the replay buffer"),
        }
    }
}

impl Error for ReplayMiss {}

/// A configuration that cannot work, rejected by
/// [`ReplayBuilder::build`](crate::ReplayBuilder::build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// A replay buffer that keeps no event.
    ZeroMaxEvents,
    /// A replay buffer that keeps no byte.
    ZeroMaxBytes,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroMaxEvents => "replay buffer keeps no event",
            Self::ZeroMaxBytes => "replay buffer keeps no byte",
        })
    }
}

impl Error for InvalidConfig {}
