//! `RedisRateLimiter` against real redis-server processes (each test starts its own, on a
//! free loopback port), and its native `GCRA` path against a fake server that answers as the
//! command's documentation says. Outages and load: `redis_outage.rs`.
//!
//! Determinism: tests about the server's own clock, concurrency and outages use real time,
//! and only bound what real time may change: no sleep decides an outcome, except waiting for
//! a restarted server, which polls. The tests that compare decisions with the in-process
//! limiter's to the nanosecond need Redis's time to stand still between steps, which the
//! server's clock cannot do: they are unit tests (`src/redis/tests.rs`), on a clock of the
//! crate's own that is not public API. The native path's comparison runs here, on the fake
//! server's clock.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_limit::headers::RateLimitHeaders;
use brigade_limit::redis::{
    Backend, Fallback, NativeGcra, Overload, RedisRateLimiter, RedisRateLimiterBuilder, State,
};
use brigade_limit::{AcquireError, Admitted, InvalidConfig, Limit, Quota, RateLimiter};
use http::HeaderMap;
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::time::Instant;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
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

/// Redis's clock, in nanoseconds since the Unix epoch.
async fn server_time(conn: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1_000_000_000 + us * 1_000
}

async fn get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// A decision as the headers see it, with everything the types expose.
#[derive(Debug, PartialEq)]
struct Seen {
    admitted: bool,
    statuses: Vec<brigade_limit::LimitStatus>,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hammering_one_key_never_admit_more_than_burst_plus_rate() {
    let server = RedisServer::start();
    // A burst of 20, then one cell every 10 ms.
    let quota = Quota::per_second(nz(100)).allow_burst(nz(20));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let l: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
            .limit(Limit::new("default", quota))
            .fallback(Fallback::FailClosed)
            .call_timeout(Duration::from_secs(2))
            .build(server.url())
            .unwrap();
        l.connect().await.unwrap();
        replicas.push(l);
    }
    let mut conn = raw(&server.url()).await;
    let before = server_time(&mut conn).await;
    let run_for = Duration::from_millis(300);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..8 {
            let replica = replica.clone();
            tasks.push(tokio::spawn(async move {
                let (mut admitted, mut rejected) = (0u64, 0u64);
                while start.elapsed() < run_for {
                    match replica.try_acquire(&"shared", 1).await {
                        Ok(_) => admitted += 1,
                        Err(AcquireError::Rejected(_)) => rejected += 1,
                        Err(other) => panic!("{other:?}"),
                    }
                }
                (admitted, rejected)
            }));
        }
    }
    let (mut admitted, mut rejected) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.unwrap();
        admitted += a;
        rejected += r;
    }
    let after = server_time(&mut conn).await;
    // Every decision ran between `before` and `after` on the server's clock.
    let bound = 20 + (after - before) / 10_000_000;
    assert!(
        admitted <= bound,
        "{admitted} admitted in {} ms, bound {bound}",
        (after - before) / 1_000_000
    );
    assert!(admitted >= 20, "the burst at least: {admitted}");
    assert!(rejected > 0);
    for replica in &replicas {
        assert_eq!(replica.counters().fallback_decisions, 0);
    }
}

#[tokio::test]
async fn a_rejected_multi_limit_charges_nothing_on_any_key() {
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(3))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(1000))))
        .key_prefix("m:")
        .build(server.url())
        .unwrap();
    let mut conn = raw(&server.url()).await;
    limiter.try_acquire(&"k", 900).await.unwrap();
    let keys = ["m:{k}:requests", "m:{k}:tokens"];
    let before = [get(&mut conn, keys[0]).await, get(&mut conn, keys[1]).await];

    // Over tokens: requests is untouched too.
    let Err(AcquireError::Rejected(r)) = limiter.try_acquire(&"k", 200).await else {
        panic!("over the token quota")
    };
    assert_eq!(r.limit().name(), "tokens");
    let after = [get(&mut conn, keys[0]).await, get(&mut conn, keys[1]).await];
    assert_eq!(before, after);

    // Over requests: tokens is untouched.
    limiter.try_acquire(&"k", 0).await.unwrap();
    limiter.try_acquire(&"k", 0).await.unwrap();
    let before = get(&mut conn, keys[1]).await;
    let Err(AcquireError::Rejected(r)) = limiter.try_acquire(&"k", 50).await else {
        panic!("over the request quota")
    };
    assert_eq!(r.limit().name(), "requests");
    assert_eq!(get(&mut conn, keys[1]).await, before);
}

