//! Synchronization primitives, swapped for loom's models under `--cfg loom`.
//!
//! Every atomic and lock of an endpoint's state goes through here, so the loom tests in
//! `pool::loom_tests` explore the real code.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::sync::PoisonError;

/// Locks `mutex`, ignoring poisoning: no code in this crate panics while holding a lock, and
/// the one critical section (a latency sample) leaves the data consistent at each step.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
