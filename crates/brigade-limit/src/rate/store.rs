//! The keyed state: a fixed number of shards, each a mutex around a hash table.
//!
//! # Invariants
//!
//! - An entry's `tats` are its limits' theoretical arrival times, in nanoseconds of the
//!   limiter's clock; slots past the limiter's limit count stay 0.
//! - An entry is *idle* when no TAT is after now and it has no waiters: its state equals a
//!   fresh key's, so removing it changes no decision. Only idle entries are evicted.
//! - Entries are removed only by a sweep, which rebuilds the table (no tombstones), so a
//!   table never holds more buckets than `cap` entries need.
//! - A shard holds at most `cap` entries. When full, an insert sweeps the shard (removing
//!   every idle entry) if `now >= next_sweep`; a sweep that frees less than an eighth of the
//!   shard sets `next_sweep` to the time at which an eighth will be idle, so each sweep's
//!   O(cap) scan pays for at least cap/8 inserts. Until then a new key is refused
//!   ([`AcquireError::KeysExhausted`](crate::AcquireError::KeysExhausted)): the limiter never
//!   forgets a key that is still limited, which would hand it a fresh burst. An entry with
//!   waiters counts as never idle; when its queue empties, `next_sweep` is brought forward to
//!   the time it becomes idle, so a sweep that found only waiting keys cannot refuse new keys
//!   for ever.
//! - Lock order: one shard lock at a time, never held across an `.await`.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashTable;
use tokio::sync::Notify;

use crate::MAX_LIMITS;
use crate::gcra::Gcra;

/// The limits' constants, copied into every shard so a decision reads them under the lock it
/// already holds (and a reconfiguration updates them shard by shard, with the TATs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) gcra: [Gcra; MAX_LIMITS],
}

/// The callers ahead of a decision: it must leave room for them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ahead {
    pub(crate) waiters: u64,
    pub(crate) cells: u64,
}

#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) cost: u32,
    pub(crate) notify: Arc<Notify>,
}

/// The callers waiting on one key, first come first served.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) waiters: VecDeque<Waiter>,
    /// The sum of the waiters' costs.
    pub(crate) cells: u64,
}

impl Queue {
    /// Wakes the head, whose wait may have changed.
    pub(crate) fn wake_head(&self) {
        if let Some(head) = self.waiters.front() {
            head.notify.notify_one();
        }
    }

    /// Removes waiter `id`; `Some(was_head)` if it was there.
    pub(crate) fn remove(&mut self, id: u64) -> Option<bool> {
        let pos = self.waiters.iter().position(|w| w.id == id)?;
        let w = self.waiters.remove(pos).unwrap_or_else(|| unreachable!());
        self.cells -= u64::from(w.cost);
        Some(pos == 0)
    }
}

/// One key's state. The first limit's TAT is inline; the others and the wait queue live in
/// a box that single-limit keys without waiters never allocate, so the table stays small
/// (a `u64` key takes 24 bytes) and cache-resident.
#[derive(Debug)]
pub(crate) struct Entry<K> {
    pub(crate) key: K,
    tat: u64,
    rest: Option<Box<Rest>>,
}

#[derive(Debug, Default)]
struct Rest {
    tats: [u64; MAX_LIMITS - 1],
    queue: Option<Queue>,
}

impl<K> Entry<K> {
    pub(crate) fn new(key: K, tats: [u64; MAX_LIMITS]) -> Self {
        let mut entry = Self {
            key,
            tat: 0,
            rest: None,
        };
        entry.set_tats(tats);
        entry
    }

    #[inline]
    pub(crate) fn tats(&self) -> [u64; MAX_LIMITS] {
        let mut tats = [0; MAX_LIMITS];
        tats[0] = self.tat;
        if let Some(rest) = &self.rest {
            tats[1..].copy_from_slice(&rest.tats);
        }
        tats
    }

    #[inline]
    pub(crate) fn set_tats(&mut self, tats: [u64; MAX_LIMITS]) {
        self.tat = tats[0];
        match &mut self.rest {
            Some(rest) => rest.tats.copy_from_slice(&tats[1..]),
            None if tats[1..].iter().any(|&t| t != 0) => {
                let mut rest = Box::<Rest>::default();
                rest.tats.copy_from_slice(&tats[1..]);
                self.rest = Some(rest);
            }
            None => {}
        }
    }