#[test]
fn replicas_whose_clocks_are_shifted_agree_because_time_is_the_server_s() {
    let server = RedisServer::start();
    // Replica B's runtime clock runs an hour ahead of A's.
    let a_rt = real_runtime();
    let b_rt = paused_runtime();
    b_rt.block_on(async {
        tokio::time::advance(Duration::from_secs(3600)).await;
        tokio::time::resume();
    });
    let quota = Quota::per_second(nz(5)); // one cell every 200 ms
    let make = || {
        RedisRateLimiter::<&'static str>::builder()
            .limit(Limit::new("default", quota))
            .key_prefix("s:")
            .fallback(Fallback::FailClosed)
            .call_timeout(Duration::from_secs(2))
            .build(server.url())
            .unwrap()
    };
    let a = a_rt.block_on(async { make() });
    let b = b_rt.block_on(async { make() });
    for _ in 0..5 {
        a_rt.block_on(a.try_acquire(&"k", 1)).unwrap();
    }
    // B sees A's charges at once, though its own clock is an hour later.
    let Err(AcquireError::Rejected(r)) = b_rt.block_on(b.try_acquire(&"k", 1)) else {
        panic!("A used the burst")
    };
    assert!(r.retry_after() > Duration::ZERO && r.retry_after() <= Duration::from_millis(200));
    // And the stored TAT is the server's time plus the five cells charged.
    let (tat, now) = a_rt.block_on(async {
        let mut conn = raw(&server.url()).await;
        let tat: u64 = get(&mut conn, "s:{k}:default")
            .await
            .unwrap()
            .parse()
            .unwrap();
        (tat, server_time(&mut conn).await)
    });
    assert!(
        tat > now && tat - now <= 1_000_000_000,
        "tat {tat}, now {now}"
    );
}

#[tokio::test]
async fn every_key_expires_when_its_tat_passes() {
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(10))))
        .key_prefix("x:")
        .build(server.url())
        .unwrap();
    limiter.try_acquire(&"k", 3).await.unwrap(); // a TAT 300 ms ahead
    let mut conn = raw(&server.url()).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("x:{k}:default")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=300).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again_without_leaving_redis() {
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(10))))
        .build(server.url())
        .unwrap();
    limiter.try_acquire(&"k", 1).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let a = limiter.try_acquire(&"k", 1).await.unwrap();
    assert_eq!(a.tightest().remaining(), 8);
    let c = limiter.counters();
    assert_eq!(
        (c.redis_decisions, c.switches_to_fallback, c.redis_errors),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn a_key_holding_garbage_falls_back_for_that_call_only() {
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(10))))
        .key_prefix("g:")
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let mut conn = raw(&server.url()).await;
    let () = redis::cmd("SET")
        .arg("g:{bad}:default")
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The local fallback's answers: about the key, not Redis, so however many in a row
    // (more than `outage_after`), the limiter stays on Redis.
    for _ in 0..5 {
        limiter.try_acquire(&"bad", 1).await.unwrap();
    }
    limiter.try_acquire(&"good", 1).await.unwrap();
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));
    let c = limiter.counters();
    assert_eq!(
        (
            c.redis_decisions,
            c.fallback_decisions,
            c.redis_errors,
            c.switches_to_fallback
        ),
        (1, 5, 5, 0)
    );
}

