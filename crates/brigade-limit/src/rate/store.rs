//! The keyed state: a fixed number of shards, each a mutex around a hash table.
//!
//! # Invariants
//!
//! - An entry's `tats` are its limits' theoretical arrival times, in nanoseconds of the
//!   limiter's clock; slots past the limiter's limit count stay 0. An entry's *idle time*
//!   ([`Entry::idle_at`]) is its latest TAT, or `u64::MAX` while callers wait on it.
//! - An entry is *idle* when its idle time is not after now: its state equals a fresh key's,
//!   so removing it changes no decision.
//! - A shard holds at most `cap` entries. What an insert into a full shard does depends on
//!   [`WhenFull`](crate::WhenFull):
//!   - `RefuseNewKeys`: the insert sweeps the shard (removing every idle entry) if
//!     `now >= next_sweep`, and fails
//!     ([`AcquireError::KeysExhausted`](crate::AcquireError::KeysExhausted)) if that frees
//!     nothing. A sweep that frees less than an eighth of the shard sets `next_sweep` to the
//!     time at which an eighth will be idle, so each sweep's O(cap) scan pays for at least
//!     cap/8 inserts; until then new keys are refused at once. An entry with waiters counts
//!     as never idle; when its queue empties, `next_sweep` is brought forward to the time it
//!     becomes idle, so a sweep that found only waiting keys cannot refuse new keys for ever.
//!     A refused insert reports `next_sweep`, which is `u64::MAX` (no estimate) while
//!     entries with waiters are in the way; the limiter turns it into a bounded hint.
//!   - `EvictNearestIdle`: the insert evicts the entry with the earliest idle time (an idle
//!     one if there is one; never one with waiters, so it fails only if every entry has
//!     waiters) through the eviction order below.
//! - Eviction order: every entry whose idle time is before `frontier` has an item
//!   `(r, hash)` in the min-heap `nearest`, with `r` no later than its idle time. So when
//!   the heap's least item `(r, h)` has `r <= frontier` and an entry has idle time `r`, no
//!   entry is idle sooner: that entry is the one to evict. An item whose entry has moved on
//!   (charged since: TATs only grow under decisions) is dropped, and its entry queued again
//!   at its new idle time if that is before `frontier`. Whoever moves an idle time
//!   *earlier* (a refund, a queue that empties, a new entry) calls [`Shard::note`]; a
//!   reconfiguration, which rescales every TAT, and a sweep clear the order
//!   (`frontier = 0`). When the heap runs dry or its least item passes `frontier`, a rescan
//!   puts the eighth of the entries idle soonest in the heap and sets `frontier` to the next
//!   idle time: each O(cap) rescan pays for cap/8 evictions or decisions (an item goes stale
//!   only after its key was charged), so eviction is O(log cap) amortised per insert, with
//!   no scan per insert.
//! - Only sweeps and evictions remove entries. A sweep rebuilds the table (no tombstones);
//!   an eviction erases in place, and before an insert that would grow a table whose room
//!   is taken by tombstones, the table is rebuilt with room for `cap + cap/8` entries. So a
//!   table never holds more buckets than `cap + cap/8` entries need.
//! - Lock order: one shard lock at a time, never held across an `.await`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
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
    /// Eviction candidates `(idle time, hash)`, least first (see the module invariants).
    nearest: BinaryHeap<Reverse<(u64, u64)>>,
    /// Every entry idle before this time has an item in `nearest`.
    frontier: u64,
}

