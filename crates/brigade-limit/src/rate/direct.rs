//! The lock-free state of a direct limiter with a single limit: governor's shape, one TAT in
//! an atomic updated by compare-and-swap, so the common decision takes no lock.
//!
//! # Invariants
//!
//! - For a direct single-limit limiter, `tat` is the only TAT: the table entry (which exists
//!   only while callers wait) holds the queue, never a TAT. Every writer (the lock-free path,
//!   and the locked paths: waiters, settle, reconfiguration) goes through [`Direct::update`],
//!   a compare-and-swap loop that re-runs its pure decision when it loses a race.
//! - `queued` counts the waiters; while it is not zero, decisions take the locked path, which
//!   honours the queue.
//! - The quota is published with a sequence lock (`seq` odd while a reconfiguration writes
//!   the quota *and rescales the TAT*); a reader that sees it odd or changed takes the locked
//!   path, and a lock-free decision re-reads the quota whenever its compare-and-swap fails.
//!   So a decision that read the old quota either wins its compare-and-swap before the
//!   rescale (and is ordered before the reconfiguration) or retries and sees the change.

use crate::MAX_LIMITS;
use crate::gcra::Gcra;
use crate::loom::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) tat: AtomicU64,
    pub(crate) queued: AtomicUsize,
    seq: AtomicU64,
    t: AtomicU64,
    tau: AtomicU64,
    burst: AtomicU32,
}

impl Direct {
    pub(crate) fn new(gcra: Gcra) -> Self {
        Self {
            tat: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            t: AtomicU64::new(gcra.t),
            tau: AtomicU64::new(gcra.tau),
            burst: AtomicU32::new(gcra.burst),
        }
    }

    /// The quota, unless a reconfiguration is writing it.
    #[inline]
    pub(crate) fn gcra(&self) -> Option<Gcra> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 == 1 {
            return None;
        }
        let gcra = Gcra {
            t: self.t.load(Ordering::Relaxed),
            tau: self.tau.load(Ordering::Relaxed),
            burst: self.burst.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(gcra)
    }

    /// Publishes a new quota and rescales the TAT to it, as one step for the lock-free path;
    /// the caller holds the shard lock (one writer at a time, and no locked decision runs).
    ///
    /// `seq` stays odd until the TAT is rescaled, so a lock-free decision never applies the
    /// new quota to a TAT of the old scale: one that read the old quota either wins its
    /// compare-and-swap before the rescale (it is ordered before the reconfiguration) or
    /// loses it, finds `seq` odd on its retry and takes the locked path.
    pub(crate) fn reconfigure(&self, old: Gcra, new: Gcra, now: u64) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.t.store(new.t, Ordering::Relaxed);
        self.tau.store(new.tau, Ordering::Relaxed);
        self.burst.store(new.burst, Ordering::Relaxed);
        self.update(|tats| tats[0] = old.rescale(&new, tats[0], now));
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// The lock-free decision: runs `f` with the current quota on the TAT and stores its
    /// result by compare-and-swap, re-reading the quota on every retry. `None` while a
    /// reconfiguration is under way: take the locked path.
    #[inline(always)]
    pub(crate) fn try_update<R>(&self, mut f: impl FnMut(Gcra, &mut u64) -> R) -> Option<R> {
        let mut old = self.tat.load(Ordering::Acquire);
        loop {
            let gcra = self.gcra()?;
            let mut tat = old;
            let result = f(gcra, &mut tat);
            if tat == old {
                return Some(result);
            }
            match self
                .tat
                .compare_exchange_weak(old, tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(result),
                Err(current) => old = current,
            }
        }
    }

