//! Cancel scopes: a [`CancellationToken`] that knows why it was cancelled and when it must be.
//!
//! The tree itself (registration, cancellation, removal) lives in `node.rs`, with its
//! invariants and lock order.

mod future;
#[cfg(all(test, loom))]
mod loom_tests;
mod node;

pub use self::future::{
    RunUntilCancelled, RunUntilCancelledOwned, WaitCancelled, WaitCancelledOwned,
};

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::node::Node;
use crate::CancelReason;
use crate::time::deadline_after;

/// A cancel scope: a [`CancellationToken`] with a reason, an optional deadline and any number
/// of parents.
///
/// Cloning a scope gives another handle to the same scope. [`child`](Self::child) gives a new
/// scope that is cancelled, with the same reason, whenever this one is; cancelling the child
/// leaves the parent alone.
///
/// # Examples
///
/// ```
/// use brigade_cancel::{CancelReason, CancelScope};
///
/// let request = CancelScope::new();
/// let upstream_call = request.child();
///
/// request.cancel(CancelReason::ClientDisconnected);
/// assert!(upstream_call.is_cancelled());
/// assert_eq!(upstream_call.reason(), Some(CancelReason::ClientDisconnected));
/// ```
///
/// A deadline cancels the scope with [`CancelReason::DeadlineExceeded`]:
///
/// ```
/// use std::time::Duration;
/// use brigade_cancel::{CancelReason, CancelScope};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let scope = CancelScope::with_timeout(Duration::from_secs(30));
/// let reason = scope.cancelled().await;
/// assert_eq!(reason, CancelReason::DeadlineExceeded);
/// # }
/// ```
#[derive(Clone)]
pub struct CancelScope {
    node: Arc<Node>,
}

