//! The response body: events from a stream, coalesced into frames, with keep-alive comments.
//!
//! # Frames
//!
//! Each poll drains the event stream while it is ready, encoding into one buffer, and sends what
//! it holds as one frame (up to [`SseBody::max_frame_size`], and at most 4096 events, so that a
//! stream that is always ready cannot keep the executor's thread): a burst of tokens costs one
//! write, not one per token. The buffer is reused once hyper has written a frame and dropped it.
//!
//! # Keep-alive
//!
//! Proxies and load balancers close connections that stay silent; a keep-alive comment after an
//! idle interval prevents it, and readers ignore it. The timer is one `Pin<Box<Sleep>>`, created
//! the first time the body has nothing to send (so a body can be built outside a runtime) and
//! reset in place by every frame, events or keep-alive: the comment goes out after `interval`
//! without any frame.

use std::borrow::Borrow;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::Event;

/// The default maximum size of one frame: 64 KiB.
const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;

/// The most events one poll takes from the stream, so that a stream always ready cannot hold
/// the executor's thread (events that encode to nothing never fill a frame).
const EVENTS_PER_POLL: usize = 4096;

/// How an [`SseBody`] keeps an idle connection open: a comment after an idle interval.
///
/// The default sends `:` and a blank line after 15 seconds without an event.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_sse::KeepAlive;
///
/// let keep_alive = KeepAlive::new().interval(Duration::from_secs(10)).text("ping");
/// assert_eq!(keep_alive.get_interval(), Some(Duration::from_secs(10)));
/// assert_eq!(KeepAlive::disabled().get_interval(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    interval: Option<Duration>,
    text: Bytes,
}

impl KeepAlive {
    /// The default: an empty comment after 15 seconds without an event.
    pub const fn new() -> Self {
        Self {
            interval: Some(Duration::from_secs(15)),
            text: Bytes::from_static(b":\n\n"),
        }
    }

    /// No keep-alive: the body sends only events.
    pub const fn disabled() -> Self {
        Self {
            interval: None,
            text: Bytes::from_static(b":\n\n"),
        }
    }

    /// Sets the idle interval after which a comment is sent (default 15 seconds).
    ///
    /// A zero interval disables keep-alive: a body that sends comments without pause is never
    /// what is wanted.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = (!interval.is_zero()).then_some(interval);
        self
    }

    /// Sets the comment's text (default empty). Line breaks make several comment lines.
    #[must_use]
    pub fn text(mut self, text: impl Into<String>) -> Self {
        let mut buf = BytesMut::new();
        Event::default().comment(text.into()).encode(&mut buf);
        self.text = buf.freeze();
        self
    }

    /// The idle interval, or `None` if keep-alive is disabled.
    pub fn get_interval(&self) -> Option<Duration> {
        self.interval
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self::new()
    }
}

pin_project! {
    /// An [`http_body::Body`] of server-sent events from a [`Stream`] of `Result<Event, E>`
    /// (or of anything that borrows as an `Event`, such as the `Arc<Event>`s of a
    /// [`Replay`](crate::Replay)).
    ///
    /// Events ready together go out as one frame; after an idle interval a keep-alive comment
    /// goes out ([`KeepAlive`], 15 seconds by default). An error from the stream ends the body
    /// with that error, after the events before it. [`into_response`](Self::into_response)
    /// wraps the body in a response with the headers SSE needs.
    ///
    /// The keep-alive timer is tokio's: poll the body inside a tokio runtime with the `time`
    /// driver enabled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use brigade_sse::{Event, SseBody};
    /// use http_body_util::BodyExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let events = futures::stream::iter(
    ///     ["Hel", "lo"].map(|token| Ok::<_, Infallible>(Event::default().data(token))),
    /// );
    /// let response = SseBody::new(events).into_response();
    /// assert_eq!(response.headers()["content-type"], "text/event-stream");
    ///
    /// let bytes = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(&bytes[..], b"data: Hel\n\ndata: lo\n\n");
    /// # }
    /// ```
    pub struct SseBody<S: Stream> {
        #[pin]
        events: S,
        // An error that came after events of the same poll: sent after their frame.
        failed: Option<S::Item>,
        keep_alive: KeepAlive,
        sleep: Option<Pin<Box<Sleep>>>,
        buf: BytesMut,
        max_frame_size: usize,
        ended: bool,
    }
}

impl<S: Stream> SseBody<S> {
    /// A body of the events of `events`, with the default [`KeepAlive`].
    pub fn new(events: S) -> Self {
        Self {
            events,
            failed: None,
            keep_alive: KeepAlive::new(),
            sleep: None,
            buf: BytesMut::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            ended: false,
        }
    }

    /// Sets the keep-alive (default: an empty comment after 15 idle seconds).
    #[must_use]
    pub fn keep_alive(mut self, keep_alive: KeepAlive) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Sets the size after which no more ready events are added to a frame (default 64 KiB).
    /// A single event larger than this still goes out whole, in one frame, and every frame
    /// holds at least one event (a size of 0 sends each event in a frame of its own).
    #[must_use]
    pub fn max_frame_size(mut self, max_frame_size: usize) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// The event stream.
    pub fn get_ref(&self) -> &S {
        &self.events
    }

    /// The event stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.events
    }

    /// The event stream back.
    pub fn into_inner(self) -> S {
        self.events
    }

    /// An HTTP `200 OK` response with this body and the headers an event stream needs:
    /// `content-type: text/event-stream`, `cache-control: no-cache`, and
    /// `x-accel-buffering: no` (so nginx does not hold events back).
    pub fn into_response(self) -> http::Response<Self> {
        let mut response = http::Response::new(self);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        response
    }
}

impl<S, T, E> Body for SseBody<S>
where
    S: Stream<Item = Result<T, E>>,
    T: Borrow<Event>,
{
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let mut this = self.project();
        if let Some(Err(err)) = this.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        let mut polled = 0;
        // At least one event per frame, however small the maximum frame size.
        while this.buf.is_empty() || this.buf.len() < *this.max_frame_size {
            if polled == EVENTS_PER_POLL {
                if this.buf.is_empty() {
                    // A stream that is always ready with events that encode to nothing: give
                    // the executor its thread back, and come back at once.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                break;
            }
            polled += 1;
            match this.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => event.borrow().encode(this.buf),
                Poll::Ready(Some(Err(err))) => {
                    *this.ended = true;
                    if this.buf.is_empty() {
                        return Poll::Ready(Some(Err(err)));
                    }
                    // Send the events before the error first.
                    *this.failed = Some(Err(err));
                    break;
                }
                Poll::Ready(None) => {
                    *this.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            if let (Some(interval), Some(sleep)) = (this.keep_alive.interval, this.sleep.as_mut()) {
                sleep.as_mut().reset(deadline(interval));
            }
            return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        let Some(interval) = this.keep_alive.interval else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline(interval))));
        if sleep.as_mut().poll(cx).is_ready() {
            // Polled again (and so registered) on the next call, which follows this frame.
            sleep.as_mut().reset(deadline(interval));
            return Poll::Ready(Some(Ok(Frame::data(this.keep_alive.text.clone()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.buf.is_empty() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

/// `interval` from now, or about 30 years from now if that is past what an `Instant` can hold
/// (`Instant + Duration` would panic on an interval such as `Duration::MAX`).
fn deadline(interval: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(interval)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}

impl<S: Stream> fmt::Debug for SseBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseBody")
            .field("keep_alive", &self.keep_alive)
            .field("buffered", &self.buf.len())
            .field("max_frame_size", &self.max_frame_size)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
