//! Blocking against async fan-out: N calls, each a fixed mock latency of [`LATENCY`] (10 ms),
//! done four ways:
//!
//! - `sequential_blocking`: one thread, `thread::sleep` per call, one call after another.
//! - `thread_per_call`: one OS thread per call (`std::thread::spawn`, then join them all).
//! - `async_tasks`: one tokio task per call (`tokio::spawn` + `tokio::time::sleep`), join all.
//! - `async_brigade`: the same tasks, each call through brigade's stack: a rate limit and a
//!   concurrency limit (brigade-limit), a circuit breaker (brigade-breaker) and a retry policy
//!   (brigade-retry), all shared by the calls as a server's would be, plus a cancel scope per
//!   call (brigade-cancel). Nothing fails, so this measures the stack's overhead.
//!
//! Groups `fanout_3`, `fanout_100`, `fanout_1000` and `fanout_10000`. Skipped, because one
//! iteration alone would take N × 10 ms and criterion needs at least ten:
//! `sequential_blocking` at 1,000 (10 s per iteration) and 10,000 (100 s). Everything else
//! runs, thread-per-call at 10,000 included (10,000 OS threads at once).
//!
//! ```text
//! cargo bench --bench fanout
//! ```
//!
//! The async runtime is tokio's multi-thread runtime with two workers (this machine's cores).

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brigade_breaker::CircuitBreaker;
use brigade_cancel::CancelScope;
use brigade_limit::{ConcurrencyLimit, Quota, RateLimiter};
use brigade_retry::{Attempt, Retry};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};

/// The latency of one mock call.
const LATENCY: Duration = Duration::from_millis(10);

/// The fan-out widths.
const WIDTHS: [usize; 4] = [3, 100, 1_000, 10_000];

/// The widest fan-out `sequential_blocking` runs: beyond it one iteration takes seconds.
const MAX_SEQUENTIAL: usize = 100;

/// One mock call, blocking.
fn call_blocking(i: usize) -> usize {
    std::thread::sleep(LATENCY);
    i
}

/// One mock call, async.
async fn call_async(i: usize) -> usize {
    tokio::time::sleep(LATENCY).await;
    i
}

fn sequential_blocking(n: usize) -> usize {
    (0..n).map(call_blocking).sum()
}

fn thread_per_call(n: usize) -> usize {
    let threads: Vec<_> = (0..n)
        .map(|i| std::thread::spawn(move || call_blocking(i)))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

async fn async_tasks(n: usize) -> usize {
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(call_async(i))).collect();
    let mut sum = 0;
    for task in tasks {
        sum += task.await.unwrap();
    }
    sum
}

/// The policies every call shares, as a server's would.
#[derive(Debug)]
struct Stack {
    scope: CancelScope,
    rate: RateLimiter<()>,
    bulkhead: ConcurrencyLimit,
    breaker: CircuitBreaker,
    retry: Retry,
}

impl Stack {
    fn new() -> Self {
        let quota = Quota::per_second(NonZeroU32::new(100_000_000).unwrap());
        Self {
            scope: CancelScope::new(),
            rate: RateLimiter::direct(quota).unwrap(),
            bulkhead: ConcurrencyLimit::builder()
                .max_in_flight(WIDTHS[WIDTHS.len() - 1])
                .build()
                .unwrap(),
            breaker: CircuitBreaker::default(),
            retry: Retry::builder().build().unwrap(),
        }
    }

    /// One call through the stack: rate limit, bulkhead, breaker, retry, cancel scope.
    async fn call(&self, i: usize) -> usize {
        self.rate
            .try_acquire(&(), 1)
            .expect("the quota is never reached");
        let _permit = self.bulkhead.acquire().await.expect("room for every call");
        let scope = self.scope.child();
        let attempts: Pin<Box<dyn Future<Output = _> + Send + '_>> =
            Box::pin(self.retry.run(async move |_: &Attempt| {
                Ok::<_, std::convert::Infallible>(call_async(i).await)
            }));
        let answer = self.breaker.call(scope.run_until_cancelled(attempts));
        match answer.await {
            Ok(Ok(i)) => i,
            _ => unreachable!("nothing fails and nothing is cancelled"),
        }
    }
}

async fn async_brigade(stack: &Arc<Stack>, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let stack = Arc::clone(stack);
            tokio::spawn(async move { stack.call(i).await })
        })
        .collect();
    let mut sum = 0;
    for task in tasks {
        sum += task.await.unwrap();
    }
    sum
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stack = Arc::new(Stack::new());
    for n in WIDTHS {
        let mut group = c.benchmark_group(format!("fanout_{n}"));
        // Every iteration sleeps at least 10 ms: few samples, each one iteration or a few.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        if n <= MAX_SEQUENTIAL {
            group.bench_function("sequential_blocking", |b| {
                b.iter(|| black_box(sequential_blocking(n)));
            });
        } else {
            eprintln!(
                "fanout_{n}/sequential_blocking: skipped ({n} x 10 ms = {} s per iteration)",
                n / 100
            );
        }
        group.bench_function("thread_per_call", |b| {
            b.iter(|| black_box(thread_per_call(n)));
        });
        group.bench_function("async_tasks", |b| {
            b.to_async(&runtime)
                .iter(|| async move { black_box(async_tasks(n).await) });
        });
        group.bench_function("async_brigade", |b| {
            b.to_async(&runtime)
                .iter(|| async { black_box(async_brigade(&stack, n).await) });
        });
        group.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
