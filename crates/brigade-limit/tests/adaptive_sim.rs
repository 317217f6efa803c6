//! `AdaptiveLimit` against a modelled upstream, on tokio's paused clock with seeded
//! randomness: it finds the upstream's capacity, follows it when it changes, stays low under
//! steady timeouts, is not pushed up by its queue allowance under modest overload, and
//! learns the no-load latency again after a slow period.
//!
//! The upstream has `C` slots, as a model server has batch slots: a call waits first come,
//! first served for a slot, gets its first byte a time to first byte later, streams for a
//! while and gives the slot back. So its latency (to the first byte) is flat up to `C`
//! calls and rises beyond, by the wait for a slot; past `2 × C` calls present it answers
//! 503 at once. A streamed call (long stream, short first byte) makes the rise steep, as
//! for a model server; a call without a stream makes it proportional to the load (a
//! processor-sharing server), the gentlest rise.
//!
//! `cargo test -p brigade-limit --test adaptive_sim -- --nocapture` prints the settled
//! limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_limit::concurrency::adaptive::Outcome;
use brigade_limit::{AdaptiveLimit, AdaptivePolicy, Aimd, Gradient};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// SplitMix64: seeded, so every run is the same run.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` times a factor uniform in `[1 - spread, 1 + spread)`.
    fn around(&mut self, d: Duration, spread: f64) -> Duration {
        d.mul_f64((2.0 * spread).mul_add(self.unit(), 1.0 - spread))
    }
}

#[derive(Debug)]
struct Upstream {
    slots: Arc<Semaphore>,
    capacity: AtomicUsize,
    /// Calls at the upstream: waiting for a slot or holding one.
    present: AtomicUsize,
    first_byte: Mutex<Duration>,
    spread: f64,
    stream: Duration,
    rng: Mutex<Rng>,
}

/// A call at the upstream; counted as present until dropped.
#[derive(Debug)]
struct Present(Arc<Upstream>);

impl Drop for Present {
    fn drop(&mut self) {
        self.0.present.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Refused;

impl Upstream {
    fn new(capacity: usize, first_byte: Duration, stream: Duration, seed: u64) -> Arc<Self> {
        Self::noisy(capacity, first_byte, 0.2, stream, seed)
    }

    /// Time to first byte uniform within `first_byte × (1 ± spread)`.
    fn noisy(
        capacity: usize,
        first_byte: Duration,
        spread: f64,
        stream: Duration,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity: AtomicUsize::new(capacity),
            present: AtomicUsize::new(0),
            first_byte: Mutex::new(first_byte),
            spread,
            stream,
            rng: Mutex::new(Rng(seed)),
        })
    }

    fn set_capacity(&self, new: usize) {
        let old = self.capacity.swap(new, Ordering::SeqCst);
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            // Slots taken away as calls give them back.
            let slots = Arc::clone(&self.slots);
            let fewer = u32::try_from(old - new).unwrap();
            tokio::spawn(async move { slots.acquire_many_owned(fewer).await.unwrap().forget() });
        }
    }

    fn set_first_byte(&self, first_byte: Duration) {
        *self.first_byte.lock().unwrap() = first_byte;
    }

    /// The call up to its first byte; the rest of the stream is `finish`.
    async fn call(self: &Arc<Self>) -> Result<(Present, Duration), Refused> {
        let present = self.present.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = Present(Arc::clone(self));
        if present > 2 * self.capacity.load(Ordering::SeqCst) {
            tokio::time::sleep(5 * MS).await;
            return Err(Refused);
        }
        let slot = Arc::clone(&self.slots).acquire_owned().await.unwrap();
        let (first_byte, stream) = {
            let mut rng = self.rng.lock().unwrap();
            let base = *self.first_byte.lock().unwrap();
            (rng.around(base, self.spread), rng.around(self.stream, 0.5))
        };
        tokio::time::sleep(first_byte).await;
        // The slot is held for the stream; the caller holds the guard.
        tokio::spawn(async move {
            tokio::time::sleep(stream).await;
            drop(slot);
        });
        Ok((guard, stream))
    }
}

