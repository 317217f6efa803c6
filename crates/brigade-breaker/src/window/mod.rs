//! The sliding windows the failure and slow-call rates are computed over.
//!
//! # Invariants
//!
//! - Nothing here takes a lock; every operation is a handful of atomics, and recording a
//!   success over a success (the common case) writes only the count window's cursor.
//! - There are no running totals that could drift: totals are recomputed from the slots (count
//!   window) or the buckets (time window) whenever they are read, which happens when a failure
//!   or a slow call is recorded, or a snapshot is taken. A slot or bucket counter is therefore
//!   always self-consistent, whatever the interleaving.
//! - [`Window::reset`] is not atomic with respect to a concurrent `record`: a call that
//!   straddles a state transition may be counted in the window before or after it, or
//!   overwritten. The breaker discards outcomes of earlier epochs before they get here, so only
//!   such straddlers are affected, and at most one sample each.

use std::time::Duration;

use crate::config::WindowKind;
use crate::loom::{AtomicU64, CachePadded, Ordering::Relaxed};

/// An outcome's bits in the window.
pub(crate) const FAILED: u64 = 0b01;
/// See [`FAILED`].
pub(crate) const SLOW: u64 = 0b10;

/// Calls, failures and slow calls in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

// One window per breaker, inside its `Arc`: boxing the count window (large only for its
// cache-line padding) would add a pointer chase to every call.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(kind: WindowKind) -> Self {
        match kind {
            WindowKind::Count(calls) => Self::Count(CountWindow::new(calls)),
            WindowKind::Time { length, buckets } => Self::Time(TimeWindow::new(length, buckets)),
        }
    }

    /// Whether recording needs the time (nanoseconds since the breaker's base instant).
    pub(crate) const fn needs_time(&self) -> bool {
        matches!(self, Self::Time(_))
    }

    /// Records one outcome (`bits` of [`FAILED`] and [`SLOW`]) at `now`, which only a time
    /// window reads.
    #[inline]
    pub(crate) fn record(&self, now: u64, bits: u64) {
        match self {
            Self::Count(window) => window.record(bits),
            Self::Time(window) => window.record(now, bits),
        }
    }

    pub(crate) fn totals(&self, now: u64) -> Totals {
        match self {
            Self::Count(window) => window.totals(),
            Self::Time(window) => window.totals(now),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(window) => window.reset(),
            Self::Time(window) => window.reset(),
        }
    }
}

/// The last `len` calls: a ring of 2-bit slots packed 32 to a word, and a cursor.
///
/// Slot `i % len` holds call `i` (counted from the last reset); while fewer than `len` calls
/// were made, only slots `0..cursor` are valid.
pub(crate) struct CountWindow {
    cursor: CachePadded<AtomicU64>,
    words: Box<[AtomicU64]>,
    len: u64,
}

const LOW_BITS: u64 = 0x5555_5555_5555_5555;

impl CountWindow {
    fn new(len: u32) -> Self {
        let words = (len as usize).div_ceil(32);
        Self {
            cursor: CachePadded(AtomicU64::new(0)),
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            len: u64::from(len),
        }
    }

    #[inline]
    fn record(&self, bits: u64) {
        let slot = (self.cursor.fetch_add(1, Relaxed) % self.len) as usize;
        let word = &self.words[slot / 32];
        let shift = (slot % 32) * 2;
        let mut current = word.load(Relaxed);
        // A success over a success (or a failure over a failure) changes nothing: read only.
        while (current >> shift) & 0b11 != bits {
            let new = (current & !(0b11 << shift)) | (bits << shift);
            match word.compare_exchange_weak(current, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    fn totals(&self) -> Totals {
        let calls = self.cursor.load(Relaxed).min(self.len);
        let mut totals = Totals {
            calls,
            ..Totals::default()
        };
        for (k, word) in self.words.iter().enumerate() {
            let valid = calls.saturating_sub(k as u64 * 32).min(32);
            if valid == 0 {
                break;
            }
            let mask = if valid == 32 {
                u64::MAX
            } else {
                (1 << (2 * valid)) - 1
            };
            let value = word.load(Relaxed) & mask;
            totals.failures += u64::from((value & LOW_BITS).count_ones());
            totals.slow += u64::from(((value >> 1) & LOW_BITS).count_ones());
        }
        totals
    }

    fn reset(&self) {
        for word in &*self.words {
            word.store(0, Relaxed);
        }
        self.cursor.store(0, Relaxed);
    }
}

/// Bits of a bucket counter holding the count; the bits above hold the bucket's tag.
const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;
/// How many laps of the ring a counter's tag may be ahead of a recording call's own index and
/// still be taken for a newer bucket (the recording call was delayed between reading the
/// clock and bumping); any other tag is taken for an older one.
const NEWER_LAPS: u64 = 4;

/// The calls of the last `buckets × bucket` nanoseconds.
///
/// Bucket `b` of time index `i = now / bucket` lives at `i % buckets`. Each of its three
/// counters carries the (truncated) time index it counts for in its top 32 bits, so a counter
/// restarts itself when it is first bumped in a newer index, with one compare-and-swap, and a
/// reader ignores counters whose tag is not the index it expects.
///
/// A counter with a count of zero (as built, or [reset](Self::reset)) is empty whatever its
/// tag. A non-empty counter whose tag is ahead of a recording call's index by at most
/// [`NEWER_LAPS`] laps belongs to a newer bucket and is left alone: that call is older than
/// the window. Any other tag is older, so a counter left idle for any length of time, or
/// zeroed by a reset, is taken over by the next call. Tags wrap after 2^32 bucket lengths
/// (about 50 days of 1 ms buckets): a counter left untouched for a length within a few laps
/// of a multiple of that is misread, for at most a few laps.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
    /// The largest lead of a tag over a recording index that still means "newer".
    newer: u64,
}

#[derive(Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    fn new(length: Duration, buckets: u32) -> Self {
        let bucket_nanos = u64::try_from((length / buckets).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            bucket_nanos,
            newer: (u64::from(buckets) * NEWER_LAPS).min(TAG_MASK >> 1),
        }
    }

