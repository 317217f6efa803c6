//! Async acquire: FIFO fairness, cancel safety, deadlines and the queue bound.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_limit::{AcquireError, Limit, Quota, RateLimiter};
use tokio::time::{Instant, advance};
use tokio_util::sync::CancellationToken;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// 50 cells, one back every 10 ms.
fn limiter() -> RateLimiter<&'static str> {
    RateLimiter::keyed(Quota::per_second(nz(100)).allow_burst(nz(50))).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_large_waiter_is_not_starved_by_small_ones() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap(); // empty
    let order = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let start = Instant::now();

    let big = tokio::spawn({
        let (limiter, order, cancel) = (limiter.clone(), Arc::clone(&order), cancel.clone());
        async move {
            limiter.acquire(&"k", 50, &cancel, None).await.unwrap();
            order.lock().unwrap().push(("big", start.elapsed()));
        }
    });
    tokio::task::yield_now().await; // the big waiter queues first

    // 1-cell callers keep arriving, one every 5 ms, faster than cells come back.
    let mut small = Vec::new();
    let mut try_rejected = 0;
    for i in 0..60 {
        if limiter.try_acquire(&"k", 1).is_err() {
            try_rejected += 1;
        }
        small.push(tokio::spawn({
            let (limiter, order, cancel) = (limiter.clone(), Arc::clone(&order), cancel.clone());
            async move {
                limiter.acquire(&"k", 1, &cancel, None).await.unwrap();
                order.lock().unwrap().push(("small", start.elapsed()));
            }
        }));
        let _ = i;
        advance(Duration::from_millis(5)).await;
    }
    big.await.unwrap();
    for s in small {
        s.await.unwrap();
    }
    let order = order.lock().unwrap();
    // The big waiter got its 50 cells as soon as they were all back, before any small one.
    assert_eq!(order[0], ("big", Duration::from_millis(500)));
    assert!(order[1..].iter().all(|(who, _)| *who == "small"));
    assert_eq!(order.len(), 61);
    // try_acquire does not jump the queue either.
    assert_eq!(try_rejected, 60);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, cost) in [(0, 5), (1, 30), (2, 1), (3, 10)] {
        let (limiter, order, cancel) = (limiter.clone(), Arc::clone(&order), cancel.clone());
        tasks.push(tokio::spawn(async move {
            limiter.acquire(&"k", cost, &cancel, None).await.unwrap();
            order.lock().unwrap().push(i);
        }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_the_queue_and_consumes_nothing() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    {
        let waiting = limiter.acquire(&"k", 40, &cancel, None);
        // Poll it once so it queues, then drop it.
        let mut waiting = std::pin::pin!(waiting);
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
    }
    advance(Duration::from_millis(500)).await;
    // The whole burst is back: the dropped waiter charged nothing and blocks nobody.
    let a = limiter.try_acquire(&"k", 50).unwrap();
    assert_eq!(a.tightest().remaining(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_head_lets_the_next_waiter_go() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let head_token = CancellationToken::new();
    let head = tokio::spawn({
        let (limiter, token) = (limiter.clone(), head_token.clone());
        async move { limiter.acquire(&"k", 50, &token, None).await }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    let next = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move { limiter.acquire(&"k", 1, &cancel, None).await }
    });
    tokio::task::yield_now().await;
    head_token.cancel();
    assert!(matches!(head.await.unwrap(), Err(AcquireError::Cancelled)));
    next.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_cannot_be_met_fails_without_charging() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let deadline = Some(start + Duration::from_millis(100));
    let err = limiter
        .acquire(&"k", 20, &cancel, deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, AcquireError::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::ZERO, "the head knows at once");
    // A non-head waiter times out at its deadline.
    let blocker = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move { limiter.acquire(&"k", 50, &cancel, None).await }
    });
    tokio::task::yield_now().await;
    let err = limiter
        .acquire(&"k", 1, &cancel, deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, AcquireError::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    blocker.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_at_once_with_an_estimate() {
    let limiter: RateLimiter<&str> = RateLimiter::builder()
        .limit(Limit::new(
            "default",
            Quota::per_second(nz(100)).allow_burst(nz(50)),
        ))
        .max_queue(1)
        .build()
        .unwrap();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let first = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move { limiter.acquire(&"k", 10, &cancel, None).await }
    });
    tokio::task::yield_now().await;
    match limiter.acquire(&"k", 5, &cancel, None).await {
        Err(AcquireError::QueueFull(r)) => {
            // After the 10 ahead, 5 more: 150 ms.
            assert_eq!(r.retry_after(), Duration::from_millis(150));
        }
        other => panic!("{other:?}"),
    }
    cancel.cancel();
    assert!(matches!(first.await.unwrap(), Err(AcquireError::Cancelled)));
}

/// The direct limiter decides lock-free until someone waits; then the queue rules hold too.
#[tokio::test(start_paused = true)]
async fn a_direct_limiter_queues_fairly_and_drops_cleanly() {
    let limiter = RateLimiter::direct(Quota::per_second(nz(100)).allow_burst(nz(50))).unwrap();
    limiter.try_acquire(&(), 50).unwrap();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let big = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move {
            limiter
                .acquire(&(), 50, &cancel, None)
                .await
                .map(|_| start.elapsed())
        }
    });
    tokio::task::yield_now().await;
    // While the big waiter waits, a small try_acquire cannot overtake it.
    advance(Duration::from_millis(20)).await;
    assert!(limiter.try_acquire(&(), 1).is_err());
    assert_eq!(big.await.unwrap().unwrap(), Duration::from_millis(500));
    // The queue is gone: the lock-free path decides again.
    advance(Duration::from_millis(10)).await;
    assert!(limiter.try_acquire(&(), 1).is_ok());

    // A dropped direct waiter charges nothing and leaves no waiter count behind.
    {
        let mut waiting = std::pin::pin!(limiter.acquire(&(), 40, &cancel, None));
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
    }
    advance(Duration::from_millis(500)).await;
    assert_eq!(
        limiter.try_acquire(&(), 50).unwrap().tightest().remaining(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_a_direct_limiter_with_a_waiter_rescales_once() {
    let limiter = RateLimiter::direct(Quota::per_second(nz(100)).allow_burst(nz(50))).unwrap();
    limiter.try_acquire(&(), 40).unwrap();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let waiter = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move {
            limiter
                .acquire(&(), 50, &cancel, None)
                .await
                .map(|_| start.elapsed())
        }
    });
    tokio::task::yield_now().await;
    // Twice the rate: the 40 cells used come back in 200 ms instead of 400.
    limiter
        .set_quota("default", Quota::per_second(nz(200)).allow_burst(nz(50)))
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Duration::from_millis(200));
}

