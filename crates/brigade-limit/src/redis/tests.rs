//! The Redis limiter against real redis-server processes, on a clock the tests move.
//!
//! Decisions that must match the in-process limiter to the nanosecond need Redis's time to
//! move as tokio's paused clock does, and a server's clock cannot be paused: these tests run
//! Redis on a [`TestClock`] (the script's time argument) while the in-process limiter runs on
//! tokio's paused clock, both advanced by the same steps. The clock is the crate's own, not
//! public API, so these tests live here; everything else about Redis is in `tests/redis*.rs`,
//! through the public API. Each test starts its own server (`$BRIGADE_REDIS_SERVER`, or
//! `redis-server` on `PATH`) on a free loopback port.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

use super::redis_server::RedisServer;
use super::{Backend, Fallback, NativeGcra, RedisRateLimiter, RedisRateLimiterBuilder};
use crate::headers::RateLimitHeaders;
use crate::{AcquireError, Admitted, Limit, LimitStatus, Quota, RateLimiter};

/// A clock that replaces Redis's in the script, for these tests only.
///
/// Every limiter built with the same `TestClock` (clones share it) decides at the time it
/// holds, which moves only when [`advance`](Self::advance) moves it, as tokio's paused clock
/// does for the in-process limiter. The native `GCRA` path ignores it.
#[derive(Clone, Debug)]
pub(crate) struct TestClock {
    nanos: Arc<AtomicU64>,
}

impl TestClock {
    /// A clock at `since_epoch` after the Unix epoch.
    pub(crate) fn new(since_epoch: Duration) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(nanos(since_epoch))),
        }
    }

    /// Moves the clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.nanos.fetch_add(nanos(by), Ordering::Relaxed);
    }

    /// The time, in nanoseconds since the Unix epoch.
    pub(crate) fn now(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn nz(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap()
}

fn real_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn builder<K>(limits: &[Limit]) -> RedisRateLimiterBuilder<K> {
    limits
        .iter()
        .fold(RedisRateLimiter::builder(), |b, l| b.limit(*l))
}

fn local(limits: &[Limit]) -> RateLimiter<&'static str> {
    limits
        .iter()
        .fold(RateLimiter::builder(), |b, l| b.limit(*l))
        .build()
        .unwrap()
}

