use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{CancelReason, CancelScope};

pin_project! {
    /// An [`http_body::Body`] that cancels its scope with [`CancelReason::ClientDisconnected`]
    /// when dropped before its end.
    ///
    /// hyper 1.x says nothing when a client goes away mid-response: it drops the body. Wrap the
    /// response body in a `DisconnectBody` and the work producing it, running under the same
    /// scope (or a child), stops. A body that reached its end, or failed with an error of its
    /// own, does not cancel anything when dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_cancel::{CancelReason, CancelScope, DisconnectBody};
    /// use http_body_util::Full;
    ///
    /// let scope = CancelScope::new();
    /// let body = DisconnectBody::new(Full::new(bytes::Bytes::from("tokens...")), scope.clone());
    /// drop(body); // hyper dropped it before sending everything
    /// assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
    /// ```
    pub struct DisconnectBody<B> {
        #[pin]
        inner: B,
        scope: CancelScope,
        // Written from `is_end_stream(&self)` too, hence atomic; only this body touches it.
        ended: AtomicBool,
    }

    impl<B> PinnedDrop for DisconnectBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !this.ended.load(Ordering::Relaxed) {
                this.scope.cancel(CancelReason::ClientDisconnected);
            }
        }
    }
}

impl<B> DisconnectBody<B> {
    /// Wraps `inner`, cancelling `scope` if dropped before its end.
    pub fn new(inner: B, scope: CancelScope) -> Self {
        Self {
            inner,
            scope,
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

    /// Whether the body has reached its end (or its own error), so dropping it cancels nothing.
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
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            // The end, or a failure of the body's own: not a disconnect.
            Poll::Ready(None | Some(Err(_))) => this.ended.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(_))) => {}
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
            .field("ended", &self.is_ended())
            .finish()
    }
}
