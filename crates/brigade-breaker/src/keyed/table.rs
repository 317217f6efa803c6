//! The table behind a keyed breaker: a hash map from key to slot, and the slots threaded on a
//! doubly linked list in order of use (most recently looked up at the front).
//!
//! # Invariants
//!
//! - `index` maps every stored key to the slot that holds it, and only those; every occupied
//!   slot is on the list exactly once; every free slot is in `free` and off the list.
//! - `head` and `tail` are `NIL` exactly when the table is empty.
//! - A lookup moves its slot to the front; making room looks only at the back, at most
//!   [`SCAN`] slots per new key. Every operation but [`Table::evict_idle`] is O(1) (amortized,
//!   for the hash map).
//! - The table is only touched under the keyed breaker's mutex.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::CircuitBreaker;

/// The most slots a new key at capacity looks at to make room.
pub(crate) const SCAN: usize = 16;

const NIL: usize = usize::MAX;

pub(super) struct Table<K> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    /// Slots looked at while making room, for the tests that bound it.
    #[cfg(all(test, not(loom)))]
    pub(super) examined: u64,
}

struct Slot<K> {
    entry: Option<Entry<K>>,
    prev: usize,
    next: usize,
}

struct Entry<K> {
    key: K,
    breaker: CircuitBreaker,
    last_used: Instant,
}

/// What making room found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// At least one breaker was evicted.
    Made,
    /// Every slot looked at holds a breaker that must stay.
    None,
}

impl<K> Table<K> {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }
}

impl<K: Hash + Eq> Table<K> {
    pub(super) fn new() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            #[cfg(all(test, not(loom)))]
            examined: 0,
        }
    }

    /// The breaker of `key`, moved to the front of the order of use.
    pub(super) fn lookup<Q>(&mut self, key: &Q, now: Instant) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = *self.index.get(key)?;
        self.move_to_front(at);
        let entry = self.slots[at].entry.as_mut()?;
        entry.last_used = now;
        Some(entry.breaker.clone())
    }

    /// The breaker of `key`, leaving the order of use alone.
    pub(super) fn peek<Q>(&self, key: &Q) -> Option<&CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = *self.index.get(key)?;
        self.slots[at].entry.as_ref().map(|entry| &entry.breaker)
    }

    /// Stores `breaker` under `key`, which has none, at the front.
    pub(super) fn insert(&mut self, key: K, breaker: CircuitBreaker, now: Instant)
    where
        K: Clone,
    {
        let entry = Entry {
            key: key.clone(),
            breaker,
            last_used: now,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at].entry = Some(entry);
                at
            }
            None => {
                self.slots.push(Slot {
                    entry: Some(entry),
                    prev: NIL,
                    next: NIL,
                });
                self.slots.len() - 1
            }
        };
        self.link_front(at);
        self.index.insert(key, at);
    }

    pub(super) fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.index.get(key) {
            Some(&at) => {
                self.evict(at);
                true
            }
            None => false,
        }
    }

    /// Makes room for a new key, looking at the least recently used slots, at most [`SCAN`]:
    /// a breaker that must stay (see [`CircuitBreaker::is_evictable`]) moves to the front and
    /// is passed over; breakers idle for `idle` or longer are evicted, as many as are looked at;
    /// failing those, the least recently used breaker that may go.
    pub(super) fn make_room(&mut self, now: Instant, idle: Duration) -> Room {
        let mut room = Room::None;
        for _ in 0..SCAN.min(self.len()) {
            let at = self.tail;
            let Some(entry) = self.slots.get(at).and_then(|slot| slot.entry.as_ref()) else {
                break;
            };
            #[cfg(all(test, not(loom)))]
            {
                self.examined += 1;
            }
            if !entry.breaker.is_evictable() {
                self.move_to_front(at);
                continue;
            }
            let is_idle = now.saturating_duration_since(entry.last_used) >= idle;
            if room == Room::Made && !is_idle {
                break;
            }
            self.evict(at);
            room = Room::Made;
        }
        room
    }

    /// Evicts every breaker idle for `idle` or longer that may go. O(n).
    pub(super) fn evict_idle(&mut self, now: Instant, idle: Duration) {
        let mut at = self.tail;
        while let Some(slot) = self.slots.get(at) {
            let prev = slot.prev;
            if let Some(entry) = &slot.entry
                && now.saturating_duration_since(entry.last_used) >= idle
                && entry.breaker.is_evictable()
            {
                self.evict(at);
            }
            at = prev;
        }
    }

    fn evict(&mut self, at: usize) {
        self.unlink(at);
        if let Some(entry) = self.slots[at].entry.take() {
            self.index.remove(&entry.key);
        }
        if self.index.is_empty() {
            // Nothing stored: start over, keeping the memory.
            self.slots.clear();
            self.free.clear();
        } else {
            self.free.push(at);
        }
    }

    fn move_to_front(&mut self, at: usize) {
        if self.head != at {
            self.unlink(at);
            self.link_front(at);
        }
    }

    fn link_front(&mut self, at: usize) {
        let old_head = self.head;
        self.slots[at].prev = NIL;
        self.slots[at].next = old_head;
        match self.slots.get_mut(old_head) {
            Some(head) => head.prev = at,
            None => self.tail = at,
        }
        self.head = at;
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = (self.slots[at].prev, self.slots[at].next);
        match self.slots.get_mut(prev) {
            Some(slot) => slot.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next) {
            Some(slot) => slot.prev = prev,
            None => self.tail = prev,
        }
        self.slots[at].prev = NIL;
        self.slots[at].next = NIL;
    }

    /// The keys from the most to the least recently used, for tests.
    #[cfg(all(test, not(loom)))]
    pub(super) fn order(&self) -> Vec<&K> {
        let mut keys = Vec::new();
        let mut at = self.head;
        while let Some(slot) = self.slots.get(at) {
            keys.extend(slot.entry.as_ref().map(|entry| &entry.key));
            at = slot.next;
        }
        keys
    }
}