#[tokio::test]
async fn a_huge_settle_saturates_to_a_time_the_script_reads_back() {
    // One cell an hour; a settle of u32::MAX cells charges about 490,000 years, past the
    // latest time a key holds (19 digits of nanoseconds, in 2286): the TAT saturates there, as
    // the in-process limiter's saturates at u64::MAX, and the key stays readable.
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("tokens", Quota::per_hour(nz(1))))
        .key_prefix("z:")
        .fallback(Fallback::FailClosed)
        .call_timeout(Duration::from_secs(2))
        .build(server.url())
        .unwrap();
    let reservation = limiter.try_reserve(&"k", 1).await.unwrap();
    assert!(reservation.is_on_redis());
    reservation.settle(u32::MAX).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let stored = get(&mut conn, "z:{k}:tokens").await.unwrap();
    assert_eq!(stored, "9999999999999999999");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("z:{k}:tokens")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "{ttl}");

    // Decisions on the key still work: rejected, with a wait until 2286.
    let now = server_time(&mut conn).await;
    let Err(AcquireError::Rejected(r)) = limiter.try_acquire(&"k", 1).await else {
        panic!("the key is charged until 2286")
    };
    let until_2286 = Duration::from_nanos(9_999_999_999_999_999_999 - now);
    let wait = r.retry_after();
    assert!(
        wait <= until_2286 && until_2286 - wait < Duration::from_secs(60),
        "{wait:?}"
    );
    // A further charge stays at the cap; a peek reads it.
    let reservation = limiter.try_reserve(&"other", 1).await.unwrap();
    reservation.settle(u32::MAX).await.unwrap();
    let peek = limiter.try_acquire(&"k", 0).await.unwrap();
    assert_eq!(peek.tightest().remaining(), 0);
    let c = limiter.counters();
    assert_eq!(
        (c.fallback_decisions, c.redis_errors, c.redis_decisions),
        (0, 0, 4),
        "{c:?}"
    );
}

