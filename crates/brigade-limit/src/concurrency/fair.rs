//! The keyed bulkhead's queue: round-robin across keys, first come first served within a key.
//!
//! # Protocol
//!
//! Permits come from a [`PermitSource`] (tokio's semaphore; a counter in the loom model). A
//! caller takes one without the lock while no one waits ([`FairQueue::try_take`]). Otherwise it
//! joins: under the lock it pushes its sender onto its key's FIFO (the key joins the end of the
//! rotation if it had no one waiting), publishes `waiting`, and tries the source once more,
//! handing what it gets to the head of the rotation (maybe itself). A release gives its permit
//! back to the source, then reads `waiting`, and if someone waits, dispatches under the lock:
//! while someone waits and the source has a permit, the next key in the rotation's oldest
//! waiter is popped and sent the permit through its oneshot.
//!
//! # Invariants
//!
//! - `waiting` is the number of senders in the FIFOs; it changes only under the lock.
//! - No waiter stays queued while a permit is free: the joiner writes `waiting` then reads the
//!   source, the releaser writes the source then reads `waiting`, each with a `SeqCst` fence
//!   between, so at least one of them sees the other (the store-buffer pattern), and whichever
//!   does dispatches.
//! - Permits are conserved: a permit taken for dispatch is sent to a popped waiter or, if none
//!   is left, goes back to the source at once. A waiter that leaves (timeout, drop) removes
//!   itself under the lock; if it was already popped, the permit sent to it is in its channel
//!   (sent under the same lock), and it gives it back with a release, which serves the next.
//!
//! Model-checked with loom (`loom_tests` below): the source and the lock are loom's; tokio's
//! oneshot is not, so each of its operations is one step of the model.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::loom::{AtomicUsize, Mutex, MutexGuard, Ordering, fence};

/// Where permits come from: taken without waiting, given back by dropping them.
pub(crate) trait PermitSource {
    /// A taken permit; dropping it gives it back to the source.
    type Permit;

    /// A permit, if one is free now.
    fn try_take(&self) -> Option<Self::Permit>;
}

impl PermitSource for Arc<Semaphore> {
    type Permit = OwnedSemaphorePermit;

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Self::clone(self).try_acquire_owned().ok()
    }
}

/// A waiter's lane: a key's hash, or `None` for the callers without a key (one lane of their
/// own).
pub(crate) type Lane = Option<u64>;

/// Why a caller could not join.
pub(crate) enum Refused<E> {
    /// Its key already holds `max_per_key` places.
    KeyFull,
    /// The caller's own admission check (run under the lock) said no.
    Admit(E),
}

/// Waiters by key, served round-robin across keys and in order within a key.
pub(crate) struct FairQueue<S: PermitSource> {
    source: S,
    max_per_key: usize,
    /// Seeded per limit, so a client cannot pick keys that share another's lane.
    hasher: RandomState,
    /// Waiters in the FIFOs (joined, neither served nor gone); written under the lock.
    waiting: AtomicUsize,
    rotation: Mutex<Rotation<S::Permit>>,
}

struct Rotation<P> {
    /// Only lanes with a waiter: at most one entry per waiting caller.
    lanes: HashMap<Lane, VecDeque<Entry<P>>>,
    /// The lanes in `lanes`, each once, the next to be served first.
    order: VecDeque<Lane>,
    next_ticket: u64,
}

struct Entry<P> {
    ticket: u64,
    tx: oneshot::Sender<P>,
}

impl<S: PermitSource> FairQueue<S> {
    pub(crate) fn new(source: S, max_per_key: usize) -> Self {
        Self {
            source,
            max_per_key,
            hasher: RandomState::new(),
            waiting: AtomicUsize::new(0),
            rotation: Mutex::new(Rotation {
                lanes: HashMap::new(),
                order: VecDeque::new(),
                next_ticket: 0,
            }),
        }
    }

