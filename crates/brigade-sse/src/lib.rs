//! The pass window: server-sent events that follow the WHATWG event-stream rules exactly, an
//! incremental linear-time decoder, a hyper body with keep-alive, and `Last-Event-ID` replay.
//!
//! Tokens reach the client before the whole answer exists, as events of a `text/event-stream`.
//! This crate writes and reads that format to the letter of the WHATWG specification: line
//! breaks in data (LF, CR or CRLF) become separate `data:` lines and read back as LF; empty data
//! and a trailing line break survive; a line break in an id or event type is refused, never
//! written; `retry` is in milliseconds; a leading BOM is stripped; memory is bounded; and no
//! input makes it panic.
//!
//! - [`Event`]: a builder that cannot produce a corrupt stream (a line break in an id or event
//!   type is an [`InvalidEvent`], line breaks in data and comments become more lines), encoded
//!   by appending to a caller's `BytesMut` with no allocation of its own.
//! - [`SseBody`]: an [`http_body::Body`] over a `Stream` of events, coalescing events that are
//!   ready together into one frame, with a [`KeepAlive`] comment when idle, and
//!   [`into_response`](SseBody::into_response) for the right headers.
//! - [`Replay`]: a buffer of recent events, bounded by events and by bytes, under ids it
//!   issues, telling a client that can resume after its `Last-Event-ID` from one that has missed
//!   too much, or that holds an id of another buffer, such as one from before a server restart
//!   ([`ReplayMiss`]). Events are shared (`Arc<Event>`), never copied to be replayed.
//! - [`Decoder`]: feed byte chunks of any size, get [`DecodedEvent`]s; the same events however
//!   the bytes are chunked, linear time, bounded memory ([`EventTooLarge`]); the data as `&str`
//!   or, for forwarding, as [`Bytes`](bytes::Bytes) sharing the input.
//! - [`EventStream`]: the decoder over any byte stream or [`http_body::Body`], for proxying an
//!   upstream.
//!
//! # Example
//!
//! ```
//! use brigade_sse::{Event, EventStream, KeepAlive, SseBody};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The server side: tokens as events, with ids, and a keep-alive comment when idle.
//! let tokens = ["Hello", ",", " world\r\n"];
//! let events = futures::stream::iter(tokens.into_iter().enumerate().map(|(i, token)| {
//!     Event::default().id(i.to_string()).map(|event| event.data(token))
//! }));
//! let response = SseBody::new(events).keep_alive(KeepAlive::new()).into_response();
//! assert_eq!(response.headers()["content-type"], "text/event-stream");
//!
//! // The client side: read the body back.
//! let mut read = EventStream::from_body(response.into_body());
//! let mut text = String::new();
//! while let Some(event) = read.next().await {
//!     text.push_str(event?.data());
//! }
//! assert_eq!(text, "Hello, world\n"); // CRLF in data reads back as LF, the stream's line break
//! assert_eq!(read.last_event_id(), Some("2"));
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `serde` | no | [`Event::json_data`]: any `serde::Serialize` value as the event's data |
//!
//! # Cancel safety
//!
//! [`SseBody`] is polled by hyper; dropping it drops the event stream and nothing else.
//! [`EventStream`] is cancel safe: dropping a `next()` future loses nothing, the bytes read so
//! far stay in its [`Decoder`].
//!
//! # Time
//!
//! The keep-alive uses tokio's timer, so tests can pause and advance time.
//!
//! # Performance
//!
//! Encoding is a copy of the text with a `memchr` scan for line breaks. Decoding looks at every
//! byte once: a scan position survives between chunks, and consumed bytes are dropped only when
//! they outweigh what is left. The data of a one-line event is a slice of the decoder's input
//! buffer, shared by reference count: no allocation or copy per event.
//! `docs/benchmarks.md` in the repository holds the figures, with the commands.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}

mod body;
mod decode;
mod error;
mod event;
mod replay;

pub use crate::body::{KeepAlive, SseBody};
pub use crate::decode::{DEFAULT_MAX_EVENT_SIZE, DecodedEvent, Decoder, EventStream};
pub use crate::error::{
    DecodeError, EventField, EventTooLarge, InvalidConfig, InvalidEvent, ReplayMiss,
};
pub use crate::event::Event;
pub use crate::replay::{Replay, ReplayBuilder};
/// UTF-8 text in a [`Bytes`](bytes::Bytes), from the `bytestring` crate: the data of
/// [`Event::shared_data`], held by reference count.
pub use bytestring::ByteString;
