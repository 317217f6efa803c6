//! The log line at each switch between Redis and the fallback, against a real redis-server
//! that is stopped and restarted on the same port.
//!
//! This test has a binary of its own. It captures events with a thread-local subscriber
//! (`set_default`), and `tracing` caches each callsite's interest when the callsite first
//! fires: if another test on another thread fired the same callsite while this test was
//! registering its subscriber, the cached interest could say "never" and the test would
//! miss a line it should see. Alone in its binary, nothing races it.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_limit::redis::{Backend, Fallback, RedisRateLimiter, State};
use brigade_limit::{Limit, Quota};
use redis_server::RedisServer;
use tokio::time::Instant;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Collects the messages of `tracing` events on this thread.
struct Logs(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        let level = event.metadata().level();
        self.0.lock().unwrap().push(format!("{level} {message}"));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn redis_stopped_mid_test_then_restarted_on_the_same_port() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let _logging = tracing::subscriber::set_default(Logs(Arc::clone(&logs)));
    let mut server = RedisServer::start();
    let switches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&switches);
    let call_timeout = Duration::from_millis(200);
    let limiter: RedisRateLimiter<&'static str> = RedisRateLimiter::builder()
        .limit(Limit::new("default", Quota::per_minute(nz(100))))
        .call_timeout(call_timeout)
        .connect_timeout(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .fallback(Fallback::Local { replicas: 2 })
        .on_switch(move |s| seen.lock().unwrap().push(s))
        .build(server.url())
        .unwrap();
    assert_eq!(limiter.connect().await.unwrap(), Backend::Lua);
    limiter.try_acquire(&"k", 1).await.unwrap();
    assert_eq!(limiter.counters().redis_decisions, 1);

    // Three failed round trips in a row (the default `outage_after`) switch; each is
    // answered by the fallback within the call timeout.
    server.stop();
    for _ in 0..3 {
        let start = Instant::now();
        let admitted = limiter.try_acquire(&"k", 1).await.unwrap();
        let took = start.elapsed();
        assert!(took <= call_timeout, "the fallback answered after {took:?}");
        // The local fallback's quota is halved: a burst of 50.
        assert_eq!(admitted.tightest().limit(), 50);
    }
    assert_eq!(limiter.state(), State::Fallback);
    let c = limiter.counters();
    assert_eq!((c.switches_to_fallback, c.fallback_decisions), (1, 3));

    server.restart();
    // Back on Redis at the first probe after `probe_interval`: poll, bounded.
    let mut polls = 0;
    while limiter.state() != State::Redis(Backend::Lua) {
        polls += 1;
        assert!(polls < 200, "not back on Redis after {polls} polls");
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
    assert_eq!(limiter.counters().switches_to_redis, 2);
    // A log line at each switch.
    let logs = logs.lock().unwrap();
    let switches: Vec<&String> = logs.iter().filter(|l| !l.starts_with("DEBUG")).collect();
    assert_eq!(
        switches,
        [
            "INFO redis rate limiter: deciding on Redis",
            "WARN redis rate limiter: switching to the fallback",
            "INFO redis rate limiter: deciding on Redis"
        ]
    );
}
