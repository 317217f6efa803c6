use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use futures_core::Stream;
use http_body_util::BodyDataStream;
use pin_project_lite::pin_project;

use super::{DecodedEvent, Decoder};
use crate::error::DecodeError;

pin_project! {
    /// A [`Stream`] of [`DecodedEvent`]s read from a stream of byte chunks, or from an
    /// [`http_body::Body`] with [`from_body`](EventStream::from_body).
    ///
    /// Built on [`Decoder`], with its guarantees: the events do not depend on how the bytes are
    /// chunked, and an event unterminated when the input ends is discarded. An event over the
    /// maximum size yields [`DecodeError::TooLarge`] and the stream goes on; an error of the
    /// input yields [`DecodeError::Body`], and the stream ends after it.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_sse::EventStream;
    /// use bytes::Bytes;
    /// use futures::StreamExt;
    /// use http_body_util::Full;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let upstream = Full::new(Bytes::from_static(b"data: {\"token\":\"hi\"}\n\ndata: [DONE]\n\n"));
    /// let mut events = EventStream::from_body(upstream);
    ///
    /// assert_eq!(events.next().await.unwrap()?.data(), "{\"token\":\"hi\"}");
    /// assert_eq!(events.next().await.unwrap()?.data(), "[DONE]");
    /// assert!(events.next().await.is_none());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// `next()` on this stream is cancel safe: bytes already read stay in the decoder.
    #[must_use = "streams do nothing unless polled"]
    pub struct EventStream<S> {
        #[pin]
        inner: S,
        decoder: Decoder,
        done: bool,
    }
}

impl<S> EventStream<S> {
    /// Decodes `inner`, a stream of `Result<impl Buf, E>`, with a default [`Decoder`].
    pub fn new(inner: S) -> Self {
        Self::with_decoder(inner, Decoder::new())
    }

    /// Decodes `inner` with `decoder` (a maximum event size of its own, or a last event id to
    /// resume from).
    pub fn with_decoder(inner: S, decoder: Decoder) -> Self {
        Self {
            inner,
            decoder,
            done: false,
        }
    }

    /// The decoder, for its [`last_event_id`](Decoder::last_event_id) and
    /// [`retry`](Decoder::retry).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The last event id committed so far: what to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> Option<&str> {
        self.decoder.last_event_id()
    }

    /// The latest reconnection time the server asked for.
    pub fn retry(&self) -> Option<Duration> {
        self.decoder.retry()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream and the decoder, with whatever it holds.
    pub fn into_parts(self) -> (S, Decoder) {
        (self.inner, self.decoder)
    }
}

impl<B> EventStream<BodyDataStream<B>> {
    /// Decodes the data frames of an [`http_body::Body`] (trailers are ignored), such as a
    /// hyper client's response body.
    pub fn from_body(body: B) -> Self {
        Self::new(BodyDataStream::new(body))
    }
}

impl<S, B, E> Stream for EventStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
{
    type Item = Result<DecodedEvent, DecodeError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            match this.decoder.next_event() {
                Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                Err(too_large) => return Poll::Ready(Some(Err(DecodeError::TooLarge(too_large)))),
                Ok(None) => {}
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(mut chunk)) => {
                    while chunk.has_remaining() {
                        let bytes = chunk.chunk();
                        let n = bytes.len();
                        this.decoder.feed(bytes);
                        chunk.advance(n);
                    }
                }
                Some(Err(err)) => {
                    *this.done = true;
                    this.decoder.finish();
                    return Poll::Ready(Some(Err(DecodeError::Body(err))));
                }
                None => {
                    *this.done = true;
                    this.decoder.finish();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl<S> fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("decoder", &self.decoder)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