impl<K> Shard<K> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            table: HashTable::new(),
            limits,
            next_sweep: 0,
            next_waiter: 0,
            nearest: BinaryHeap::new(),
            frontier: 0,
        }
    }

    /// Inserts a new entry into a shard that may be full. Then `evict` evicts the entry idle
    /// soonest; otherwise a sweep (when one is due) removes the idle entries, and the insert
    /// fails if none was idle. `Err` holds the time at which the next insert may find room,
    /// or `u64::MAX` if the shard cannot tell: entries with waiters are in the way, and they
    /// may leave at any time.
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        entry: Entry<K>,
        now: u64,
        cap: usize,
        evict: bool,
        rehash: impl Fn(&K) -> u64,
    ) -> Result<&mut Entry<K>, u64> {
        if self.table.len() >= cap {
            if evict {
                // Idle entries are idle soonest: evicted first, one per insert, so no sweep
                // is needed (a sweep's scan, due at a time, could come once per insert).
                if !self.evict_nearest(&rehash) {
                    // Every entry has waiters; one may leave at any time: no estimate.
                    return Err(u64::MAX);
                }
                // Erasing may have left a tombstone rather than room: rebuild rather than
                // let the table double.
                if self.table.capacity() <= self.table.len() {
                    self.compact(cap, &rehash);
                }
            } else {
                if now < self.next_sweep {
                    return Err(self.next_sweep);
                }
                self.sweep(now, cap, &rehash);
                if self.table.len() >= cap {
                    return Err(self.next_sweep.max(now + 1));
                }
            }
        }
        self.note(hash, entry.idle_at());
        Ok(self
            .table
            .insert_unique(hash, entry, |e| rehash(&e.key))
            .into_mut())
    }

    /// Records that the entry of `hash` is idle at `idle_at`, sooner than the eviction order
    /// may know: a new entry, a refund, a queue that emptied.
    #[inline]
    pub(crate) fn note(&mut self, hash: u64, idle_at: u64) {
        if idle_at < self.frontier {
            self.nearest.push(Reverse((idle_at, hash)));
            // Notes without evictions (refunds on a full shard) must not pile up: past twice
            // what a rescan holds, forget the order and rescan at the next eviction.
            if self.nearest.len() > self.table.len() / 4 + 2 {
                self.forget_order();
            }
        }
    }

    /// Forgets the eviction order: the next eviction rescans. For changes that move many
    /// idle times at once (a reconfiguration, a sweep).
    pub(crate) fn forget_order(&mut self) {
        self.nearest.clear();
        self.frontier = 0;
    }

    /// Evicts the entry idle soonest; `false` if every entry has waiters (or the shard is
    /// empty). Amortised O(log cap): see the module invariants.
    fn evict_nearest(&mut self, rehash: impl Fn(&K) -> u64) -> bool {
        let mut rescanned = false;
        loop {
            let usable = self
                .nearest
                .peek()
                .is_some_and(|&Reverse((idle, _))| idle <= self.frontier);
            if !usable {
                if rescanned {
                    return false;
                }
                self.rescan(&rehash);
                rescanned = true;
                continue;
            }
            let Some(&Reverse((idle, hash))) = self.nearest.peek() else {
                return false;
            };
            if idle == u64::MAX {
                // The least idle time is a waiter's: so is every other. The item stays, so
                // that the next insert finds that out at once.
                return false;
            }
            self.nearest.pop();
            // Any entry idle at `idle` is idle soonest (a tie with this item's own, if the
            // hashes collide, does as well).
            if let Ok(found) = self.table.find_entry(hash, |e| e.idle_at() == idle) {
                found.remove();
                return true;
            }
            // Stale: charged since it was queued, or gone. Queue the entries of this hash
            // again at their idle time, where the invariant asks for it.
            let frontier = self.frontier;
            for e in self.table.iter_hash(hash) {
                let at = e.idle_at();
                if at < frontier && rehash(&e.key) == hash {
                    self.nearest.push(Reverse((at, hash)));
                }
            }
        }
    }

    /// Puts the eighth of the entries idle soonest in the eviction order: O(cap).
    fn rescan(&mut self, rehash: impl Fn(&K) -> u64) {
        let mut all: Vec<(u64, u64)> = self
            .table
            .iter()
            .map(|e| (e.idle_at(), rehash(&e.key)))
            .collect();
        let k = (all.len() / 8).max(1).min(all.len());
        self.frontier = if all.len() > k {
            all.select_nth_unstable(k).1.0
        } else {
            u64::MAX
        };
        self.nearest.clear();
        self.nearest
            .extend(all[..k].iter().map(|&candidate| Reverse(candidate)));
    }

    /// Rebuilds the table without tombstones, with room for `cap + cap/8` entries, so that
    /// the next rebuild is at least cap/8 inserts away.
    fn compact(&mut self, cap: usize, rehash: impl Fn(&K) -> u64) {
        let old = std::mem::take(&mut self.table);
        self.table = HashTable::with_capacity(cap.saturating_add((cap / 8).max(1)));
        for entry in old {
            self.table
                .insert_unique(rehash(&entry.key), entry, |e| rehash(&e.key));
        }
    }

    /// Removes every idle entry and decides when the next sweep is worth its scan.
    ///
    /// The table is rebuilt rather than erased in place: erasing leaves tombstones, and a
    /// table full of tombstones doubles its buckets on the next insert.
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
        self.forget_order();
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

    /// Bytes held by the table (entries, control bytes), the entries' boxes and the
    /// eviction order.
    pub(crate) fn memory(&self) -> usize {
        self.table.allocation_size()
            + self.table.iter().map(Entry::heap).sum::<usize>()
            + self.nearest.capacity() * size_of::<Reverse<(u64, u64)>>()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CAP: usize = 16;

    #[derive(Clone, Debug)]
    enum Op {
        Insert { key: u8, debt: u16 },
        Charge { key: u8, by: u16 },
        Refund { key: u8, by: u16 },
        Wait { key: u8 },
        Leave { key: u8 },
        Advance(u16),
        Rescale,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u8>(), any::<u16>()).prop_map(|(key, debt)| Op::Insert { key, debt }),
            3 => (any::<u8>(), any::<u16>()).prop_map(|(key, by)| Op::Charge { key, by }),
            2 => (any::<u8>(), any::<u16>()).prop_map(|(key, by)| Op::Refund { key, by }),
            1 => any::<u8>().prop_map(|key| Op::Wait { key }),
            1 => any::<u8>().prop_map(|key| Op::Leave { key }),
            2 => any::<u16>().prop_map(Op::Advance),
            1 => Just(Op::Rescale),
        ]
    }

    fn limits() -> Limits {
        Limits {
            gcra: [Gcra {
                t: 1,
                tau: 0,
                burst: 1,
            }; MAX_LIMITS],
        }
    }

    /// Each entry's key and idle time.
    fn idle_times(shard: &Shard<u64>) -> Vec<(u64, u64)> {
        shard.table.iter().map(|e| (e.key, e.idle_at())).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever happens to the entries (charges, refunds, waiters, a rescale), an insert
        /// into a full shard that evicts removes an entry idle soonest and never one with
        /// waiters; one that refuses removes only idle entries; the cap holds. `collide`
        /// makes many keys share a hash.
        #[test]
        fn a_full_shard_gives_up_only_the_entries_idle_soonest(
            ops in proptest::collection::vec(op(), 1..300),
            evict in any::<bool>(),
            collide in any::<bool>(),
        ) {
            let hash = move |k: &u64| {
                if collide { k % 3 } else { k.wrapping_mul(0x9E37_79B9_7F4A_7C15) }
            };
            let mut shard = Shard::new(limits());
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::Insert { key, debt } => {
                        let key = u64::from(key);
                        let h = hash(&key);
                        if shard.table.find(h, |e| e.key == key).is_some() {
                            continue;
                        }
                        let before = idle_times(&shard);
                        let entry = Entry::new(key, [now + u64::from(debt), 0, 0, 0]);
                        let inserted = shard.insert(h, entry, now, CAP, evict, hash).is_ok();
                        let after = idle_times(&shard);
                        prop_assert!(after.len() <= CAP);
                        let removed: Vec<_> =
                            before.iter().filter(|b| !after.contains(b)).collect();
                        let least = before.iter().map(|b| b.1).min().unwrap_or(u64::MAX);
                        if before.len() < CAP {
                            prop_assert!(inserted && removed.is_empty());
                        } else if evict {
                            if inserted {
                                prop_assert_eq!(removed.len(), 1);
                                prop_assert_eq!(removed[0].1, least, "{:?}", before);
                                prop_assert!(least < u64::MAX, "an entry with waiters went");
                            } else {
                                prop_assert_eq!(least, u64::MAX, "refused with room");
                            }
                        } else {
                            prop_assert!(removed.iter().all(|r| r.1 <= now));
                        }
                    }
                    Op::Charge { key, by } => {
                        let key = u64::from(key);
                        if let Some(e) = shard.table.find_mut(hash(&key), |e| e.key == key) {
                            let tat = e.first_tat().max(now) + u64::from(by);
                            e.set_first_tat(tat);
                        }
                    }
                    Op::Refund { key, by } => {
                        let key = u64::from(key);
                        let h = hash(&key);
                        if let Some(e) = shard.table.find_mut(h, |e| e.key == key) {
                            let tat = e.first_tat();
                            e.set_first_tat(tat.saturating_sub(u64::from(by)).max(now.min(tat)));
                            let idle_at = e.idle_at();
                            shard.note(h, idle_at);
                        }
                    }
                    Op::Wait { key } => {
                        let key = u64::from(key);
                        if let Some(e) = shard.table.find_mut(hash(&key), |e| e.key == key) {
                            e.queue_slot().get_or_insert_with(Queue::default);
                        }
                    }
                    Op::Leave { key } => {
                        let key = u64::from(key);
                        let h = hash(&key);
                        if let Some(e) = shard.table.find_mut(h, |e| e.key == key)
                            && e.queue().is_some()
                        {
                            *e.queue_slot() = None;
                            let idle_at = e.idle_at();
                            shard.next_sweep = shard.next_sweep.min(idle_at);
                            shard.note(h, idle_at);
                        }
                    }
                    Op::Advance(by) => now += u64::from(by),
                    Op::Rescale => {
                        for e in shard.table.iter_mut() {
                            let tat = e.first_tat();
                            if tat > now {
                                e.set_first_tat(now + (tat - now) / 2);
                            }
                        }
                        shard.forget_order();
                    }
                }
            }
        }
    }

    /// Evicting in place leaves tombstones; the table is rebuilt rather than let grow, so a
    /// long churn keeps the size an insert-only shard of `cap` entries has.
    #[test]
    fn a_long_churn_of_evictions_keeps_the_table_size() {
        let hash = |k: &u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // 1,024 buckets hold 896 entries: room for `cap + cap / 8`.
        let cap = 700;
        let bound = HashTable::<Entry<u64>>::with_capacity(cap).allocation_size();
        assert_eq!(
            bound,
            HashTable::<Entry<u64>>::with_capacity(cap + cap / 8).allocation_size()
        );
        // Idle times in no particular order (a seeded xorshift), so evictions land all over
        // the table.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut debt = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 5_000
        };
        let mut shard = Shard::new(limits());
        for key in 0..200_000u64 {
            let entry = Entry::new(key, [1_000 + key + debt(), 0, 0, 0]);
            assert!(shard.insert(hash(&key), entry, 0, cap, true, hash).is_ok());
            assert!(shard.table.len() <= cap);
            let size = shard.table.allocation_size();
            assert!(size <= bound, "{size} > {bound} after {key} inserts");
        }
    }
}