#[tokio::test]
async fn a_settle_on_a_key_holding_a_far_time_fails_alone_not_its_batch() {
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<String> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(10))))
        .key_prefix("h:")
        .fallback(Fallback::FailClosed)
        .call_timeout(Duration::from_secs(2))
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let reservation = limiter.try_reserve(&"s".to_owned(), 1).await.unwrap();
    assert!(reservation.is_on_redis());
    // 25 digits: a time thousands of years ahead. An extra charge on it would set an expiry
    // Redis refuses, and an error inside the script would stop the whole batch, leaving the
    // operations before it applied and failing those after it.
    let far = "1234567890123456789012345";
    let mut conn = raw(&server.url()).await;
    let () = redis::cmd("SET")
        .arg("h:{s}:default")
        .arg(far)
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = evalsha_calls(&mut conn).await;
    // Two acquires take the free slots; the settle (3 cells for 1: an extra charge) and the
    // two acquires after it share the next call.
    let acquire = |key: &str| {
        let (limiter, key) = (limiter.clone(), key.to_owned());
        tokio::spawn(async move { limiter.try_acquire(&key, 1).await.is_ok() })
    };
    let first = [acquire("a"), acquire("b")];
    let settle = tokio::spawn(reservation.settle(3));
    let after = [acquire("c"), acquire("d")];
    for call in first.into_iter().chain(after) {
        assert!(call.await.unwrap(), "an acquire of the batch was refused");
    }
    assert!(settle.await.unwrap().is_err(), "the settle could not apply");
    assert_eq!(evalsha_calls(&mut conn).await - before, 3);
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));
    assert_eq!(get(&mut conn, "h:{s}:default").await.as_deref(), Some(far));
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
async fn a_key_holding_garbage_fails_its_own_decision_not_its_batch() {
    let server = RedisServer::start();
    let mut conn = raw(&server.url()).await;
    // Not a time: letters; more digits than a time has (for a settle, whose write it would
    // break, see `a_settle_on_a_key_holding_a_far_time_fails_alone_not_its_batch`); not a
    // string at all (read as idle and overwritten before the script read keys with `GET`).
    for (case, garbage) in ["12x", "1234567890123456789012345", "a hash"]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("g{case}:");
        let bad = format!("{prefix}{{bad}}:default");
        let write = if garbage == "a hash" {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&bad).arg("field").arg("value");
            cmd
        } else {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&bad).arg(garbage);
            cmd
        };
        let _: redis::Value = write.query_async(&mut conn).await.unwrap();
        let limiter: RedisRateLimiter<String> = RedisRateLimiter::builder()
            .limit(Limit::new("default", Quota::per_second(nz(10))))
            .key_prefix(prefix)
            .fallback(Fallback::FailClosed)
            .call_timeout(Duration::from_secs(2))
            .build(server.url())
            .unwrap();
        limiter.connect().await.unwrap();
        let before = evalsha_calls(&mut conn).await;
        // The first two take the connection's two free slots and go alone; the bad key and the
        // two after it wait, and share the next call.
        let calls: Vec<_> = ["a", "b", "bad", "c", "d"]
            .into_iter()
            .map(|key| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.try_acquire(&key.to_owned(), 1).await })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap().is_ok());
        }
        // Fail-closed refuses the bad key's call; Redis admits the others of its batch.
        assert_eq!(results, [true, true, false, true, true], "{garbage}");
        assert_eq!(evalsha_calls(&mut conn).await - before, 3, "{garbage}");
        assert_eq!(limiter.state(), State::Redis(Backend::Lua));
        let c = limiter.counters();
        assert_eq!(
            (
                c.redis_decisions,
                c.fallback_decisions,
                c.switches_to_fallback
            ),
            (4, 1, 0),
            "{garbage}"
        );
        // And the bad key is left as it was.
        let kind: String = redis::cmd("TYPE")
            .arg(&bad)
            .query_async(&mut conn)
            .await
            .unwrap();
        if garbage == "a hash" {
            assert_eq!(kind, "hash");
        } else {
            assert_eq!(get(&mut conn, &bad).await.as_deref(), Some(garbage));
        }
    }
}

#[tokio::test]
async fn a_burst_counts_cells_at_once_which_redis_cell_calls_max_burst_plus_one() {
    // Ours, on the script: a burst of 10 admits 10 and reports a limit of 10.
    let server = RedisServer::start();
    let quota = Quota::per_minute(nz(10));
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", quota))
        .build(server.url())
        .unwrap();
    for _ in 0..10 {
        assert_eq!(
            limiter
                .try_acquire(&"k", 1)
                .await
                .unwrap()
                .tightest()
                .limit(),
            10
        );
    }
    assert!(limiter.try_acquire(&"k", 1).await.is_err());

    // redis-cell's convention (and GCRA's, which follows it): `max_burst` cells beyond the
    // first. The same quota is `max_burst = 9`; passing 10 admits 11.
    let fake = FakeGcra::start().await;
    let native: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", quota))
        .native_gcra(NativeGcra::Auto)
        .build(fake.url())
        .unwrap();
    assert_eq!(native.connect().await.unwrap(), Backend::NativeGcra);
    for _ in 0..10 {
        let a = native.try_acquire(&"k", 1).await.unwrap();
        assert_eq!(a.tightest().limit(), 10);
    }
    assert!(native.try_acquire(&"k", 1).await.is_err());
    let sent = fake.commands();
    let gcra = sent.iter().find(|c| c[0] == "GCRA").unwrap();
    assert_eq!(
        gcra[1..5],
        ["brigade:limit:{k}:default:gcra", "9", "1", "6.000000000"]
    );

    let mut conn = raw(&fake.url()).await;
    let mut admitted = 0;
    for _ in 0..20 {
        let reply: Vec<i64> = redis::cmd("GCRA")
            .arg("cell")
            .arg(10)
            .arg(10)
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(reply[1], 11);
        admitted += i32::from(reply[0] == 0);
    }
    assert_eq!(admitted, 11);
}

