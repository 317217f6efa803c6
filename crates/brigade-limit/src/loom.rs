//! Atomics and the lock, swapped for loom's models under `--cfg loom`.
//!
//! This crate's lock-free code goes through here: the direct limiter's TAT and quota
//! ([`rate::direct`](crate::rate)), the bulkhead's queue counter and its keyed queue's
//! hand-off (its count of waiters and the lock around its lanes). The rate limiter's keyed
//! state sits behind plain mutexes, and the bulkhead's permits are tokio's semaphore.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