impl CancelScope {
    /// A new root scope with no deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// let scope = brigade_cancel::CancelScope::new();
    /// assert!(!scope.is_cancelled());
    /// assert_eq!(scope.deadline(), None);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            node: Node::root(None),
        }
    }

    /// A new root scope cancelled with [`CancelReason::DeadlineExceeded`] at `deadline`.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with the time driver enabled, unless the
    /// deadline has already passed (the scope is then cancelled at once).
    #[must_use]
    pub fn with_deadline(deadline: Instant) -> Self {
        let scope = Self {
            node: Node::root(Some(deadline)),
        };
        scope.start_timer(deadline);
        scope
    }

    /// A new root scope cancelled with [`CancelReason::DeadlineExceeded`] after `timeout`.
    ///
    /// A timeout longer than about 30 years (`Duration::MAX`, say) is taken as 30 years: the
    /// deadline saturates at a far instant instead of overflowing (see [Time](crate#time)).
    ///
    /// # Panics
    ///
    /// As [`with_deadline`](Self::with_deadline).
    #[must_use]
    pub fn with_timeout(timeout: Duration) -> Self {
        Self::with_deadline(deadline_after(Instant::now(), timeout))
    }

    /// A child scope: cancelled, with this scope's reason, whenever this scope is; it inherits
    /// this scope's deadline. Cancelling the child leaves this scope alone.
    ///
    /// Dropping every handle to the child removes it from this scope.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            node: Node::child(&self.node, self.node.deadline),
        }
    }

    /// A child scope with its own deadline; the earlier of `deadline` and the inherited one
    /// applies.
    ///
    /// # Panics
    ///
    /// As [`with_deadline`](Self::with_deadline), when `deadline` is earlier than the inherited
    /// deadline.
    #[must_use]
    pub fn child_with_deadline(&self, deadline: Instant) -> Self {
        let inherited = self.node.deadline;
        match inherited {
            // The parent's timer cancels this child at the inherited deadline.
            Some(inherited) if inherited <= deadline => self.child(),
            _ => {
                let scope = Self {
                    node: Node::child(&self.node, Some(deadline)),
                };
                scope.start_timer(deadline);
                scope
            }
        }
    }

    /// A child scope cancelled after `timeout` at the latest.
    ///
    /// A timeout longer than about 30 years saturates, as in [`with_timeout`](Self::with_timeout).
    ///
    /// # Panics
    ///
    /// As [`child_with_deadline`](Self::child_with_deadline).
    #[must_use]
    pub fn child_with_timeout(&self, timeout: Duration) -> Self {
        self.child_with_deadline(deadline_after(Instant::now(), timeout))
    }

    /// A scope cancelled when any one of `parents` is, with that parent's reason (.NET's linked
    /// token sources). Its deadline is the earliest of the parents'.
    ///
    /// The scope registers as a child of every parent; no task runs on its behalf. Dropping it
    /// removes it from each parent, so a linked scope dropped first leaves nothing behind.
    /// With no parents the result is a new root scope.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_cancel::{CancelReason, CancelScope};
    ///
    /// let request = CancelScope::new();
    /// let server = CancelScope::new();
    /// let work = CancelScope::linked([&request, &server]);
    ///
    /// server.cancel(CancelReason::Shutdown);
    /// assert_eq!(work.reason(), Some(CancelReason::Shutdown));
    /// assert!(!request.is_cancelled());
    /// ```
    #[must_use]
    pub fn linked<'a>(parents: impl IntoIterator<Item = &'a Self>) -> Self {
        let mut parents = parents.into_iter();
        let Some(first) = parents.next() else {
            return Self::new();
        };
        let others: Vec<&Self> = parents.collect();
        // Each parent's own timer cancels it, and so this scope, at its deadline; the node only
        // records the earliest for `deadline()` and `remaining()`.
        let deadline = others.iter().fold(first.node.deadline, |deadline, parent| {
            earliest(deadline, parent.node.deadline)
        });
        let scope = Self {
            node: Node::child(&first.node, deadline),
        };
        for parent in others {
            if !Node::link(&scope.node, &parent.node) {
                break;
            }
        }
        scope
    }

    /// Starts the timer of a scope whose own deadline is earlier than any it inherits.
    fn start_timer(&self, deadline: Instant) {
        if self.is_cancelled() {
            return;
        }
        if deadline <= Instant::now() {
            self.node.cancel(&CancelReason::DeadlineExceeded);
            return;
        }
        let timer = tokio::spawn(deadline_timer(Arc::downgrade(&self.node), deadline));
        self.node.set_timer(timer.abort_handle());
    }

    /// Cancels the scope and every descendant, with `reason` unless the scope is already
    /// cancelled.
    ///
    /// Returns `true` when this call cancelled the scope, `false` when it was already cancelled
    /// (the earlier reason stays).
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_cancel::{CancelReason, CancelScope};
    ///
    /// let scope = CancelScope::new();
    /// assert!(scope.cancel(CancelReason::custom("superseded")));
    /// assert!(!scope.cancel(CancelReason::Shutdown));
    /// assert_eq!(scope.reason(), Some(CancelReason::custom("superseded")));
    /// ```
    pub fn cancel(&self, reason: impl Into<CancelReason>) -> bool {
        self.node.cancel(&reason.into())
    }

    /// Whether the scope has been cancelled, by itself, a parent or its deadline.
    ///
    /// One atomic load.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }

    /// Why the scope was cancelled, or `None` while it is not.
    ///
    /// The first reason stays: once `Some`, the same reason is returned for as long as the
    /// scope lives.
    pub fn reason(&self) -> Option<CancelReason> {
        self.node.reason()
    }

    /// The deadline in force: the earliest of this scope's own and its parents'.
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.node.deadline
    }

    /// The time left before the deadline (zero once it has passed), or `None` without a
    /// deadline. Pass it on as the timeout of an upstream call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_cancel::CancelScope;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let scope = CancelScope::with_timeout(Duration::from_secs(10));
    /// tokio::time::sleep(Duration::from_secs(4)).await;
    /// assert_eq!(scope.remaining(), Some(Duration::from_secs(6)));
    /// # }
    /// ```
    pub fn remaining(&self) -> Option<Duration> {
        self.node
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// A tokio-util [`CancellationToken`] cancelled when this scope is, for code that takes a
    /// plain token (Brigade's retry, limit and SSE crates among them).
    ///
    /// The token observes the scope: cancelling it does not cancel the scope. Every call
    /// returns a handle to the same token, made on the first call.
    ///
    /// # Examples
    ///
    /// ```
    /// use brigade_cancel::{CancelReason, CancelScope};
    ///
    /// let scope = CancelScope::new();
    /// let token = scope.token();
    /// scope.cancel(CancelReason::ClientDisconnected);
    /// assert!(token.is_cancelled());
    /// ```
    #[must_use]
    pub fn token(&self) -> CancellationToken {
        self.node.token()
    }

    /// Waits until the scope is cancelled and yields the reason.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing, and a new call waits again.
    pub fn cancelled(&self) -> WaitCancelled<'_> {
        WaitCancelled::new(self)
    }

    /// As [`cancelled`](Self::cancelled), owning the scope, for `'static` futures.
    pub fn cancelled_owned(self) -> WaitCancelledOwned {
        WaitCancelledOwned::new(self)
    }

    /// Runs `future` until it completes or the scope is cancelled, whichever happens first.
    ///
    /// Cancellation is checked before each poll of `future`, so a scope that is already
    /// cancelled never polls it. On cancellation `future` is dropped and the result is
    /// `Err(Cancelled)` with the reason.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use brigade_cancel::{CancelReason, CancelScope};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let scope = CancelScope::with_timeout(Duration::from_millis(100));
    /// let slow = tokio::time::sleep(Duration::from_secs(5));
    /// let err = scope.run_until_cancelled(slow).await.unwrap_err();
    /// assert_eq!(err.reason(), &CancelReason::DeadlineExceeded);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `future` itself: dropping the returned future drops `future`.
    pub fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled::new(self, future)
    }

    /// As [`run_until_cancelled`](Self::run_until_cancelled), owning the scope, for `'static`
    /// futures (to spawn).
    pub fn run_until_cancelled_owned<F: Future>(self, future: F) -> RunUntilCancelledOwned<F> {
        RunUntilCancelledOwned::new(self, future)
    }

    /// A guard that cancels this scope with `reason` when dropped, unless
    /// [disarmed](crate::CancelOnDrop::disarm).
    pub fn drop_guard(self, reason: impl Into<CancelReason>) -> crate::CancelOnDrop {
        crate::CancelOnDrop::new(self, reason)
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }
}

