//! A response body that keeps its pick until the stream ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::Pick;

pin_project! {
    /// An [`http_body::Body`] that holds a [`Pick`] until the stream ends, fails, or is
    /// dropped, so that the endpoint counts the call in flight, and the pick's breaker and
    /// adaptive-limit permits are held, for as long as the response streams.
    ///
    /// At the end of the stream the pick reports a [success](Pick::success) (unless it was
    /// made with [`ignoring_outcome`](Self::ignoring_outcome)); an error of the body is a
    /// [failure](Pick::failure); a body dropped before its end was cancelled and reports
    /// nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_balance::{EndpointConfig, Pool, PickBody};
    /// use http_body_util::{BodyExt, Full};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pool = Pool::builder().endpoint("a", (), EndpointConfig::new()).build().unwrap();
    /// let mut pick = pool.pick().unwrap();
    /// pick.first_byte(); // the response head arrived
    /// let body = PickBody::new(Full::new(bytes::Bytes::from("tokens")), pick);
    /// assert_eq!(pool.snapshot()[0].in_flight, 1); // streaming
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, "tokens");
    /// assert_eq!(pool.snapshot()[0].in_flight, 0);
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct PickBody<B, E> {
        #[pin]
        inner: B,
        pick: Option<Pick<E>>,
        report: bool,
    }
}

impl<B, E> PickBody<B, E> {
    /// Wraps `inner`, holding `pick` until its end: a success at the end, a failure on an error.
    pub fn new(inner: B, pick: Pick<E>) -> Self {
        Self {
            inner,
            pick: Some(pick),
            report: true,
        }
    }

    /// Wraps `inner`, holding `pick` until its end, and reporting nothing then (the outcome
    /// was reported, or says nothing about the endpoint); an error of the body is still a
    /// failure.
    pub fn ignoring_outcome(inner: B, pick: Pick<E>) -> Self {
        Self {
            inner,
            pick: Some(pick),
            report: false,
        }
    }

    /// Wraps `inner` with no pick (a response whose outcome was already reported).
    pub fn without_pick(inner: B) -> Self {
        Self {
            inner,
            pick: None,
            report: false,
        }
    }

    /// The pick, while it is held.
    pub fn pick(&self) -> Option<&Pick<E>> {
        self.pick.as_ref()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The wrapped body; the pick is dropped without a report (cancelled).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body, E> Body for PickBody<B, E> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Err(_)) => {
                if let Some(pick) = this.pick.take() {
                    pick.failure();
                }
            }
            // The end, or the last frame: a server may stop polling once `is_end_stream` is
            // true.
            None => finish(this.pick, *this.report),
            Some(Ok(_)) if this.inner.is_end_stream() => finish(this.pick, *this.report),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish<E>(pick: &mut Option<Pick<E>>, report: bool) {
    if let Some(pick) = pick.take()
        && report
    {
        pick.success();
    }
}
