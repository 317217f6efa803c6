//! Permits: a granted call that records its outcome, or hands its slot back when dropped.

use std::fmt;
use std::sync::Arc;

use super::core::{Core, Kind, Ticket};
use crate::Outcome;

/// Permission for one call, borrowed from the breaker; see
/// [`CircuitBreaker::try_acquire`](crate::CircuitBreaker::try_acquire).
///
/// Record the call's outcome with [`success`](Self::success), [`failure`](Self::failure) or
/// [`record`](Self::record). Dropped without an outcome (the call was cancelled), it records
/// nothing, and if it was a half-open probe its slot is handed back at once.
#[must_use = "a permit records nothing unless its outcome is reported"]
pub struct Permit<'a> {
    core: &'a Core,
    ticket: Ticket,
}

/// Permission for one call that owns a reference to the breaker, so it can travel with a
/// stream or a response body; see
/// [`CircuitBreaker::try_acquire_owned`](crate::CircuitBreaker::try_acquire_owned).
///
/// Behaves as [`Permit`]: dropped without an outcome, it records nothing and hands a probe
/// slot back.
#[must_use = "a permit records nothing unless its outcome is reported"]
pub struct OwnedPermit {
    core: Arc<Core>,
    ticket: Ticket,
}

macro_rules! permit_methods {
    () => {
        /// Records a success.
        #[inline]
        pub fn success(self) {
            self.record(Outcome::Success);
        }

        /// Records a failure without a `Retry-After` hint.
        #[inline]
        pub fn failure(self) {
            self.record(Outcome::FAILURE);
        }

        /// Records `outcome`. [`Outcome::Ignored`] records nothing, as a drop does.
        #[inline]
        pub fn record(mut self, outcome: Outcome) {
            self.core.complete(self.ticket.take(), outcome);
        }

        /// Whether this permit is a half-open probe: its outcome decides whether the breaker
        /// closes.
        pub fn is_probe(&self) -> bool {
            self.ticket.kind() == Kind::Probe
        }
    };
}

impl<'a> Permit<'a> {
    pub(crate) const fn new(core: &'a Core, ticket: Ticket) -> Self {
        Self { core, ticket }
    }

    permit_methods!();
}

impl OwnedPermit {
    pub(crate) const fn new(core: Arc<Core>, ticket: Ticket) -> Self {
        Self { core, ticket }
    }

    permit_methods!();
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.core.complete(self.ticket.take(), Outcome::Ignored);
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.core.complete(self.ticket.take(), Outcome::Ignored);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}
