//! `RedisRateLimiter` against a loopback redis-server: decisions per second and latency
//! percentiles with 1 and 64 concurrent callers, beside `redis-benchmark`'s plain `SET` on
//! the same server (the floor: a decision cannot be cheaper than a write).
//!
//! `nice -n -20 cargo bench -p brigade-limit --features redis --bench redis`
//!
//! The bench starts its own redis-server (`$BRIGADE_REDIS_SERVER` or `redis-server` on
//! `PATH`) on a free port, then:
//!
//! 1. for 1 and 64 callers (tasks on a two-worker tokio runtime, sharing one limiter and so
//!    one multiplexed connection), runs `$BRIGADE_BENCH_DECISIONS` (default 200,000)
//!    decisions over 10,000 keys, timing each, and prints decisions per second, p50, p99 and
//!    decisions per `EVALSHA` (from `INFO commandstats`, through `redis-cli`); for a
//!    single-limit limiter and for a two-limit one (requests and tokens).
//!    `$BRIGADE_BENCH_BATCH` sets `max_batch` (default: the builder's), and
//!    `$BRIGADE_BENCH_WORKERS` the runtime's workers (default 2);
//! 2. runs `redis-benchmark -p PORT -t set -c 1|64 -n 200000 -q` against the same server, if
//!    it is installed, and once more without `-q` for its latency summary (p99);
//! 3. runs criterion on one caller's decision latency (`redis_decision/one_limit`).
//!
//! Quotas never deny, so every decision is an admitted one that writes its keys, or one
//! refused as overloaded (its queue would outlast the 1 s call timeout: counted, and not
//! expected here).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::num::NonZeroU32;
use std::process::Command;
use std::time::{Duration, Instant};

use brigade_limit::redis::{Backend, Fallback, RedisRateLimiter};
use brigade_limit::{AcquireError, Limit, Quota};
use criterion::Criterion;
use redis_server::RedisServer;
use tokio::runtime::Runtime;

const KEYS: u64 = 10_000;

fn runtime() -> Runtime {
    let workers = std::env::var("BRIGADE_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn limiter(server: &RedisServer, limits: usize) -> RedisRateLimiter<u64> {
    let n = NonZeroU32::new(1_000_000_000).unwrap();
    let never_denies = Quota::per_second(n).allow_burst(n);
    let mut builder = RedisRateLimiter::builder()
        .limit(Limit::new("tokens", never_denies))
        .fallback(Fallback::FailClosed)
        .call_timeout(Duration::from_secs(1));
    if let Some(max) = std::env::var("BRIGADE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.max_batch(max);
    }
    if limits == 2 {
        builder = builder.limit(Limit::per_request("requests", never_denies));
    }
    builder.build(server.url()).unwrap()
}

/// `EVALSHA` calls the server has run (`INFO commandstats`).
fn evalsha_calls(server: &RedisServer) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "INFO", "commandstats"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("cmdstat_evalsha:calls=")
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Runs `total` decisions over `callers` tasks; prints throughput, percentiles, and the
/// decisions per `EVALSHA` (batches).
fn measure(
    rt: &Runtime,
    server: &RedisServer,
    limiter: &RedisRateLimiter<u64>,
    callers: u64,
    total: u64,
    label: &str,
) {
    let per_caller = total / callers;
    let calls_before = evalsha_calls(server);
    let overloaded_before = limiter.counters().overloaded;
    let start = Instant::now();
    let mut latencies: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_caller as usize);
                    for i in 0..per_caller {
                        let key = (c * per_caller + i) % KEYS;
                        let t = Instant::now();
                        match limiter.try_acquire(&key, 1).await {
                            // A refusal for load (counted below) is a decision made in time.
                            Ok(_) | Err(AcquireError::Overloaded { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::with_capacity(total as usize);
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed();
    let calls = evalsha_calls(server).saturating_sub(calls_before).max(1);
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        Duration::from_nanos(latencies[i])
    };
    println!(
        "{label:<28} callers {callers:>2}: {:>9.0} decisions/s  p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  {:.1} per call  {} overloaded",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        latencies.len() as f64 / calls as f64,
        limiter.counters().overloaded - overloaded_before,
    );
    assert_eq!(
        limiter.counters().fallback_decisions,
        0,
        "Redis answered every call"
    );
}

/// `redis-benchmark -t set` on the same server: with `-q` (throughput and p50, the figure
/// the docs quote), then without it for the latency summary (p99).
fn redis_benchmark(port: u16, clients: u32) {
    let run = |quiet: bool| {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args([
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-c",
            &clients.to_string(),
        ])
        .args(["-n", "200000"]);
        if quiet {
            cmd.arg("-q");
        }
        cmd.output()
            .map(|out| String::from_utf8_lossy(&out.stdout).replace('\r', "\n"))
    };
    match (run(true), run(false)) {
        (Ok(quiet), Ok(full)) => {
            // `-q` redraws its progress line: the last line is the result.
            let last = quiet
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            let summary: Vec<&str> = full
                .lines()
                .skip_while(|l| !l.contains("latency summary"))
                .skip(1)
                .take(2)
                .map(str::trim)
                .collect();
            println!(
                "redis-benchmark -t set -c {clients:<2} -n 200000 -q: {}",
                last.trim()
            );
            println!("  latency summary (msec): {}", summary.join(" | "));
        }
        (Err(e), _) | (_, Err(e)) => println!("redis-benchmark not run ({e})"),
    }
}

fn main() {
    let server = RedisServer::start();
    let total = std::env::var("BRIGADE_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = runtime();
    println!(
        "redis-server on port {}, {total} decisions per run",
        server.port()
    );
    for limits in [1, 2] {
        let limiter = limiter(&server, limits);
        assert_eq!(rt.block_on(limiter.connect()).unwrap(), Backend::Lua);
        // Warm up: keys created, connection busy.
        measure(&rt, &server, &limiter, 64, total / 10, "(warm-up)");
        let label = if limits == 1 {
            "one limit"
        } else {
            "two limits"
        };
        for callers in [1, 64] {
            measure(&rt, &server, &limiter, callers, total, label);
        }
    }
    for clients in [1, 64] {
        redis_benchmark(server.port(), clients);
    }

    let mut c = Criterion::default().configure_from_args();
    let limiter = limiter(&server, 1);
    rt.block_on(limiter.connect()).unwrap();
    let mut group = c.benchmark_group("redis_decision");
    let mut key = 0u64;
    group.bench_function("one_limit", |b| {
        b.to_async(&rt).iter(|| {
            key = (key + 1) % KEYS;
            let limiter = &limiter;
            async move { limiter.try_acquire(&key, 1).await.unwrap() }
        });
    });
    group.finish();
    c.final_summary();
}
