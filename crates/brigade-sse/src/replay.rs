//! Replay for `Last-Event-ID`: a bounded ring of the latest events, under ids it issues.
//!
//! # Why the buffer issues the ids
//!
//! To tell "resume right after this id" from "this id has aged out" the buffer must know how ids
//! are ordered, and an opaque string says nothing. So [`Replay::push`] numbers events itself
//! with a sequence number `1, 2, 3, ...`: an id below the oldest one held has aged out, one
//! within the window resumes after it, anything else was never issued by this buffer. For the
//! same reason a caller cannot supply its own ids: an id the event already had is replaced. (An
//! application id, such as a message id from a database, belongs in the data.)
//!
//! # Why the ids carry an epoch
//!
//! Sequence numbers alone are not enough: after a restart a new buffer numbers from 1 again, and
//! a client that saw event 3 of the old process would "resume" after event 3 of the new one,
//! silently skipping or mixing events of two different streams. So every id is
//! `<epoch>-<sequence>`, the epoch in lowercase hex, and an id with another epoch is
//! [`ReplayMiss::Unknown`]. [`Replay::new`] picks a fresh epoch: 48 bits hashed from the wall
//! clock, the process id and a process-wide instance counter, with the randomly keyed hasher of
//! `std`'s `HashMap`, so two buffers (of this process, an earlier one or another server) share an
//! epoch only by a 1 in 2<sup>48</sup> chance and a client cannot predict it. Ids stay short
//! ASCII: `3f2a9c01d4e7-42` is 15 bytes. [`Replay::with_epoch`] takes the epoch from the caller
//! instead (a deployment generation, or a fixed value in tests); keeping it distinct is then the
//! caller's job.
//!
//! # Sharing
//!
//! A `Replay` is an `Arc` around a `Mutex`: clones share one buffer. The lock is held only to
//! push one event or to clone the events to replay, never across an `.await`.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Event;
use crate::error::ReplayMiss;

/// The most events room is made for up front.
const INITIAL_CAPACITY: usize = 64;

/// A bounded, shared buffer of the latest events, so a client reconnecting with `Last-Event-ID`
/// resumes right after the last event it saw.
///
/// Each pushed event gets the id `<epoch>-<sequence>`: the buffer's epoch in lowercase hex
/// (distinct for each buffer, see [`new`](Self::new)) and a sequence number counting from 1. An
/// id from another buffer, such as one issued before a server restart, is
/// [`ReplayMiss::Unknown`], never mistaken for one of this buffer's events.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use brigade_sse::{Event, Replay, ReplayMiss};
///
/// // A fixed epoch makes the ids predictable: `2a-1`, `2a-2`, ...
/// let replay = Replay::with_epoch(NonZeroUsize::new(2).unwrap(), 0x2a);
/// for token in ["a", "b", "c"] {
///     let (_seq, event) = replay.push(Event::default().data(token));
///     // ... send `event` (it carries its id) to the clients connected now ...
/// #   let _ = event;
/// }
///
/// // A client that saw `2a-2` gets event 3 again; one that saw `2a-3` is up to date.
/// assert_eq!(replay.events_after("2a-2")?, vec![(3, Event::default().id("2a-3")?.data("c"))]);
/// assert!(replay.events_after("2a-3")?.is_empty());
///
/// // Event 1 is gone: a client that saw nothing after it cannot resume.
/// assert_eq!(replay.events_after("2a-0"), Err(ReplayMiss::AgedOut { oldest_seq: Some(2) }));
/// // An id of another buffer (here: the process before a restart) is not resumed.
/// assert_eq!(replay.events_after("7f-2"), Err(ReplayMiss::Unknown));
/// assert_eq!(replay.events_after("2"), Err(ReplayMiss::Unknown));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Replay {
    inner: Arc<Mutex<Ring>>,
}

/// The shared state. Invariant: `events` holds the events with sequence numbers
/// `next_seq - events.len() .. next_seq`, at most `capacity` of them.
struct Ring {
    capacity: usize,
    epoch: u64,
    /// `<epoch in hex>-`: every id this buffer issues starts with it.
    prefix: Box<str>,
    events: VecDeque<Event>,
    next_seq: u64,
}

