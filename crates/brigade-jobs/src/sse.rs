//! A job's events as a resumable server-sent event stream (feature `sse`): the policy of an
//! HTTP route for a job's events, so that the route only renders events and picks the
//! response ([`Jobs::follow_sse`] tells it).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use crate::{Error, Event, Follow, JobRecord, Jobs};

/// The reconnection time [`SseFollow`] suggests by default.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// What to answer a request for a job's events, from [`Jobs::follow_sse`].
#[derive(Debug)]
pub enum SseReply {
    /// The job is final and the client's `Last-Event-ID` is its last event: answer
    /// `204 No Content`, which stops an `EventSource` from reconnecting.
    NoContent,
    /// The events to send, as a stream for an SSE body.
    Stream(SseFollow),
}

/// Why an [`SseFollow`] ended before the job's final event.
#[derive(Debug)]
#[non_exhaustive]
pub enum SseCut {
    /// The stop signal of [`SseFollow::until`] fired.
    Stopped,
    /// Reading the job's events failed, or the job was deleted ([`Error::NotFound`]).
    Failed(Error),
}

impl fmt::Display for SseCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("the stream stopped before the job's final event"),
            Self::Failed(_) => f.write_str("the job's events could not be read"),
        }
    }
}

impl std::error::Error for SseCut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Stopped => None,
            Self::Failed(error) => Some(error),
        }
    }
}

type Render = Box<dyn FnMut(&Event) -> brigade_sse::Event + Send>;
type RenderCut = Box<dyn FnOnce(SseCut) -> brigade_sse::Event + Send>;
type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A job's events as SSE events, from [`Jobs::follow_sse`]: a `retry:` hint, then each event
/// after the client's `Last-Event-ID` with its sequence number as its id, ending after the
/// job's final event, or with an event without an id if it is cut before.
///
/// It is a `Stream` of `Result<brigade_sse::Event, Infallible>`, ready for
/// [`brigade_sse::SseBody`]. The setters configure it before it is polled:
///
/// - [`render`](Self::render): how a job's event reads (default: its kind as the event type, its
///   JSON data as the data);
/// - [`cut`](Self::cut): the event a cut stream ends with (default: event type `error`, the
///   [`SseCut`]'s message as the data);
/// - [`until`](Self::until): a signal that stops the stream (default: none);
/// - [`retry`](Self::retry): the reconnection time suggested (default 1 second).
///
/// # Examples
///
/// ```
/// use brigade_jobs::{Jobs, NewJob, SseReply};
/// use brigade_sse::SseBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let jobs = Jobs::open("sqlite::memory:").await?;
/// let id = jobs.enqueue(NewJob::new("embed", &"text")).await?.id();
/// jobs.cancel(id, "not needed").await?; // final: queued, then cancelled
/// let record = jobs.get(id).await?.unwrap();
///
/// // A client that has seen event 1 gets event 2, the final one, and the stream ends.
/// let SseReply::Stream(events) = jobs.follow_sse(&record, Some("1")) else { unreachable!() };
/// let events = events.render(|event| brigade_sse::Event::default().data(event.kind.as_str()));
/// let body = SseBody::new(events).into_response().into_body();
/// let bytes = http_body_util::BodyExt::collect(body).await?.to_bytes();
/// assert_eq!(&bytes[..], b"retry: 1000\n\nid: 2\ndata: cancelled\n\n");
///
/// // A client that has every event of the final job is told to stop.
/// assert!(matches!(jobs.follow_sse(&record, Some("2")), SseReply::NoContent));
/// # jobs.shutdown(std::time::Duration::ZERO).await;
/// # Ok(())
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it loses nothing: the client resumes from the last id it received.
#[must_use = "streams do nothing unless polled"]
pub struct SseFollow {
    follow: Follow,
    retry: Option<Duration>,
    render: Render,
    cut: Option<RenderCut>,
    stop: Option<Stop>,
    done: bool,
}

