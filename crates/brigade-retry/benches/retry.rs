//! brigade-retry against backon and tower: the whole cost of a call that succeeds on its first
//! attempt, on a current-thread tokio runtime.
//!
//! - `brigade`: the default policy (3 attempts, jittered exponential backoff, the shared retry
//!   budget on), running an async closure that returns `Ok`.
//! - `backon`: `(|| async { Ok(1) }).retry(ExponentialBuilder::default())`.
//! - `tower`: `tower::retry::Retry` with a policy that never retries, over a ready `service_fn`.
//! - `tower_budget`: `tower::retry::Retry` with a policy that deposits into a
//!   `tower::retry::budget::TpsBudget` (its defaults: 10 s, 10 retries per second, ratio 0.2)
//!   on every success, as a budgeted tower stack must: the peer of `brigade`.
//! - `brigade_no_budget`: the same as `brigade` with the budget turned off, to show what the
//!   budget's deposit costs (a thread-local increment; on a busy thread one call in 32 adds
//!   the batch to the shared window with one CAS and reads the clock); the peer of `tower`.
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

use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use brigade_retry::Retry;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::retry::budget::{Budget, TpsBudget};
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

/// A tower policy with a retry budget, as tower's `budget` module shows it: every success
/// deposits, every retry withdraws (none here: every call succeeds).
#[derive(Clone, Debug)]
struct Budgeted {
    budget: Arc<TpsBudget>,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) => self.budget.withdraw().then(|| ready(())),
        }
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

    let budgeted = tower::retry::Retry::new(
        Budgeted {
            budget: Arc::new(TpsBudget::default()),
        },
        service_fn(|x: u32| ready(Ok::<_, Infallible>(x))),
    );
    group.bench_function("tower_budget", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = budgeted.clone();
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
