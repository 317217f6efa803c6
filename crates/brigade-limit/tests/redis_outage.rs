//! `RedisRateLimiter`'s fallback is for outages, not for load, against real redis-server
//! processes (each test starts its own, on a free loopback port).
//!
//! - Load (decisions shed from the queue for Redis, or out of their patience waiting for their
//!   batch) is refused with `AcquireError::Overloaded`, never answered by the fallback: under
//!   `FailOpen`, a flood never admits past the quota while the server answers.
//! - An outage needs evidence: `outage_after` failed round trips in a row (a killed server, a
//!   broken script). A lone timeout answers its own call from the fallback and switches nothing.
//!
//! These run on the real clock: Redis answers over real sockets, and `CLIENT PAUSE` slows it.
//! No sleep decides an outcome: a pause is in effect once its reply is in, and a `PING` from
//! another connection returns once it is over. The assertions hold for any scheduling: each
//! pause is several times shorter than the call timeout, so no round trip fails, and the counts
//! asserted exactly are the ones the quota or the code fixes (how many decisions Redis made
//! before the pause ended is left to scheduling).

#[path = "support/redis_server.rs"]
mod redis_server;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_limit::redis::{Backend, Fallback, Overload, RedisRateLimiter, State};
use brigade_limit::{AcquireError, Limit, Quota};
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use tokio::time::Instant;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A connection of the test's own, which waits for its replies however long a pause lasts.
async fn raw(url: &str) -> MultiplexedConnection {
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap()
}

/// Pauses every client of the server for `ms`; the reply means the pause is in effect.
async fn pause(conn: &mut MultiplexedConnection, ms: u64) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query_async(conn)
        .await
        .unwrap();
}

/// Returns once a pause in effect is over: the server answers no client during one.
async fn until_unpaused(url: &str) {
    let () = redis::cmd("PING")
        .query_async::<String>(&mut raw(url).await)
        .await
        .map(drop)
        .unwrap();
}

/// A limiter failing open, whose one limit admits a burst of 100 and then one call an hour:
/// nothing refills during a test, so Redis admits exactly the first 100 decisions it makes.
fn burst_of_100(server: &RedisServer, call_timeout: Duration) -> Arc<RedisRateLimiter<u32>> {
    let quota = Quota::per_hour(nz(1)).allow_burst(nz(100));
    Arc::new(
        RedisRateLimiter::builder()
            .limit(Limit::new("default", quota))
            .call_timeout(call_timeout)
            .fallback(Fallback::FailOpen)
            .build(server.url())
            .unwrap(),
    )
}

/// A limiter of one limit that never denies, with a 1 s call timeout, failing open.
async fn connected_with_batches(server: &RedisServer) -> Arc<RedisRateLimiter<u32>> {
    let limiter = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(1_000_000))))
        .call_timeout(Duration::from_secs(1))
        .fallback(Fallback::FailOpen)
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    Arc::new(limiter)
}

/// How a flood of decisions went.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    rejected: u64,
    overloaded: u64,
    /// The longest a decision took.
    longest: Duration,
}

/// `n` decisions of one cell at once, on `key(i)`, each on a task of its own. Every answer
/// must be Redis's (admitted or rejected) or an overload refusal with a retry hint; anything
/// else (a fallback's `Unavailable`, ...) fails the test.
async fn flood(limiter: &Arc<RedisRateLimiter<u32>>, n: u32, key: fn(u32) -> u32) -> Tally {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let limiter = Arc::clone(limiter);
            tokio::spawn(async move {
                let start = Instant::now();
                let result = limiter.try_acquire(&key(i), 1).await;
                (result, start.elapsed())
            })
        })
        .collect();
    let mut tally = Tally::default();
    for call in calls {
        let (result, took) = call.await.unwrap();
        tally.longest = tally.longest.max(took);
        match result {
            Ok(_) => tally.admitted += 1,
            Err(AcquireError::Rejected(_)) => tally.rejected += 1,
            Err(AcquireError::Overloaded { retry_after }) => {
                assert!(
                    retry_after >= Duration::from_millis(1)
                        && retry_after < Duration::from_secs(60),
                    "{retry_after:?}"
                );
                tally.overloaded += 1;
            }
            Err(other) => panic!("neither Redis's decision nor an overload refusal: {other:?}"),
        }
    }
    tally
}