/// Closed-loop clients, more than the upstream can serve: each acquires a permit, calls,
/// records the first byte (or the drop), holds the permit for the stream, and goes again.
fn clients(
    set: &mut JoinSet<()>,
    n: usize,
    limit: &AdaptiveLimit,
    upstream: &Arc<Upstream>,
    timeout: Duration,
) {
    for _ in 0..n {
        let (limit, upstream) = (limit.clone(), Arc::clone(upstream));
        set.spawn(async move {
            loop {
                let Ok(mut permit) = limit.acquire().await else {
                    tokio::time::sleep(10 * MS).await;
                    continue;
                };
                match tokio::time::timeout(timeout, upstream.call()).await {
                    Ok(Ok((present, stream))) => {
                        permit.record(Outcome::Success);
                        tokio::time::sleep(stream).await;
                        drop(present);
                    }
                    Ok(Err(Refused)) | Err(_) => permit.record(Outcome::Dropped),
                }
                drop(permit);
            }
        });
    }
}

fn limit(policy: impl Into<AdaptivePolicy>, seed: u64) -> AdaptiveLimit {
    AdaptiveLimit::builder()
        .policy(policy)
        .max_queue(1_000)
        .queue_timeout(Duration::from_secs(30))
        .jitter_seed(seed)
        .build()
        .unwrap()
}

/// The limit every 100 ms for `length`: its mean over the last `tail`, and its highest.
async fn watch(limit: &AdaptiveLimit, length: Duration, tail: Duration) -> (f64, usize) {
    let ticks = (length.as_millis() / 100) as usize;
    let tail = (tail.as_millis() / 100) as usize;
    let (mut sum, mut highest) = (0, 0);
    for tick in 0..ticks {
        tokio::time::sleep(100 * MS).await;
        let now = limit.limit();
        highest = highest.max(now);
        if tick >= ticks - tail {
            sum += now;
        }
    }
    (sum as f64 / tail as f64, highest)
}