    fn record(&self, now: u64, bits: u64) {
        let index = now / self.bucket_nanos;
        let bucket = &self.buckets[(index % self.buckets.len() as u64) as usize];
        bump(&bucket.calls, index, self.newer);
        if bits & FAILED != 0 {
            bump(&bucket.failures, index, self.newer);
        }
        if bits & SLOW != 0 {
            bump(&bucket.slow, index, self.newer);
        }
    }

    fn totals(&self, now: u64) -> Totals {
        let index = now / self.bucket_nanos;
        let mut totals = Totals::default();
        for k in 0..(self.buckets.len() as u64).min(index + 1) {
            let i = index - k;
            let bucket = &self.buckets[(i % self.buckets.len() as u64) as usize];
            totals.calls += read(&bucket.calls, i);
            totals.failures += read(&bucket.failures, i);
            totals.slow += read(&bucket.slow, i);
        }
        totals
    }

    fn reset(&self) {
        for bucket in &*self.buckets {
            bucket.calls.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
            bucket.slow.store(0, Relaxed);
        }
    }
}

/// Adds one to `counter` for time index `index`, restarting it if it is empty or counts an
/// older index. A count that reached 2^32 - 1 stays there.
fn bump(counter: &AtomicU64, index: u64, newer: u64) {
    let tag = index & TAG_MASK;
    let mut current = counter.load(Relaxed);
    loop {
        let current_tag = current >> COUNT_BITS;
        let count = current & COUNT_MASK;
        let base = if current_tag == tag {
            count
        } else if count != 0 && current_tag.wrapping_sub(tag) & TAG_MASK <= newer {
            // A newer index already owns the bucket: this call is older than the window.
            return;
        } else {
            0
        };
        if base == COUNT_MASK {
            return;
        }
        let new = (tag << COUNT_BITS) | (base + 1);
        match counter.compare_exchange_weak(current, new, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The count of `counter` if it counts time index `index`, else zero.
fn read(counter: &AtomicU64, index: u64) -> u64 {
    let value = counter.load(Relaxed);
    if value >> COUNT_BITS == index & TAG_MASK {
        value & COUNT_MASK
    } else {
        0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_calls() {
        let window = CountWindow::new(40);
        for i in 0..100u64 {
            window.record(if i % 4 == 0 { FAILED } else { 0 } | if i % 5 == 0 { SLOW } else { 0 });
        }
        // Calls 60..100: failures at multiples of 4 (10), slow at multiples of 5 (8).
        assert_eq!(
            window.totals(),
            Totals {
                calls: 40,
                failures: 10,
                slow: 8
            }
        );
        window.reset();
        assert_eq!(window.totals(), Totals::default());
    }

    #[test]
    fn time_window_ages_buckets_out() {
        let window = TimeWindow::new(Duration::from_secs(3), 3);
        let second = 1_000_000_000;
        window.record(0, FAILED);
        window.record(second, 0);
        window.record(2 * second, SLOW);
        assert_eq!(
            window.totals(2 * second),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            window.totals(3 * second),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        window.record(3 * second, FAILED);
        assert_eq!(
            window.totals(3 * second),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // A call from before the window does not disturb the bucket that replaced its own.
        window.record(0, FAILED);
        assert_eq!(
            window.totals(3 * second),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
    }

    #[test]
    fn time_window_records_after_a_reset_late_in_the_breakers_life() {
        // 1 ms buckets: with 24-bit tags, zeroed counters looked newer than every index in
        // the upper half of the tag range (from 2.3 hours of uptime on), and a reset window
        // stopped counting for hours. Any index must work after a reset.
        let ms = 1_000_000;
        let window = TimeWindow::new(Duration::from_millis(3), 3);
        for index in [0, 1 << 23, (1 << 23) + 5, 1 << 31, (1 << 32) - 1, 1 << 40] {
            window.reset();
            window.record(index * ms, FAILED);
            window.record(index * ms, SLOW);
            assert_eq!(
                window.totals(index * ms),
                Totals {
                    calls: 2,
                    failures: 1,
                    slow: 1
                },
                "index {index}"
            );
        }
    }

    #[test]
    fn time_window_takes_over_buckets_left_idle_for_any_length() {
        let ms = 1_000_000;
        let window = TimeWindow::new(Duration::from_millis(3), 3);
        window.record(0, FAILED);
        for idle in [3, 3 << 23, 3 << 30, (1 << 32) + 2] {
            window.record(idle * ms, FAILED);
            assert_eq!(
                window.totals(idle * ms),
                Totals {
                    calls: 1,
                    failures: 1,
                    slow: 0
                },
                "idle {idle}"
            );
            window.reset();
            window.record(0, FAILED);
        }
    }

    #[test]
    fn time_window_counts_saturate_instead_of_spilling_into_the_tag() {
        let counter = AtomicU64::new((7 << COUNT_BITS) | (COUNT_MASK - 1));
        bump(&counter, 7, 12);
        bump(&counter, 7, 12);
        assert_eq!(read(&counter, 7), COUNT_MASK);
        assert_eq!(counter.load(Relaxed) >> COUNT_BITS, 7);
    }
}
