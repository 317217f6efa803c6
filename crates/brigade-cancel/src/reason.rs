use std::fmt;
use std::sync::Arc;

/// Why a [`CancelScope`](crate::CancelScope) was cancelled.
///
/// The first reason given to a scope wins and stays readable for as long as the scope lives.
/// A scope cancelled because an ancestor was reports the ancestor's reason. Cloning is cheap:
/// a custom reason is shared, not copied.
///
/// # Examples
///
/// ```
/// use brigade_cancel::{CancelReason, CancelScope};
///
/// let scope = CancelScope::new();
/// scope.cancel(CancelReason::Shutdown);
/// scope.cancel(CancelReason::ClientDisconnected); // too late: the first reason wins
/// assert_eq!(scope.reason(), Some(CancelReason::Shutdown));
///
/// let custom = CancelReason::custom("user pressed stop");
/// assert_eq!(custom.as_str(), "user pressed stop");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// The client went away: hyper dropped the response body or the service future.
    ClientDisconnected,
    /// The scope's deadline, or an ancestor's, passed.
    DeadlineExceeded,
    /// The process is shutting down and the grace period is over.
    Shutdown,
    /// A reason of the caller's own.
    Custom(Arc<str>),
}

impl CancelReason {
    /// A reason of the caller's own.
    pub fn custom(reason: impl AsRef<str>) -> Self {
        Self::Custom(Arc::from(reason.as_ref()))
    }

    /// A short, stable label for logs and metrics: `client_disconnected`, `deadline_exceeded`,
    /// `shutdown`, or the custom text.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ClientDisconnected => "client_disconnected",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Shutdown => "shutdown",
            Self::Custom(reason) => reason,
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientDisconnected => f.write_str("client disconnected"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::Shutdown => f.write_str("shutting down"),
            Self::Custom(reason) => f.write_str(reason),
        }
    }
}

impl From<&str> for CancelReason {
    fn from(reason: &str) -> Self {
        Self::custom(reason)
    }
}

impl From<String> for CancelReason {
    fn from(reason: String) -> Self {
        Self::Custom(Arc::from(reason))
    }
}