/// What must hold after a flood of `n` decisions on one key of [`burst_of_100`] while Redis
/// answered every round trip in time: each decision was Redis's or refused as overloaded;
/// Redis admitted its first 100 on the key and no more; nothing reached the fallback. `others`:
/// the decisions Redis made on other keys before.
fn never_admitted_uncharged(limiter: &RedisRateLimiter<u32>, tally: &Tally, n: u32, others: u64) {
    let c = limiter.counters();
    assert_eq!(
        tally.admitted + tally.rejected + tally.overloaded,
        u64::from(n),
        "{tally:?}"
    );
    assert_eq!(
        (c.redis_errors, c.fallback_decisions, c.switches_to_fallback),
        (0, 0, 0),
        "{c:?}"
    );
    let on_the_key = c.redis_decisions - others;
    assert_eq!(tally.admitted + tally.rejected, on_the_key, "{c:?}");
    assert_eq!(tally.admitted, on_the_key.min(100), "{tally:?} {c:?}");
    assert_eq!(tally.overloaded, c.overloaded, "{c:?}");
    assert_eq!(c.overloaded, c.batch_sheds + c.batch_wait_timeouts, "{c:?}");
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));
}

#[tokio::test]
async fn decisions_out_of_time_in_the_queue_are_refused_never_admitted_uncharged() {
    // Redis is paused 0.3 s at a time, so it answers every batch within about two pauses of its
    // sending, well within the 2 s call timeout; but 1,500 decisions at once queue behind two
    // batches of 16 on the wire, so all but the first rounds run out of time waiting. They are
    // load: refused, never admitted by the fail-open fallback.
    let server = RedisServer::start();
    let limiter = burst_of_100(&server, Duration::from_secs(2));
    limiter.connect().await.unwrap();
    let holder = server.hold(Duration::from_millis(300), 10);
    let tally = flood(&limiter, 1_500, |_| 7).await;
    holder.join().unwrap();

    never_admitted_uncharged(&limiter, &tally, 1_500, 0);
    let c = limiter.counters();
    assert!(c.batch_wait_timeouts > 0, "{c:?}");
    // A wait timeout answers when the patience (2 s) runs out, not once the pauses are over.
    assert!(tally.longest < Duration::from_secs(5), "{tally:?}");
}

/// Teaches `limiter`'s batching task a slow round trip (what is left of a 0.3 s pause, which
/// Redis ends on its next tick: 0.3 to 0.4 s): a batch is on the wire while Redis is paused.
/// (Two lone calls take the connection's slots; dropping them hands a slot to the task, which
/// sends the 18 decisions queued meanwhile as one batch.) Keys from `first` on.
async fn learn_a_slow_round_trip(limiter: &Arc<RedisRateLimiter<u32>>, url: &str, first: u32) {
    pause(&mut raw(url).await, 300).await;
    let lone: Vec<_> = (first..first + 2).map(|i| decide(limiter, i)).collect();
    settle().await;
    let queued: Vec<_> = (first + 2..first + 20)
        .map(|i| decide(limiter, i))
        .collect();
    settle().await;
    lone.iter().for_each(|call| call.abort());
    for call in queued {
        call.await.unwrap();
    }
}

/// A decision on `i`, spawned; its task answers how long it took and whether it was refused
/// as overloaded (anything else but an admission fails the test).
fn decide(
    limiter: &Arc<RedisRateLimiter<u32>>,
    i: u32,
) -> tokio::task::JoinHandle<(Duration, bool)> {
    let limiter = Arc::clone(limiter);
    tokio::spawn(async move {
        let start = Instant::now();
        let overloaded = match limiter.try_acquire(&i, 1).await {
            Ok(_) => false,
            Err(AcquireError::Overloaded { .. }) => true,
            Err(other) => panic!("{other:?}"),
        };
        (start.elapsed(), overloaded)
    })
}

