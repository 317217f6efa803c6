//! The pass window: a streamed answer as SSE events.
//!
//! Each chunk of the line cook goes out as one event, its JSON as the line cook wrote it (shared,
//! not copied, until the SSE body encodes it); the usage chunk only if the client asked
//! (`stream_options.include_usage`). The line cook's usage settles the token reservation; a line
//! cook that sends none (an upstream that ignores `include_usage`) is settled by counting its
//! chunks as tokens, which `kitchen_usage_counted_total` counts. The answer ends with
//! `data: [DONE]`, or with a final error event, never a clean finish, when the line cook fails,
//! its stream ends without its end, or the request's scope is cancelled (deadline, shutdown,
//! client gone).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use brigade_cancel::{CancelReason, CancelScope, WaitCancelledOwned};
use brigade_sse::{ByteString, Event};
use bytes::Bytes;
use futures::Stream;

use crate::admission::{Streamed, Ticket};
use crate::api::{Head, Usage};
use crate::cook::{Chunks, CookError, Cooked};
use crate::error::error_json;
use crate::routes::{App, LogSlot};

/// One answer in the making, as the events of an SSE body. It holds the request's
/// [`Ticket`], and gives it back when it ends or is dropped.
pub(crate) struct Generation {
    app: Arc<App>,
    scope: CancelScope,
    cancelled: Pin<Box<WaitCancelledOwned>>,
    first: Option<Cooked>,
    chunks: Chunks,
    ticket: Ticket,
    include_usage: bool,
    prompt_tokens: u32,
    /// Chunks passed (the usage chunk aside): the count to settle with if no usage comes.
    chunks_passed: u32,
    /// The line cook's own count, from the usage chunk.
    usage: Option<Usage>,
    ended: bool,
    log: LogSlot,
}

impl Generation {
    pub(crate) fn new(
        app: Arc<App>,
        scope: CancelScope,
        head: &Head<'_>,
        streamed: Streamed,
        ticket: Ticket,
    ) -> Self {
        app.metrics.streams_in_flight.inc();
        Self {
            cancelled: Box::pin(scope.clone().cancelled_owned()),
            scope,
            first: Some(streamed.first),
            chunks: streamed.rest,
            ticket,
            include_usage: head.include_usage,
            prompt_tokens: head.prompt_tokens,
            chunks_passed: 0,
            usage: None,
            ended: false,
            log: LogSlot::default(),
            app,
        }
    }

    /// Where the request's log line waits for this answer's end.
    pub(crate) fn log(&self) -> LogSlot {
        self.log.clone()
    }

    /// The usage to settle and log with: the line cook's, or the chunks counted.
    fn usage(&self) -> Usage {
        self.usage
            .unwrap_or_else(|| Usage::new(self.prompt_tokens, self.chunks_passed))
    }

    /// Ends the answer: settles the reservation with what it used, counts its tokens, and
    /// writes the log line. `done`: it reached its end (where a usage chunk was due).
    fn end(&mut self, done: bool) {
        self.ended = true;
        let usage = self.usage();
        if done && self.usage.is_none() {
            self.app.metrics.usage_counted.inc();
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "the line cook sent no usage: answers are settled by counting their chunks \
                     (kitchen_usage_counted_total counts them)"
                );
            });
        }
        self.ticket.spend(usage.settled());
        self.app
            .metrics
            .tokens
            .inc_by(u64::from(usage.completion_tokens));
        self.log.finish(usage.completion_tokens);
    }

    /// The line cook failed: a final error event.
    fn failed(&mut self, error: &CookError) -> Event {
        self.ticket.failed(error);
        self.end(false);
        let message = format!("the line cook failed mid-stream: {}", error.message());
        Event::default().data(error_json(&message, "server_error", error.code()))
    }

    /// The scope was cancelled: a final error event (nobody reads it if the client left).
    fn stopped(&mut self, reason: &CancelReason) -> Event {
        self.app.metrics.cancel(reason.as_str());
        self.end(false);
        let (message, code) = match reason {
            CancelReason::Shutdown => ("the server is shutting down", "shutting_down"),
            CancelReason::DeadlineExceeded => {
                ("the request's deadline passed", "deadline_exceeded")
            }
            _ => ("the answer was cancelled", reason.as_str()),
        };
        Event::default().data(error_json(message, "server_error", code))
    }
}

impl Stream for Generation {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            // The cancel is checked with one atomic load before each chunk, and waited for (a
            // lock) only when the line cook has nothing ready.
            let next = match this.first.take() {
                Some(first) => Poll::Ready(Some(Ok(first))),
                None if this.scope.is_cancelled() => Poll::Pending,
                None => this.chunks.as_mut().poll_next(cx),
            };
            let Poll::Ready(next) = next else {
                return match this.cancelled.as_mut().poll(cx) {
                    Poll::Ready(reason) => Poll::Ready(Some(Ok(this.stopped(&reason)))),
                    Poll::Pending => Poll::Pending,
                };
            };
            let event = match next {
                Some(Ok(Cooked::Chunk(chunk))) => {
                    if chunk.usage.is_some() {
                        this.usage = chunk.usage;
                    }
                    if chunk.usage_only {
                        if !this.include_usage {
                            continue;
                        }
                    } else {
                        this.chunks_passed = this.chunks_passed.saturating_add(1);
                    }
                    Event::default().shared_data(text(&chunk.json))
                }
                Some(Ok(Cooked::Done)) => {
                    this.ticket.succeeded();
                    this.end(true);
                    Event::default().data("[DONE]")
                }
                Some(Err(error)) => this.failed(&error),
                None => this.failed(&CookError::failed(
                    "the line cook's stream ended before its end",
                )),
            };
            return Poll::Ready(Some(Ok(event)));
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.app.metrics.streams_in_flight.dec();
        if !self.ended {
            // Dropped mid-answer: the body went away (`DisconnectBody` has set the reason).
            let reason = self
                .scope
                .reason()
                .unwrap_or(CancelReason::ClientDisconnected);
            self.app.metrics.cancel(reason.as_str());
            self.end(false);
        }
    }
}

/// A chunk's JSON as an event's text, sharing its bytes (checked to be UTF-8: an upstream's
/// invalid bytes become U+FFFD, as a decoder reads them).
fn text(json: &Bytes) -> ByteString {
    ByteString::try_from(json.clone())
        .unwrap_or_else(|_| ByteString::from(String::from_utf8_lossy(json).into_owned()))
}
