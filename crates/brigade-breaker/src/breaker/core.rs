//! The state machine shared by a breaker's clones, handles and permits.
//!
//! # Invariants and lock order
//!
//! - The hot path, a call granted and recorded while closed, takes no lock and allocates
//!   nothing: one load of the state word to grant, then (to record) at most one clock read, the
//!   window's cursor `fetch_add`, a load of the slot, a second load of the state word for the
//!   epoch, and a load of `needs_check`. The clock is read only if the configuration needs it
//!   (slow-call detection, or a time window).
//! - Every transition takes the `cold` lock, then changes the state word by compare-and-swap.
//!   Nothing else is ever locked while `cold` is held, and the listener is called after it is
//!   released. So transitions are serialized, and none is lost: a racing outcome either sees
//!   the new epoch and is dropped, or its own compare-and-swap fails and it retries against the
//!   new word.
//! - `open_until` is written only under `cold`, before the compare-and-swap (release) that
//!   publishes the open state; a reader that loads (acquire) an open word reads the deadline of
//!   that open period or of a later one (in which case its own compare-and-swap fails).
//! - The window is reset under `cold` before a transition into a recording state (closed,
//!   metrics only). An outcome of the ending epoch that passed its epoch check just before
//!   may still land in the fresh window (one sample each, see `window`); it never trips the
//!   new epoch, since `trip` compares the whole word it was evaluated against.
//! - `needs_check` is a hint, read and written without ordering. Outcomes racing below the
//!   minimum number of calls can leave it unset while the window holds a failure; that only
//!   delays the threshold check to the next failed or slow call.
//! - A permit's epoch is compared modulo 2^29 (see `state`). A probe ticket whose epoch wrapped
//!   back to the current one finds no slot of its own to hand back (`in_flight` may be zero),
//!   so the probe counters are decremented with `checked_sub` and never spill into the epoch.
//! - [`Core::state`] reports an open breaker whose open period has ended as half-open; the
//!   word moves (and listeners hear of it) when the next caller asks for a permit.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{State, Word};
use crate::config::{CircuitBreakerBuilder, OpenDuration};
use crate::listener::{Listener, Transition, Trigger};
use crate::loom::{
    AtomicBool, AtomicU32, AtomicU64, CachePadded, Mutex, Ordering::AcqRel, Ordering::Acquire,
    Ordering::Relaxed, Ordering::Release, lock,
};
use crate::window::{FAILED, SLOW, Totals, Window};
use crate::{Outcome, Rejected};

/// What a permit was granted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Kind {
    /// Closed: recorded, may trip.
    Closed = 0,
    /// Metrics only: recorded, never trips.
    MetricsOnly = 1,
    /// A half-open probe: holds one of the probe slots.
    Probe = 2,
    /// Disabled: nothing recorded.
    Passthrough = 3,
    /// The outcome was already reported.
    Done = 4,
}

/// A granted call, remembered by its permit.
///
/// Two plain words (kind and epoch packed in one), so that moving a permit around is two
/// register moves: a byte-sized field here made the compiler spill and reload it through the
/// stack, which cost more than the breaker's own atomics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    /// `epoch << 3 | kind`.
    bits: u64,
    /// Nanoseconds since `base` at grant time, when slow calls are detected; else zero.
    start: u64,
}

impl Ticket {
    const fn new(kind: Kind, epoch: u64, start: u64) -> Self {
        Self {
            bits: (epoch << 3) | kind as u64,
            start,
        }
    }

    pub(crate) const fn kind(self) -> Kind {
        match self.bits & 0b111 {
            0 => Kind::Closed,
            1 => Kind::MetricsOnly,
            2 => Kind::Probe,
            3 => Kind::Passthrough,
            _ => Kind::Done,
        }
    }

    const fn epoch(self) -> u64 {
        self.bits >> 3
    }

    /// Takes the ticket out, leaving a [`Kind::Done`] one behind.
    pub(crate) const fn take(&mut self) -> Self {
        let ticket = *self;
        self.bits |= 0b111;
        ticket
    }
}

struct Settings {
    failure_rate: f64,
    /// Slow-call duration in nanoseconds, and the rate threshold.
    slow: Option<(u64, f64)>,
    consecutive: Option<u32>,
    minimum_calls: u64,
    open: OpenDuration,
    max_retry_after: Duration,
    /// `retry_after` of a rejection while half-open with every probe slot taken.
    probes_busy_retry_after: Duration,
    probes: u32,
    successes: u32,
}

/// State only touched by transitions, under the lock.
struct Cold {
    /// Trips since the breaker last closed: the escalation step.
    trips: u32,
    /// SplitMix64 state of the jitter.
    rng: u64,
}