/// On a current-thread runtime, lets every spawned call run up to its wait for Redis.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn shed_decisions_are_refused_at_once_never_admitted_uncharged() {
    // Once the limiter has seen round trips of 0.3 s or more, a queue of a few rounds of 32
    // would keep a decision past the 2 s call timeout: the rest of a flood is refused at once.
    let server = RedisServer::start();
    let limiter = burst_of_100(&server, Duration::from_secs(2));
    limiter.connect().await.unwrap();
    learn_a_slow_round_trip(&limiter, &server.url(), 1_000).await;
    let learnt = limiter.counters();
    assert_eq!((learnt.redis_decisions, learnt.overloaded), (18, 0));

    let holder = server.hold(Duration::from_millis(300), 10);
    let tally = flood(&limiter, 1_500, |_| 7).await;
    holder.join().unwrap();

    never_admitted_uncharged(&limiter, &tally, 1_500, 18);
    let c = limiter.counters();
    assert!(c.batch_sheds > 0, "{c:?}");
}

#[tokio::test]
async fn a_settle_is_never_shed_and_the_decisions_shed_are_refused_at_once() {
    let server = RedisServer::start();
    let limiter = connected_with_batches(&server).await;
    learn_a_slow_round_trip(&limiter, &server.url(), 0).await;

    // 200 decisions arrive during another pause. Two go alone; by round trips of 0.3 s or
    // more, a queue of a few rounds of 32 would keep a decision past the 1 s call timeout, so
    // the rest are refused at once, instead of a second later.
    // A settle behind them is never shed: it waits its turn, and its extra charge is made.
    let reservation = limiter.try_reserve(&7, 1).await.unwrap();
    pause(&mut raw(&server.url()).await, 300).await;
    let calls: Vec<_> = (100..300).map(|i| decide(&limiter, i)).collect();
    let settle = tokio::spawn(reservation.settle(1_000));
    let (mut at_once, mut refused) = (0, 0);
    for call in calls {
        let (took, overloaded) = call.await.unwrap();
        if took < Duration::from_millis(100) {
            at_once += 1;
        }
        refused += u64::from(overloaded);
    }
    settle.await.unwrap().unwrap();
    let c = limiter.counters();
    assert!(c.batch_sheds > 0, "{c:?}");
    assert_eq!(at_once, c.batch_sheds, "{c:?}"); // Redis was paused for all the others
    assert_eq!(
        (refused, c.overloaded),
        (c.batch_sheds, c.batch_sheds),
        "{c:?}"
    );
    assert_eq!(c.fallback_decisions, 0, "{c:?}");
    // The 18 learnt with, the reservation, and the decisions not shed (a settle is not one).
    assert_eq!(c.redis_decisions, 18 + 1 + 200 - c.batch_sheds, "{c:?}");
    assert_eq!(
        (
            c.switches_to_fallback,
            c.redis_errors,
            c.batch_wait_timeouts
        ),
        (0, 0, 0),
        "{c:?}"
    );
}

#[tokio::test]
async fn lone_calls_bring_a_stale_round_trip_down_without_any_batch() {
    let server = RedisServer::start();
    let limiter = connected_with_batches(&server).await;
    learn_a_slow_round_trip(&limiter, &server.url(), 0).await;

    // Redis is quick again. Lone calls teach the estimate so (each round trip weighs half),
    // though no batch goes out: a burst of 100 is then queued, not shed.
    for i in 300..310 {
        decide(&limiter, i).await.unwrap();
    }
    let burst: Vec<_> = (400..500).map(|i| decide(&limiter, i)).collect();
    for call in burst {
        assert!(!call.await.unwrap().1, "refused as overloaded");
    }
    let c = limiter.counters();
    assert_eq!((c.batch_sheds, c.redis_decisions), (0, 18 + 110), "{c:?}");
}

