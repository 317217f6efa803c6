//! Retry budgets: retries may add at most a fraction of recent traffic.
//!
//! # Why budgets and not only max attempts
//!
//! `max_attempts = 3` looks harmless: at most three tries per call. But when an upstream gets
//! sick, *every* call fails, so every call makes all three tries, and the sick upstream receives
//! three times its normal load exactly when it can least take it. Across layers of services
//! that each retry, the amplification multiplies (3 × 3 × 3 = 27). A limit per call cannot see
//! this; only a limit shared by all calls can.
//!
//! A [`RetryBudget`] is that shared limit (the idea of Finagle's and tower's retry budgets, and
//! of gRPC's retry throttling): every call deposits into it, every retry withdraws, and within a
//! sliding window the retries may add at most `ratio` of the calls, plus a floor of
//! `min_per_sec` retries per second so that a quiet service can still retry. With the default
//! ratio of 0.2, a fully failing upstream sees at most 1.2 times its normal load, not 3 times.
//! When the budget is empty, the call stops with
//! [`StopReason::BudgetExhausted`](crate::StopReason::BudgetExhausted).
//!
//! # Exact fractions
//!
//! Ratios are kept in millionths, so a ratio of 0.15 allows exactly 15 retries per 100 calls
//! (tower#857: tower's integer deposit amounts over-allow fractional percentages).
//!
//! # Implementation and invariants
//!
//! The window is a ring of 10 slots, one per tenth of the window (a *tick*). A slot has two
//! `AtomicU64` counters, one for calls and one for retries, each packing the *lap* it counts
//! for (the tick divided by 10, 41 bits) above its count (23 bits). A counter tagged with an
//! older lap counts as empty and is reset by the next write; one tagged with a newer lap is
//! left alone, as the write is older than the window. Laps are never truncated: the shortest
//! tick is 1 ms, and the tick is computed from a `u64` of nanoseconds, so every lap fits in
//! 41 bits, and a counter left idle for any length of time is still seen to be old (after
//! 584 years the tick stops moving). No locks: a write is one CAS loop on one counter. Counts
//! saturate: a slot stops counting calls at 2^23 (fewer credits, never more) and refuses
//! retries at 2^23.
//!
//! A withdrawal reads the clock, records the retry first and then checks the sum, undoing it
//! if over: concurrent withdrawals can refuse each other, but never together exceed the
//! budget. A withdrawal whose slot moves on to a newer lap before it is done (its thread
//! stalled for a whole window) is refused. A counter's lap never goes back.
//!
//! # Deposits are batched per thread
//!
//! A shared atomic read-modify-write and a clock read on every call would cost more than the
//! rest of a call that succeeds at once, so each thread counts its calls in a thread-local
//! batch and adds them to the window in one write. A batch holds calls of one budget; it
//! starts with a clock read, and its calls are stamped with the tick of its first call. It is
//! added to the window by the thread's next call once it is full or once the *cached tick*
//! (the newest tick any thread has read from the clock for this budget) has moved on, and
//! when the thread withdraws from or reads ([`available`](RetryBudget::available)) that
//! budget, when a thread uses more than 4 budgets and this one is the least recently used,
//! and when the thread exits.
//!
//! A batch holds 1 call at first, and twice as many as the last one (up to 32) when it
//! starts in the same tick as the last one; otherwise 1 again. A thread that makes fewer than
//! two calls per tick adds each call to the window as it makes it, stamped with its own tick;
//! batches grow only where a thread makes many calls per tick, which is where one write and
//! one clock read per 32 calls matter. So:
//!
//! - Batching can only **under-count** calls, never over-count them: a budget can only be
//!   stricter than configured. A call is stamped with the tick its batch started in, never a
//!   later one, so its credit may expire early, never late; the calls stamped early are those
//!   a batch took after the clock moved on (at most 31 per batch, and the next batch starts
//!   at 1 call again). At any moment, at most 32 calls per thread that deposited into a
//!   budget are not yet counted (with 8 worker threads, at most 256 calls, that is fewer than
//!   52 retries at the default ratio of 0.2). A batch that is added after its tick has left
//!   the window counts for nothing, as its calls would have expired anyway.
//! - A thread's own calls are always counted before it withdraws, so on one thread (a
//!   current-thread runtime) the budget misses only calls that a batch stamped early.
//! - A thread's batch table keeps a weak reference to up to 4 budgets, which keeps their
//!   memory (not their value) allocated until it is evicted or the thread exits.
//! - The batches are plain thread-locals (no synchronization); only the shared window is
//!   atomic, and the loom models check it with batching compiled out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::InvalidConfig;
use crate::loom::{AtomicU64, Ordering};

