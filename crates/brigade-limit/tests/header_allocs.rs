//! The header fields of an admitted call allocate only for the values that change from call
//! to call: `RateLimit`, and OpenAI's remaining and reset per limit. A binary of its own, with
//! no test harness: it counts every allocation of the process.

use std::alloc::System;
use std::num::NonZeroU32;

use brigade_limit::headers::RateLimitHeaders;
use brigade_limit::{Limit, Quota, RateLimiter};
use http::HeaderMap;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    an_admitted_call_allocates_five_values_and_no_buffer();
    println!("test an_admitted_call_allocates_five_values_and_no_buffer ... ok");
}

fn an_admitted_call_allocates_five_values_and_no_buffer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let rpm = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
    let limiter: RateLimiter<&'static str> = RateLimiter::builder()
        .limit(Limit::per_request("requests", rpm(60)))
        .limit(Limit::new("tokens", rpm(10_000)))
        .build()
        .unwrap();
    let fields = RateLimitHeaders::new().openai(true);
    let mut headers = HeaderMap::with_capacity(16);
    // The first call on the thread fills its buffer and the reused values.
    fields.admitted(&limiter.try_acquire(&"k", 1).unwrap(), &mut headers);
    let admitted = limiter.try_acquire(&"k", 1).unwrap();
    for _ in 0..3 {
        headers.clear();
        let region = Region::new(GLOBAL);
        fields.admitted(&admitted, &mut headers);
        let allocations = region.change().allocations;
        // `RateLimit`, then remaining and reset for each of the two limits.
        assert_eq!(allocations, 5);
        assert_eq!(headers.len(), 8);
    }
}