#[tokio::test]
async fn overload_wait_lets_decisions_wait_past_the_call_timeout() {
    // The same flood as above, but the caller would rather wait (up to 60 s) than be refused:
    // every decision is Redis's, some after more than the call timeout in the queue.
    let server = RedisServer::start();
    let call_timeout = Duration::from_millis(1_500);
    let limiter = Arc::new(
        RedisRateLimiter::builder()
            .limit(Limit::new("default", Quota::per_second(nz(1_000_000))))
            .call_timeout(call_timeout)
            .on_overload(Overload::Wait {
                up_to: Duration::from_secs(60),
            })
            .fallback(Fallback::FailOpen)
            .build(server.url())
            .unwrap(),
    );
    limiter.connect().await.unwrap();
    let holder = server.hold(Duration::from_millis(250), 16);
    let tally = flood(&limiter, 1_500, |i| i).await;
    holder.join().unwrap();

    let c = limiter.counters();
    assert_eq!((tally.admitted, tally.overloaded), (1_500, 0), "{tally:?}");
    assert_eq!(
        (c.redis_decisions, c.fallback_decisions, c.redis_errors),
        (1_500, 0, 0),
        "{c:?}"
    );
    assert!(tally.longest > call_timeout, "{tally:?}");
    assert!(tally.longest < Duration::from_secs(60), "{tally:?}");
}

