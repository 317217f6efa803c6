//! A limiter keyed by `String` is asked with a `&str`, and a decision on a key it already
//! holds allocates nothing: the key is copied only when the limiter starts holding it. A
//! binary of its own, with no test harness: it counts every allocation of the process.

use std::alloc::System;
use std::num::NonZeroU32;

use brigade_limit::{CancellationToken, Limit, Quota, RateLimiter};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    a_decision_on_a_held_string_key_asked_by_str_allocates_nothing();
    println!("test a_decision_on_a_held_string_key_asked_by_str_allocates_nothing ... ok");
}

fn a_decision_on_a_held_string_key_asked_by_str_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let rpm = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
    let single: RateLimiter<String> = RateLimiter::keyed(rpm(1_000)).unwrap();
    let multi: RateLimiter<String> = RateLimiter::builder()
        .limit(Limit::per_request("requests", rpm(1_000)))
        .limit(Limit::new("tokens", rpm(100_000)))
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    runtime.block_on(async {
        for limiter in [&single, &multi] {
            // A request's key, borrowed from its headers.
            let key: &str = "sk-alice";
            // The first decision holds the key: one copy of it, and the entry.
            let region = Region::new(GLOBAL);
            limiter.try_acquire(key, 10).unwrap();
            assert!(region.change().allocations >= 1);
            for _ in 0..3 {
                let region = Region::new(GLOBAL);
                let admitted = limiter.try_acquire(key, 10).unwrap();
                let waited = limiter.acquire(key, 10, &cancel, None).await.unwrap();
                let allocations = region.change().allocations;
                assert_eq!(allocations, 0, "{allocations} allocations");
                drop((admitted, waited));
            }
        }
    });
}
