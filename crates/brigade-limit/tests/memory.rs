//! Bounded keyed memory: a key cap, amortised eviction of idle keys, bytes per key.

use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::{AcquireError, Quota, RateLimiter};
use tokio::time::advance;

const CAP: usize = 10_000;

fn limiter() -> RateLimiter<u64> {
    RateLimiter::builder()
        .limit(brigade_limit::Limit::new(
            "default",
            Quota::per_second(NonZeroU32::new(10).unwrap()),
        ))
        .max_keys(CAP)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_million_distinct_keys_stay_under_the_cap_and_the_memory_bound() {
    let limiter = limiter();
    let mut peak_bytes = 0;
    for key in 0..1_000_000u64 {
        // Each key takes one cell and is idle again 100 ms later.
        limiter.try_acquire(&key, 1).unwrap();
        if key % 5_000 == 4_999 {
            assert!(limiter.len() <= CAP, "{} keys held", limiter.len());
            peak_bytes = peak_bytes.max(limiter.memory_bytes());
            advance(Duration::from_millis(100)).await;
        }
    }
    assert!(limiter.len() <= CAP);
    let per_key = peak_bytes / CAP;
    println!("bytes per key (u64 keys, table at its cap): {per_key}");
    // An entry is 24 bytes (key, TAT, box pointer) and a control byte; hash tables run
    // between half and 7/8 full.
    assert!(per_key <= 128, "{per_key} bytes per key");
    // Idle keys can all go.
    limiter.evict_idle();
    assert!(limiter.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_full_table_of_limited_keys_refuses_new_keys_rather_than_forget_one() {
    let limiter = limiter();
    let mut refused = None;
    for key in 0..(2 * CAP as u64) {
        if let Err(e) = limiter.try_acquire(&key, 10) {
            refused = Some((key, e));
            break;
        }
    }
    let (key, err) = refused.expect("the table fills up");
    assert!(limiter.len() <= CAP);
    let AcquireError::KeysExhausted { retry_after } = err else {
        panic!("{err:?}")
    };
    // Keys become idle when their 10 cells are back.
    assert_eq!(retry_after, Duration::from_secs(1));
    // A held key is still limited: forgetting it would have handed it a fresh burst.
    assert!(limiter.try_acquire(&0, 1).is_err());
    advance(retry_after).await;
    assert!(limiter.try_acquire(&key, 10).is_ok());
}

/// The cap is split over shards; rounding must not let the shards together exceed it.
#[tokio::test(start_paused = true)]
async fn the_key_cap_holds_when_it_does_not_divide_evenly_over_the_shards() {
    const ODD_CAP: usize = 3_001;
    let limiter: RateLimiter<u64> = RateLimiter::builder()
        .limit(brigade_limit::Limit::new(
            "default",
            Quota::per_second(NonZeroU32::new(10).unwrap()),
        ))
        .max_keys(ODD_CAP)
        .build()
        .unwrap();
    let mut refused = 0;
    for key in 0..20_000u64 {
        // 10 cells: every key stays limited for a second, so none can be evicted.
        if limiter.try_acquire(&key, 10).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert!(limiter.len() <= ODD_CAP, "{} keys held", limiter.len());
}

/// A sweep that finds the table full of keys with waiters cannot know when they will leave;
/// once they do, their keys become evictable and new keys are admitted again.
#[tokio::test(start_paused = true)]
async fn keys_whose_waiters_left_are_evicted_again() {
    let limiter: RateLimiter<u64> = RateLimiter::builder()
        .limit(brigade_limit::Limit::new(
            "default",
            Quota::per_second(NonZeroU32::new(10).unwrap()),
        ))
        .max_keys(2)
        .build()
        .unwrap();
    let cancel = brigade_limit::CancellationToken::new();
    let mut waiters = Vec::new();
    for key in 0..2u64 {
        limiter.try_acquire(&key, 10).unwrap();
        waiters.push(tokio::spawn({
            let (limiter, cancel) = (limiter.clone(), cancel.clone());
            async move { limiter.acquire(&key, 10, &cancel, None).await.map(drop) }
        }));
    }
    tokio::task::yield_now().await;
    // Both keys have waiters: a new key finds no room.
    assert!(matches!(
        limiter.try_acquire(&2, 1),
        Err(AcquireError::KeysExhausted { .. })
    ));
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    // The waiters were admitted at 1 s and their cells are back at 2 s: the keys are idle.
    advance(Duration::from_secs(1)).await;
    assert!(limiter.try_acquire(&2, 1).is_ok());
    assert!(limiter.len() <= 2);
}
