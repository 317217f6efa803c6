//! brigade-retry against backon and tower: the whole cost of a call that succeeds on its first
//! attempt, on a current-thread tokio runtime.
//!
//! - `brigade`: the default policy (3 attempts, jittered exponential backoff, the shared retry
//!   budget on), running an async closure that returns `Ok`.
//! - `backon`: `(|| async { Ok(1) }).retry(ExponentialBuilder::default())`.
//! - `tower`: `tower::retry::Retry` with a policy that never retries, over a ready `service_fn`.
//! - `brigade_no_budget`: the same as `brigade` with the budget turned off, to show what the
//!   budget's deposit costs (a thread-local increment; one call in 32 adds the batch to the
//!   shared window with one CAS and reads the clock); neither peer has a budget.
//! - `floor`: no retry at all: the same closure awaited once in a plain `async fn`, with the
//!   closure's own result type. What any retry built on async closures starts from here.
//! - `floor_counted`: `floor` plus one increment of a thread-local counter, the least a
//!   budget's deposit can cost (it counts calls, but not per budget or per window, and never
//!   reaches a shared window).
//!
//! Run: `cargo bench -p brigade-retry --bench retry -- --warm-up-time 1 --measurement-time 3`

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;

use backon::{ExponentialBuilder, Retryable};
use brigade_retry::Retry;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt, service_fn};

/// A tower policy that never retries (but clones the request, as a retrying one must).
#[derive(Clone, Copy, Debug)]
struct NeverRetry;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Stands in for the attempt handle the closure receives.
struct Handle {
    _number: u32,
}

/// The closure awaited once, without any retry state.
async fn floor<T, E>(mut op: impl AsyncFnMut(&Handle) -> Result<T, E>) -> Result<T, E> {
    let handle = Handle { _number: 1 };
    op(&handle).await
}

thread_local! {
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// [`floor`] with a call counted in a thread-local.
async fn floor_counted<T, E>(op: impl AsyncFnMut(&Handle) -> Result<T, E>) -> Result<T, E> {
    CALLS.set(CALLS.get().wrapping_add(1));
    floor(op).await
}

fn retry_success(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("retry_success");

    let policy = Retry::builder()
        .build()
        .expect("the default policy is valid");
    group.bench_function("brigade", |b| {
        b.to_async(&runtime).iter(|| async {
            let value = policy
                .run(async |_| Ok::<_, Infallible>(black_box(1_u32)))
                .await;
            black_box(value.unwrap_or_default())
        });
    });

    let bare = Retry::builder().budget(None).build().expect("valid");
    group.bench_function("brigade_no_budget", |b| {
        b.to_async(&runtime).iter(|| async {
            let value = bare
                .run(async |_| Ok::<_, Infallible>(black_box(1_u32)))
                .await;
            black_box(value.unwrap_or_default())
        });
    });

    group.bench_function("backon", |b| {
        b.to_async(&runtime).iter(|| async {
            let value = (|| async { Ok::<_, Infallible>(black_box(1_u32)) })
                .retry(ExponentialBuilder::default())
                .await;
            black_box(value.unwrap_or_default())
        });
    });

    let service = tower::retry::Retry::new(
        NeverRetry,
        service_fn(|x: u32| ready(Ok::<_, Infallible>(x))),
    );
    group.bench_function("tower", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move {
                let ready = service.ready().await.unwrap_or_else(|e| match e {});
                let value = ready.call(black_box(1_u32)).await;
                black_box(value.unwrap_or_default())
            }
        });
    });

    group.bench_function("floor", |b| {
        b.to_async(&runtime).iter(|| async {
            let value = floor(async |_| Ok::<_, Infallible>(black_box(1_u32))).await;
            black_box(value.unwrap_or_default())
        });
    });

    group.bench_function("floor_counted", |b| {
        b.to_async(&runtime).iter(|| async {
            let value = floor_counted(async |_| Ok::<_, Infallible>(black_box(1_u32))).await;
            black_box(value.unwrap_or_default())
        });
    });
    black_box(CALLS.get());

    group.finish();
}

criterion_group!(benches, retry_success);
criterion_main!(benches);
