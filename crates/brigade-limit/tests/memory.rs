//! Bounded keyed memory: a key cap, amortised eviction of idle keys, bytes per key, and
//! what a table full of limited keys does with a new key (`WhenFull`).

use std::num::NonZeroU32;
use std::time::Duration;

use brigade_limit::{AcquireError, Limit, Quota, RateLimiter, WhenFull};
use tokio::time::advance;

const CAP: usize = 10_000;

/// 10 cells per second, a burst of 10: a key charged 10 cells is limited for a second.
fn ten_per_second<K>(max_keys: usize, when_full: WhenFull) -> RateLimiter<K> {
    RateLimiter::builder()
        .limit(Limit::new(
            "default",
            Quota::per_second(NonZeroU32::new(10).unwrap()),
        ))
        .max_keys(max_keys)
        .when_full(when_full)
        .build()
        .unwrap()
}

fn limiter() -> RateLimiter<u64> {
    ten_per_second(CAP, WhenFull::default())
}

/// The cells `key` has left: 10 for a key the limiter does not hold. A cost of 0 charges
/// nothing and inserts nothing.
fn remaining(limiter: &RateLimiter<u64>, key: u64) -> u32 {
    limiter.try_acquire(&key, 0).unwrap().tightest().remaining()
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
async fn refusing_a_full_table_of_limited_keys_refuses_new_keys_rather_than_forget_one() {
    let limiter = ten_per_second(CAP, WhenFull::RefuseNewKeys);
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
    for when_full in [WhenFull::RefuseNewKeys, WhenFull::EvictNearestIdle] {
        let limiter: RateLimiter<u64> = ten_per_second(ODD_CAP, when_full);
        let mut refused = 0;
        for key in 0..20_000u64 {
            // 10 cells: every key stays limited for a second, so none is idle.
            if limiter.try_acquire(&key, 10).is_err() {
                refused += 1;
            }
            assert!(limiter.len() <= ODD_CAP, "{} keys held", limiter.len());
        }
        match when_full {
            WhenFull::RefuseNewKeys => assert!(refused > 0),
            _ => assert_eq!(refused, 0),
        }
    }
}

/// A flood of new keys, each limited for a second (as a client minting IPv6 /64s would
/// send), never locks a new key out when the limiter evicts; the table stays at its cap,
/// and its memory at what it held when it first filled.
#[tokio::test(start_paused = true)]
async fn evicting_a_flood_of_limited_keys_never_refuses_a_new_key() {
    let limiter = ten_per_second::<u64>(CAP, WhenFull::EvictNearestIdle);
    for key in 0..CAP as u64 {
        limiter.try_acquire(&key, 10).unwrap();
    }
    let full = limiter.memory_bytes();
    assert!(full / CAP <= 64, "{} bytes per key", full / CAP);
    for key in CAP as u64..200_000 {
        if let Err(e) = limiter.try_acquire(&key, 10) {
            panic!("key {key} refused: {e:?}");
        }
        if key % 1_000 == 0 {
            assert!(limiter.len() <= CAP);
            let bytes = limiter.memory_bytes();
            assert!(
                bytes <= full + full / 8,
                "{bytes} bytes, {full} when it filled"
            );
            // Some keys go idle now and then: the evictions take them first.
            advance(Duration::from_millis(1)).await;
        }
    }
    // The last key is held and limited; the first ones were forgotten.
    assert_eq!(remaining(&limiter, 199_999), 0);
    assert_eq!(remaining(&limiter, 0), 10);
}

/// Each new key evicts the held key that would be idle soonest: after a refund brings a
/// key's idle time forward, after a key queued for eviction is charged again, and once keys
/// are idle.
#[tokio::test(start_paused = true)]
async fn evicting_forgets_the_key_nearest_to_idle() {
    // One shard of 16 keys; 100 cells per second, a burst of 100: a cell is 10 ms.
    let limiter: RateLimiter<u64> = RateLimiter::builder()
        .limit(Limit::new(
            "default",
            Quota::per_second(NonZeroU32::new(100).unwrap()),
        ))
        .max_keys(16)
        .when_full(WhenFull::EvictNearestIdle)
        .build()
        .unwrap();
    // The keys the limiter holds that are still limited (a cost of 0 inserts nothing).
    let held = |limiter: &RateLimiter<u64>| -> Vec<u64> {
        (0..16)
            .chain(100..110)
            .filter(|&k| limiter.try_acquire(&k, 0).unwrap().tightest().remaining() < 100)
            .collect()
    };
    // Key `k` owes `costs[k]` cells, idle at `costs[k]` × 10 ms; by idle time the keys are
    // 3, 10, 6, 1, 12, 5, 8, 14, 0, 11, 4, 13, 7, 2, 9 (and 15, reserved at 1,000 ms).
    let costs = [60, 35, 90, 20, 75, 45, 30, 85, 50, 95, 25, 70, 40, 80, 55];
    for (key, cost) in costs.iter().enumerate() {
        limiter.try_acquire(&(key as u64), *cost).unwrap();
    }
    let reservation = limiter.try_reserve(&15, 100).unwrap();
    assert_eq!(held(&limiter), (0..16).collect::<Vec<_>>());

    // Key 3 (200 ms) goes.
    limiter.try_acquire(&100, 100).unwrap();
    assert!(!held(&limiter).contains(&3));

    // Key 15 settles at one cell: idle at 10 ms, it goes next, before key 10 (250 ms).
    reservation.settle(1);
    limiter.try_acquire(&101, 100).unwrap();
    assert!(!held(&limiter).contains(&15));
    assert!(held(&limiter).contains(&10));

    // Key 10 is charged 50 more cells (750 ms): key 6 (300 ms) is nearest now.
    limiter.try_acquire(&10, 50).unwrap();
    limiter.try_acquire(&102, 100).unwrap();
    assert_eq!(
        held(&limiter),
        [0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 100, 101, 102]
    );

    // At 460 ms keys 1 (350 ms), 12 (400 ms) and 5 (450 ms) are idle: the three to go.
    advance(Duration::from_millis(460)).await;
    for key in 103..106 {
        limiter.try_acquire(&key, 100).unwrap();
    }
    assert_eq!(
        held(&limiter),
        [
            0, 2, 4, 7, 8, 9, 10, 11, 13, 14, 100, 101, 102, 103, 104, 105
        ]
    );
    assert_eq!(limiter.len(), 16);
}

/// A sweep that finds the table full of keys with waiters cannot know when they will leave;
/// once they do, their keys become evictable and new keys are admitted again.
#[tokio::test(start_paused = true)]
async fn keys_whose_waiters_left_are_evicted_again() {
    for when_full in [WhenFull::RefuseNewKeys, WhenFull::EvictNearestIdle] {
        keys_whose_waiters_left_are_evicted_again_when(when_full).await;
    }
}

/// Under either policy a key with waiters is never evicted.
async fn keys_whose_waiters_left_are_evicted_again_when(when_full: WhenFull) {
    let limiter: RateLimiter<u64> = ten_per_second(2, when_full);
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

/// A new key refused because its shard is full of keys with callers waiting gets a
/// `retry_after` a client can use. The waiters may be admitted or leave at any time, so there
/// is no estimate: the hint is a second, or the longest limit's window (burst × interval) if
/// that is shorter. Once the waiters have left, the hint is when the keys go idle.
#[tokio::test(start_paused = true)]
async fn a_table_full_of_keys_with_waiters_hints_a_retry_a_client_can_use() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    let cases = [
        // A cell a second, a burst of 60: a window of a minute.
        (Quota::per_minute(nz(60)), 60, Duration::from_secs(1)),
        // A cell every 10 ms, a burst of 10: a window of 100 ms, shorter than a second.
        (
            Quota::with_period(Duration::from_millis(10))
                .unwrap()
                .allow_burst(nz(10)),
            10,
            Duration::from_millis(100),
        ),
    ];
    for (quota, burst, hint) in cases {
        for when_full in [WhenFull::RefuseNewKeys, WhenFull::EvictNearestIdle] {
            let limiter: RateLimiter<u64> = RateLimiter::builder()
                .limit(Limit::new("default", quota))
                .max_keys(2)
                .when_full(when_full)
                .build()
                .unwrap();
            let cancel = brigade_limit::CancellationToken::new();
            let mut waiters = Vec::new();
            for key in 0..2u64 {
                limiter.try_acquire(&key, burst).unwrap();
                waiters.push(tokio::spawn({
                    let (limiter, cancel) = (limiter.clone(), cancel.clone());
                    async move { limiter.acquire(&key, 1, &cancel, None).await.map(drop) }
                }));
            }
            tokio::task::yield_now().await;
            let refused = limiter.try_acquire(&2, 1).unwrap_err();
            let AcquireError::KeysExhausted { retry_after } = refused else {
                panic!("{refused:?}")
            };
            assert_eq!(retry_after, hint, "{when_full:?}, {quota:?}");
            // `acquire` on a new key is refused alike.
            let waited = limiter.acquire(&3, 1, &cancel, None).await.unwrap_err();
            assert_eq!(waited.retry_after(), Some(hint), "{when_full:?}");

            // The waiters leave. Refusing, the keys are held until idle, a window after their
            // burst was taken: that is the hint. Evicting, a key goes at once.
            cancel.cancel();
            for w in waiters {
                assert!(matches!(w.await.unwrap(), Err(AcquireError::Cancelled)));
            }
            let window = quota.replenish_interval() * burst;
            match (when_full, limiter.try_acquire(&2, 1)) {
                (WhenFull::RefuseNewKeys, Err(AcquireError::KeysExhausted { retry_after })) => {
                    assert_eq!(retry_after, window);
                }
                (WhenFull::EvictNearestIdle, Ok(_)) => {}
                (_, other) => panic!("{when_full:?}: {other:?}"),
            }
        }
    }
}

/// Keys charged far past their burst (a settle for much more than was reserved) are idle
/// years from now; a new key refused meanwhile is still told to retry within the longest
/// limit's window, not years later. A refusal costs the limiter nothing: it may look again.
#[tokio::test(start_paused = true)]
async fn a_refused_new_key_never_waits_longer_than_the_longest_window() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    // Tokens: a window of 100 ms; requests: a window of a second, the longest.
    let limiter: RateLimiter<u64> = RateLimiter::builder()
        .limit(Limit::new(
            "tokens",
            Quota::with_period(Duration::from_millis(10))
                .unwrap()
                .allow_burst(nz(10)),
        ))
        .limit(Limit::per_request("requests", Quota::per_second(nz(10))))
        .max_keys(2)
        .when_full(WhenFull::RefuseNewKeys)
        .build()
        .unwrap();
    for key in 0..2u64 {
        // u32::MAX tokens of 10 ms each: idle in about 1.4 years.
        limiter.try_reserve(&key, 1).unwrap().settle(u32::MAX);
    }
    let refused = limiter.try_acquire(&2, 1).unwrap_err();
    let AcquireError::KeysExhausted { retry_after } = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(retry_after, Duration::from_secs(1));
    // A second later the keys are still limited, and the hint the same.
    advance(retry_after).await;
    assert_eq!(
        limiter.try_acquire(&2, 1).unwrap_err().retry_after(),
        Some(Duration::from_secs(1))
    );
}