impl Default for CancelScope {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelScope")
            .field("is_cancelled", &self.is_cancelled())
            .field("reason", &self.reason())
            .field("deadline", &self.node.deadline)
            .finish()
    }
}

async fn deadline_timer(node: Weak<Node>, deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    if let Some(node) = node.upgrade() {
        node.cancel(&CancelReason::DeadlineExceeded);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dropped_children_leave_no_residue_in_any_parent() {
        let first = CancelScope::new();
        let second = CancelScope::new();
        let linked = CancelScope::linked([&first, &second]);
        let child = first.child();
        assert_eq!(first.node.registered_children(), 2);
        assert_eq!(second.node.registered_children(), 1);
        drop(linked);
        drop(child);
        assert_eq!(first.node.registered_children(), 0);
        assert_eq!(second.node.registered_children(), 0);
        assert_eq!(Arc::strong_count(&first.node), 1);
        assert_eq!(Arc::strong_count(&second.node), 1);
        assert!(!first.is_cancelled() && !second.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_deadline_scope_stops_its_timer() {
        let parent = CancelScope::new();
        let child = parent.child_with_timeout(Duration::from_secs(60));
        let weak = Arc::downgrade(&child.node);
        drop(child);
        tokio::task::yield_now().await;
        assert!(weak.upgrade().is_none());
        assert_eq!(parent.node.registered_children(), 0);
        assert_eq!(Arc::strong_count(&parent.node), 1);
    }

    #[test]
    fn child_with_a_later_deadline_needs_no_timer() {
        // No runtime here: a child that only inherits a deadline must not spawn.
        let parent = CancelScope {
            node: Node::root(Some(Instant::now() + Duration::from_secs(5))),
        };
        let child = parent.child_with_deadline(Instant::now() + Duration::from_secs(10));
        assert_eq!(child.deadline(), parent.deadline());
    }

    #[test]
    fn deep_chains_cancel_and_drop_without_recursion() {
        let root = CancelScope::new();
        let mut leaf = root.clone();
        for _ in 0..200_000 {
            leaf = leaf.child();
        }
        root.cancel(CancelReason::Shutdown);
        assert_eq!(leaf.reason(), Some(CancelReason::Shutdown));
        drop(leaf);
        assert_eq!(Arc::strong_count(&root.node), 1);
    }

    #[test]
    fn slots_are_reused_and_reset() {
        let parent = CancelScope::new();
        let children: Vec<_> = (0..100).map(|_| parent.child()).collect();
        assert_eq!(parent.node.registered_children(), 100);
        drop(children);
        assert_eq!(parent.node.registered_children(), 0);
        let again = parent.child();
        parent.cancel(CancelReason::Shutdown);
        assert_eq!(again.reason(), Some(CancelReason::Shutdown));
    }
}