    /// The lane of `key`.
    pub(crate) fn lane<Q: Hash + ?Sized>(&self, key: &Q) -> Lane {
        Some(self.hasher.hash_one(key))
    }

    /// Callers waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A permit without waiting, if no one waits (no barging past the queue) and one is free.
    /// Lock-free.
    pub(crate) fn try_take(&self) -> Option<S::Permit> {
        if self.waiting() > 0 {
            return None;
        }
        self.source.try_take()
    }

    /// Joins the queue in `lane`, after `admit` (run under the lock, once the key's bound is
    /// checked) agrees; what it returns comes back with the place. If a permit is free, it is
    /// handed to the head of the rotation at once (maybe this caller).
    pub(crate) fn join<A, E>(
        &self,
        lane: Lane,
        admit: impl FnOnce() -> Result<A, E>,
    ) -> Result<(Waiting<'_, S>, A), Refused<E>> {
        let mut rotation = self.lock();
        if lane.is_some() && rotation.waiting_in(lane) >= self.max_per_key {
            return Err(Refused::KeyFull);
        }
        let admitted = admit().map_err(Refused::Admit)?;
        // Allocated once admitted: a refusal allocates nothing.
        let (tx, rx) = oneshot::channel();
        let ticket = rotation.push(lane, tx);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Published before the source is read again: a release that missed this waiter gave
        // its permit back before this read, so the read finds it.
        fence(Ordering::SeqCst);
        self.dispatch(&mut rotation);
        drop(rotation);
        let waiting = Waiting {
            queue: self,
            lane,
            ticket,
            rx,
            served: false,
        };
        Ok((waiting, admitted))
    }

    /// Serves waiters after a permit went back to the source: lock-free when no one waits.
    pub(crate) fn release(&self) {
        // The permit's return before the read of `waiting`: a joiner that this read misses
        // reads the source after publishing itself, and finds the permit.
        fence(Ordering::SeqCst);
        if self.waiting() == 0 {
            return;
        }
        let mut rotation = self.lock();
        self.dispatch(&mut rotation);
    }

