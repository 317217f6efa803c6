//! brigade-cancel against tokio-util's `CancellationToken`, doing the same work.
//!
//! Run: `cargo bench -p brigade-cancel --bench cancel`

use std::hint::black_box;

use brigade_cancel::{CancelReason, CancelScope};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

fn is_cancelled(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_is_cancelled");
    let scope = CancelScope::new();
    group.bench_function("brigade", |b| b.iter(|| black_box(&scope).is_cancelled()));
    let token = CancellationToken::new();
    group.bench_function("tokio_util", |b| {
        b.iter(|| black_box(&token).is_cancelled())
    });
    group.finish();
}

fn child(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_child");
    let scope = CancelScope::new();
    group.bench_function("brigade", |b| b.iter(|| drop(black_box(scope.child()))));
    let token = CancellationToken::new();
    group.bench_function("tokio_util", |b| {
        b.iter(|| drop(black_box(token.child_token())));
    });
    group.finish();
}

fn tree_1000(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_tree_1000");
    group.bench_function("brigade", |b| {
        b.iter_batched_ref(
            || {
                let parent = CancelScope::new();
                let children: Vec<_> = (0..1000).map(|_| parent.child()).collect();
                (parent, children)
            },
            |(parent, children)| {
                parent.cancel(CancelReason::Shutdown);
                assert!(children.iter().all(CancelScope::is_cancelled));
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("tokio_util", |b| {
        b.iter_batched_ref(
            || {
                let parent = CancellationToken::new();
                let children: Vec<_> = (0..1000).map(|_| parent.child_token()).collect();
                (parent, children)
            },
            |(parent, children)| {
                parent.cancel();
                assert!(children.iter().all(CancellationToken::is_cancelled));
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, is_cancelled, child, tree_1000);
criterion_main!(benches);
