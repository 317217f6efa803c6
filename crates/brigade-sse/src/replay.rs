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
//! [`ReplayMiss::Unknown`]. A buffer picks a fresh epoch: 48 bits hashed from the wall
//! clock, the process id and a process-wide instance counter, with the randomly keyed hasher of
//! `std`'s `HashMap`, so two buffers (of this process, an earlier one or another server) share an
//! epoch only by a 1 in 2<sup>48</sup> chance and a client cannot predict it. Ids stay short
//! ASCII: `3f2a9c01d4e7-42` is 15 bytes. [`ReplayBuilder::epoch`] takes the epoch from the
//! caller instead (a deployment generation, or a fixed value in tests); keeping it distinct is
//! then the caller's job.
//!
//! # Sharing
//!
//! A `Replay` is an `Arc` around a `Mutex`: clones share one buffer. Events are kept as
//! `Arc<Event>`, and [`Replay::push`] returns the same `Arc` that the buffer keeps, to send to
//! the clients connected now (a broadcast channel clones an `Arc`, not the event). The lock is
//! held for amortized O(1) work in a push (the id's digits are written into room made before
//! it, the `Arc` is made before it; the events it evicts are dropped), and in a resume only to
//! find where to start, allocate the result and clone one `Arc` per event resumed: never
//! across an `.await`, and never to copy an event.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Event;
use crate::error::{InvalidConfig, ReplayMiss};

/// The default of [`ReplayBuilder::max_events`].
const DEFAULT_MAX_EVENTS: usize = 1024;

/// The default of [`ReplayBuilder::max_bytes`]: 1 MiB.
const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// The most events room is made for up front.
const INITIAL_CAPACITY: usize = 64;

/// The digits of `u64::MAX`.
const MAX_SEQ_DIGITS: usize = 20;

/// A bounded, shared buffer of the latest events, so a client reconnecting with `Last-Event-ID`
/// resumes right after the last event it saw.
///
/// Each pushed event gets the id `<epoch>-<sequence>`: the buffer's epoch in lowercase hex
/// (distinct for each buffer, see [`ReplayBuilder::epoch`]) and a sequence number counting
/// from one. An id from another buffer, such as one issued before a server restart, is
/// [`ReplayMiss::Unknown`], never mistaken for one of this buffer's events.
///
/// # Bounds
///
/// The buffer keeps at most [`max_events`](ReplayBuilder::max_events) events and at most
/// [`max_bytes`](ReplayBuilder::max_bytes) bytes of them, an event's size being its
/// [encoded length](Event::encoded_len), its id included: what a resume sends. A push evicts
/// the oldest events until the new one fits under both bounds. An event larger than
/// `max_bytes` on its own is still numbered and returned to be sent, but not kept: it evicts
/// every event before it and is evicted at once, so a client that missed it gets
/// [`ReplayMiss::AgedOut`] (and one that saw it is up to date). The byte bound holds without
/// exception; memory is that plus a bookkeeping overhead per event (the `Arc`, the `Event`
/// struct, its id's allocation: under 200 bytes), which `max_events` bounds.
///
/// # Sharing
///
/// Clones share one buffer. Events are kept as `Arc<Event>`: [`push`](Self::push) returns the
/// `Arc` the buffer keeps, to send to the clients connected now (a broadcast channel then
/// clones an `Arc`, not the event), and [`events_after`](Self::events_after) returns clones of
/// those `Arc`s, copying no event. [`SseBody`](crate::SseBody) sends `Arc<Event>`s as it sends
/// `Event`s.
///
/// # Examples
///
/// ```
/// use brigade_sse::{Event, Replay, ReplayMiss};
///
/// // A fixed epoch makes the ids predictable: `2a-1`, `2a-2`, ...
/// let replay = Replay::builder().max_events(2).epoch(0x2a).build()?;
/// for token in ["a", "b", "c"] {
///     let (_seq, event) = replay.push(Event::default().data(token));
///     // ... send `event` (it carries its id) to the clients connected now ...
/// #   let _ = event;
/// }
///
/// // A client that saw `2a-2` gets event 3 again; one that saw `2a-3` is up to date.
/// let missed = replay.events_after("2a-2")?;
/// assert_eq!(missed.len(), 1);
/// assert_eq!((missed[0].0, &*missed[0].1), (3, &Event::default().id("2a-3")?.data("c")));
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
    inner: Arc<Shared>,
}

