//! brigade-breaker against failsafe-rs, on the path that matters: a successful call through a
//! closed breaker. Both run a closure and record its result (failsafe's `CircuitBreaker::call`
//! with its default config; brigade's permit API, which is what `call` does around a future).
//!
//! Run: `cargo bench -p brigade-breaker --bench breaker -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brigade_breaker::CircuitBreaker;
use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;

/// The protected work: a success.
fn work() -> Result<u64, ()> {
    Ok(black_box(42))
}

/// One call through brigade, as failsafe's `call` does: acquire, run, record.
#[inline]
fn brigade_call(breaker: &CircuitBreaker) -> Result<u64, ()> {
    let Ok(permit) = breaker.try_acquire() else {
        return Err(());
    };
    let result = work();
    match result {
        Ok(_) => permit.success(),
        Err(()) => permit.failure(),
    }
    result
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed");
    let breaker = CircuitBreaker::default();
    group.bench_function("brigade", |b| {
        b.iter(|| black_box(brigade_call(black_box(&breaker))));
    });
    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(black_box(&failsafe).call(work)));
    });
    group.finish();
}

/// Wall time of `iters` calls on each of two threads sharing one breaker.
fn two_threads<B: Send + Sync + 'static>(breaker: &Arc<B>, iters: u64, call: fn(&B)) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let breaker = Arc::clone(breaker);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    call(black_box(&breaker));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for thread in threads {
        thread.join().unwrap();
    }
    start.elapsed()
}

fn closed_2threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_2threads");
    let breaker = Arc::new(CircuitBreaker::default());
    group.bench_function("brigade", |b| {
        b.iter_custom(|iters| {
            two_threads(&breaker, iters, |breaker| {
                black_box(brigade_call(breaker)).unwrap();
            })
        });
    });
    let failsafe = Arc::new(failsafe::Config::new().build());
    group.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            two_threads(&failsafe, iters, |failsafe| {
                black_box(failsafe.call(work)).unwrap();
            })
        });
    });
    group.finish();
}

criterion_group!(benches, closed, closed_2threads);
criterion_main!(benches);
