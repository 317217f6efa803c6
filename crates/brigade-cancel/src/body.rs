use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{CancelReason, CancelScope};

pin_project! {
    /// An [`http_body::Body`] that cancels its scope with [`CancelReason::ClientDisconnected`]
    /// when dropped in the middle of its stream.
    ///
    /// hyper 1.x says nothing when a client goes away mid-response: it drops the body. Wrap the
    /// response body in a `DisconnectBody` and the work producing it, running under the same
    /// scope (or a child), stops.
    ///
    /// # Which drops are disconnects
    ///
    /// A drop cancels the scope when, and only when, both hold:
    ///
    /// - the body was polled at least once (a poll that returned `Pending` counts: a client
    ///   that leaves while waiting for the first token is gone);
    /// - it had not reached its end: no poll returned the end or an error of the body's own,
    ///   and neither `is_end_stream()` (asked by hyper) nor the wrapped body after its last
    ///   frame said it had ended.
    ///
    /// So a body hyper drops without polling it cancels nothing: the answer to a `HEAD`
    /// request, a `304 Not Modified` or a `204`, whose head hyper sends alone. The same holds
    /// for a client that leaves in the instant between the handler's return and the first
    /// poll of the body; cover the handler itself with a [`CancelOnDrop`](crate::CancelOnDrop)
    /// if that matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_cancel::{CancelReason, CancelScope, DisconnectBody};
    /// use http_body_util::{BodyExt, StreamBody};
    /// use http_body::Frame;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tokens = futures::stream::iter(["Hel", "lo"].map(|t| {
    ///     Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(t)))
    /// }));
    /// let scope = CancelScope::new();
    /// let mut body = DisconnectBody::new(StreamBody::new(tokens), scope.clone());
    ///
    /// let _first = body.frame().await; // hyper sent the first token...
    /// drop(body); // ...and dropped the body: the client went away
    /// assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
    /// # }
    /// ```
    pub struct DisconnectBody<B> {
        #[pin]
        inner: B,
        scope: CancelScope,
        // Whether `poll_frame` ran at least once.
        polled: bool,
        // Written from `is_end_stream(&self)` too, hence atomic; only this body touches it.
        ended: AtomicBool,
    }

    impl<B> PinnedDrop for DisconnectBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.polled && !this.ended.load(Ordering::Relaxed) {
                this.scope.cancel(CancelReason::ClientDisconnected);
            }
        }
    }
}

impl<B> DisconnectBody<B> {
    /// Wraps `inner`, cancelling `scope` if dropped in the middle of its stream (see
    /// [which drops are disconnects](Self#which-drops-are-disconnects)).
    pub fn new(inner: B, scope: CancelScope) -> Self {
        Self {
            inner,
            scope,
            polled: false,
            ended: AtomicBool::new(false),
        }
    }

    /// The scope cancelled on disconnect.
    pub fn scope(&self) -> &CancelScope {
        &self.scope
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Whether the body is known to have reached its end (or its own error), so dropping it
    /// cancels nothing.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

impl<B: Body> Body for DisconnectBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        *this.polled = true;
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            // The end, or a failure of the body's own: not a disconnect.
            Poll::Ready(None | Some(Err(_))) => this.ended.store(true, Ordering::Relaxed),
            // The last frame: hyper may drop the body without asking `is_end_stream` again.
            Poll::Ready(Some(Ok(_))) => {
                if this.inner.is_end_stream() {
                    this.ended.store(true, Ordering::Relaxed);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // hyper stops polling, and drops the body, once this says so.
        let end = self.inner.is_end_stream();
        if end {
            self.ended.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for DisconnectBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DisconnectBody")
            .field("inner", &self.inner)
            .field("scope", &self.scope)
            .field("polled", &self.polled)
            .field("ended", &self.is_ended())
            .finish()
    }
}