pub(crate) struct Core {
    word: AtomicU64,
    needs_check: AtomicBool,
    open_until: AtomicU64,
    window: Window,
    consecutive: CachePadded<AtomicU32>,
    rejections: CachePadded<AtomicU64>,
    cold: Mutex<Cold>,
    settings: Settings,
    base: Instant,
    listener: Option<Arc<dyn Listener>>,
}

/// A snapshot's raw parts.
pub(crate) struct Snapshot {
    pub(crate) state: State,
    pub(crate) totals: Totals,
    pub(crate) rejections: u64,
    pub(crate) probes_in_flight: u32,
}

impl Core {
    pub(crate) fn new(builder: CircuitBreakerBuilder) -> Self {
        let seed = builder.seed.unwrap_or_else(random_seed);
        Self {
            word: AtomicU64::new(Word::new(State::Closed, 0).0),
            needs_check: AtomicBool::new(false),
            open_until: AtomicU64::new(0),
            window: Window::new(builder.window.kind),
            consecutive: CachePadded(AtomicU32::new(0)),
            rejections: CachePadded(AtomicU64::new(0)),
            cold: Mutex::new(Cold {
                trips: 0,
                rng: seed,
            }),
            settings: Settings {
                failure_rate: builder.failure_rate,
                slow: builder
                    .slow
                    .map(|(d, rate)| (u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), rate)),
                consecutive: builder.consecutive_failures,
                minimum_calls: u64::from(builder.minimum_calls),
                open: builder.open,
                max_retry_after: builder.max_retry_after,
                probes_busy_retry_after: builder.open.base.min(PROBES_BUSY_RETRY_AFTER),
                probes: builder.probes,
                successes: builder.successes,
            },
            base: Instant::now(),
            listener: builder.listener,
        }
    }

    /// Nanoseconds since the breaker was built, on tokio's clock.
    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// The clock at grant time, if slow calls are detected.
    #[inline]
    fn start(&self) -> u64 {
        if self.settings.slow.is_some() {
            self.now()
        } else {
            0
        }
    }

    /// The state as a caller sees it: an open breaker whose open period has ended reads
    /// half-open (with no probe in flight), since the next caller to ask becomes its first
    /// probe. The word itself moves on that caller's request.
    pub(crate) fn state(&self) -> State {
        self.visible_state(Word(self.word.load(Acquire)))
    }

    fn visible_state(&self, word: Word) -> State {
        match word.state() {
            State::Open if self.now() >= self.open_until.load(Acquire) => State::HalfOpen,
            state => state,
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let word = Word(self.word.load(Acquire));
        Snapshot {
            state: self.visible_state(word),
            totals: self.window.totals(self.now()),
            rejections: self.rejections.load(Relaxed),
            probes_in_flight: word.in_flight(),
        }
    }

    /// Grants a call, or says why not.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Ticket, Rejected> {
        let mut word = Word(self.word.load(Acquire));
        loop {
            let (kind, epoch) = match word.state() {
                State::Closed => (Kind::Closed, word.epoch()),
                State::MetricsOnly => (Kind::MetricsOnly, word.epoch()),
                State::Disabled => (Kind::Passthrough, word.epoch()),
                State::ForcedOpen => {
                    return Err(self.reject(State::ForcedOpen, self.settings.open.base));
                }
                State::Open => {
                    let now = self.now();
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return Err(self.reject(State::Open, Duration::from_nanos(until - now)));
                    }
                    match self.half_open(word) {
                        Ok(ticket) => return Ok(ticket),
                        Err(actual) => {
                            word = actual;
                            continue;
                        }
                    }
                }
                State::HalfOpen => {
                    if word.in_flight() >= self.settings.probes {
                        return Err(
                            self.reject(State::HalfOpen, self.settings.probes_busy_retry_after)
                        );
                    }
                    let taken = word.with_probes(word.in_flight() + 1, word.successes());
                    match self
                        .word
                        .compare_exchange_weak(word.0, taken.0, AcqRel, Acquire)
                    {
                        Ok(_) => (Kind::Probe, word.epoch()),
                        Err(actual) => {
                            word = Word(actual);
                            continue;
                        }
                    }
                }
            };
            let start = if kind == Kind::Passthrough {
                0
            } else {
                self.start()
            };
            return Ok(Ticket::new(kind, epoch, start));
        }
    }

    fn reject(&self, state: State, retry_after: Duration) -> Rejected {
        self.rejections.fetch_add(1, Relaxed);
        if let Some(listener) = &self.listener {
            listener.on_rejected(state, retry_after);
        }
        Rejected::new(retry_after, state)
    }

    /// Open → half-open, granting the caller the first probe; or the word that changed.
    #[cold]
    fn half_open(&self, open: Word) -> Result<Ticket, Word> {
        let guard = lock(&self.cold);
        let probing = open.next(State::HalfOpen).with_probes(1, 0);
        if let Err(actual) = self
            .word
            .compare_exchange(open.0, probing.0, AcqRel, Acquire)
        {
            return Err(Word(actual));
        }
        drop(guard);
        self.emit(Transition {
            from: State::Open,
            to: State::HalfOpen,
            trigger: Trigger::OpenElapsed,
            open_for: None,
        });
        Ok(Ticket::new(Kind::Probe, probing.epoch(), self.start()))
    }

    /// Records a finished call.
    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.kind() == Kind::Done {
            return;
        }
        let (failed, hint) = match outcome {
            Outcome::Success => (false, None),
            Outcome::Failure { retry_after } => (true, retry_after),
            Outcome::Ignored => {
                if ticket.kind() == Kind::Probe {
                    self.release(ticket);
                }
                return;
            }
        };
        if ticket.kind() == Kind::Passthrough {
            return;
        }
        let now = if self.settings.slow.is_some() || self.window.needs_time() {
            self.now()
        } else {
            0
        };
        let slow = match self.settings.slow {
            Some((threshold, _)) => now.saturating_sub(ticket.start) >= threshold,
            None => false,
        };
        if ticket.kind() == Kind::Probe {
            if failed || slow {
                self.probe_failed(ticket, hint);
            } else {
                self.probe_succeeded(ticket);
            }
            return;
        }
        let word = Word(self.word.load(Acquire));
        if word.epoch() != ticket.epoch() {
            return;
        }
        let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        self.window.record(now, bits);
        if self.settings.consecutive.is_some() {
            if failed {
                self.consecutive.fetch_add(1, Relaxed);
            } else if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
        }
        if ticket.kind() == Kind::Closed && (bits != 0 || self.needs_check.load(Relaxed)) {
            self.evaluate(word, now, hint);
        }
    }

    /// Checks the thresholds after a recorded call, and trips if one is reached.
    #[cold]
    fn evaluate(&self, word: Word, now: u64, hint: Option<Duration>) {
        let totals = self.window.totals(now);
        let consecutive = self.consecutive.load(Relaxed);
        if totals.calls < self.settings.minimum_calls {
            // Successes must look again once the window holds enough calls.
            let pending = totals.failures + totals.slow > 0 || consecutive > 0;
            if pending != self.needs_check.load(Relaxed) {
                self.needs_check.store(pending, Relaxed);
            }
            return;
        }
        if self.needs_check.load(Relaxed) {
            self.needs_check.store(false, Relaxed);
        }
        let calls = totals.calls as f64;
        let trigger = if self
            .settings
            .consecutive
            .is_some_and(|limit| consecutive >= limit)
        {
            Trigger::ConsecutiveFailures
        } else if totals.failures as f64 * 100.0 >= self.settings.failure_rate * calls {
            Trigger::FailureRate
        } else if self
            .settings
            .slow
            .is_some_and(|(_, rate)| totals.slow as f64 * 100.0 >= rate * calls)
        {
            Trigger::SlowCallRate
        } else {
            return;
        };
        self.trip(word, trigger, hint);
    }

    /// Closed → open.
    #[cold]
    fn trip(&self, closed: Word, trigger: Trigger, hint: Option<Duration>) {
        let mut guard = lock(&self.cold);
        if self.word.load(Acquire) != closed.0 {
            return; // Another outcome tripped it first, or a manual switch happened.
        }
        let open_for = self.open_for(&mut guard, hint);
        self.open_until
            .store(self.now().saturating_add(nanos(open_for)), Release);
        if self
            .word
            .compare_exchange(closed.0, closed.next(State::Open).0, AcqRel, Acquire)
            .is_err()
        {
            return;
        }
        guard.trips = guard.trips.saturating_add(1);
        self.consecutive.store(0, Relaxed);
        self.needs_check.store(false, Relaxed);
        drop(guard);
        self.emit(Transition {
            from: State::Closed,
            to: State::Open,
            trigger,
            open_for: Some(open_for),
        });
    }

    fn probe_succeeded(&self, ticket: Ticket) {
        loop {
            let word = Word(self.word.load(Acquire));
            if word.state() != State::HalfOpen || word.epoch() != ticket.epoch() {
                return;
            }
            // A probe of this epoch holds a slot, so `in_flight` is at least one; zero means the
            // ticket is from an epoch a multiple of 2^29 transitions ago that the counter wrapped back to.
            let Some(in_flight) = word.in_flight().checked_sub(1) else {
                return;
            };
            let successes = word.successes() + 1;
            if successes < self.settings.successes {
                let next = word.with_probes(in_flight, successes);
                if self
                    .word
                    .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            let mut guard = lock(&self.cold);
            if self.word.load(Acquire) != word.0 {
                continue;
            }
            self.reset_recording();
            if self
                .word
                .compare_exchange(word.0, word.next(State::Closed).0, AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            guard.trips = 0;
            drop(guard);
            self.emit(Transition {
                from: State::HalfOpen,
                to: State::Closed,
                trigger: Trigger::ProbesSucceeded,
                open_for: None,
            });
            return;
        }
    }

    fn probe_failed(&self, ticket: Ticket, hint: Option<Duration>) {
        let mut guard = lock(&self.cold);
        let mut open_for = None;
        loop {
            let word = Word(self.word.load(Acquire));
            if word.state() != State::HalfOpen || word.epoch() != ticket.epoch() {
                return;
            }
            let duration = *open_for.get_or_insert_with(|| self.open_for(&mut guard, hint));
            self.open_until
                .store(self.now().saturating_add(nanos(duration)), Release);
            if self
                .word
                .compare_exchange(word.0, word.next(State::Open).0, AcqRel, Acquire)
                .is_ok()
            {
                break;
            }
        }
        guard.trips = guard.trips.saturating_add(1);
        drop(guard);
        self.emit(Transition {
            from: State::HalfOpen,
            to: State::Open,
            trigger: Trigger::ProbeFailed,
            open_for,
        });
    }

    /// Hands a probe slot back without recording anything.
    pub(crate) fn release(&self, ticket: Ticket) {
        let mut word = Word(self.word.load(Acquire));
        while word.state() == State::HalfOpen && word.epoch() == ticket.epoch() {
            // Zero: a ticket of a wrapped-around epoch (see `probe_succeeded`).
            let Some(in_flight) = word.in_flight().checked_sub(1) else {
                return;
            };
            let next = word.with_probes(in_flight, word.successes());
            match self
                .word
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => return,
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// Switches to a manual state (or back to closed).
    pub(crate) fn switch(&self, to: State) {
        let mut guard = lock(&self.cold);
        let from = loop {
            let word = Word(self.word.load(Acquire));
            if word.state() == to {
                return;
            }
            if matches!(to, State::Closed | State::MetricsOnly) {
                self.reset_recording();
            }
            if self
                .word
                .compare_exchange(word.0, word.next(to).0, AcqRel, Acquire)
                .is_ok()
            {
                break word.state();
            }
        };
        if to == State::Closed {
            guard.trips = 0;
        }
        drop(guard);
        self.emit(Transition {
            from,
            to,
            trigger: Trigger::Manual,
            open_for: None,
        });
    }

    fn reset_recording(&self) {
        self.window.reset();
        self.consecutive.store(0, Relaxed);
        self.needs_check.store(false, Relaxed);
    }

    /// The open duration of the next trip.
    fn open_for(&self, cold: &mut Cold, hint: Option<Duration>) -> Duration {
        let open = self.settings.open;
        let steps = i32::try_from(cold.trips.min(64)).unwrap_or(64);
        let mut secs = open.base.as_secs_f64() * open.multiplier.powi(steps);
        if open.jitter > 0.0 {
            let unit = (splitmix64(&mut cold.rng) >> 11) as f64 / (1u64 << 53) as f64;
            secs *= (2.0 * open.jitter).mul_add(unit, 1.0 - open.jitter);
        }
        // NaN cannot arise from a validated configuration (finite multiplier); capped anyway,
        // since `Duration::from_secs_f64` panics on it.
        let mut duration = if secs.is_nan() || secs >= open.max.as_secs_f64() {
            open.max
        } else {
            Duration::from_secs_f64(secs).max(Duration::from_millis(1))
        };
        if let Some(hint) = hint {
            duration = duration.max(hint.min(self.settings.max_retry_after));
        }
        duration
    }

    fn emit(&self, transition: Transition) {
        let open_ms = transition.open_for.map(|d| d.as_millis());
        if transition.to == State::Open {
            tracing::warn!(
                target: "brigade_breaker",
                from = %transition.from,
                trigger = ?transition.trigger,
                open_ms,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                target: "brigade_breaker",
                from = %transition.from,
                to = %transition.to,
                trigger = ?transition.trigger,
                "circuit breaker changed state"
            );
        }
        if let Some(listener) = &self.listener {
            listener.on_transition(&transition);
        }
    }

    #[cfg(all(test, loom))]
    pub(crate) fn force_word(&self, word: Word) {
        self.word.store(word.0, Release);
    }
}

/// The most a rejection for a half-open breaker with every probe slot taken asks a caller to
/// wait (less if the base open duration is shorter): a slot frees up as soon as a probe ends,
/// so the full open duration would be far too long.
const PROBES_BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0x5eed_u64)
}