/// Shadow mode never rejects: switching it on releases the callers already waiting,
/// uncharged, with the rejection they would have had.
#[tokio::test(start_paused = true)]
async fn switching_shadow_mode_on_releases_waiters() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let waiter = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move { limiter.acquire(&"k", 50, &cancel, None).await }
    });
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    let start = Instant::now();
    limiter.set_shadow(true);
    let admitted = waiter.await.unwrap().unwrap();
    assert!(admitted.shadow_rejection().is_some());
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "released at once, not at 500 ms"
    );
    // Uncharged: at 500 ms the burst is back.
    limiter.set_shadow(false);
    advance(Duration::from_millis(400)).await;
    assert_eq!(
        limiter
            .try_acquire(&"k", 50)
            .unwrap()
            .tightest()
            .remaining(),
        0
    );
}

/// While callers wait, the state a decision reports counts their cells as taken: a
/// rejection never says more cells remain than it needed.
#[tokio::test(start_paused = true)]
async fn reported_remaining_counts_the_waiters_ahead() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let waiter = tokio::spawn({
        let (limiter, cancel) = (limiter.clone(), cancel.clone());
        async move { limiter.acquire(&"k", 30, &cancel, None).await.map(drop) }
    });
    tokio::task::yield_now().await;
    advance(Duration::from_millis(200)).await; // 20 cells back; the waiter needs 30
    let Err(AcquireError::Rejected(r)) = limiter.try_acquire(&"k", 1) else {
        panic!("the waiter comes first")
    };
    assert_eq!(
        r.limit().remaining(),
        0,
        "the 20 cells back are the waiter's"
    );
    assert_eq!(r.retry_after(), Duration::from_millis(110));
    assert_eq!(r.limit().reset(), Duration::from_millis(300 + 500 - 200));
    advance(Duration::from_millis(300)).await; // 50 back: the waiter has taken its 30
    waiter.await.unwrap().unwrap();
    let a = limiter.try_acquire(&"k", 1).unwrap();
    assert_eq!(a.tightest().remaining(), 19);
}

/// A head whose cells conform exactly at its deadline is admitted, not timed out.
#[tokio::test(start_paused = true)]
async fn a_wait_that_ends_at_the_deadline_is_admitted() {
    let limiter = limiter();
    limiter.try_acquire(&"k", 50).unwrap();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let deadline = Some(start + Duration::from_millis(200));
    limiter.acquire(&"k", 20, &cancel, deadline).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}