    /// Runs `f` on the TAT and stores its result by compare-and-swap, re-running `f` on the
    /// fresh value when another writer got there first. `f` must be a pure function of its
    /// input.
    // Inlined so the decision is built in the caller's return slot, not copied.
    #[inline(always)]
    pub(crate) fn update<R>(&self, mut f: impl FnMut(&mut [u64; MAX_LIMITS]) -> R) -> R {
        let mut old = self.tat.load(Ordering::Acquire);
        loop {
            let mut tats = [old, 0, 0, 0];
            let result = f(&mut tats);
            if tats[0] == old {
                return result;
            }
            match self
                .tat
                .compare_exchange_weak(old, tats[0], Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return result,
                Err(current) => old = current,
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p brigade-limit --release --lib loom`

    use std::sync::Arc;

    use loom::thread;

    use super::Direct;
    use crate::gcra::Gcra;

    const NOW: u64 = 1_000;

    fn gcra(t: u64, burst: u32) -> Gcra {
        Gcra {
            t,
            tau: t * u64::from(burst - 1),
            burst,
        }
    }

    /// One decision as the limiter makes it: admit `n` cells if they conform.
    fn take(direct: &Direct, g: Gcra, n: u32) -> bool {
        direct.update(|tats| {
            if NOW >= g.earliest(tats[0], n) {
                tats[0] = g.charge(tats[0], NOW, u64::from(n));
                true
            } else {
                false
            }
        })
    }

    #[test]
    fn loom_racing_decisions_never_admit_more_than_the_burst() {
        loom::model(|| {
            let g = gcra(10, 2);
            let direct = Arc::new(Direct::new(g));
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let direct = Arc::clone(&direct);
                    thread::spawn(move || take(&direct, g, 1))
                })
                .collect();
            let mine = take(&direct, g, 1);
            let admitted = others
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|a| *a)
                .count()
                + usize::from(mine);
            assert_eq!(admitted, 2, "exactly the burst of 2 is admitted");
            assert_eq!(
                direct.tat.load(loom::sync::atomic::Ordering::SeqCst),
                NOW + 20
            );
        });
    }

    #[test]
    fn loom_a_refund_racing_a_charge_loses_nothing() {
        loom::model(|| {
            let g = gcra(10, 10);
            let direct = Arc::new(Direct::new(g));
            assert!(take(&direct, g, 5));
            let refund = {
                let direct = Arc::clone(&direct);
                thread::spawn(move || {
                    direct.update(|tats| tats[0] = g.refund(tats[0], NOW, 3, NOW + 50))
                })
            };
            assert!(take(&direct, g, 2));
            refund.join().unwrap();
            // 5 + 2 - 3 cells charged, in either order.
            assert_eq!(
                direct.tat.load(loom::sync::atomic::Ordering::SeqCst),
                NOW + 40
            );
        });
    }

    #[test]
    fn loom_a_reader_never_sees_a_torn_quota() {
        loom::model(|| {
            let direct = Arc::new(Direct::new(gcra(10, 2)));
            let writer = {
                let direct = Arc::clone(&direct);
                thread::spawn(move || direct.reconfigure(gcra(10, 2), gcra(20, 4), NOW))
            };
            if let Some(g) = direct.gcra() {
                assert!(g == gcra(10, 2) || g == gcra(20, 4), "{g:?}");
            }
            writer.join().unwrap();
            assert_eq!(direct.gcra(), Some(gcra(20, 4)));
        });
    }

    /// A lock-free decision racing a reconfiguration sees either the old quota on the old
    /// TAT or the new quota on the rescaled one, never a mix: both orders admit the cell
    /// and leave the same TAT.
    #[test]
    fn loom_a_decision_racing_a_reconfiguration_uses_one_quota() {
        loom::model(|| {
            let (old, new) = (gcra(10, 2), gcra(20, 2));
            let direct = Arc::new(Direct::new(old));
            assert!(take(&direct, old, 1)); // TAT = NOW + 10: one cell of debt
            let writer = {
                let direct = Arc::clone(&direct);
                // Twice the interval: the debt of one cell becomes 20.
                thread::spawn(move || direct.reconfigure(old, new, NOW))
            };
            let decide = |g: Gcra, tat: &mut u64| {
                if NOW >= g.earliest(*tat, 1) {
                    *tat = g.charge(*tat, NOW, 1);
                    true
                } else {
                    false
                }
            };
            let admitted = match direct.try_update(decide) {
                Some(admitted) => {
                    writer.join().unwrap();
                    admitted
                }
                None => {
                    // The locked path: waits for the reconfiguration (its shard lock).
                    writer.join().unwrap();
                    direct.try_update(decide).expect("reconfiguration done")
                }
            };
            assert!(
                admitted,
                "the second cell of the burst conforms under either quota"
            );
            // Two cells of debt at 20 each, whichever came first.
            assert_eq!(
                direct.tat.load(loom::sync::atomic::Ordering::SeqCst),
                NOW + 40
            );
        });
    }
}
