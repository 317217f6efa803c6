//! brigade-limit against raw governor: one decision, direct and over 10,000 keys; the
//! header fields of an admitted decision (`headers/admitted`: two limits, the IETF and the
//! OpenAI fields, as the kitchen writes them; no peer); and a permit of the adaptive
//! concurrency limit against one of the fixed bulkhead (`adaptive_acquire`).
//!
//! `cargo bench -p brigade-limit --bench limit -- --warm-up-time 1 --measurement-time 3`
//!
//! Both sides use quotas that never deny, so each iteration is one admitted decision,
//! clock read included (governor: its default `std::time::Instant` clock without the
//! `quanta` feature; brigade: tokio's clock). The bench also prints the bytes per key of a
//! keyed limiter holding 10,000 keys.

use std::hint::black_box;
use std::num::NonZeroU32;

use brigade_limit::concurrency::adaptive::Outcome;
use brigade_limit::headers::RateLimitHeaders;
use brigade_limit::{AdaptiveLimit, ConcurrencyLimit, Limit, Quota, RateLimiter};
use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: u64 = 10_000;

fn never_denies() -> (Quota, governor::Quota) {
    let n = NonZeroU32::new(1_000_000_000).unwrap();
    (
        Quota::per_second(n).allow_burst(n),
        governor::Quota::per_second(n).allow_burst(n),
    )
}

fn direct(c: &mut Criterion) {
    let (ours, theirs) = never_denies();
    let mut group = c.benchmark_group("limit_direct");
    let brigade = RateLimiter::direct(ours).unwrap();
    group.bench_function("brigade", |b| {
        b.iter(|| black_box(brigade.try_acquire(&(), 1)).is_ok());
    });
    let governor = governor::RateLimiter::direct(theirs);
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check()).is_ok());
    });
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let (ours, theirs) = never_denies();
    let mut group = c.benchmark_group("limit_keyed");
    let brigade: RateLimiter<u64> = RateLimiter::builder()
        .limit(Limit::new("default", ours))
        .max_keys(2 * KEYS as usize)
        .build()
        .unwrap();
    let mut key = 0u64;
    group.bench_function("brigade", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(brigade.try_acquire(&key, 1)).is_ok()
        });
    });
    let bytes = brigade.memory_bytes();
    let held = brigade.len();
    let governor = governor::RateLimiter::keyed(theirs);
    let mut key = 0u64;
    group.bench_function("governor", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(governor.check_key(&key)).is_ok()
        });
    });
    group.finish();
    println!(
        "brigade keyed: {held} keys, {bytes} bytes of tables, {} bytes per key",
        bytes / held.max(1)
    );
}

fn headers(c: &mut Criterion) {
    let rpm = |n| Quota::per_minute(NonZeroU32::new(n).unwrap());
    let limiter: RateLimiter<u64> = RateLimiter::builder()
        .limit(Limit::per_request("requests", rpm(100_000)))
        .limit(Limit::new("tokens", rpm(4_000_000)))
        .build()
        .unwrap();
    let admitted = limiter.try_acquire(&7, 500).unwrap();
    let fields = RateLimitHeaders::new().openai(true);
    let mut map = http::HeaderMap::with_capacity(16);
    let mut group = c.benchmark_group("headers");
    group.bench_function("admitted", |b| {
        b.iter(|| {
            map.clear();
            fields.admitted(black_box(&admitted), &mut map);
            black_box(map.len())
        });
    });
    group.finish();
}

/// One permit taken and given back, never queued: the fixed bulkhead (`bulkhead`: tokio's
/// semaphore; `bulkhead_keyed`: with its queue fair across keys), the adaptive limit (`adaptive`: the same semaphore, the grant's epoch and a
/// clock read), and the adaptive limit with the call's success recorded (`adaptive_recorded`:
/// one more clock read and the sample under the estimator's lock, a window closed every 20).
fn adaptive_acquire(c: &mut Criterion) {
    let mut group = c.benchmark_group("adaptive_acquire");
    let bulkhead = ConcurrencyLimit::builder()
        .max_in_flight(64)
        .build()
        .unwrap();
    group.bench_function("bulkhead", |b| {
        b.iter(|| drop(black_box(bulkhead.try_acquire().unwrap())));
    });
    // Without the queue-wait prediction: no clock read at acquire or release.
    let unpredicted = ConcurrencyLimit::builder()
        .max_in_flight(64)
        .refuse_predicted_timeouts(false)
        .build()
        .unwrap();
    group.bench_function("bulkhead_unpredicted", |b| {
        b.iter(|| drop(black_box(unpredicted.try_acquire().unwrap())));
    });
    // The keyed queue (round-robin across keys), no one waiting: the count of waiters read at
    // acquire and, after a fence, at release, and the limit's `Arc` held by the permit.
    let keyed = ConcurrencyLimit::builder()
        .max_in_flight(64)
        .max_queue_per_key(8)
        .build()
        .unwrap();
    group.bench_function("bulkhead_keyed", |b| {
        b.iter(|| drop(black_box(keyed.try_acquire().unwrap())));
    });
    let adaptive = AdaptiveLimit::builder().initial_limit(64).build().unwrap();
    group.bench_function("adaptive", |b| {
        b.iter(|| drop(black_box(adaptive.try_acquire().unwrap())));
    });
    group.bench_function("adaptive_recorded", |b| {
        b.iter(|| {
            let mut permit = adaptive.try_acquire().unwrap();
            permit.record(Outcome::Success);
            drop(black_box(permit));
        });
    });
    group.finish();
}

criterion_group!(benches, direct, keyed, headers, adaptive_acquire);
criterion_main!(benches);