#[tokio::test]
async fn a_lone_timeout_answers_its_call_from_the_fallback_and_switches_nothing() {
    let server = RedisServer::start();
    let call_timeout = Duration::from_millis(100);
    // One cell an hour: nothing refills during the test.
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_hour(nz(100))))
        .call_timeout(call_timeout)
        .probe_interval(Duration::from_millis(50))
        .fallback(Fallback::FailOpen)
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let url = server.url();
    // The calls that time out go on "slow" (Redis runs them once the pause is over: a call
    // that timed out may still be charged); Redis's own decisions are read on "k".
    let redis_decides = |remaining: u32| {
        let limiter = limiter.clone();
        async move {
            let decided = limiter.try_acquire(&"k", 1).await.unwrap();
            assert_eq!(decided.tightest().remaining(), remaining);
        }
    };

    // Redis stops answering for 2 s: one call times out, and the fallback answers it.
    pause(&mut raw(&url).await, 2_000).await;
    let start = Instant::now();
    let admitted = limiter.try_acquire(&"slow", 1).await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= call_timeout && took < Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(admitted.tightest().remaining(), 99); // fail-open reports a fresh key
    let c = limiter.counters();
    assert_eq!((c.redis_timeouts, c.fallback_decisions), (1, 1), "{c:?}");
    // One failed round trip is no outage: the limiter stays on Redis.
    assert_eq!(c.switches_to_fallback, 0, "{c:?}");
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));

    // A second in a row is not enough either (three are, by default); once Redis answers,
    // the count starts again, so two more after it switch nothing.
    limiter.try_acquire(&"slow", 1).await.unwrap();
    until_unpaused(&url).await;
    redis_decides(99).await;
    pause(&mut raw(&url).await, 2_000).await;
    limiter.try_acquire(&"slow", 1).await.unwrap();
    limiter.try_acquire(&"slow", 1).await.unwrap();
    until_unpaused(&url).await;
    redis_decides(98).await;
    let c = limiter.counters();
    assert_eq!(
        (c.redis_timeouts, c.fallback_decisions, c.redis_decisions),
        (4, 4, 2),
        "{c:?}"
    );
    assert_eq!(c.switches_to_fallback, 0, "{c:?}");
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));

    // Three in a row are evidence: a Redis slower than the call timeout hands over to the
    // fallback, and a probe after the pause brings it back.
    pause(&mut raw(&url).await, 2_000).await;
    for _ in 0..3 {
        limiter.try_acquire(&"slow", 1).await.unwrap();
    }
    let c = limiter.counters();
    assert_eq!((c.redis_timeouts, c.switches_to_fallback), (7, 1), "{c:?}");
    assert_eq!(limiter.state(), State::Fallback);
    until_unpaused(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.state() == State::Fallback {
        assert!(Instant::now() < deadline, "not back on Redis");
        limiter.try_acquire(&"slow", 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis_decides(97).await;
}

#[tokio::test]
async fn a_stopped_server_switches_after_the_evidence_and_back_once_it_returns() {
    let mut server = RedisServer::start();
    let switches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&switches);
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(100))))
        .call_timeout(Duration::from_secs(1))
        .probe_interval(Duration::from_millis(50))
        .fallback(Fallback::Local { replicas: 2 })
        .on_switch(move |s| seen.lock().unwrap().push(s))
        .build(server.url())
        .unwrap();
    limiter.try_acquire(&"k", 1).await.unwrap(); // connects
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));

    // Killed: every round trip fails. The local fallback (half the quota: a limit of 50)
    // answers each failed call; the third failure in a row switches the limiter.
    server.stop();
    for failures in 1..=3 {
        let admitted = limiter.try_acquire(&"k", 1).await.unwrap();
        assert_eq!(admitted.tightest().limit(), 50, "call {failures}");
        let c = limiter.counters();
        assert_eq!(
            (c.redis_errors, c.fallback_decisions),
            (failures, failures),
            "{c:?}"
        );
        let switched = u64::from(failures == 3);
        assert_eq!(c.switches_to_fallback, switched, "{c:?}");
    }
    assert_eq!(limiter.state(), State::Fallback);

    // Back: the first call after the probe interval probes, and Redis decides again.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut polls = 0;
    while limiter.state() != State::Redis(Backend::Lua) {
        polls += 1;
        assert!(
            Instant::now() < deadline,
            "not back on Redis after {polls} polls"
        );
        limiter.try_acquire(&"k", 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admitted = limiter.try_acquire(&"k", 1).await.unwrap();
    assert_eq!(admitted.tightest().limit(), 100);
    assert_eq!(
        *switches.lock().unwrap(),
        [
            State::Redis(Backend::Lua),
            State::Fallback,
            State::Redis(Backend::Lua)
        ]
    );
}

#[tokio::test]
async fn a_broken_script_is_an_outage_not_the_caller_s_fault() {
    // The server refuses the script's `TIME` (an ACL change): every call is answered with a
    // generic `ERR` from a Lua runtime error. That is Redis failing, whatever the key: three in
    // a row switch to the fallback, as a dead server would.
    let server = RedisServer::start();
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(100))))
        .call_timeout(Duration::from_secs(1))
        .probe_interval(Duration::from_millis(50))
        .fallback(Fallback::FailClosed)
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let mut conn = raw(&server.url()).await;
    let acl = |rule: &'static str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("default").arg(rule);
        cmd
    };
    let () = acl("-time").query_async(&mut conn).await.unwrap();

    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let refused = limiter.try_acquire(&key, 1).await;
        assert!(
            matches!(refused, Err(AcquireError::Unavailable { .. })),
            "{refused:?}"
        );
        let c = limiter.counters();
        assert_eq!(c.redis_errors, i as u64 + 1, "{c:?}");
    }
    let c = limiter.counters();
    assert_eq!((c.switches_to_fallback, c.redis_decisions), (1, 0), "{c:?}");
    assert_eq!(limiter.state(), State::Fallback);

    // The script works again: the next probe brings Redis back.
    let () = acl("+time").query_async(&mut conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.try_acquire(&"a", 1).await.is_err() {
        assert!(Instant::now() < deadline, "not back on Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(limiter.state(), State::Redis(Backend::Lua));
}

#[tokio::test]
async fn a_failed_batch_counts_once_however_many_callers_it_had() {
    // Redis is paused while 40 decisions arrive: two go alone (the connection's two slots),
    // 38 queue for batches. Then the server dies: the two lone calls fail, each judged by
    // its caller; the queued ones go out in batches that fail, each judged once by the
    // batching task, and their callers are answered by the fallback without judging again.
    let mut server = RedisServer::start();
    let limiter: RedisRateLimiter<u32> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(1_000_000))))
        .call_timeout(Duration::from_secs(5))
        .probe_interval(Duration::from_secs(60))
        .fallback(Fallback::FailOpen)
        .build(server.url())
        .unwrap();
    limiter.connect().await.unwrap();
    let limiter = Arc::new(limiter);
    pause(&mut raw(&server.url()).await, 10_000).await;
    let calls: Vec<_> = (0..40_u32)
        .map(|i| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.try_acquire(&i, 1).await.is_ok() })
        })
        .collect();
    // On this current-thread runtime, each call runs up to its wait for Redis before the
    // test runs again.
    settle().await;
    let start = Instant::now();
    server.stop();
    for call in calls {
        assert!(call.await.unwrap()); // fail-open
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the calls waited for their timeout"
    );
    let c = limiter.counters();
    assert_eq!((c.redis_decisions, c.fallback_decisions), (0, 40), "{c:?}");
    // Five failed round trips: the third switched.
    assert_eq!(
        (c.switches_to_fallback, c.batch_wait_timeouts),
        (1, 0),
        "{c:?}"
    );
    // Two lone calls, and three batches (16, 16 and 6 decisions): one error each, not one
    // per caller (that would be 43).
    assert_eq!(c.redis_errors, 5, "{c:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_never_hangs_a_call() {
    // Accepts connections and never writes a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let (call, connect) = (Duration::from_millis(100), Duration::from_millis(150));
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_second(nz(1000))))
        .call_timeout(call)
        .connect_timeout(connect)
        .build(format!("redis://127.0.0.1:{port}/"))
        .unwrap();
    let start = Instant::now();
    limiter.try_acquire(&"k", 1).await.unwrap(); // the probe: connect times out
    let took = start.elapsed();
    assert!(took <= call + connect, "{took:?}");
    assert!(limiter.connect().await.unwrap_err().is_timeout());
    // Until the next probe, calls do not touch Redis at all.
    let start = Instant::now();
    for _ in 0..100 {
        limiter.try_acquire(&"k", 1).await.unwrap();
    }
    assert!(start.elapsed() < Duration::from_millis(100));
    let c = limiter.counters();
    assert_eq!((c.redis_decisions, c.fallback_decisions), (0, 101));
    assert_eq!(c.redis_timeouts, 2);
}