impl Replay {
    /// An empty buffer keeping the latest `capacity` events, with a fresh epoch.
    ///
    /// The epoch is 48 bits hashed from the wall clock, the process id and a per-process
    /// instance counter with a randomly keyed hasher: distinct from the epoch of any other
    /// buffer, in this process or another, but by a 1 in 2<sup>48</sup> chance.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self::with_epoch(capacity, fresh_epoch())
    }

    /// An empty buffer keeping the latest `capacity` events, issuing ids with `epoch` (written
    /// in lowercase hex: epoch `0x2a` issues `2a-1`, `2a-2`, ...).
    ///
    /// For a caller that manages epochs itself, such as a deployment generation, or for
    /// predictable ids in tests. Two buffers that may see the same clients must not share an
    /// epoch: an id of one would resume in the other.
    pub fn with_epoch(capacity: NonZeroUsize, epoch: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Ring {
                capacity: capacity.get(),
                epoch,
                prefix: format!("{epoch:x}-").into_boxed_str(),
                // Grown as events come: a large capacity costs nothing until it fills.
                events: VecDeque::with_capacity(capacity.get().min(INITIAL_CAPACITY)),
                next_seq: 1,
            })),
        }
    }

    /// The epoch of this buffer's ids.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Gives `event` the next id, `<epoch>-<sequence>`, keeps it (evicting the oldest event if
    /// full), and returns the sequence number and the event to send. Any id the event had is
    /// replaced.
    ///
    /// # Panics
    ///
    /// Panics if the sequence number would pass `u64::MAX` (after 2<sup>64</sup> - 1 events).
    pub fn push(&self, mut event: Event) -> (u64, Event) {
        let mut ring = self.lock();
        let seq = ring.next_seq;
        ring.next_seq = seq
            .checked_add(1)
            .expect("replay sequence number overflowed");
        event.set_valid_id(format!("{}{seq}", ring.prefix));
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        (seq, event)
    }

    /// The events after `last_event_id` with their sequence numbers, oldest first, to send
    /// before new ones to a client that reconnected with that `Last-Event-ID`. Empty if the
    /// client is up to date.
    ///
    /// `<epoch>-0` stands for "before the first event": it resumes from the start as long as
    /// event 1 is still held.
    ///
    /// To miss nothing between replay and live events, subscribe to live events first, then
    /// replay, then skip live events with sequence numbers not above the last one replayed
    /// (or, if nothing was replayed, the one in `last_event_id`: see [`seq_of`](Self::seq_of)).
    ///
    /// # Errors
    ///
    /// Returns [`ReplayMiss::AgedOut`] if the id was issued here but events after it have been
    /// evicted, and [`ReplayMiss::Unknown`] if this buffer never issued it: another epoch (an
    /// earlier process, another server), a sequence number not issued yet, or not an id of
    /// this form at all.
    pub fn events_after(&self, last_event_id: &str) -> Result<Vec<(u64, Event)>, ReplayMiss> {
        let ring = self.lock();
        let last = ring.seq_of(last_event_id).ok_or(ReplayMiss::Unknown)?;
        if last >= ring.next_seq {
            return Err(ReplayMiss::Unknown);
        }
        // `events.len() < next_seq`, so this does not underflow; `oldest >= 1`.
        let oldest = ring.next_seq - ring.events.len() as u64;
        if last + 1 < oldest {
            let oldest_seq = (!ring.events.is_empty()).then_some(oldest);
            return Err(ReplayMiss::AgedOut { oldest_seq });
        }
        // `oldest <= last + 1 <= next_seq`: the skip is at most `events.len()`.
        let skip = usize::try_from(last + 1 - oldest).unwrap_or(usize::MAX);
        Ok((last + 1..)
            .zip(ring.events.iter().skip(skip).cloned())
            .collect())
    }

    /// The sequence number in `id` if it has this buffer's form and epoch (`<epoch>-<sequence>`),
    /// whether or not that event was issued yet or is still held.
    ///
    /// For the bookkeeping around [`events_after`](Self::events_after): a client that is up to
    /// date gets no events back, and live events up to its own sequence number are to be
    /// skipped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use brigade_sse::Replay;
    ///
    /// let replay = Replay::with_epoch(NonZeroUsize::new(8).unwrap(), 0x2a);
    /// assert_eq!(replay.seq_of("2a-7"), Some(7));
    /// assert_eq!(replay.seq_of("2b-7"), None); // another buffer's id
    /// assert_eq!(replay.seq_of("7"), None);
    /// ```
    pub fn seq_of(&self, id: &str) -> Option<u64> {
        self.lock().seq_of(id)
    }

    /// The sequence number of the newest event, or `None` before the first
    /// [`push`](Self::push).
    pub fn last_seq(&self) -> Option<u64> {
        let next = self.lock().next_seq;
        (next > 1).then(|| next - 1)
    }

    /// How many events the buffer holds now.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether the buffer holds no event.
    pub fn is_empty(&self) -> bool {
        self.lock().events.is_empty()
    }

    /// How many events the buffer keeps at most.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every critical section leaves the ring consistent (the only panic, in `push`, comes
        // before any change), so a panic elsewhere cannot have left it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ring {
    fn seq_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&*self.prefix).and_then(parse_seq)
    }
}

/// A fresh 48-bit epoch: the wall clock, the process id and a per-process instance counter,
/// through `std`'s randomly keyed SipHash. The counter keeps buffers of one process apart even
/// within one clock tick; the clock and the process id keep processes apart even on a platform
/// without randomness for the keys.
fn fresh_epoch() -> u64 {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.write_u64(instance);
    // 48 bits: at most 12 hex digits on every event, and a negligible chance of a clash.
    hasher.finish() >> 16
}

/// A sequence number as [`Replay::push`] writes it: ASCII digits, no sign, no leading zero.
fn parse_seq(seq: &str) -> Option<u64> {
    let canonical = !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
        && (seq == "0" || !seq.starts_with('0'));
    if canonical { seq.parse().ok() } else { None }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.lock();
        f.debug_struct("Replay")
            .field("capacity", &ring.capacity)
            .field("epoch", &format_args!("{:x}", ring.epoch))
            .field("len", &ring.events.len())
            .field("next_seq", &ring.next_seq)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_epochs_differ_and_fit_in_48_bits() {
        let epochs: Vec<u64> = (0..1000).map(|_| fresh_epoch()).collect();
        assert!(epochs.iter().all(|&epoch| epoch < 1 << 48));
        let mut unique = epochs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), epochs.len(), "an epoch repeated");
    }

    #[test]
    fn sequence_numbers_are_canonical_decimal() {
        assert_eq!(parse_seq("0"), Some(0));
        assert_eq!(parse_seq("42"), Some(42));
        assert_eq!(parse_seq(&u64::MAX.to_string()), Some(u64::MAX));
        for bad in [
            "",
            "00",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1a",
            "18446744073709551616",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }
}