fn policies() -> [(&'static str, AdaptivePolicy); 2] {
    [
        ("gradient", Gradient::new().into()),
        ("aimd", Aimd::new().into()),
    ]
}

/// Capacity 40, then 80, then 20 (120 s each): each policy's limit, averaged over the last
/// 40 s of each phase, within ±25 % of `tolerance × C` for a proportional upstream (whose
/// latency reaches `tolerance` times the no-load latency at `tolerance × C` calls), and of
/// `C` for a streaming one.
async fn follows_capacity(stream: Duration, spread: f64) {
    let phases = [40, 80, 20];
    for (name, policy) in policies() {
        let upstream = Upstream::noisy(phases[0], 100 * MS, spread, stream, 1);
        let limit = limit(policy, 2);
        let mut set = JoinSet::new();
        clients(&mut set, 240, &limit, &upstream, 5 * SEC);
        for capacity in phases {
            upstream.set_capacity(capacity);
            let (settled, highest) = watch(&limit, 120 * SEC, 40 * SEC).await;
            let c = capacity as f64;
            let target = if stream.is_zero() { 1.5 * c } else { c };
            println!(
                "{name:>8}, stream {stream:>4?}, spread {spread}: C = {capacity:>3}, \
                 settled {settled:>5.1} ({:+3.0} % of C), highest {highest:>3}, no-load {:?}",
                100.0 * (settled - c) / c,
                limit.no_load_latency().unwrap(),
            );
            assert!(
                (settled - target).abs() <= 0.25 * target,
                "{name}: settled at {settled:.1} for a capacity of {capacity}"
            );
        }
        set.abort_all();
    }
}

#[tokio::test(start_paused = true)]
async fn both_policies_find_and_follow_a_streaming_upstreams_capacity() {
    follows_capacity(SEC, 0.2).await;
}

#[tokio::test(start_paused = true)]
async fn both_policies_find_and_follow_a_noisy_streaming_upstreams_capacity() {
    // Time to first byte anywhere from half to one and a half times its mean.
    follows_capacity(SEC, 0.5).await;
}

#[tokio::test(start_paused = true)]
async fn a_proportional_upstream_is_held_near_tolerance_times_its_capacity() {
    follows_capacity(Duration::ZERO, 0.2).await;
}

#[tokio::test(start_paused = true)]
async fn steady_timeouts_lower_the_limit_and_never_raise_it() {
    for (name, policy) in policies() {
        // Never a first byte within the clients' 2 s.
        let upstream = Upstream::new(40, Duration::from_secs(3_600), SEC, 3);
        let limit = limit(policy, 4);
        let mut set = JoinSet::new();
        clients(&mut set, 240, &limit, &upstream, 2 * SEC);
        let (settled, highest) = watch(&limit, 300 * SEC, 60 * SEC).await;
        println!("{name:>8}, steady timeouts: settled {settled:.1}, highest {highest}");
        assert_eq!(highest, 20, "{name}: never above where it started");
        assert!(settled <= 2.0, "{name}: {settled:.1}");
        assert_eq!(
            limit.no_load_latency(),
            None,
            "{name}: a timeout is no latency"
        );
        set.abort_all();
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_allowance_does_not_raise_the_limit_under_modest_overload() {
    // A proportional upstream: past its capacity of 40 every call is a little slower, and
    // the limit holds it at a modest overload (near 60 calls, 1.5 times the no-load
    // latency) for 20 minutes. A reference that followed the load would let the queue
    // allowance climb on and on.
    let upstream = Upstream::new(40, 100 * MS, Duration::ZERO, 5);
    let limit = limit(Gradient::new(), 6);
    let mut set = JoinSet::new();
    clients(&mut set, 400, &limit, &upstream, 5 * SEC);
    let (early, _) = watch(&limit, 120 * SEC, 60 * SEC).await;
    let (mut late, mut highest) = (0.0, 0);
    for minute in 3..=20 {
        let (mean, high) = watch(&limit, 60 * SEC, 60 * SEC).await;
        highest = highest.max(high);
        late = mean;
        if minute % 5 == 0 {
            println!(
                "modest overload, minute {minute:>2}: limit {mean:.1}, highest {highest}, \
                 no-load {:?}, latency {:?}",
                limit.no_load_latency().unwrap(),
                limit.latency().unwrap(),
            );
        }
    }
    println!("modest overload: minute 2 {early:.1}, minute 20 {late:.1}, highest {highest}");
    assert!(highest <= 75, "highest {highest}");
    assert!(late <= early * 1.1, "{early:.1} then {late:.1}");
    let no_load = limit.no_load_latency().unwrap();
    assert!(
        no_load <= 110 * MS,
        "the no-load latency did not follow the load: {no_load:?}"
    );
    set.abort_all();
}

#[tokio::test(start_paused = true)]
async fn the_no_load_latency_comes_back_down_after_a_slow_period() {
    for (name, policy) in policies() {
        let upstream = Upstream::new(40, 100 * MS, SEC, 7);
        let limit = limit(policy, 8);
        let mut set = JoinSet::new();
        clients(&mut set, 240, &limit, &upstream, 5 * SEC);
        watch(&limit, 60 * SEC, SEC).await;
        let before = limit.no_load_latency().unwrap();
        // Four times slower for three minutes: the estimate learns it...
        upstream.set_first_byte(400 * MS);
        let (slow, _) = watch(&limit, 180 * SEC, 60 * SEC).await;
        let during = limit.no_load_latency().unwrap();
        // ...and comes back down once the upstream recovers: at the latest at the next
        // probe, within a probe interval and its jitter (60 s to 75 s) and the probe's
        // own window.
        upstream.set_first_byte(100 * MS);
        let mut back = None;
        for tick in 1..=900 {
            tokio::time::sleep(100 * MS).await;
            if limit.no_load_latency().unwrap() <= 120 * MS {
                back = Some(tick * 100 * MS);
                break;
            }
        }
        let after = limit.no_load_latency().unwrap();
        let (settled, _) = watch(&limit, 120 * SEC, 40 * SEC).await;
        println!(
            "{name:>8}, slow period: no-load {before:?}, {during:?} while slow, {after:?} \
             {back:?} after; limit {slow:.1} while slow, {settled:.1} after"
        );
        assert!(during >= 300 * MS, "{name}: {during:?}");
        assert!(back.is_some(), "{name}: still {after:?} 90 s after");
        assert!((settled - 40.0).abs() <= 10.0, "{name}: {settled:.1}");
        assert!(
            slow >= 20.0,
            "{name}: the slow upstream kept a limit: {slow:.1}"
        );
        set.abort_all();
    }
}