#[tokio::test]
async fn fail_open_fail_closed_and_local_fallbacks_on_a_dead_port() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("redis://127.0.0.1:{}/", l.local_addr().unwrap().port())
    };
    let quota = Quota::per_minute(nz(30)); // one cell every 2 s
    let with = |fallback| {
        RedisRateLimiter::<&'static str>::builder()
            .limit(Limit::new("default", quota))
            .fallback(fallback)
            .probe_interval(Duration::from_secs(5))
            .build(dead.as_str())
            .unwrap()
    };
    let open = with(Fallback::FailOpen);
    for _ in 0..50 {
        assert_eq!(
            open.try_acquire(&"k", 1)
                .await
                .unwrap()
                .tightest()
                .remaining(),
            29
        );
    }
    let closed = with(Fallback::FailClosed);
    let Err(AcquireError::Unavailable { retry_after }) = closed.try_acquire(&"k", 1).await else {
        panic!("fail-closed refuses")
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(5));
    // Three replicas: a burst of 10, one cell every 6 s.
    let local = with(Fallback::Local { replicas: 3 });
    for left in (0..10).rev() {
        let a = local.try_acquire(&"k", 1).await.unwrap();
        assert_eq!(a.tightest().remaining(), left);
    }
    let Err(AcquireError::Rejected(r)) = local.try_acquire(&"k", 1).await else {
        panic!("the local share is used up")
    };
    // The local fallback runs on this process's (real) clock.
    let wait = r.retry_after();
    assert!(
        wait > Duration::from_millis(5_900) && wait <= Duration::from_secs(6),
        "{wait:?}"
    );
    // A cost over the local share but within the quota: unavailable, not unsatisfiable.
    assert!(matches!(
        local.try_acquire(&"other", 20).await,
        Err(AcquireError::Unavailable { .. })
    ));
    assert!(matches!(
        local.try_acquire(&"other", 31).await,
        Err(AcquireError::Unsatisfiable(_))
    ));
}
