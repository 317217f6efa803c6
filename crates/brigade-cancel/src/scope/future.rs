use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::node::Node;
use crate::{CancelReason, CancelScope, Cancelled};

/// Waits until a [`CancelScope`] is cancelled; yields the reason.
///
/// Returned by [`CancelScope::cancelled`].
#[must_use = "futures do nothing unless polled"]
pub struct WaitCancelled<'a> {
    node: &'a Node,
    /// Where this waiter's waker sits in the node, once registered.
    key: Option<usize>,
}

impl<'a> WaitCancelled<'a> {
    pub(crate) fn new(scope: &'a CancelScope) -> Self {
        Self {
            node: scope.node(),
            key: None,
        }
    }
}

impl Future for WaitCancelled<'_> {
    type Output = CancelReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CancelReason> {
        let this = &mut *self;
        match this.node.poll_reason(&mut this.key, cx.waker()) {
            Some(reason) => {
                // The cancel took every waker with it.
                this.key = None;
                Poll::Ready(reason)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for WaitCancelled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.node.remove_waker(key);
        }
    }
}

impl fmt::Debug for WaitCancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCancelled")
            .field("is_cancelled", &self.node.is_cancelled())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Waits until a [`CancelScope`] is cancelled; yields the reason. Owns the scope.
    ///
    /// Returned by [`CancelScope::cancelled_owned`]. Equivalent to
    /// `async move { scope.cancelled().await }`; it waits on the scope's
    /// [token](CancelScope::token).
    #[must_use = "futures do nothing unless polled"]
    pub struct WaitCancelledOwned {
        scope: CancelScope,
        #[pin]
        wait: WaitForCancellationFutureOwned,
    }
}

impl WaitCancelledOwned {
    pub(crate) fn new(scope: CancelScope) -> Self {
        let wait = scope.token().cancelled_owned();
        Self { scope, wait }
    }
}

impl Future for WaitCancelledOwned {
    type Output = CancelReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CancelReason> {
        let this = self.project();
        if let Some(reason) = this.scope.reason() {
            return Poll::Ready(reason);
        }
        ready!(this.wait.poll(cx));
        // The token is cancelled after the reason is set.
        Poll::Ready(
            this.scope
                .reason()
                .expect("a scope's token is cancelled only once the scope has its reason"),
        )
    }
}

impl fmt::Debug for WaitCancelledOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCancelledOwned")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Runs a future until it completes or its [`CancelScope`] is cancelled.
    ///
    /// Returned by [`CancelScope::run_until_cancelled`]. Yields `Ok` with the future's output,
    /// or `Err(Cancelled)` with the reason; cancellation is checked before each poll, and
    /// the task registers for the cancel only while the future is pending.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunUntilCancelled<'a, F> {
        #[pin]
        cancelled: WaitCancelled<'a>,
        #[pin]
        future: F,
    }
}

impl<'a, F> RunUntilCancelled<'a, F> {
    pub(crate) fn new(scope: &'a CancelScope, future: F) -> Self {
        Self {
            cancelled: WaitCancelled::new(scope),
            future,
        }
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Result<F::Output, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Checked before each poll with one atomic load: a cancelled scope never polls the
        // future again. The waker is registered (a lock) only when the future is pending, so
        // a future that is ready at once (a token already in a buffer) costs no lock.
        if !this.cancelled.node.is_cancelled()
            && let Poll::Ready(output) = this.future.poll(cx)
        {
            return Poll::Ready(Ok(output));
        }
        // Registering checks the reason under the node's lock: a cancel that came after the
        // load above is seen here, and one that comes later wakes this task.
        let reason = ready!(this.cancelled.as_mut().poll(cx));
        Poll::Ready(Err(Cancelled::new(reason)))
    }
}

impl<F> fmt::Debug for RunUntilCancelled<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunUntilCancelled")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Runs a future until it completes or its [`CancelScope`] is cancelled. Owns the scope.
    ///
    /// Returned by [`CancelScope::run_until_cancelled_owned`].
    #[must_use = "futures do nothing unless polled"]
    pub struct RunUntilCancelledOwned<F> {
        #[pin]
        cancelled: WaitCancelledOwned,
        #[pin]
        future: F,
    }
}

impl<F> RunUntilCancelledOwned<F> {
    pub(crate) fn new(scope: CancelScope, future: F) -> Self {
        Self {
            cancelled: WaitCancelledOwned::new(scope),
            future,
        }
    }
}

impl<F: Future> Future for RunUntilCancelledOwned<F> {
    type Output = Result<F::Output, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(reason) = this.cancelled.poll(cx) {
            return Poll::Ready(Err(Cancelled::new(reason)));
        }
        this.future.poll(cx).map(Ok)
    }
}

impl<F> fmt::Debug for RunUntilCancelledOwned<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunUntilCancelledOwned")
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}
