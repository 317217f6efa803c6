//! No-op jobs end to end: throughput (enqueue, claim, complete: jobs per second) and
//! enqueue-to-start latency (p50, p99), on a SQLite file and on Postgres, with durable
//! settings (SQLite: WAL, `synchronous` at its default FULL; Postgres: the server's defaults,
//! fsync and synchronous commit on).
//!
//! `cargo bench -p brigade-jobs --bench jobs` (SQLite);
//! `bash .ci/with-servers cargo bench -p brigade-jobs --features postgres --bench jobs`
//! (SQLite and Postgres, on the throwaway server `.ci/with-servers` starts and exports as
//! `BRIGADE_POSTGRES_URL`).
//!
//! 1. **Throughput**: `$BRIGADE_BENCH_JOBS` jobs (default 20,000) queued by
//!    `$BRIGADE_BENCH_PRODUCERS` producer tasks (default 4; each waits for its enqueue to commit)
//!    while one worker (concurrency `$BRIGADE_BENCH_CONCURRENCY`, default 64) runs them; the
//!    time from the first enqueue until the store counts every job `done`.
//! 2. **Latency**: `$BRIGADE_BENCH_SAMPLES` jobs (default 2,000) queued one at a time, 2 ms
//!    apart, to an idle worker: the time from just before `enqueue` to the handler's start.
//!
//! The runtime has 2 worker threads (`$BRIGADE_BENCH_WORKERS`). Figures go in
//! `docs/benchmarks.md` with the machine and the command.

// Without a backend feature there is nothing to measure, and `main` only says so.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unused_imports)
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use brigade_jobs::{Job, JobError, Jobs, NewJob};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once too: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(env("BRIGADE_BENCH_WORKERS", 2)).unwrap_or(2))
        .enable_all()
        .build()
        .unwrap();
    let (jobs, samples) = if quick {
        (200, 50)
    } else {
        (
            env("BRIGADE_BENCH_JOBS", 20_000),
            env("BRIGADE_BENCH_SAMPLES", 2_000),
        )
    };
    runtime.block_on(run(jobs, samples));
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
async fn run(_jobs: u64, _samples: u64) {
    println!("brigade-jobs bench: no backend feature (sqlite, postgres) is on");
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn run(jobs: u64, samples: u64) {
    #[cfg(feature = "sqlite")]
    {
        let dir = std::env::temp_dir().join(format!("brigade-jobs-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("jobs.db").display());
        bench("sqlite", || open(&url), jobs, samples).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(feature = "postgres")]
    match std::env::var("BRIGADE_POSTGRES_URL") {
        Ok(url) => {
            reset_postgres(&url).await;
            bench("postgres", || open(&url), jobs, samples).await;
        }
        Err(_) => println!(
            "postgres: skipped (set BRIGADE_POSTGRES_URL, or run through .ci/with-servers)"
        ),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn open(url: &str) -> Jobs {
    Jobs::builder()
        .max_connections(16)
        .keep_done(Duration::from_secs(3_600))
        .open(url)
        .await
        .unwrap()
}

/// Drops the tables a previous run left on the server.
#[cfg(feature = "postgres")]
async fn reset_postgres(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS brigade_job_events, brigade_jobs, brigade_jobs_schema CASCADE",
    )
    .execute(&mut conn)
    .await
    .unwrap();
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn bench<F, Fut>(name: &str, open: F, jobs: u64, samples: u64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Jobs>,
{
    // 1. Throughput.
    let store = open().await;
    let concurrency = usize::try_from(env("BRIGADE_BENCH_CONCURRENCY", 64)).unwrap_or(64);
    store
        .worker("noop", async |_: Job<u64>| Ok::<_, JobError>(()))
        .concurrency(concurrency)
        .start()
        .unwrap();
    let started = Instant::now();
    let mut producers = Vec::new();
    let n_producers = env("BRIGADE_BENCH_PRODUCERS", 4).max(1);
    for p in 0..n_producers {
        let store = store.clone();
        producers.push(tokio::spawn(async move {
            for n in (p..jobs).step_by(usize::try_from(n_producers).unwrap_or(4)) {
                store.enqueue(NewJob::new("noop", &n)).await.unwrap();
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let queued = started.elapsed();
    loop {
        if store.counts().await.unwrap().done >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "{name}: {jobs} no-op jobs end to end in {elapsed:.2?}: {:.0} jobs/s \
         (all queued after {queued:.2?}; {n_producers} producers; concurrency {concurrency})",
        jobs as f64 / elapsed.as_secs_f64()
    );
    store.shutdown(Duration::from_secs(5)).await;

    // 2. Enqueue-to-start latency, one job at a time to an idle worker.
    let store = open().await;
    let enqueued: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    {
        let enqueued = Arc::clone(&enqueued);
        let latencies = Arc::clone(&latencies);
        let seen = Arc::clone(&seen);
        store
            .worker("latency", move |job: Job<u64>| {
                let at = Instant::now();
                if let Some(sent) = enqueued.lock().unwrap().get(job.payload()) {
                    latencies.lock().unwrap().push(at - *sent);
                }
                seen.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, JobError>(()) }
            })
            .concurrency(8)
            .start()
            .unwrap();
    }
    for n in 0..samples {
        enqueued.lock().unwrap().insert(n, Instant::now());
        store.enqueue(NewJob::new("latency", &n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < samples && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    if latencies.is_empty() {
        println!("{name}: no job started");
    } else {
        println!(
            "{name}: enqueue to start over {} jobs: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    store.shutdown(Duration::from_secs(5)).await;
}
