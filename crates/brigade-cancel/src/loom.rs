//! Synchronization primitives, swapped for loom's models under `--cfg loom`.
//!
//! Only the locks and atomics this crate takes itself go through here; the reference counts
//! (`Arc`, `Weak`) stay std's.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::PoisonError;

/// Locks `mutex`, ignoring poisoning: no code in this crate panics while holding a lock, and
/// every critical section leaves the data consistent at each step.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The data of a mutex we own exclusively.
pub(crate) fn get_mut<T>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(PoisonError::into_inner)
}
