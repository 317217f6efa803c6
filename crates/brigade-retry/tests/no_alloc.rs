//! A call that succeeds on its first attempt allocates nothing; a call that retries allocates
//! once through `Retry::run` (its boxed retry loop) and never through `Call::run`; a hedged call
//! that does not hedge allocates nothing: counted by a global allocator in this dedicated test
//! binary.
//!
//! It runs without libtest's harness (`harness = false`), on the main thread: the harness
//! allocates on its own thread while a test runs, which the global count would include.

use std::alloc::System;
use std::convert::Infallible;
use std::time::Duration;

use brigade_retry::{Attempt, Backoff, Hedge, LatencyPercentile, Retry, RetryBudget};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    the_success_path_does_not_allocate();
    println!("test the_success_path_does_not_allocate ... ok");
    a_retrying_call_allocates_once_or_never();
    println!("test a_retrying_call_allocates_once_or_never ... ok");
    a_hedged_call_that_does_not_hedge_does_not_allocate();
    println!("test a_hedged_call_that_does_not_hedge_does_not_allocate ... ok");
}

fn the_success_path_does_not_allocate() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let default = Retry::builder().build().unwrap();
    let unbudgeted = Retry::builder().budget(None).build().unwrap();
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

        // With the budget (its batches filling, added to the window, and starting again) and
        // without it, with limits and a token and without them.
        let region = Region::new(GLOBAL);
        for n in 0..10_000_u32 {
            let a = default.run(async |_| Ok::<_, Infallible>(n)).await;
            let b = limited
                .call()
                .cancel_on(token.clone())
                .run(async |attempt| Ok::<_, Infallible>(attempt.number()))
                .await;
            let c = unbudgeted.run(async |_| Ok::<_, Infallible>(n)).await;
            assert_eq!((a.ok(), b.ok(), c.ok()), (Some(n), Some(1), Some(n)));
        }
        let change = region.change();
        assert_eq!(change.allocations, 0, "{change:?}");
        assert_eq!(change.reallocations, 0, "{change:?}");
    });
}

/// `Retry::run` boxes the retry loop once its first attempt fails (which keeps the future of
/// every call small): one allocation per call, however many retries. `Call::run`, with a token
/// and a deadline, runs the loop in place: none.
fn a_retrying_call_allocates_once_or_never() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let four_attempts = || {
        Retry::builder()
            .schedule(Backoff::constant(Duration::from_millis(1)))
            .max_attempts(4)
            .budget(None)
    };
    let unlimited = four_attempts().build().unwrap();
    let limited = four_attempts()
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    // Fails three times, then succeeds on the fourth attempt.
    let flaky = async |attempt: &Attempt| {
        if attempt.number() < 4 {
            Err("busy")
        } else {
            Ok(attempt.number())
        }
    };

    runtime.block_on(async {
        // Warm up the timer wheel and anything else initialised on first use.
        let _ = unlimited.run(flaky).await;
        let _ = limited.call().cancel_on(token.clone()).run(flaky).await;

        const CALLS: usize = 1_000;
        const RETRIES: usize = 3;
        let region = Region::new(GLOBAL);
        for _ in 0..CALLS {
            assert_eq!(unlimited.run(flaky).await.ok(), Some(RETRIES as u32 + 1));
        }
        let change = region.change();
        assert_eq!(change.allocations, CALLS, "{change:?}");

        let region = Region::new(GLOBAL);
        for _ in 0..CALLS {
            let call = limited.call().cancel_on(token.clone()).run(flaky);
            assert_eq!(call.await.ok(), Some(RETRIES as u32 + 1));
        }
        let change = region.change();
        assert_eq!(change.allocations, 0, "{change:?}");
        assert_eq!(change.reallocations, 0, "{change:?}");
    });
}

/// A hedged call whose first request commits before the hedge delay: its first request runs in
/// the call's future, the hedge timer is armed in place, the latency sample goes into the
/// estimator's ring, and nothing allocates (a request's token would, if it asked for one).
fn a_hedged_call_that_does_not_hedge_does_not_allocate() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let policy = Retry::builder().build().unwrap();
    let fixed = Hedge::builder()
        .delay(Duration::from_millis(50))
        .build()
        .unwrap();
    let tracked = Hedge::builder()
        .delay(
            // The paused clock makes every latency zero: the floor keeps the delay above it.
            LatencyPercentile::new(95.0)
                .clamp(Duration::from_millis(50), Duration::from_secs(1))
                .fallback(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let token = CancellationToken::new();

    runtime.block_on(async {
        let call = async |hedge: &Hedge| {
            policy
                .hedge(hedge)
                .cancel_on(token.clone())
                .run(async |attempt| {
                    // Pending once: the round arms its hedge timer.
                    tokio::task::yield_now().await;
                    attempt.commit();
                    Ok::<_, Infallible>(attempt.number())
                })
                .await
        };
        // Warm up the timer wheel and anything else initialised on first use.
        let _ = call(&fixed).await;
        let _ = call(&tracked).await;

        let region = Region::new(GLOBAL);
        for _ in 0..1_000 {
            assert_eq!(call(&fixed).await.ok(), Some(1));
            assert_eq!(call(&tracked).await.ok(), Some(1));
        }
        let change = region.change();
        assert_eq!(change.allocations, 0, "{change:?}");
        assert_eq!(change.reallocations, 0, "{change:?}");
        assert!(tracked.current_delay().is_some());
    });
}
