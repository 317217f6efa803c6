//! The bulkhead's queue bound: a counter that never exceeds its maximum.
//!
//! # Invariants
//!
//! `taken <= max` at every step: a slot is taken by a compare-and-swap that checks the bound,
//! and given back exactly once, by the [`Slot`] guard's `Drop`.

use crate::loom::{AtomicUsize, Ordering};

#[derive(Debug)]
pub(crate) struct Slots {
    taken: AtomicUsize,
    max: usize,
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot<'a>(&'a Slots, usize);

impl Slot<'_> {
    /// The slot's place in line when it was taken (1: the only caller waiting).
    pub(crate) fn place(&self) -> usize {
        self.1
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, or `None` when all `max` are taken.
    pub(crate) fn try_take(&self) -> Option<Slot<'_>> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|before| Slot(self, before + 1))
    }

    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p brigade-limit --release --lib loom`

    use std::sync::Arc;

    use loom::thread;

    use super::Slots;

    #[test]
    fn loom_slots_never_exceed_their_bound_and_all_come_back() {
        loom::model(|| {
            let slots = Arc::new(Slots::new(1));
            let other = {
                let slots = Arc::clone(&slots);
                thread::spawn(move || {
                    let slot = slots.try_take();
                    let taken = slot.is_some();
                    assert!(slots.taken() <= 1);
                    drop(slot);
                    taken
                })
            };
            let slot = slots.try_take();
            assert!(slots.taken() <= 1);
            let mine = slot.is_some();
            drop(slot);
            let theirs = other.join().unwrap();
            assert!(mine || theirs, "a free slot is always taken by someone");
            assert_eq!(slots.taken(), 0);
        });
    }

    #[test]
    fn loom_two_takers_share_two_slots() {
        // Three threads: bounded preemptions keep the model under a few seconds.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let slots = Arc::new(Slots::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let slots = Arc::clone(&slots);
                    thread::spawn(move || {
                        let slot = slots.try_take();
                        assert!(slots.taken() <= 2);
                        slot.is_some()
                    })
                })
                .collect();
            let third = slots.try_take();
            let third_taken = third.is_some();
            drop(third);
            let taken = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|t| *t)
                .count();
            assert!(taken + usize::from(third_taken) >= 2);
            assert_eq!(slots.taken(), 0);
        });
    }
}