const SLOTS: u64 = 10;
/// Units of credit per retry: ratios are kept in millionths.
const SCALE: u128 = 1_000_000;
/// Bits of a counter holding its count; the bits above hold its lap.
const COUNT_BITS: u32 = 23;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// The shortest tick the builder allows (a 10 ms window).
const MIN_TICK_NANOS: u64 = 1_000_000;
// The lap of the largest tick the clock can give fits above the count: laps never wrap.
const _: () = assert!(u64::MAX / MIN_TICK_NANOS / SLOTS < 1 << (64 - COUNT_BITS));
/// The most calls a thread's batch holds; a full batch is added to the window in one write.
// Under loom, batching is compiled out (loom threads share the OS thread's locals).
#[cfg_attr(loom, allow(dead_code))]
const BATCH: u64 = 32;

/// A retry budget shared by every call that holds a clone of it.
///
/// Cloning is cheap (an `Arc`) and gives another handle to the same budget. The retry policy
/// creates one by default ([`RetryBuilder::budget`](crate::RetryBuilder::budget)), shared by
/// all clones of the policy; to share one budget between several policies, pass the same one
/// to each.
///
/// The module docs say [why budgets](crate::budget#why-budgets-and-not-only-max-attempts).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::builder()
///     .ratio(0.1)
///     .min_per_sec(0)
///     .window(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// for _ in 0..20 {
///     budget.deposit(); // twenty calls...
/// }
/// assert!(budget.try_withdraw()); // ...earn two retries
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw());
///
/// // Ten seconds later the window has moved on.
/// tokio::time::advance(Duration::from_secs(10)).await;
/// assert_eq!(budget.available(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

struct Shared {
    origin: Instant,
    tick_nanos: u64,
    /// The newest tick anyone has read from the clock; never ahead of the real one. Read by
    /// every deposit, written about once per tick: kept off the counters' cache lines.
    tick: CachePadded<AtomicU64>,
    /// Calls per slot: slot `t % SLOTS` counts the calls stamped with tick `t`.
    calls: [AtomicU64; SLOTS as usize],
    /// Retries per slot, as `calls`.
    retries: [AtomicU64; SLOTS as usize],
    /// Credit per call, in millionths of a retry.
    per_call: u128,
    /// Credit always available within a window, in millionths of a retry.
    floor: u128,
    window: Duration,
    min_per_sec: u32,
    ratio: f64,
}

/// A value on cache lines of its own (128 bytes: adjacent-line prefetchers fetch pairs).
#[repr(align(128))]
struct CachePadded<T>(T);

/// Builds a [`RetryBudget`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build`"]
pub struct RetryBudgetBuilder {
    window: Duration,
    min_per_sec: u32,
    ratio: f64,
}

impl Default for RetryBudgetBuilder {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
        }
    }
}

impl RetryBudgetBuilder {
    /// How far back calls and retries count, from 10 ms to one hour.
    ///
    /// Default: 10 seconds.
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Retries per second always allowed, whatever the traffic, so that a quiet service can
    /// still retry. Over the window that makes `min_per_sec × window` retries.
    ///
    /// Default: 10.
    pub const fn min_per_sec(mut self, min_per_sec: u32) -> Self {
        self.min_per_sec = min_per_sec;
        self
    }