    /// While someone waits and a permit is free: the next lane's oldest waiter gets it.
    fn dispatch(&self, rotation: &mut Rotation<S::Permit>) {
        while self.waiting.load(Ordering::SeqCst) > 0 {
            let Some(mut permit) = self.source.try_take() else {
                return;
            };
            loop {
                // `waiting` counts the entries: one is there. Were none, the permit would go
                // back to the source here, under the lock, where every joiner looks for it.
                let Some(tx) = rotation.pop() else {
                    return;
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match tx.send(permit) {
                    Ok(()) => break,
                    // Its receiver is gone (it cannot be while its entry is queued): the next.
                    Err(back) => permit = back,
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rotation<S::Permit>> {
        self.rotation.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: PermitSource> fmt::Debug for FairQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueue")
            .field("max_per_key", &self.max_per_key)
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl<P> Rotation<P> {
    fn waiting_in(&self, lane: Lane) -> usize {
        self.lanes.get(&lane).map_or(0, VecDeque::len)
    }

    fn push(&mut self, lane: Lane, tx: oneshot::Sender<P>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let fifo = self.lanes.entry(lane).or_insert_with(|| {
            // A lane that starts waiting joins the end of the rotation.
            self.order.push_back(lane);
            VecDeque::new()
        });
        fifo.push_back(Entry { ticket, tx });
        ticket
    }

    /// The next lane's oldest waiter; the lane goes to the end of the rotation, or leaves it
    /// when emptied.
    fn pop(&mut self) -> Option<oneshot::Sender<P>> {
        while let Some(lane) = self.order.pop_front() {
            let Some(fifo) = self.lanes.get_mut(&lane) else {
                continue;
            };
            let entry = fifo.pop_front();
            if fifo.is_empty() {
                self.lanes.remove(&lane);
            } else {
                self.order.push_back(lane);
            }
            if let Some(entry) = entry {
                return Some(entry.tx);
            }
        }
        None
    }

    /// Removes the waiter `ticket` of `lane`; false if it is no longer queued (popped).
    fn remove(&mut self, lane: Lane, ticket: u64) -> bool {
        let Some(fifo) = self.lanes.get_mut(&lane) else {
            return false;
        };
        let Some(at) = fifo.iter().position(|entry| entry.ticket == ticket) else {
            return false;
        };
        fifo.remove(at);
        if fifo.is_empty() {
            self.lanes.remove(&lane);
            if let Some(at) = self.order.iter().position(|l| *l == lane) {
                self.order.remove(at);
            }
        }
        true
    }
}

/// A caller's place in the queue; leaves it when dropped unserved, passing on a permit it was
/// sent but did not take.
pub(crate) struct Waiting<'q, S: PermitSource> {
    queue: &'q FairQueue<S>,
    lane: Lane,
    ticket: u64,
    rx: oneshot::Receiver<S::Permit>,
    served: bool,
}

impl<S: PermitSource> Waiting<'_, S> {
    /// The permit handed to this caller, when it comes; `None` only if its sender were
    /// dropped unsent, which the queue does not do.
    pub(crate) async fn permit(&mut self) -> Option<S::Permit> {
        let permit = (&mut self.rx).await.ok();
        self.served = permit.is_some();
        permit
    }

    /// The permit, if it has been handed over.
    #[cfg(all(test, loom))]
    fn try_permit(&mut self) -> Option<S::Permit> {
        let permit = self.rx.try_recv().ok();
        self.served = permit.is_some();
        permit
    }
}

impl<S: PermitSource> Drop for Waiting<'_, S> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let queue = self.queue;
        let mut rotation = queue.lock();
        if rotation.remove(self.lane, self.ticket) {
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        drop(rotation);
        // Popped: its permit was sent under the lock, before this caller saw it gone. Give it
        // back and serve the next waiter (a permit is never dropped under the lock).
        self.rx.close();
        if let Ok(permit) = self.rx.try_recv() {
            drop(permit);
            queue.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::FairQueue;

    #[test]
    fn a_waiter_popped_but_gone_passes_its_permit_to_the_next() {
        let semaphore = Arc::new(Semaphore::new(1));
        let queue = FairQueue::new(Arc::clone(&semaphore), 4);
        let held = queue.try_take().unwrap();
        let (first, ()) = queue
            .join(queue.lane("a"), || Ok::<_, ()>(()))
            .ok()
            .unwrap();
        let (mut second, ()) = queue
            .join(queue.lane("b"), || Ok::<_, ()>(()))
            .ok()
            .unwrap();
        drop(held);
        queue.release();
        // The first was sent the permit and leaves without taking it (timed out, dropped).
        assert_eq!(queue.waiting(), 1);
        drop(first);
        let permit = futures::FutureExt::now_or_never(second.permit());
        assert!(matches!(permit, Some(Some(_))), "the next waiter is served");
        assert_eq!(semaphore.available_permits(), 0);
        drop(permit);
        drop(second);
        assert_eq!(semaphore.available_permits(), 1);
        assert_eq!(queue.waiting(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p brigade-limit --no-default-features --release --lib loom`

    use std::sync::Arc;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::{FairQueue, PermitSource, Waiting};

    /// Free permits, as tokio's semaphore keeps them: taken by compare-and-swap, given back by
    /// an add (weaker orderings than tokio's, which gives back under a lock).
    struct Counter {
        free: AtomicUsize,
        total: usize,
    }

    struct Token(Arc<Counter>);

    impl Drop for Token {
        fn drop(&mut self) {
            self.0.free.fetch_add(1, Ordering::Release);
        }
    }

    impl PermitSource for Arc<Counter> {
        type Permit = Token;

        fn try_take(&self) -> Option<Token> {
            self.free
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .ok()
                .map(|_| Token(Self::clone(self)))
        }
    }

    fn queue(total: usize) -> (Arc<Counter>, Arc<FairQueue<Arc<Counter>>>) {
        let counter = Arc::new(Counter {
            free: AtomicUsize::new(total),
            total,
        });
        (Arc::clone(&counter), Arc::new(FairQueue::new(counter, 4)))
    }

    fn join<'q>(queue: &'q FairQueue<Arc<Counter>>, key: &str) -> Waiting<'q, Arc<Counter>> {
        match queue.join(queue.lane(key), || Ok::<_, ()>(())) {
            Ok((waiting, ())) => waiting,
            Err(_) => panic!("the key's bound is 4"),
        }
    }

    /// A release: the permit goes back, then the queue is served.
    fn release(queue: &FairQueue<Arc<Counter>>, permit: Token) {
        drop(permit);
        queue.release();
    }

    /// At rest: no one is queued while a permit is free.
    fn assert_no_stranded_waiter(counter: &Counter, queue: &FairQueue<Arc<Counter>>) {
        let free = counter.free.load(Ordering::SeqCst);
        assert!(
            queue.waiting() == 0 || free == 0,
            "{} queued while {free} permits are free",
            queue.waiting()
        );
    }

    #[test]
    fn loom_a_release_racing_a_join_serves_the_joiner() {
        loom::model(|| {
            let (counter, queue) = queue(1);
            let held = queue.try_take().unwrap();
            let releaser = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || release(&queue, held))
            };
            let mut waiting = join(&queue, "a");
            releaser.join().unwrap();
            assert_no_stranded_waiter(&counter, &queue);
            let permit = waiting.try_permit();
            assert!(permit.is_some(), "the only waiter has the only permit");
            assert_eq!(counter.free.load(Ordering::SeqCst), 0);
            drop(waiting);
            release(&queue, permit.unwrap());
            assert_eq!(counter.free.load(Ordering::SeqCst), counter.total);
            assert_eq!(queue.waiting(), 0);
        });
    }

    #[test]
    fn loom_a_waiter_leaving_as_it_is_served_passes_the_permit_on() {
        loom::model(|| {
            let (counter, queue) = queue(1);
            let held = queue.try_take().unwrap();
            let first = join(&queue, "a");
            let mut second = join(&queue, "b");
            let releaser = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || release(&queue, held))
            };
            // The first times out (or is dropped) while the permit may be on its way to it.
            drop(first);
            releaser.join().unwrap();
            assert_no_stranded_waiter(&counter, &queue);
            let permit = second.try_permit();
            assert!(permit.is_some(), "the permit reached the waiter left");
            drop(second);
            release(&queue, permit.unwrap());
            assert_eq!(counter.free.load(Ordering::SeqCst), counter.total);
            assert_eq!(queue.waiting(), 0);
        });
    }

    #[test]
    fn loom_two_joiners_racing_a_release_conserve_permits() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (counter, queue) = queue(1);
            let held = queue.try_take().unwrap();
            let joiner = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || {
                    let mut waiting = join(&queue, "b");
                    // Served now or later: a permit it holds goes back at once.
                    if let Some(permit) = waiting.try_permit() {
                        release(&queue, permit);
                    }
                    // Dropped unserved: it leaves, passing on what it was sent meanwhile.
                })
            };
            let releaser = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || release(&queue, held))
            };
            let mut waiting = join(&queue, "a");
            releaser.join().unwrap();
            joiner.join().unwrap();
            assert_no_stranded_waiter(&counter, &queue);
            let permit = waiting.try_permit();
            assert!(permit.is_some(), "the waiter left has the free permit");
            drop(waiting);
            release(&queue, permit.unwrap());
            assert_eq!(counter.free.load(Ordering::SeqCst), counter.total);
            assert_eq!(queue.waiting(), 0);
        });
    }
}
