use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::ConcurrencyPermit;

pin_project! {
    /// An [`http_body::Body`] that holds a [`ConcurrencyPermit`] until the stream ends, fails,
    /// or is dropped.
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
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<ConcurrencyPermit>,
    }
}

impl<B> PermitBody<B> {
    /// Wraps `inner`, holding `permit` until its end.
    pub fn new(inner: B, permit: ConcurrencyPermit) -> Self {
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

impl<B: Body> Body for PermitBody<B> {
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