#[test]
fn the_native_path_decides_as_the_in_process_limiter_within_one_interval() {
    let real = real_runtime();
    let paused = paused_runtime();
    let quota = Quota::per_second(nz(10)); // 100 ms per cell
    let ours = paused.block_on(async { local(&[Limit::new("default", quota)]) });
    let fake = real.block_on(FakeGcra::start());
    let theirs: RedisRateLimiter<&'static str> = real.block_on(async {
        let l = RedisRateLimiter::builder()
            .limit(Limit::new("default", quota))
            .native_gcra(NativeGcra::Auto)
            .fallback(Fallback::FailClosed)
            .call_timeout(Duration::from_secs(2))
            .build(fake.url())
            .unwrap();
        assert_eq!(l.connect().await.unwrap(), Backend::NativeGcra);
        l
    });
    assert_eq!(theirs.state(), State::Redis(Backend::NativeGcra));
    let interval = Duration::from_millis(100);
    let steps: &[(u64, u32)] = &[
        (0, 3),
        (0, 0),
        (10, 6),
        (0, 2),
        (40, 1),
        (35, 1),
        (0, 1),
        (250, 4),
        (0, 0),
        (1_000, 10),
        (0, 1),
        (99, 1),
        (1, 1),
    ];
    let (mut admitted, mut rejected) = (0, 0);
    for &(advance, cost) in steps {
        let d = Duration::from_millis(advance);
        paused.block_on(tokio::time::advance(d));
        fake.advance(d);
        let a = paused.block_on(async { ours.try_acquire(&"k", cost) });
        let b = real.block_on(theirs.try_acquire(&"k", cost));
        let (sa, sb) = (seen(&a), seen(&b));
        assert_eq!(sa.admitted, sb.admitted, "{advance} ms, cost {cost}");
        let (la, lb) = (&sa.statuses[0], &sb.statuses[0]);
        assert_eq!((la.limit(), la.remaining()), (lb.limit(), lb.remaining()));
        assert!(lb.reset() >= la.reset() && lb.reset() - la.reset() < interval);
        if let (Some(ra), Some(rb)) = (sa.retry_after, sb.retry_after) {
            assert!(rb >= ra && rb - ra < interval, "{ra:?} vs {rb:?}");
            rejected += 1;
        } else {
            admitted += 1;
        }
    }
    assert!(
        admitted >= 6 && rejected >= 4,
        "{admitted} admitted, {rejected} rejected"
    );
    // A settle cannot refund on the native path; an extra charge goes through.
    real.block_on(async {
        fake.advance(Duration::from_secs(10));
        let r = theirs.try_reserve(&"s", 5).await.unwrap();
        r.settle(1).await.unwrap();
        let left = theirs
            .try_acquire(&"s", 0)
            .await
            .unwrap()
            .tightest()
            .remaining();
        assert_eq!(left, 5);
        let r = theirs.try_reserve(&"s", 1).await.unwrap();
        r.settle(3).await.unwrap();
        let left = theirs
            .try_acquire(&"s", 0)
            .await
            .unwrap()
            .tightest()
            .remaining();
        assert_eq!(left, 2);
    });
}