    /// The first limit's TAT (a single-limit limiter's only one).
    #[inline]
    pub(crate) fn first_tat(&self) -> u64 {
        self.tat
    }

    #[inline]
    pub(crate) fn set_first_tat(&mut self, tat: u64) {
        self.tat = tat;
    }

    #[inline]
    pub(crate) fn queue(&self) -> Option<&Queue> {
        self.rest.as_ref()?.queue.as_ref()
    }

    /// The callers waiting on this key.
    #[inline]
    pub(crate) fn ahead(&self) -> Ahead {
        self.queue().map_or(Ahead::default(), |q| Ahead {
            waiters: q.waiters.len() as u64,
            cells: q.cells,
        })
    }

    /// The queue's slot, allocating the box if needed.
    pub(crate) fn queue_slot(&mut self) -> &mut Option<Queue> {
        &mut self.rest.get_or_insert_with(Box::default).queue
    }

    /// When this entry becomes idle (`u64::MAX` while callers wait on it).
    pub(crate) fn idle_at(&self) -> u64 {
        if self.queue().is_some() {
            return u64::MAX;
        }
        self.tats().iter().copied().max().unwrap_or(0)
    }

    /// Heap bytes outside the table.
    fn heap(&self) -> usize {
        self.rest.as_ref().map_or(0, |rest| {
            size_of::<Rest>()
                + rest
                    .queue
                    .as_ref()
                    .map_or(0, |q| q.waiters.capacity() * size_of::<Waiter>())
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shard<K> {
    pub(crate) table: HashTable<Entry<K>>,
    pub(crate) limits: Limits,
    pub(crate) next_sweep: u64,
    pub(crate) next_waiter: u64,
}

impl<K> Shard<K> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            table: HashTable::new(),
            limits,
            next_sweep: 0,
            next_waiter: 0,
        }
    }

    /// Inserts a new entry, sweeping idle ones if the shard is full. `Err` holds the time at
    /// which the next sweep may find room.
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        entry: Entry<K>,
        now: u64,
        cap: usize,
        rehash: impl Fn(&K) -> u64,
    ) -> Result<&mut Entry<K>, u64> {
        if self.table.len() >= cap {
            if now < self.next_sweep {
                return Err(self.next_sweep);
            }
            self.sweep(now, cap, &rehash);
            if self.table.len() >= cap {
                return Err(self.next_sweep.max(now + 1));
            }
        }
        Ok(self
            .table
            .insert_unique(hash, entry, |e| rehash(&e.key))
            .into_mut())
    }

    /// Removes every idle entry and decides when the next sweep is worth its scan.
    ///
    /// The table is rebuilt rather than erased in place: erasing leaves tombstones, and a
    /// table full of tombstones doubles its buckets on the next insert. Entries are only
    /// ever removed here, so a rebuilt table never holds more buckets than `cap` needs.
    pub(crate) fn sweep(&mut self, now: u64, cap: usize, rehash: impl Fn(&K) -> u64) {
        let kept: Vec<Entry<K>> = std::mem::take(&mut self.table)
            .into_iter()
            .filter(|e| e.idle_at() > now)
            .collect();
        self.table = HashTable::with_capacity(kept.len());
        for entry in kept {
            self.table
                .insert_unique(rehash(&entry.key), entry, |e| rehash(&e.key));
        }
        let free = cap.saturating_sub(self.table.len());
        let wanted = (cap / 8).max(1);
        if free >= wanted {
            self.next_sweep = 0;
            return;
        }
        let mut idle_at: Vec<u64> = self.table.iter().map(Entry::idle_at).collect();
        let nth = wanted - free - 1;
        let (_, at, _) = idle_at.select_nth_unstable(nth);
        self.next_sweep = *at;
    }

    /// Bytes held by the table (entries, control bytes) and the entries' boxes.
    pub(crate) fn memory(&self) -> usize {
        self.table.allocation_size() + self.table.iter().map(Entry::heap).sum::<usize>()
    }
}