async fn raw(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// A decision as the headers see it, with everything the types expose.
#[derive(Debug, PartialEq)]
struct Seen {
    admitted: bool,
    statuses: Vec<LimitStatus>,
    retry_after: Option<Duration>,
    worst: Option<&'static str>,
    headers: HeaderMap,
}

fn seen(result: &Result<Admitted, AcquireError>) -> Seen {
    let headers_of = RateLimitHeaders::new().openai(true);
    let mut headers = HeaderMap::new();
    match result {
        Ok(a) => {
            headers_of.admitted(a, &mut headers);
            Seen {
                admitted: true,
                statuses: a.limits().collect(),
                retry_after: None,
                worst: None,
                headers,
            }
        }
        Err(AcquireError::Rejected(r)) => {
            headers_of.rejected(r, &mut headers);
            Seen {
                admitted: false,
                statuses: r.limits().collect(),
                retry_after: Some(r.retry_after()),
                worst: Some(r.limit().name()),
                headers,
            }
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

enum Step {
    Advance(u64),
    Acquire(&'static str, u32),
    Reserve(&'static str, u32),
    /// Settle the n-th reservation with this actual cost.
    Settle(usize, u32),
}

/// Runs `steps` on the in-process limiter (paused clock) and on Redis (a test clock moved by
/// the same steps), and checks every decision is the same, header fields included; through
/// the batching task and without it.
fn same_decisions(limits: &[Limit], steps: &[Step]) -> (usize, usize) {
    let batched = same_decisions_with(limits, steps, 16);
    assert_eq!(same_decisions_with(limits, steps, 1), batched);
    batched
}

fn same_decisions_with(limits: &[Limit], steps: &[Step], max_batch: usize) -> (usize, usize) {
    let server = RedisServer::start();
    let real = real_runtime();
    let paused = paused_runtime();
    let ours = paused.block_on(async { local(limits) });
    let clock = TestClock::new(Duration::from_secs(1_700_000_000));
    let theirs: RedisRateLimiter<&'static str> = real.block_on(async {
        let l = builder(limits)
            .native_gcra(NativeGcra::Never)
            .fallback(Fallback::FailClosed)
            .call_timeout(Duration::from_secs(2))
            .test_clock(clock.clone())
            .max_batch(max_batch)
            .build(server.url())
            .unwrap();
        assert_eq!(l.connect().await.unwrap(), Backend::Lua);
        l
    });
    let (mut ours_held, mut theirs_held) = (Vec::new(), Vec::new());
    let (mut admitted, mut rejected) = (0, 0);
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = match *step {
            Step::Advance(ms) => {
                let d = Duration::from_millis(ms);
                paused.block_on(tokio::time::advance(d));
                clock.advance(d);
                continue;
            }
            Step::Acquire(key, cost) => (
                paused.block_on(async { ours.try_acquire(&key, cost) }),
                real.block_on(theirs.try_acquire(&key, cost)),
            ),
            Step::Reserve(key, cost) => {
                let a = paused.block_on(async { ours.try_reserve(&key, cost) });
                let b = real.block_on(theirs.try_reserve(&key, cost));
                let views = (
                    a.as_ref()
                        .map(|r| r.admitted().clone())
                        .map_err(Clone::clone),
                    b.as_ref()
                        .map(|r| r.admitted().clone())
                        .map_err(Clone::clone),
                );
                if let (Ok(a), Ok(b)) = (a, b) {
                    assert!(b.is_on_redis());
                    ours_held.push(Some(a));
                    theirs_held.push(Some(b));
                }
                views
            }
            Step::Settle(n, actual) => {
                let a = ours_held[n].take().expect("settled once");
                let b = theirs_held[n].take().expect("settled once");
                paused.block_on(async { a.settle(actual) });
                real.block_on(b.settle(actual)).unwrap();
                continue;
            }
        };
        let (a, b) = (seen(&a), seen(&b));
        assert_eq!(a, b, "step {i}");
        if a.admitted {
            admitted += 1;
        } else {
            rejected += 1;
        }
    }
    assert_eq!(theirs.counters().fallback_decisions, 0);
    (admitted, rejected)
}

#[test]
fn a_scripted_series_decides_exactly_as_the_in_process_limiter() {
    use Step::*;
    let limits = [
        Limit::per_request("requests", Quota::per_second(nz(4))),
        Limit::new("tokens", Quota::per_minute(nz(1000))),
    ];
    let steps = [
        Acquire("a", 100),
        Acquire("a", 950), // over tokens: nothing charged on requests either
        Acquire("a", 0),   // a request, no tokens
        Acquire("a", 300),
        Acquire("a", 300),
        Acquire("a", 1), // over requests (4 at once)
        Advance(249),
        Acquire("a", 1),
        Advance(1),
        Acquire("a", 1),
        Acquire("b", 1000), // another key is independent
        Acquire("b", 1),
        Advance(1_000),
        Reserve("a", 250),
        Acquire("a", 100),
        Settle(0, 40), // refund: 210 tokens come back
        Acquire("a", 150),
        Reserve("a", 10),
        Settle(1, 200), // charge the extra 190, past what remains
        Acquire("a", 1),
        Advance(30_000),
        Acquire("a", 500),
        Acquire("b", 0),
        Advance(60_000),
        Acquire("a", 1000),
        Acquire("a", 1001), // unsatisfiable is checked before Redis: not compared here
    ];
    let (admitted, rejected) = same_decisions(&limits, &steps[..steps.len() - 1]);
    assert!(
        admitted >= 10 && rejected >= 5,
        "{admitted} admitted, {rejected} rejected"
    );
}

#[test]
fn intervals_that_are_not_whole_microseconds_match_to_the_nanosecond() {
    use Step::*;
    // 3 per second: one cell every 333,333,333 ns.
    let limits = [Limit::new("default", Quota::per_second(nz(3)))];
    let mut steps = vec![Acquire("k", 3), Acquire("k", 1)];
    for _ in 0..20 {
        steps.extend([Advance(111), Acquire("k", 1), Acquire("k", 2)]);
    }
    let (admitted, rejected) = same_decisions(&limits, &steps);
    assert!(
        admitted >= 5 && rejected >= 10,
        "{admitted} admitted, {rejected} rejected"
    );
}

#[tokio::test]
async fn settle_refunds_unused_cells_and_charges_extra_ones() {
    let server = RedisServer::start();
    let clock = TestClock::new(Duration::from_secs(1_700_000_000));
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(10))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(1000))))
        .key_prefix("t:")
        .test_clock(clock.clone())
        .build(server.url())
        .unwrap();
    let remaining = |a: &Admitted| a.limits().map(|s| s.remaining()).collect::<Vec<_>>();

    let reservation = limiter.try_reserve(&"k", 800).await.unwrap();
    assert_eq!(remaining(reservation.admitted()), [9, 200]);
    reservation.settle(300).await.unwrap(); // 500 tokens back, the request stays counted
    let peek = limiter.try_acquire(&"k", 0).await.unwrap();
    assert_eq!(remaining(&peek), [8, 700]);

    let reservation = limiter.try_reserve(&"k", 100).await.unwrap();
    reservation.settle(400).await.unwrap(); // 300 more
    let peek = limiter.try_acquire(&"k", 0).await.unwrap();
    assert_eq!(remaining(&peek), [6, 300]);

    // A refund gives back only what has not come back by itself: 60 ms per token.
    let reservation = limiter.try_reserve(&"k", 300).await.unwrap();
    clock.advance(Duration::from_secs(60)); // everything is back
    reservation.settle(0).await.unwrap();
    let peek = limiter.try_acquire(&"k", 0).await.unwrap(); // a peek is still a request
    assert_eq!(remaining(&peek), [9, 1000]);

    // A key whose refund makes it idle is deleted: idle keys cost Redis nothing.
    let mut conn = raw(&server.url()).await;
    let reservation = limiter.try_reserve(&"idle", 500).await.unwrap();
    assert!(get(&mut conn, "t:{idle}:tokens").await.is_some());
    clock.advance(Duration::from_secs(6)); // the request came back; 100 tokens did too
    reservation.settle(0).await.unwrap();
    assert_eq!(get(&mut conn, "t:{idle}:tokens").await, None);
}

/// `INFO commandstats`' count of `EVALSHA` calls.
async fn evalsha_calls(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn concurrent_decisions_on_one_key_share_calls_and_admit_exactly_the_burst() {
    let server = RedisServer::start();
    let clock = TestClock::new(Duration::from_secs(1_700_000_000)); // still: nothing refills
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new(
            "default",
            Quota::per_minute(nz(1)).allow_burst(nz(50)),
        ))
        .fallback(Fallback::FailClosed)
        .call_timeout(Duration::from_secs(2))
        .test_clock(clock)
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let mut conn = raw(&server.url()).await;
    let before = evalsha_calls(&mut conn).await;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.try_acquire(&"k", 1).await })
        })
        .collect();
    let mut remaining = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(admitted) => remaining.push(admitted.tightest().remaining()),
            Err(AcquireError::Rejected(r)) => assert_eq!(r.limit().remaining(), 0),
            Err(other) => panic!("{other:?}"),
        }
    }
    // Each decision saw the ones before it in its batch: 50 admitted, each with its own
    // remaining count.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<_>>());
    let sent = evalsha_calls(&mut conn).await - before;
    assert!(sent <= 20, "200 decisions took {sent} calls");
    assert_eq!(limiter.counters().redis_decisions, 200);
}