#[tokio::test]
async fn a_multi_limit_limiter_uses_the_script_even_where_gcra_exists() {
    let fake = FakeGcra::start().await;
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::per_request("requests", Quota::per_minute(nz(10))))
        .limit(Limit::new("tokens", Quota::per_minute(nz(1000))))
        .native_gcra(NativeGcra::Auto)
        .build(fake.url())
        .unwrap();
    // The fake runs no Lua: loading the script fails, and the limiter stays on its fallback.
    assert!(limiter.connect().await.is_err());
    let sent = fake.commands();
    assert!(sent.iter().any(|c| c[..2] == ["SCRIPT", "LOAD"]));
    assert!(!sent.iter().any(|c| c[0] == "GCRA" || c[0] == "COMMAND"));
    // And `NativeGcra::Never` does not ask.
    let never: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(10))))
        .native_gcra(NativeGcra::Never)
        .build(fake.url())
        .unwrap();
    assert!(never.connect().await.is_err());
    assert!(!fake.commands().iter().any(|c| c[0] == "COMMAND"));
}

#[tokio::test]
async fn the_script_is_the_default_and_the_native_command_is_not_asked_for() {
    // The native path is tested against a fake server only: a limiter uses it only when built
    // with `NativeGcra::Auto`. A real server sees no `COMMAND INFO` from a default limiter.
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(10))))
        .build(server.url())
        .unwrap();
    assert_eq!(limiter.connect().await.unwrap(), Backend::Lua);
    limiter.try_acquire(&"k", 1).await.unwrap();
    let mut conn = raw(&server.url()).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(info.contains("cmdstat_evalsha:calls=1,"), "{info}");
    assert!(!info.contains("cmdstat_command"), "{info}");
    // And against the fake server that has `GCRA`, the default still loads the script (which
    // the fake cannot run).
    let fake = FakeGcra::start().await;
    let default: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(10))))
        .build(fake.url())
        .unwrap();
    assert!(default.connect().await.is_err());
    let sent = fake.commands();
    assert!(
        sent.iter().any(|c| c[..2] == ["SCRIPT", "LOAD"]),
        "{sent:?}"
    );
    assert!(!sent.iter().any(|c| c[0] == "COMMAND"), "{sent:?}");
}

