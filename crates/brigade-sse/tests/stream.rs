//! `EventStream`: the decoder over byte streams and bodies.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use brigade_sse::{DecodeError, Decoder, EventStream};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};

#[derive(Debug, PartialEq)]
struct Upstream;

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream reset")
    }
}

impl std::error::Error for Upstream {}

fn chunks(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes, Upstream>> {
    futures::stream::iter(
        parts
            .iter()
            .map(|part| Ok(Bytes::from_static(part)))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn events_split_across_chunks_are_read_whole() {
    let mut events = EventStream::new(chunks(&[
        b"id: 1\r",
        b"\ndata: hel",
        b"lo\r\n",
        b"\r",
        b"\ndata: x\n\n",
    ]));
    let first = events.next().await.unwrap().unwrap();
    assert_eq!((first.data(), first.id()), ("hello", Some("1")));
    assert_eq!(events.next().await.unwrap().unwrap().data(), "x");
    assert!(events.next().await.is_none());
    assert!(events.next().await.is_none(), "stays ended");
}

#[tokio::test]
async fn reads_an_http_body_and_ignores_trailers() {
    let frames = futures::stream::iter([
        Ok::<_, Upstream>(http_body::Frame::data(Bytes::from_static(b"data: a\n\n"))),
        Ok(http_body::Frame::trailers(http::HeaderMap::new())),
    ]);
    let mut events = EventStream::from_body(StreamBody::new(frames));
    assert_eq!(events.next().await.unwrap().unwrap().data(), "a");
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn reads_a_boxed_body() {
    let body = Full::new(Bytes::from_static(b"retry: 250\ndata: a\n\n")).boxed();
    let mut events = EventStream::from_body(body);
    assert_eq!(
        events.next().await.unwrap().unwrap().retry(),
        Some(Duration::from_millis(250))
    );
    assert_eq!(events.retry(), Some(Duration::from_millis(250)));
}

#[tokio::test]
async fn body_error_is_reported_with_its_source_and_ends_the_stream() {
    let input = futures::stream::iter([
        Ok(Bytes::from_static(b"data: a\n\ndata: cut")),
        Err(Upstream),
    ]);
    let mut events = EventStream::new(input);
    assert_eq!(events.next().await.unwrap().unwrap().data(), "a");
    let err = events.next().await.unwrap().unwrap_err();
    assert!(matches!(err, DecodeError::Body(Upstream)));
    assert_eq!(err.to_string(), "failed to read the event stream");
    assert_eq!(err.source().unwrap().to_string(), "upstream reset");
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn oversized_event_is_an_error_and_the_stream_goes_on() {
    let input = chunks(&[
        b"data: 0123456789abcdef",
        b"0123456789\n\n",
        b"data: small\n\n",
    ]);
    let mut events = EventStream::with_decoder(input, Decoder::with_max_event_size(16));
    let err = events.next().await.unwrap().unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge(too_large) if too_large.limit() == 16));
    assert!(err.source().is_none());
    assert_eq!(events.next().await.unwrap().unwrap().data(), "small");
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn unterminated_event_at_end_of_input_is_discarded() {
    let mut events = EventStream::new(chunks(&[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"]));
    assert_eq!(events.next().await.unwrap().unwrap().data(), "a");
    assert!(events.next().await.is_none());
    assert_eq!(events.last_event_id(), Some("1"));
}

#[tokio::test]
async fn resumed_decoder_carries_the_last_event_id() {
    let mut decoder = Decoder::new();
    decoder.set_last_event_id(Some("17"));
    let mut events = EventStream::with_decoder(chunks(&[b"data: a\n\n"]), decoder);
    assert_eq!(events.next().await.unwrap().unwrap().id(), Some("17"));
    let (_, decoder) = events.into_parts();
    assert_eq!(decoder.last_event_id(), Some("17"));
}
