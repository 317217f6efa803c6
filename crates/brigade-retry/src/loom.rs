//! Atomics, swapped for loom's models under `--cfg loom`.
//!
//! Only the retry budget's atomics go through here: they are the crate's only hand-rolled
//! synchronization.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
