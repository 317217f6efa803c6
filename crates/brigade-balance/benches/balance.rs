//! brigade-balance against tower's `p2c::Balance` (`balance_pick`): one pick over 8
//! endpoints, all eligible, with its latency sample and its release.
//!
//! `cargo bench -p brigade-balance --bench balance -- --warm-up-time 1 --measurement-time 3`
//!
//! - `brigade`: a `Pool` of 8 endpoints, each with its circuit breaker (the default
//!   configuration) and no adaptive limit; each iteration picks, records the first byte,
//!   reports a success and drops the pick.
//! - `tower_p2c`: tower 0.5's `balance::p2c::Balance` over the same 8 services, each wrapped
//!   in `load::PeakEwma` (completion on response); each iteration is `ready()` then `call()`,
//!   the service answering at once; the response future's completion records the latency.
//!
//! Both read tokio's clock and sample a latency per call; both run in the same current-thread
//! runtime's context, their futures (ready at once) polled by hand, one iteration at a time.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use brigade_balance::{EndpointConfig, Pool};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{Service, ServiceExt};

const ENDPOINTS: usize = 8;

/// An upstream that answers at once.
#[derive(Clone, Copy, Debug)]
struct Instant;

impl Service<()> for Instant {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(()))
    }
}

fn balance_pick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // Both sides run inside the runtime's context (tokio's clock), polled by hand: every
    // future here is ready at its first poll.
    let _context = runtime.enter();
    let mut group = c.benchmark_group("balance_pick");

    let pool = runtime.block_on(async {
        let mut builder = Pool::builder().seed(1);
        for i in 0..ENDPOINTS {
            builder = builder.endpoint(format!("e{i}"), Instant, EndpointConfig::new());
        }
        builder.build().unwrap()
    });
    group.bench_function("brigade", |b| {
        b.iter(|| {
            let mut pick = pool.pick().unwrap();
            black_box(pick.endpoint());
            pick.first_byte();
            pick.success();
        });
    });

    let decay_ns = Duration::from_secs(10).as_secs_f64() * 1e9;
    let mut tower = runtime.block_on(async {
        let services = (0..ENDPOINTS).map(|_| {
            PeakEwma::new(
                Instant,
                Duration::from_secs(1),
                decay_ns,
                CompleteOnResponse::default(),
            )
        });
        Balance::new(ServiceList::new(services))
    });
    group.bench_function("tower_p2c", |b| {
        b.iter(|| {
            let ready = tower.ready().now_or_never().unwrap().unwrap();
            ready.call(()).now_or_never().unwrap().unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, balance_pick);
criterion_main!(benches);
