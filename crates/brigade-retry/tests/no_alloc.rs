//! A call that succeeds on its first attempt allocates nothing: counted by a global allocator
//! in this dedicated test binary.
//!
//! It runs without libtest's harness (`harness = false`), on the main thread: the harness
//! allocates on its own thread while a test runs, which the global count would include.

use std::alloc::System;
use std::convert::Infallible;
use std::time::Duration;

use brigade_retry::{Retry, RetryBudget};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    the_success_path_does_not_allocate();
    println!("test the_success_path_does_not_allocate ... ok");
}

fn the_success_path_does_not_allocate() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let default = Retry::builder().build().unwrap();
    let limited = Retry::builder()
        .deadline(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .budget(Some(RetryBudget::default()))
        .build()
        .unwrap();
    let token = CancellationToken::new();

    runtime.block_on(async {
        // Warm up anything lazily initialised on first use (thread-locals, the budget's slots).
        let _ = default.run(async |_| Ok::<_, Infallible>(0)).await;

        let region = Region::new(GLOBAL);
        for n in 0..10_000_u32 {
            let a = default.run(async |_| Ok::<_, Infallible>(n)).await;
            let b = limited
                .call()
                .cancel_on(token.clone())
                .run(async |attempt| Ok::<_, Infallible>(attempt.number()))
                .await;
            assert_eq!((a.ok(), b.ok()), (Some(n), Some(1)));
        }
        let change = region.change();
        assert_eq!(change.allocations, 0, "{change:?}");
        assert_eq!(change.reallocations, 0, "{change:?}");
    });
}