/// What never changes after the build, read without the lock; and the ring.
struct Shared {
    epoch: u64,
    /// `<epoch in hex>-`: every id this buffer issues starts with it.
    prefix: Box<str>,
    max_events: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
}

/// The events held. Invariants: `events` holds the events with sequence numbers
/// `next_seq - events.len() .. next_seq`, at most `max_events` of them; `bytes` is the sum of
/// their sizes, at most `max_bytes`.
struct Ring {
    events: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
}

struct Entry {
    event: Arc<Event>,
    /// The event's encoded length.
    size: usize,
}

/// Builds a [`Replay`]: its bounds and its epoch.
///
/// # Examples
///
/// ```
/// use brigade_sse::{InvalidConfig, Replay};
///
/// let replay = Replay::builder().max_events(256).max_bytes(64 * 1024).build()?;
/// assert_eq!((replay.max_events(), replay.max_bytes()), (256, 64 * 1024));
///
/// assert_eq!(Replay::builder().max_bytes(0).build().unwrap_err(), InvalidConfig::ZeroMaxBytes);
/// # Ok::<(), InvalidConfig>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ReplayBuilder {
    max_events: usize,
    max_bytes: usize,
    epoch: Option<u64>,
}

impl ReplayBuilder {
    /// The most events the buffer keeps. Default: 1024.
    pub fn max_events(mut self, max_events: usize) -> Self {
        self.max_events = max_events;
        self
    }