#[tokio::test]
async fn invalid_configurations_fail_when_built() {
    let rpm = Limit::new("default", Quota::per_minute(nz(60)));
    let build = |b: RedisRateLimiterBuilder<String>| b.build("redis://127.0.0.1/");
    assert_eq!(
        build(RedisRateLimiter::builder()).unwrap_err(),
        InvalidConfig::NoLimits
    );
    assert_eq!(
        build(builder(&[rpm]).fallback(Fallback::Local { replicas: 0 })).unwrap_err(),
        InvalidConfig::ZeroReplicas
    );
    for (b, setting) in [
        (builder(&[rpm]).call_timeout(Duration::ZERO), "call_timeout"),
        (
            builder(&[rpm]).connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
        (
            builder(&[rpm]).probe_interval(Duration::ZERO),
            "probe_interval",
        ),
        (
            builder(&[rpm]).on_overload(Overload::Wait {
                up_to: Duration::ZERO,
            }),
            "on_overload",
        ),
    ] {
        assert_eq!(build(b).unwrap_err(), InvalidConfig::ZeroDuration(setting));
    }
    assert_eq!(
        build(builder(&[rpm]).outage_after(0)).unwrap_err(),
        InvalidConfig::ZeroCount("outage_after")
    );
    for size in [0, 1025] {
        assert_eq!(
            build(builder(&[rpm]).max_batch(size)).unwrap_err(),
            InvalidConfig::BatchSize(size)
        );
    }
    assert_eq!(
        build(builder(&[rpm]).key_prefix("a{b")).unwrap_err(),
        InvalidConfig::BraceInRedisKey("a{b".into())
    );
    let braced = Limit::new("x}", Quota::per_minute(nz(1)));
    assert!(matches!(
        build(builder(&[braced])).unwrap_err(),
        InvalidConfig::BraceInRedisKey(_)
    ));
    assert!(matches!(
        builder::<String>(&[rpm]).build("not a url").unwrap_err(),
        InvalidConfig::RedisUrl(_)
    ));
    let long = Limit::new(
        "default",
        // Fits alone; four times the interval does not fit in u64 nanoseconds.
        Quota::with_period(Duration::from_secs(u64::MAX / 3_000_000_000)).unwrap(),
    );
    assert_eq!(
        build(builder(&[long]).fallback(Fallback::Local { replicas: 4 })).unwrap_err(),
        InvalidConfig::QuotaTooLong
    );
}

/// A fake Redis that knows `GCRA`, following the command's documentation and its source:
/// microseconds, `max-burst + 1` at once, whole seconds rounded up in the reply. Its clock
/// moves only when the test moves it. Everything it is sent is recorded.
struct FakeGcra {
    port: u16,
    clock_us: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

impl FakeGcra {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let clock_us = Arc::new(AtomicU64::new(1_700_000_000_000_000));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tats = Arc::new(Mutex::new(HashMap::<String, i64>::new()));
        let (clock, log2) = (Arc::clone(&clock_us), Arc::clone(&log));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (clock, log, tats) = (Arc::clone(&clock), Arc::clone(&log2), Arc::clone(&tats));
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    while let Some(cmd) = read_command(&mut read).await {
                        log.lock().unwrap().push(cmd.clone());
                        let now = clock.load(Ordering::SeqCst) as i64;
                        let reply = answer(&cmd, now, &tats);
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            clock_us,
            log,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn advance(&self, d: Duration) {
        self.clock_us
            .fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }

    fn commands(&self) -> Vec<Vec<String>> {
        self.log.lock().unwrap().clone()
    }
}

async fn read_command<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        args.push(String::from_utf8(buf).ok()?);
    }
    Some(args)
}

fn answer(cmd: &[String], now: i64, tats: &Mutex<HashMap<String, i64>>) -> String {
    let name = cmd[0].to_ascii_uppercase();
    match name.as_str() {
        "CLIENT" => "+OK\r\n".into(),
        "PING" => "+PONG\r\n".into(),
        "COMMAND" if cmd.len() == 3 && cmd[2].eq_ignore_ascii_case("GCRA") => {
            "*1\r\n*2\r\n$4\r\ngcra\r\n:-5\r\n".into()
        }
        "GCRA" => gcra(cmd, now, tats),
        _ => format!("-ERR unknown command '{}' (a fake server)\r\n", cmd[0]),
    }
}

/// `GCRA key max-burst tokens-per-period period [TOKENS count]`, as Redis's `gcra.c` does it.
fn gcra(cmd: &[String], now: i64, tats: &Mutex<HashMap<String, i64>>) -> String {
    let max_burst: i64 = cmd[2].parse::<i64>().unwrap() + 1;
    let per_period: i64 = cmd[3].parse().unwrap();
    let period: f64 = cmd[4].parse().unwrap();
    let tokens: i64 = if cmd.len() == 7 {
        cmd[6].parse().unwrap()
    } else {
        1
    };
    let mut tats = tats.lock().unwrap();
    let tat = tats.get(&cmd[1]).copied().unwrap_or(now);
    let emission = ((period * 1e6 / per_period as f64 + 0.5) as i64).max(1);
    let variance = emission * max_burst;
    let increment = emission * tokens;
    let new_tat = now.max(tat) + increment;
    let diff = now - (new_tat - variance);
    let (limited, retry, ttl) = if diff < 0 {
        let retry = if increment <= variance {
            (-diff as f64 / 1e6).ceil() as i64
        } else {
            -1
        };
        (1, retry, tat - now)
    } else {
        tats.insert(cmd[1].clone(), new_tat);
        (0, -1, new_tat - now)
    };
    let next = variance - ttl;
    let remaining = if next > -emission { next / emission } else { 0 };
    let reset = (ttl as f64 / 1e6).ceil() as i64;
    format!("*5\r\n:{limited}\r\n:{max_burst}\r\n:{remaining}\r\n:{retry}\r\n:{reset}\r\n")
}
