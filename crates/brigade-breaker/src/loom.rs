//! Synchronization primitives, swapped for loom's models under `--cfg loom`.
//!
//! Every atomic and lock the breaker takes goes through here, so the loom tests in
//! `breaker::loom_tests` explore the real code.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use std::sync::PoisonError;

/// Locks `mutex`, ignoring poisoning: no code in this crate panics while holding a lock (the
/// listener is called after it is released), and every critical section leaves the data
/// consistent at each step.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pads and aligns a value to a cache line, so that a field written on every call does not
/// share its line with fields that are only read.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