    /// Retries allowed per call, on top of the floor: 0.2 lets retries add 20% to the load.
    /// Must be finite, from 0 to 1000; kept to the millionth.
    ///
    /// Default: 0.2.
    pub const fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Builds the budget, starting empty (only the floor is available) at tokio's current time.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::BudgetWindow`] when the window is outside 10 ms..=1 h,
    /// [`InvalidConfig::BudgetRatio`] when the ratio is not finite or outside 0..=1000.
    pub fn build(self) -> Result<RetryBudget, InvalidConfig> {
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.window) {
            return Err(InvalidConfig::BudgetWindow);
        }
        if !(self.ratio.is_finite() && (0.0..=1000.0).contains(&self.ratio)) {
            return Err(InvalidConfig::BudgetRatio);
        }
        // Both are in range, so the float products are exact enough and fit.
        let per_call = (self.ratio * SCALE as f64).round() as u128;
        let floor = (f64::from(self.min_per_sec) * self.window.as_secs_f64() * SCALE as f64).round()
            as u128;
        // The window is at least 10 ms, so a tick is at least `MIN_TICK_NANOS`.
        let tick_nanos =
            u64::try_from(self.window.as_nanos() / u128::from(SLOTS)).unwrap_or(u64::MAX);
        Ok(RetryBudget {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                tick_nanos,
                tick: CachePadded(AtomicU64::new(0)),
                calls: std::array::from_fn(|_| AtomicU64::new(0)),
                retries: std::array::from_fn(|_| AtomicU64::new(0)),
                per_call,
                floor,
                window: self.window,
                min_per_sec: self.min_per_sec,
                ratio: self.ratio,
            }),
        })
    }
}

impl Default for RetryBudget {
    /// A budget with the defaults: a 10 s window, 10 retries per second, ratio 0.2.
    fn default() -> Self {
        match RetryBudgetBuilder::default().build() {
            Ok(budget) => budget,
            Err(_) => unreachable!("the default budget configuration is valid"),
        }
    }
}

impl RetryBudget {
    /// A builder with the defaults: a 10 s window, 10 retries per second, ratio 0.2.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder::default()
    }

    /// Records a call (not a retry). The retry policy calls this once per call.
    ///
    /// Counted in a thread-local batch first, added to the window in one write per batch of up
    /// to 32 calls (see [batching](crate::budget#deposits-are-batched-per-thread)). No lock; on
    /// most calls of a busy thread, no atomic read-modify-write and no clock read.
    #[inline]
    pub fn deposit(&self) {
        let shared = &*self.shared;
        let tick = shared.tick.0.load(Ordering::Relaxed);
        #[cfg(not(loom))]
        if batch::try_add(&self.shared, tick) {
            return;
        }
        self.deposit_slow(tick);
    }

    /// A deposit that does not fit the thread's current batch.
    #[inline(never)]
    fn deposit_slow(&self, tick: u64) {
        #[cfg(not(loom))]
        if batch::add(&self.shared, tick) {
            return;
        }
        // No batching (loom models, or a thread whose locals are gone, where the clock may be
        // gone too): count it at once, with the cached tick.
        self.shared.add_calls(tick, 1);
    }

    /// Takes one retry from the budget; `false` when it is empty. The retry policy calls this
    /// before each retry.
    ///
    /// Adds this thread's pending deposits to the window first. Lock-free; reads tokio's clock
    /// once.
    pub fn try_withdraw(&self) -> bool {
        self.flush();
        let shared = &*self.shared;
        shared.withdraw(shared.now_tick())
    }

    /// Adds this thread's pending deposits into this budget to the window.
    fn flush(&self) {
        #[cfg(not(loom))]
        batch::flush(&self.shared);
    }

    /// Retries available now, after adding this thread's pending deposits to the window.
    ///
    /// Calls still pending in other threads' batches are not seen (at most 31 per thread).
    pub fn available(&self) -> u64 {
        self.flush();
        let shared = &*self.shared;
        let tick = shared.now_tick();
        let (calls, retries) = shared.sum(tick);
        u64::try_from(shared.allowed(calls).saturating_sub(retries)).unwrap_or(u64::MAX)
    }

    /// The window set by [`RetryBudgetBuilder::window`].
    pub fn window(&self) -> Duration {
        self.shared.window
    }

    /// The floor set by [`RetryBudgetBuilder::min_per_sec`].
    pub fn min_per_sec(&self) -> u32 {
        self.shared.min_per_sec
    }

    /// The ratio set by [`RetryBudgetBuilder::ratio`].
    pub fn ratio(&self) -> f64 {
        self.shared.ratio
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("window", &self.shared.window)
            .field("min_per_sec", &self.shared.min_per_sec)
            .field("ratio", &self.shared.ratio)
            .finish_non_exhaustive()
    }
}

/// The slot of `tick`.
const fn slot(tick: u64) -> usize {
    (tick % SLOTS) as usize
}

/// The lap of `tick`: which turn of the ring it falls in.
const fn lap(tick: u64) -> u64 {
    tick / SLOTS
}

const fn count(word: u64) -> u64 {
    word & COUNT_MASK
}

