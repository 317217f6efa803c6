use std::error::Error;
use std::fmt;

use crate::CancelReason;

/// The work did not finish: its scope was cancelled first.
///
/// Returned by [`CancelScope::run_until_cancelled`](crate::CancelScope::run_until_cancelled) and
/// its owned variant. The [`reason`](Self::reason) says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancelled {
    reason: CancelReason,
}

impl Cancelled {
    /// A cancellation with the given reason.
    pub const fn new(reason: CancelReason) -> Self {
        Self { reason }
    }

    /// Why the scope was cancelled.
    pub const fn reason(&self) -> &CancelReason {
        &self.reason
    }

    /// Takes the reason out.
    pub fn into_reason(self) -> CancelReason {
        self.reason
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cancelled: {}", self.reason)
    }
}

impl Error for Cancelled {}

/// A shutdown configuration that cannot work, rejected when it is built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// The hard deadline must leave room after the grace period: `hard_deadline >= grace`.
    HardDeadlineBeforeGrace,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HardDeadlineBeforeGrace => {
                f.write_str("shutdown hard deadline is shorter than its grace period")
            }
        }
    }
}

impl Error for InvalidConfig {}
