use std::fmt;

use crate::{CancelReason, CancelScope};

/// Cancels a [`CancelScope`] with a given reason when dropped, unless disarmed.
///
/// Hold one across work whose abandonment should stop the work it started: a handler future
/// that hyper drops when the client goes away, for instance.
///
/// # Examples
///
/// ```
/// use brigade_cancel::{CancelOnDrop, CancelReason, CancelScope};
///
/// let scope = CancelScope::new();
/// let guard = CancelOnDrop::new(scope.clone(), CancelReason::ClientDisconnected);
/// drop(guard);
/// assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
///
/// let scope = CancelScope::new();
/// let guard = scope.clone().drop_guard(CancelReason::ClientDisconnected);
/// let _scope = guard.disarm(); // the work finished: nothing to cancel
/// assert!(!scope.is_cancelled());
/// ```
#[must_use = "dropping the guard cancels the scope at once"]
pub struct CancelOnDrop {
    scope: Option<CancelScope>,
    reason: Option<CancelReason>,
}

impl CancelOnDrop {
    /// A guard that cancels `scope` with `reason` when dropped.
    pub fn new(scope: CancelScope, reason: impl Into<CancelReason>) -> Self {
        Self {
            scope: Some(scope),
            reason: Some(reason.into()),
        }
    }

    /// The guarded scope.
    pub fn scope(&self) -> &CancelScope {
        self.scope
            .as_ref()
            .expect("the scope is only taken by disarm or drop")
    }

    /// Disarms the guard and gives the scope back, not cancelled.
    pub fn disarm(mut self) -> CancelScope {
        self.scope
            .take()
            .expect("the scope is only taken by disarm or drop")
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let (Some(scope), Some(reason)) = (self.scope.take(), self.reason.take()) {
            scope.cancel(reason);
        }
    }
}

impl fmt::Debug for CancelOnDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("scope", &self.scope)
            .field("reason", &self.reason)
            .finish()
    }
}