impl fmt::Debug for SseFollow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseFollow")
            .field("retry", &self.retry)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl SseFollow {
    fn new(follow: Follow) -> Self {
        Self {
            follow,
            retry: Some(DEFAULT_RETRY),
            render: Box::new(|event: &Event| {
                brigade_sse::Event::default()
                    .event(event.kind.as_str())
                    .unwrap_or_default()
                    .data(event.data.clone())
            }),
            cut: Some(Box::new(|cut: SseCut| {
                brigade_sse::Event::default()
                    .event("error")
                    .unwrap_or_default()
                    .data(cut.to_string())
            })),
            stop: None,
            done: false,
        }
    }

    /// Renders each job event as an SSE event (default: the event's kind as its type, its
    /// JSON data as its data). The id is set afterwards to the event's sequence number,
    /// replacing any the closure set.
    pub fn render(
        mut self,
        render: impl FnMut(&Event) -> brigade_sse::Event + Send + 'static,
    ) -> Self {
        self.render = Box::new(render);
        self
    }

    /// The event a cut stream ends with (default: event type `error`, the [`SseCut`]'s message
    /// as its data). The closure gets why the stream was cut, to log a failure or to word the
    /// event. The event must have no id: an id, even an empty one, would replace the last
    /// event id the client resumes from.
    pub fn cut(
        mut self,
        render: impl FnOnce(SseCut) -> brigade_sse::Event + Send + 'static,
    ) -> Self {
        self.cut = Some(Box::new(render));
        self
    }

    /// Stops the stream when `stop` completes (its output is dropped), such as a server's
    /// shutdown signal (`CancellationToken::cancelled_owned`); unless the final event was
    /// sent, the stream ends with the [`cut`](Self::cut) event ([`SseCut::Stopped`]). Default:
    /// no stop signal.
    pub fn until(mut self, stop: impl Future + Send + 'static) -> Self {
        self.stop = Some(Box::pin(async move {
            stop.await;
        }));
        self
    }

    /// The reconnection time suggested to the client, sent first as `retry:` (default 1
    /// second).
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    fn end(&mut self, cut: SseCut) -> Poll<Option<Result<brigade_sse::Event, Infallible>>> {
        self.done = true;
        let render = self.cut.take();
        Poll::Ready(render.map(|render| Ok(render(cut))))
    }
}

impl Stream for SseFollow {
    type Item = Result<brigade_sse::Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(retry) = this.retry.take() {
            return Poll::Ready(Some(Ok(brigade_sse::Event::default().retry(retry))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(stop) = &mut this.stop
            && stop.as_mut().poll(cx).is_ready()
        {
            return this.end(SseCut::Stopped);
        }
        match ready!(Pin::new(&mut this.follow).poll_next(cx)) {
            Some(Ok(event)) => {
                this.done = event.kind.is_final();
                // A number is always a valid id.
                let sse = (this.render)(&event)
                    .id(event.seq.to_string())
                    .unwrap_or_default();
                Poll::Ready(Some(Ok(sse)))
            }
            Some(Err(error)) => this.end(SseCut::Failed(error)),
            // The job was over, with its last event sent, before this stream began.
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Jobs {
    /// The answer to a request for the job's events as server-sent events, given its record
    /// and the request's `Last-Event-ID` header (`None` without one): [`SseReply::NoContent`]
    /// if the job is final and the client has every event, else the stream of the events after
    /// that id ([`SseFollow`]).
    ///
    /// - **Where to resume.** `Last-Event-ID` is trimmed and read as a number; an id that is
    ///   not one, or is above the job's last event (an id this job never issued), is ignored:
    ///   the stream starts from the first event.
    /// - **When to stop the client.** An `EventSource` reconnects whenever a stream ends, and
    ///   stops only on `204 No Content`: a client that sent an id and holds every event of a
    ///   final job gets [`SseReply::NoContent`].
    /// - **Ids are the store's sequence numbers**, so a client resumes on any replica, after
    ///   a restart too. The stream opens with a `retry:` hint and ends after the final event.
    /// - **A cut stream says so.** A stream stopped before the final event (the stop signal
    ///   of [`SseFollow::until`], such as a server's shutdown) or by a failed read of the
    ///   store ends with an event without an id ([`SseFollow::cut`]), so the client's
    ///   `Last-Event-ID` stays the last event it received, and its reconnect resumes there.
    ///
    /// `record` is what [`get`](Self::get) returned for the job: the route reads it anyway,
    /// to find the job or check who may see it.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_jobs::{Jobs, NewJob, SseReply};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let jobs = Jobs::open("sqlite::memory:").await?;
    /// let id = jobs.enqueue(NewJob::new("embed", &"text")).await?.id();
    /// let record = jobs.get(id).await?.unwrap();
    ///
    /// // The job is queued: the client gets a stream, whatever it has seen.
    /// assert!(matches!(jobs.follow_sse(&record, Some(" 1 ")), SseReply::Stream(_)));
    /// # jobs.shutdown(std::time::Duration::ZERO).await;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "sse")))]
    pub fn follow_sse(&self, record: &JobRecord, last_event_id: Option<&str>) -> SseReply {
        let last = record.last_event;
        let after = last_event_id
            .and_then(|id| id.trim().parse::<u64>().ok())
            .filter(|&seq| seq <= last)
            .unwrap_or(0);
        if last_event_id.is_some() && record.status.is_final() && after >= last {
            return SseReply::NoContent;
        }
        SseReply::Stream(SseFollow::new(self.follow(record.id, after)))
    }
}
