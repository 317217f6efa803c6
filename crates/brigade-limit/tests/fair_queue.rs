//! The keyed bulkhead's queue: round-robin across keys, first come first served within a key,
//! no permit stranded by a waiter that leaves, and every permit back at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brigade_limit::{ConcurrencyLimit, ConcurrencyPermit, OverloadReason, Overloaded};
use futures::FutureExt;

fn keyed(in_flight: usize, queue: usize, per_key: usize) -> ConcurrencyLimit {
    ConcurrencyLimit::builder()
        .max_in_flight(in_flight)
        .max_queue(queue)
        .max_queue_per_key(per_key)
        .queue_timeout(Duration::from_secs(10))
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap()
}

type Acquire<'a> = Pin<Box<dyn Future<Output = Result<ConcurrencyPermit, Overloaded>> + 'a>>;

/// Waiting acquires, each labelled, polled by hand so the order they finish in is the order
/// they were served in.
#[derive(Default)]
struct Line<'a> {
    waiting: Vec<(&'static str, Acquire<'a>)>,
}

impl<'a> Line<'a> {
    /// `label` queues as `key` (`None`: through `acquire`), and is still waiting.
    fn join(&mut self, limit: &'a ConcurrencyLimit, label: &'static str, key: Option<&'a str>) {
        let mut acquire: Acquire<'a> = match key {
            Some(key) => Box::pin(limit.acquire_as(key)),
            None => Box::pin(limit.acquire()),
        };
        assert!(
            acquire.as_mut().now_or_never().is_none(),
            "{label} queues: every permit is taken"
        );
        self.waiting.push((label, acquire));
    }

    /// Drops the waiting `label` (a cancelled caller).
    fn cancel(&mut self, label: &str) {
        self.waiting.retain(|(l, _)| *l != label);
    }

    /// Polls every waiter once: the one served now (at most one, with one permit free).
    fn served(&mut self) -> Option<(&'static str, ConcurrencyPermit)> {
        let mut served = None;
        let mut still = Vec::new();
        for (label, mut acquire) in self.waiting.drain(..) {
            match acquire.as_mut().now_or_never() {
                None => still.push((label, acquire)),
                Some(result) => {
                    let permit = result.unwrap_or_else(|e| panic!("{label}: {e}"));
                    assert!(served.is_none(), "two served by one release");
                    served = Some((label, permit));
                }
            }
        }
        self.waiting = still;
        served
    }

    /// Releases `permit` and each permit served after it, one at a time: the order served.
    fn serve_all(&mut self, limit: &ConcurrencyLimit, permit: ConcurrencyPermit) -> Vec<&str> {
        let mut order = Vec::new();
        let mut permit = Some(permit);
        while let Some(held) = permit.take() {
            assert_eq!(limit.in_flight(), 1);
            drop(held);
            if let Some((label, next)) = self.served() {
                order.push(label);
                permit = Some(next);
            }
        }
        order
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_round_robin_across_keys() {
    let limit = keyed(1, 16, 8);
    let held = limit.acquire_as("a").await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "a1", Some("a"));
    line.join(&limit, "a2", Some("a"));
    line.join(&limit, "a3", Some("a"));
    line.join(&limit, "b1", Some("b"));
    line.join(&limit, "c1", Some("c"));
    assert_eq!(limit.queued(), 5);
    let order = line.serve_all(&limit, held);
    assert_eq!(order, ["a1", "b1", "c1", "a2", "a3"]);
    assert_eq!(limit.in_flight(), 0);
    assert_eq!(limit.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_is_served_in_order_and_an_emptied_key_rejoins_at_the_end() {
    let limit = keyed(1, 16, 8);
    let held = limit.acquire().await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "a1", Some("a"));
    line.join(&limit, "a2", Some("a"));
    line.join(&limit, "a3", Some("a"));
    line.join(&limit, "b1", Some("b"));
    drop(held);
    let (first, held) = line.served().unwrap();
    assert_eq!(first, "a1");
    drop(held);
    // b's only waiter is served: b leaves the rotation, a is the only key left.
    let (second, held) = line.served().unwrap();
    assert_eq!(second, "b1");
    // b comes back: behind a, which waited all along.
    line.join(&limit, "b2", Some("b"));
    line.join(&limit, "c1", Some("c"));
    let order = line.serve_all(&limit, held);
    assert_eq!(order, ["a2", "b2", "c1", "a3"]);
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn callers_without_a_key_share_one_lane_of_their_own() {
    let limit = keyed(1, 16, 8);
    let held = limit.acquire().await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "anon1", None);
    line.join(&limit, "anon2", None);
    line.join(&limit, "anon3", None);
    line.join(&limit, "a1", Some("a"));
    let order = line.serve_all(&limit, held);
    assert_eq!(order, ["anon1", "a1", "anon2", "anon3"]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_arriving_while_others_wait_does_not_overtake_them() {
    let limit = keyed(1, 16, 8);
    let held = limit.acquire().await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "a1", Some("a"));
    drop(held);
    // The permit went to a1 when it was released: a newcomer finds none free.
    assert!(limit.try_acquire().is_err());
    let mut newcomer = Box::pin(limit.acquire_as("b"));
    assert!(newcomer.as_mut().now_or_never().is_none());
    let (first, held) = line.served().unwrap();
    assert_eq!(first, "a1");
    drop(held);
    assert!(newcomer.now_or_never().unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_sent_a_permit_passes_it_to_the_next() {
    let limit = keyed(1, 16, 8);
    let held = limit.acquire().await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "a1", Some("a"));
    line.join(&limit, "b1", Some("b"));
    line.join(&limit, "c1", Some("c"));
    // The permit is sent to a1, which is dropped before it takes it.
    drop(held);
    line.cancel("a1");
    assert_eq!(limit.in_flight(), 1, "the permit went on, not back");
    let (next, held) = line.served().unwrap();
    assert_eq!(next, "b1");
    // A waiter cancelled before it is served just leaves.
    line.cancel("c1");
    assert_eq!(limit.queued(), 0);
    drop(held);
    assert_eq!(limit.in_flight(), 0);
    assert!(limit.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_key_s_places_are_bounded_while_the_queue_stays_open_to_others() {
    let limit = keyed(1, 8, 2);
    let held = limit.acquire().await.unwrap();
    let mut line = Line::default();
    line.join(&limit, "a1", Some("a"));
    line.join(&limit, "a2", Some("a"));
    let refused = limit.acquire_as("a").now_or_never().unwrap().unwrap_err();
    assert_eq!(refused.reason(), OverloadReason::KeyQueueFull);
    line.join(&limit, "b1", Some("b"));
    // a1 is served: a holds one place again.
    drop(held);
    let (first, held) = line.served().unwrap();
    assert_eq!(first, "a1");
    line.join(&limit, "a3", Some("a"));
    let order = line.serve_all(&limit, held);
    assert_eq!(order, ["b1", "a2", "a3"]);
}

/// A small seeded generator (SplitMix64): the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stress_of_keyed_waiters_timeouts_and_cancels_ends_with_every_permit_back() {
    const MAX: usize = 4;
    let limit = ConcurrencyLimit::builder()
        .max_in_flight(MAX)
        .max_queue(2_000)
        .max_queue_per_key(2_000)
        // Long: a waiter stranded while a permit is free would hang the test, not time out.
        .queue_timeout(Duration::from_secs(60))
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap();
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng(0x5eed);
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let (limit, holding, most) = (limit.clone(), Arc::clone(&holding), Arc::clone(&most));
            let key = format!("client-{}", rng.below(7));
            let keyless = rng.below(10) == 0;
            // 0: waits as long as it takes; 1: gives up after a short wait; 2: cancelled.
            let kind = rng.below(3);
            let patience = Duration::from_micros(rng.below(500));
            tokio::spawn(async move {
                let acquire = async {
                    if keyless {
                        limit.acquire().await
                    } else {
                        limit.acquire_as(&key).await
                    }
                };
                let permit = match kind {
                    0 => Some(acquire.await.expect("a patient caller is served")),
                    1 => tokio::time::timeout(patience, acquire)
                        .await
                        .ok()
                        .map(|r| r.expect("served or timed out")),
                    _ => tokio::select! {
                        r = acquire => Some(r.expect("served or cancelled")),
                        () = tokio::task::yield_now() => None,
                    },
                };
                if let Some(permit) = permit {
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(limit.in_flight() <= MAX);
                    if i % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    holding.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            })
        })
        .collect();
    let finished = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("every task finishes: no waiter stranded");
    for task in finished {
        task.unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= MAX);
    assert_eq!(limit.in_flight(), 0);
    assert_eq!(limit.queued(), 0);
    assert!(limit.try_acquire().is_ok());
}
