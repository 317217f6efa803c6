use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::ConcurrencyPermit;

pin_project! {
    /// An [`http_body::Body`] that holds a permit until the stream ends, fails, or is
    /// dropped: a [`ConcurrencyPermit`] (the default), an
    /// [`AdaptivePermit`](super::adaptive::AdaptivePermit), or any value whose drop gives
    /// something back.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_limit::{ConcurrencyLimit, PermitBody};
    /// use http_body_util::{BodyExt, Full};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let bulkhead = ConcurrencyLimit::builder().max_in_flight(1).build().unwrap();
    /// let permit = bulkhead.acquire().await.unwrap();
    /// let body = PermitBody::new(Full::new(bytes::Bytes::from("tokens")), permit);
    /// assert_eq!(bulkhead.in_flight(), 1); // the handler returned; the stream has not ended
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, "tokens");
    /// assert_eq!(bulkhead.in_flight(), 0);
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct PermitBody<B, P = ConcurrencyPermit> {
        #[pin]
        inner: B,
        permit: Option<P>,
    }
}

impl<B, P> PermitBody<B, P> {
    /// Wraps `inner`, holding `permit` until its end.
    pub fn new(inner: B, permit: P) -> Self {
        Self {
            inner,
            permit: Some(permit),
        }
    }

    /// Wraps `inner` with no permit (a response that bypassed the limit, or its rejection).
    pub fn without_permit(inner: B) -> Self {
        Self {
            inner,
            permit: None,
        }
    }

    /// Whether the permit is still held.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// The permit, while it is held.
    pub fn permit(&self) -> Option<&P> {
        self.permit.as_ref()
    }

    /// The permit, mutably, while it is held (to record what the stream showed, for an
    /// [`AdaptivePermit`](super::adaptive::AdaptivePermit)).
    pub fn permit_mut(&mut self) -> Option<&mut P> {
        self.permit.as_mut()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The wrapped body; the permit is released.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body, P> Body for PermitBody<B, P> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        // Released at the end, on an error, or after the last frame: a server may stop
        // polling once `is_end_stream` is true.
        if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
            *this.permit = None;
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