    /// The most bytes the buffer keeps, counting each event's
    /// [encoded length](Event::encoded_len). Default: 1 MiB.
    ///
    /// An event larger than this on its own is sent but not kept: see
    /// [`Replay`'s bounds](Replay#bounds).
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Issues ids with `epoch`, written in lowercase hex (epoch `0x2a` issues `2a-1`, `2a-2`,
    /// ...). Default: a fresh epoch.
    ///
    /// A fresh epoch is 48 bits hashed from the wall clock, the process id and a per-process
    /// instance counter with a randomly keyed hasher: distinct from the epoch of any other
    /// buffer, in this process or another, but by a 1 in 2<sup>48</sup> chance. Set one for a
    /// deployment generation, or for predictable ids in tests; two buffers that may see the
    /// same clients must then not share an epoch: an id of one would resume in the other.
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The buffer, empty.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroMaxEvents`] or [`InvalidConfig::ZeroMaxBytes`] for a buffer that
    /// could keep nothing.
    pub fn build(self) -> Result<Replay, InvalidConfig> {
        if self.max_events == 0 {
            return Err(InvalidConfig::ZeroMaxEvents);
        }
        if self.max_bytes == 0 {
            return Err(InvalidConfig::ZeroMaxBytes);
        }
        Ok(self.build_valid())
    }

    /// [`build`](Self::build) for bounds known not to be zero.
    fn build_valid(self) -> Replay {
        let epoch = self.epoch.unwrap_or_else(fresh_epoch);
        Replay {
            inner: Arc::new(Shared {
                epoch,
                prefix: format!("{epoch:x}-").into_boxed_str(),
                max_events: self.max_events,
                max_bytes: self.max_bytes,
                ring: Mutex::new(Ring {
                    // Grown as events come: a large bound costs nothing until it fills.
                    events: VecDeque::with_capacity(self.max_events.min(INITIAL_CAPACITY)),
                    bytes: 0,
                    next_seq: 1,
                }),
            }),
        }
    }
}

impl Default for ReplayBuilder {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
            epoch: None,
        }
    }
}

impl Replay {
    /// An empty buffer keeping the latest `max_events` events, at most 1 MiB of them, with a
    /// fresh epoch: `Replay::builder().max_events(n).build()`, which cannot fail.
    pub fn new(max_events: NonZeroUsize) -> Self {
        Self::builder().max_events(max_events.get()).build_valid()
    }

    /// A builder: bounds by events and bytes, and the epoch.
    pub fn builder() -> ReplayBuilder {
        ReplayBuilder::default()
    }

    /// The epoch of this buffer's ids.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Gives `event` the next id, `<epoch>-<sequence>`, keeps it (evicting the oldest events
    /// to stay within both bounds), and returns the sequence number and the event to send: the
    /// `Arc` the buffer keeps. Any id the event had is replaced.
    ///
    /// An event larger than the byte bound on its own is numbered and returned but not kept,
    /// and evicts every event before it (see [`ReplayBuilder::max_bytes`]).
    ///
    /// # Panics
    ///
    /// Panics if the sequence number would pass `u64::MAX` (after 2<sup>64</sup> - 1 events).
    pub fn push(&self, mut event: Event) -> (u64, Arc<Event>) {
        let shared = &*self.inner;
        // Everything that allocates or scans happens before the lock.
        event.clear_id();
        let without_id = event.encoded_len();
        let mut id = String::with_capacity(shared.prefix.len() + MAX_SEQ_DIGITS);
        id.push_str(&shared.prefix);
        let mut event = Arc::new(event);

        let mut ring = self.lock();
        let seq = ring.next_seq;
        ring.next_seq = seq
            .checked_add(1)
            .expect("replay sequence number overflowed");
        // Within the capacity made above: no allocation. Writing to a `String` cannot fail.
        let _ = write!(id, "{seq}");
        // `id: <id>` and a LF, and the blank line if the event had nothing else.
        let size = without_id + b"id: ".len() + id.len() + 1 + usize::from(without_id == 0);
        if let Some(unshared) = Arc::get_mut(&mut event) {
            // Always: the `Arc` was made above and not shared yet.
            unshared.set_valid_id(id);
        }
        while ring.events.len() >= shared.max_events
            || ring.bytes.saturating_add(size) > shared.max_bytes
        {
            let Some(oldest) = ring.events.pop_front() else {
                break;
            };
            ring.bytes -= oldest.size;
        }
        if size <= shared.max_bytes {
            ring.bytes += size;
            ring.events.push_back(Entry {
                event: Arc::clone(&event),
                size,
            });
        }
        (seq, event)
    }

    /// The events after `last_event_id` with their sequence numbers, oldest first, to send
    /// before new ones to a client that reconnected with that `Last-Event-ID`. Empty if the
    /// client is up to date.
    ///
    /// The events are the `Arc`s the buffer keeps: the lock is held to find the first one and
    /// clone one `Arc` per event, nothing is copied.
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
    pub fn events_after(&self, last_event_id: &str) -> Result<Vec<(u64, Arc<Event>)>, ReplayMiss> {
        let last = self.seq_of(last_event_id).ok_or(ReplayMiss::Unknown)?;
        let ring = self.lock();
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
            .zip(ring.events.range(skip..))
            .map(|(seq, entry)| (seq, Arc::clone(&entry.event)))
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
    /// use brigade_sse::Replay;
    ///
    /// let replay = Replay::builder().epoch(0x2a).build()?;
    /// assert_eq!(replay.seq_of("2a-7"), Some(7));
    /// assert_eq!(replay.seq_of("2b-7"), None); // another buffer's id
    /// assert_eq!(replay.seq_of("7"), None);
    /// # Ok::<(), brigade_sse::InvalidConfig>(())
    /// ```
    pub fn seq_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&*self.inner.prefix).and_then(parse_seq)
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

    /// How many bytes the events held now weigh: the sum of their encoded lengths.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// How many events the buffer keeps at most.
    pub fn max_events(&self) -> usize {
        self.inner.max_events
    }

    /// How many bytes of events the buffer keeps at most.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every critical section leaves the ring consistent (the only panic, in `push`, comes
        // before any change), so a panic elsewhere cannot have left it half-written.
        self.inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            .field("epoch", &format_args!("{:x}", self.inner.epoch))
            .field("max_events", &self.inner.max_events)
            .field("max_bytes", &self.inner.max_bytes)
            .field("len", &ring.events.len())
            .field("bytes", &ring.bytes)
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
