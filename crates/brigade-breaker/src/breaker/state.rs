//! The breaker's state, and the packed word that holds it.
//!
//! # Invariants
//!
//! The word is one `AtomicU64`:
//!
//! | bits | field |
//! | --- | --- |
//! | 0..3 | [`State`] |
//! | 3..19 | half-open probes in flight |
//! | 19..35 | half-open probes that succeeded |
//! | 35..64 | epoch, one more on every transition (wraps after 2^29) |
//!
//! - The epoch changes on, and only on, a transition; every transition happens with the
//!   breaker's `cold` lock held (lock first, then the word's compare-and-swap). Without the lock,
//!   only the probe counters of a half-open word change, by compare-and-swap.
//! - A permit remembers the epoch it was granted in. An outcome whose epoch is no longer
//!   current is dropped: it belongs to a state that has ended.
//! - Probe counters are zero outside half-open.

use std::fmt;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls pass and are recorded; a threshold trips the breaker open.
    Closed,
    /// Calls are rejected until the open duration ends; the first call after it becomes a probe.
    Open,
    /// A limited number of probes pass at once; enough successes close the breaker, a failure
    /// reopens it.
    HalfOpen,
    /// Set by hand: every call is rejected until the state is changed by hand.
    ForcedOpen,
    /// Set by hand: every call passes and nothing is recorded.
    Disabled,
    /// Set by hand: every call passes and is recorded, but the breaker never trips.
    MetricsOnly,
}

impl State {
    const fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => Self::MetricsOnly,
        }
    }

    const fn bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
            Self::MetricsOnly => 5,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::ForcedOpen => "forced open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics only",
        })
    }
}

const STATE_MASK: u64 = 0b111;
const IN_FLIGHT_SHIFT: u32 = 3;
const SUCCESS_SHIFT: u32 = 19;
const EPOCH_SHIFT: u32 = 35;
const COUNTER_MASK: u64 = 0xFFFF;

/// A decoded view of the state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    /// A word in `state` at `epoch`, with no probes.
    pub(crate) const fn new(state: State, epoch: u64) -> Self {
        Self(state.bits() | (epoch << EPOCH_SHIFT))
    }

    pub(crate) const fn state(self) -> State {
        State::from_bits(self.0 & STATE_MASK)
    }

    pub(crate) const fn in_flight(self) -> u32 {
        ((self.0 >> IN_FLIGHT_SHIFT) & COUNTER_MASK) as u32
    }

    pub(crate) const fn successes(self) -> u32 {
        ((self.0 >> SUCCESS_SHIFT) & COUNTER_MASK) as u32
    }

    pub(crate) const fn epoch(self) -> u64 {
        self.0 >> EPOCH_SHIFT
    }

    /// The word of the next transition, to `state`.
    pub(crate) const fn next(self, state: State) -> Self {
        Self::new(state, (self.epoch() + 1) & (u64::MAX >> EPOCH_SHIFT))
    }

    /// The same word with other probe counters (each below 2^16).
    pub(crate) const fn with_probes(self, in_flight: u32, successes: u32) -> Self {
        let base = self.0 & (STATE_MASK | (u64::MAX << EPOCH_SHIFT));
        Self(base | ((in_flight as u64) << IN_FLIGHT_SHIFT) | ((successes as u64) << SUCCESS_SHIFT))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips_its_fields() {
        let word = Word::new(State::HalfOpen, 7).with_probes(3, 65_535);
        assert_eq!(word.state(), State::HalfOpen);
        assert_eq!(
            (word.in_flight(), word.successes(), word.epoch()),
            (3, 65_535, 7)
        );
        let next = word.next(State::Closed);
        assert_eq!(
            (
                next.state(),
                next.in_flight(),
                next.successes(),
                next.epoch()
            ),
            (State::Closed, 0, 0, 8)
        );
        let last = Word::new(State::Open, u64::MAX >> EPOCH_SHIFT);
        assert_eq!(last.next(State::HalfOpen).epoch(), 0);
    }
}
