//! Atomics, swapped for loom's models under `--cfg loom`.
//!
//! This crate's lock-free code goes through here: the direct limiter's TAT and quota
//! ([`rate::direct`](crate::rate)) and the bulkhead's queue counter. The keyed state sits
//! behind plain mutexes, and the bulkhead's permits are tokio's semaphore.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