/// The count `word` holds for `lap`: `Some(0)` when it counts for an older lap, `None` when it
/// counts for a newer one.
fn count_for(word: u64, lap: u64) -> Option<u64> {
    match (word >> COUNT_BITS).cmp(&lap) {
        std::cmp::Ordering::Equal => Some(count(word)),
        std::cmp::Ordering::Less => Some(0),
        std::cmp::Ordering::Greater => None,
    }
}

/// A counter's word: `count` for `lap`.
const fn word(lap: u64, count: u64) -> u64 {
    lap << COUNT_BITS | count
}

impl Shared {
    /// Reads the clock and advances the cached tick; returns the current tick.
    fn now_tick(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        // In u64 (584 years of nanoseconds): a 128-bit division costs several times more.
        let tick = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) / self.tick_nanos;
        let cached = self.tick.0.load(Ordering::Relaxed);
        if tick <= cached {
            // Another thread got there first: no write, so no cache line taken from readers.
            return cached;
        }
        self.tick.0.fetch_max(tick, Ordering::Relaxed).max(tick)
    }

    /// Takes one retry at `tick`, if the window ending at `tick` has one left.
    fn withdraw(&self, tick: u64) -> bool {
        if !self.add_retry(tick) {
            return false;
        }
        let (calls, retries) = self.sum(tick);
        // The sum holds this retry unless a newer lap has taken its slot since (this thread
        // stalled for a whole window): a counter's lap never goes back, so if the slot still
        // counts this lap now, it did when it was summed.
        let counted = self.retries[slot(tick)].load(Ordering::Acquire) >> COUNT_BITS == lap(tick);
        if counted && self.allowed(calls) >= retries {
            true
        } else {
            self.undo_retry(tick);
            false
        }
    }

    /// Records a retry at `tick`; `false` when its slot is saturated or has moved on to a
    /// newer lap. A slot counting an older lap is reset first.
    fn add_retry(&self, tick: u64) -> bool {
        let counter = &self.retries[slot(tick)];
        let lap = lap(tick);
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            let Some(before) = count_for(current, lap) else {
                return false;
            };
            if before == COUNT_MASK {
                return false;
            }
            match counter.compare_exchange_weak(
                current,
                word(lap, before + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds `n` calls at `tick`. A slot counting an older lap is reset first. When the slot
    /// has moved on to a newer lap, the calls are dropped: they belong to a tick that has left
    /// the window, and counting them in the newer lap would make their credit last too long.
    /// Saturates at 2^23 - 1 calls per slot.
    fn add_calls(&self, tick: u64, n: u64) {
        let counter = &self.calls[slot(tick)];
        let lap = lap(tick);
        let mut current = counter.load(Ordering::Relaxed);
        loop {
            let Some(before) = count_for(current, lap) else {
                return;
            };
            let new = word(lap, before + n.min(COUNT_MASK - before));
            if new == current {
                return;
            }
            match counter.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes back a retry recorded at `tick`, unless its slot has moved on since.
    fn undo_retry(&self, tick: u64) {
        let lap = lap(tick);
        let _ = self.retries[slot(tick)].fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
            (w >> COUNT_BITS == lap && count(w) > 0).then(|| w - 1)
        });
    }

    /// Calls and retries recorded within the window ending at `tick`: the ticks
    /// `tick - 9 ..= tick`, each read from its slot only if the slot counts its lap.
    fn sum(&self, tick: u64) -> (u128, u128) {
        (0..SLOTS.min(tick + 1))
            .map(|back| tick - back)
            .fold((0, 0), |(calls, retries), t| {
                let read = |counter: &AtomicU64| {
                    let w = counter.load(Ordering::Acquire);
                    if w >> COUNT_BITS == lap(t) {
                        count(w)
                    } else {
                        0
                    }
                };
                (
                    calls + u128::from(read(&self.calls[slot(t)])),
                    retries + u128::from(read(&self.retries[slot(t)])),
                )
            })
    }

    /// Retries allowed within a window that holds `calls` calls.
    fn allowed(&self, calls: u128) -> u128 {
        (self.floor + calls * self.per_call) / SCALE
    }
}

/// The per-thread batches of deposits (see the module docs).
///
/// Invariants: an entry's open batch (`tick != CLOSED`) holds `limit - left` calls, all
/// deposited into the budget whose `Shared` is at `key` at or after the tick `tick` (read
/// from the clock when the batch started); `budget` is a weak reference to that same budget
/// whenever `key` is not null, which keeps the allocation (and so the key) from being reused
/// by another budget while the entry exists. Entry 0 is the most recently used. Only the
/// owning thread touches its table: no synchronization.
#[cfg(not(loom))]
mod batch {
    use std::cell::Cell;
    use std::ptr;
    use std::sync::{Arc, Weak};

    use super::{BATCH, Shared};

    /// Budgets a thread batches for at once.
    const ENTRIES: usize = 4;
    /// `Entry::tick` of an entry with no open batch: never a tick the clock gives.
    const CLOSED: u64 = u64::MAX;

    struct Entry {
        key: Cell<*const Shared>,
        /// The tick the open batch started in, or [`CLOSED`].
        tick: Cell<u64>,
        /// The most calls the open batch holds.
        limit: Cell<u64>,
        /// Calls the open batch can still take: it holds `limit - left`. Counted down, so that
        /// the fast path compares with zero.
        left: Cell<u64>,
        /// The tick the last batch started in, or [`CLOSED`].
        last: Cell<u64>,
        budget: Cell<Weak<Shared>>,
    }

    impl Entry {
        const fn new() -> Self {
            Self {
                key: Cell::new(ptr::null()),
                tick: Cell::new(CLOSED),
                limit: Cell::new(0),
                left: Cell::new(0),
                last: Cell::new(CLOSED),
                budget: Cell::new(Weak::new()),
            }
        }

        /// Adds the open batch to its budget's window, if the budget still exists.
        fn close(&self) {
            if self.tick.get() == CLOSED {
                return;
            }
            let budget = self.budget.take();
            if let Some(shared) = budget.upgrade() {
                self.close_into(&shared);
            }
            self.tick.set(CLOSED);
            self.budget.set(budget);
        }

        /// [`close`](Self::close), for a caller that holds the entry's budget.
        fn close_into(&self, shared: &Shared) {
            let tick = self.tick.replace(CLOSED);
            if tick != CLOSED {
                shared.add_calls(tick, self.limit.get() - self.left.get());
            }
        }

        fn swap(&self, other: &Self) {
            self.key.swap(&other.key);
            self.tick.swap(&other.tick);
            self.limit.swap(&other.limit);
            self.left.swap(&other.left);
            self.last.swap(&other.last);
            self.budget.swap(&other.budget);
        }
    }

    struct Table([Entry; ENTRIES]);

    impl Drop for Table {
        fn drop(&mut self) {
            for entry in &self.0 {
                entry.close();
            }
        }
    }

    thread_local! {
        static TABLE: Table = const { Table([const { Entry::new() }; ENTRIES]) };
    }

    /// The fast path: one more call into the most recent batch, if it is this budget's, was
    /// started in the cached tick `tick`, and has room. `false` when the caller must take
    /// [`add`].
    #[inline]
    pub(super) fn try_add(shared: &Arc<Shared>, tick: u64) -> bool {
        TABLE
            .try_with(|table| {
                let entry = &table.0[0];
                let left = entry.left.get();
                let fits = ptr::eq(entry.key.get(), Arc::as_ptr(shared))
                    && entry.tick.get() == tick
                    && left != 0;
                if fits {
                    entry.left.set(left - 1);
                }
                fits
            })
            .unwrap_or(false)
    }

    /// One more call, the slow way: finds or makes this budget's entry and adds the call to
    /// its open batch if that has room and was started in the cached tick `tick`; otherwise
    /// adds the open batch to the window, reads the clock and starts a new batch with this
    /// call. `false` when the thread's table is gone (the thread is exiting): the caller counts
    /// the call itself.
    ///
    /// `#[inline]`: inlined into its one caller whichever codegen unit each lands in.
    #[inline]
    pub(super) fn add(shared: &Arc<Shared>, tick: u64) -> bool {
        TABLE
            .try_with(|table| {
                let entries = &table.0;
                let key = Arc::as_ptr(shared);
                match entries.iter().position(|e| ptr::eq(e.key.get(), key)) {
                    Some(i) => {
                        // Most recent first.
                        for j in (0..i).rev() {
                            entries[j].swap(&entries[j + 1]);
                        }
                    }
                    None => {
                        let last = &entries[ENTRIES - 1];
                        last.close();
                        for j in (0..ENTRIES - 1).rev() {
                            entries[j].swap(&entries[j + 1]);
                        }
                        let entry = &entries[0];
                        entry.key.set(key);
                        entry.last.set(CLOSED);
                        entry.budget.set(Arc::downgrade(shared));
                    }
                }
                let entry = &entries[0];
                let left = entry.left.get();
                if entry.tick.get() == tick && left != 0 {
                    // Another budget's batch was the most recent one: this one goes on.
                    entry.left.set(left - 1);
                    return;
                }
                entry.close_into(shared);
                let now = shared.now_tick();
                // Many calls per tick: grow. Otherwise (a new tick, or the first batch) this
                // call goes to the window at once.
                let limit = if entry.last.get() == now {
                    (entry.limit.get() * 2).min(BATCH)
                } else {
                    1
                };
                entry.last.set(now);
                entry.limit.set(limit);
                if limit == 1 {
                    shared.add_calls(now, 1);
                } else {
                    entry.tick.set(now);
                    entry.left.set(limit - 1);
                }
            })
            .is_ok()
    }

    /// Adds this thread's open batch of calls into `shared` to its window.
    pub(super) fn flush(shared: &Arc<Shared>) {
        let key = Arc::as_ptr(shared);
        let _ = TABLE.try_with(|table| {
            if let Some(entry) = table.0.iter().find(|e| ptr::eq(e.key.get(), key)) {
                entry.close_into(shared);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::builder()
            .ratio(ratio)
            .min_per_sec(min_per_sec)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_ratio_is_exact() {
        for (ratio, calls, allowed) in [
            (0.15, 100, 15),
            (0.2, 7, 1),
            (0.333, 1000, 333),
            (0.7, 10, 7),
            (0.001, 999, 0),
        ] {
            let budget = budget(ratio, 0);
            (0..calls).for_each(|_| budget.deposit());
            let granted = (0..1000).take_while(|_| budget.try_withdraw()).count();
            assert_eq!(granted, allowed, "ratio {ratio} over {calls} calls");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn floor_is_per_second_over_the_window() {
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(3)
            .window(Duration::from_secs(2))
            .build()
            .unwrap();
        assert_eq!(budget.available(), 6);
        let granted = (0..100).take_while(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn old_slots_expire() {
        let budget = budget(1.0, 0);
        (0..10).for_each(|_| budget.deposit());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_reused_after_a_lap() {
        let budget = budget(1.0, 0);
        (0..10).for_each(|_| budget.deposit());
        assert!(budget.try_withdraw());
        // Exactly one lap later the same slot index comes back with a new stamp.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.available(), 0);
        budget.deposit();
        budget.deposit();
        assert_eq!(budget.available(), 2);
    }

    /// Another thread's calls count once its batch is added (by its next call, or at its
    /// exit); until then at most `BATCH` of them are missing, never extra.
    #[tokio::test(start_paused = true)]
    async fn another_threads_batch_counts_when_added_or_at_exit() {
        use std::sync::Barrier;

        let budget = budget(1.0, 0);
        let (counted, exit) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let runtime = tokio::runtime::Handle::current();
        // Not a scoped thread: joining it waits for its thread-local destructors too.
        let thread = std::thread::spawn({
            let (budget, counted, exit) = (budget.clone(), Arc::clone(&counted), Arc::clone(&exit));
            move || {
                let _entered = runtime.enter();
                // All in one tick: batches of 1, 2, 4, 8 and 16 calls are added, and the
                // open batch (room for 32) holds the last 9.
                (0..40).for_each(|_| budget.deposit());
                counted.wait();
                exit.wait();
            }
        });
        counted.wait();
        assert_eq!(budget.available(), 31);
        exit.wait();
        thread.join().unwrap();
        assert_eq!(budget.available(), 40);
    }

    /// A thread that alternates between more budgets than its table holds still counts every
    /// call of each, once flushed.
    #[test]
    fn many_budgets_on_one_thread_are_all_counted() {
        let budgets: Vec<_> = (0..7).map(|_| budget(1.0, 0)).collect();
        for _ in 0..50 {
            budgets.iter().for_each(RetryBudget::deposit);
        }
        for budget in &budgets {
            assert_eq!(budget.available(), 50);
        }
    }

    /// A batch added after its tick has left the window is dropped, not counted late, even
    /// when its slot already holds a newer tick.
    #[tokio::test(start_paused = true)]
    async fn a_stale_batch_is_dropped() {
        let budget = budget(1.0, 0);
        (0..5).for_each(|_| budget.deposit());
        // A full lap later, another thread stamps the same slot with the new tick.
        tokio::time::advance(Duration::from_secs(10)).await;
        let runtime = tokio::runtime::Handle::current();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _entered = runtime.enter();
                assert!(!budget.try_withdraw());
            });
        });
        assert_eq!(budget.available(), 0);
    }

    #[test]
    fn rejects_bad_config() {
        let bad_window = RetryBudget::builder()
            .window(Duration::from_millis(1))
            .build();
        assert_eq!(bad_window.unwrap_err(), InvalidConfig::BudgetWindow);
        for ratio in [f64::NAN, -0.1, 1000.5, f64::INFINITY] {
            let bad = RetryBudget::builder().ratio(ratio).build();
            assert_eq!(bad.unwrap_err(), InvalidConfig::BudgetRatio);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// One retry in the budget, two threads withdrawing: never both.
    #[test]
    fn loom_concurrent_withdrawals_never_exceed_the_budget() {
        model(|| {
            let budget = RetryBudget::builder()
                .ratio(1.0)
                .min_per_sec(0)
                .window(Duration::from_secs(3600))
                .build()
                .unwrap();
            budget.deposit();
            let other = budget.clone();
            let thread = loom::thread::spawn(move || other.try_withdraw());
            let mine = budget.try_withdraw();
            let theirs = thread.join().unwrap();
            assert!(!(mine && theirs));
            assert_eq!(budget.available(), u64::from(!(mine || theirs)));
        });
    }

    /// A deposit racing a withdrawal: the withdrawal succeeds only on a deposit it saw, and no
    /// credit is lost or made up.
    #[test]
    fn loom_deposit_racing_a_withdrawal() {
        model(|| {
            let budget = RetryBudget::builder()
                .ratio(1.0)
                .min_per_sec(0)
                .window(Duration::from_secs(3600))
                .build()
                .unwrap();
            let other = budget.clone();
            let thread = loom::thread::spawn(move || other.deposit());
            let granted = budget.try_withdraw();
            thread.join().unwrap();
            assert_eq!(budget.available() + u64::from(granted), 1);
        });
    }

    /// A thread's batch of calls added while another withdraws: the withdrawal sees all of
    /// the batch or none of it, and no credit is lost or made up.
    #[test]
    fn loom_batch_racing_a_withdrawal() {
        model(|| {
            let budget = RetryBudget::builder()
                .ratio(1.0)
                .min_per_sec(0)
                .window(Duration::from_secs(3600))
                .build()
                .unwrap();
            let other = budget.clone();
            let thread = loom::thread::spawn(move || other.shared.add_calls(0, 3));
            let granted = budget.try_withdraw();
            thread.join().unwrap();
            assert_eq!(budget.available() + u64::from(granted), 3);
        });
    }

    /// A budget whose counters are driven at explicit ticks: a 10 s window, so tick `t` is
    /// second `t`, and tick `SLOTS` is the same slot as tick 0, one lap later.
    fn by_hand() -> RetryBudget {
        RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .window(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A late batch for a slot's old lap racing a call in its new lap: whatever the order,
    /// the old calls never count in the new lap.
    #[test]
    fn loom_a_late_batch_never_counts_in_a_newer_lap() {
        model(|| {
            let budget = by_hand();
            budget.shared.add_calls(0, 2);
            let other = budget.clone();
            let thread = loom::thread::spawn(move || other.shared.add_calls(0, 3));
            budget.shared.add_calls(SLOTS, 1);
            thread.join().unwrap();
            assert_eq!(budget.shared.sum(SLOTS), (1, 0));
        });
    }

    /// A withdrawal in a slot's old lap racing one in its new lap: the old one finds no
    /// credit, and neither its retry nor its undo ever touches the new lap's count.
    #[test]
    fn loom_a_late_withdrawal_never_touches_a_newer_lap() {
        model(|| {
            let budget = by_hand();
            budget.shared.add_calls(SLOTS, 1);
            let other = budget.clone();
            let thread = loom::thread::spawn(move || other.shared.withdraw(0));
            let granted = budget.shared.withdraw(SLOTS);
            let late = thread.join().unwrap();
            assert!(granted);
            assert!(!late);
            assert_eq!(budget.shared.sum(SLOTS), (1, 1));
        });
    }
}
