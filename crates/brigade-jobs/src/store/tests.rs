//! The store's statements, step by step at instants the tests choose, on every backend: SQLite
//! in memory, a SQLite file, and (feature `postgres`) Postgres at `$BRIGADE_POSTGRES_URL`, in
//! a schema of each test's own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

const T0: i64 = 1_700_000_000_000;

const KEEP: Retention = Retention {
    done: 60_000,
    failed: 60_000,
    cancelled: 60_000,
};

/// A store to test, and what to remove afterwards.
struct TestStore {
    name: &'static str,
    store: Store,
    #[allow(dead_code)]
    cleanup: Cleanup,
}

#[allow(dead_code)]
enum Cleanup {
    None,
    Dir(std::path::PathBuf),
    Schema(String, String),
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Cleanup::Dir(dir) = &self.cleanup {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn stores() -> Vec<TestStore> {
    #[allow(unused_mut)]
    let mut stores = Vec::new();
    #[cfg(feature = "sqlite")]
    {
        use std::str::FromStr;

        use sqlx::sqlite::SqliteConnectOptions;

        use super::sqlite::{SqliteSettings, SqliteStore};
        let settings = SqliteSettings {
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            acquire_timeout: Duration::from_secs(30),
        };
        let memory = SqliteConnectOptions::from_str("sqlite::memory:").unwrap();
        stores.push(TestStore {
            name: "memory",
            store: Store::Sqlite(SqliteStore::open(memory, true, &settings).await.unwrap()),
            cleanup: Cleanup::None,
        });
        let dir = std::env::temp_dir().join(unique("brigade-jobs-store"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = SqliteConnectOptions::new()
            .filename(dir.join("jobs.db"))
            .create_if_missing(true);
        stores.push(TestStore {
            name: "sqlite",
            store: Store::Sqlite(SqliteStore::open(file, false, &settings).await.unwrap()),
            cleanup: Cleanup::Dir(dir),
        });
    }
    #[cfg(feature = "postgres")]
    {
        let (store, url, schema) = postgres_store().await;
        stores.push(TestStore {
            name: "postgres",
            store: Store::Postgres(store),
            cleanup: Cleanup::Schema(url, schema),
        });
    }
    stores
}

#[cfg(feature = "postgres")]
fn postgres_url() -> String {
    std::env::var("BRIGADE_POSTGRES_URL").expect(
        "the `postgres` feature's tests need a server: set BRIGADE_POSTGRES_URL \
         (`bash .ci/with-servers cargo test -p brigade-jobs --all-features` starts one)",
    )
}

#[cfg(feature = "postgres")]
async fn postgres_store() -> (super::postgres::PgStore, String, String) {
    use std::str::FromStr;

    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    let url = postgres_url();
    let schema = unique("brigade_store_test");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let store = super::postgres::PgStore::open(options, 8, Duration::from_secs(30))
        .await
        .unwrap();
    (store, url, schema)
}

fn insert<'a>(id: &'a str, queue: &'a str, now: i64) -> Insert<'a> {
    Insert {
        id,
        queue,
        priority: 0,
        payload: "{}",
        max_attempts: 3,
        timeout_ms: None,
        key: None,
        run_at: now,
        now,
    }
}

fn id(n: u32) -> String {
    format!("{n:032x}")
}

fn lease<'a>(id: &'a str, owner: &'a str, attempt: i64) -> Lease<'a> {
    Lease { id, owner, attempt }
}

async fn kinds(store: &Store, id: &str) -> Vec<(i64, String)> {
    store
        .events_after(id, 0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

fn seq_kinds(kinds: &[&str]) -> Vec<(i64, String)> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| (i64::try_from(i).unwrap() + 1, (*k).to_owned()))
        .collect()
}

#[tokio::test]
async fn a_completion_that_lands_before_the_reaper_is_never_overwritten() {
    for t in stores().await {
        let s = &t.store;
        let job = id(1);
        s.enqueue(&insert(&job, "q", T0)).await.unwrap();
        let claimed = s.claim("q", 10, "a", T0, T0 + 1_000).await.unwrap();
        assert_eq!(claimed.len(), 1, "{}", t.name);
        // The lease has expired, but no reaper has run: the completion is accepted...
        let done = Ending::Done {
            result: "42".to_owned(),
        };
        let written = s
            .finish(lease(&job, "a", 1), &[], &done, T0 + 1_500, KEEP)
            .await
            .unwrap();
        assert!(written, "{}", t.name);
        // ...and the reaper that runs after it, on an expired lease, leaves it alone.
        let reaped = s.reap(T0 + 2_000, 100, KEEP).await.unwrap();
        assert!(reaped.is_empty(), "{}: {reaped:?}", t.name);
        let row = s.get(&job, T0 + 2_000).await.unwrap().unwrap();
        assert_eq!(row.state, "done", "{}", t.name);
        assert_eq!(row.result.as_deref(), Some("42"), "{}", t.name);
        assert_eq!(row.attempt, 1, "{}", t.name);
        assert_eq!(
            kinds(s, &job).await,
            seq_kinds(&["queued", "running", "done"]),
            "{}",
            t.name
        );
        t.store.close().await;
    }
}

#[tokio::test]
async fn a_completion_after_the_reaper_is_refused_and_the_attempt_counts() {
    for t in stores().await {
        let s = &t.store;
        let job = id(2);
        s.enqueue(&insert(&job, "q", T0)).await.unwrap();
        s.claim("q", 10, "a", T0, T0 + 1_000).await.unwrap();
        let reaped = s.reap(T0 + 1_500, 100, KEEP).await.unwrap();
        assert_eq!(reaped.len(), 1, "{}", t.name);
        assert!(reaped[0].requeued, "{}", t.name);
        assert_eq!(reaped[0].queue, "q", "{}", t.name);
        // The worker that lost its lease finishes late: nothing it writes is kept.
        let done = Ending::Done {
            result: "late".to_owned(),
        };
        let progress = [NewEvent {
            kind: "progress",
            data: "{}".to_owned(),
        }];
        assert!(
            !s.append(lease(&job, "a", 1), &progress, T0 + 1_550)
                .await
                .unwrap()
        );
        assert!(
            !s.finish(lease(&job, "a", 1), &progress, &done, T0 + 1_600, KEEP)
                .await
                .unwrap()
        );
        let row = s.get(&job, T0 + 1_600).await.unwrap().unwrap();
        assert_eq!(row.state, "queued", "{}", t.name);
        assert_eq!(row.attempt, 1, "{}: the expired lease counts", t.name);
        assert_eq!(row.error.as_deref(), Some("lease expired"), "{}", t.name);
        assert_eq!(row.result, None, "{}", t.name);
        assert_eq!(
            kinds(s, &job).await,
            seq_kinds(&["queued", "running", "retrying"]),
            "{}",
            t.name
        );
        // It runs again, as attempt 2, and its events go on from 4.
        let again = s.claim("q", 10, "b", T0 + 1_700, T0 + 2_700).await.unwrap();
        assert_eq!(again[0].attempt, 2, "{}", t.name);
        assert!(
            s.finish(lease(&job, "b", 2), &[], &done, T0 + 1_800, KEEP)
                .await
                .unwrap()
        );
        assert_eq!(
            kinds(s, &job).await,
            seq_kinds(&["queued", "running", "retrying", "running", "done"]),
            "{}",
            t.name
        );
        t.store.close().await;
    }
}

#[tokio::test]
async fn a_reaped_job_keeps_its_place_ahead_of_jobs_queued_after_its_claim() {
    for t in stores().await {
        let s = &t.store;
        let (rescued, later) = (id(5), id(6));
        s.enqueue(&insert(&rescued, "q", T0)).await.unwrap();
        s.claim("q", 1, "a", T0, T0 + 1_000).await.unwrap();
        // A backlog builds up behind the running job; then its owner dies.
        s.enqueue(&insert(&later, "q", T0 + 100)).await.unwrap();
        let reaped = s.reap(T0 + 1_500, 100, KEEP).await.unwrap();
        assert_eq!(reaped.len(), 1, "{}", t.name);
        // The next claim takes it first, not the job queued while it ran: it keeps its due
        // time.
        let next = s.claim("q", 1, "b", T0 + 1_600, T0 + 2_600).await.unwrap();
        assert_eq!(next.len(), 1, "{}", t.name);
        assert_eq!(
            next[0].id, rescued,
            "{}: it waited behind the backlog",
            t.name
        );
        assert_eq!((next[0].attempt, next[0].run_at), (2, T0), "{}", t.name);
        t.store.close().await;
    }
}

#[tokio::test]
async fn the_reaper_fails_a_job_out_of_attempts_and_keeps_live_leases() {
    for t in stores().await {
        let s = &t.store;
        let (last, live) = (id(3), id(4));
        let mut job = insert(&last, "q", T0);
        job.max_attempts = 1;
        s.enqueue(&job).await.unwrap();
        s.enqueue(&insert(&live, "q", T0 + 1)).await.unwrap();
        s.claim("q", 10, "a", T0 + 1, T0 + 1_000).await.unwrap();
        // The heartbeat extends one of them only.
        let extended = s
            .heartbeat("a", std::slice::from_ref(&live), T0 + 5_000)
            .await
            .unwrap();
        assert_eq!(extended, vec![(live.clone(), 1)], "{}", t.name);
        // Another owner's heartbeat extends nothing.
        assert!(
            s.heartbeat("b", &[last.clone(), live.clone()], T0 + 9_000)
                .await
                .unwrap()
                .is_empty()
        );
        let reaped = s.reap(T0 + 2_000, 100, KEEP).await.unwrap();
        assert_eq!(reaped.len(), 1, "{}", t.name);
        assert!(!reaped[0].requeued, "{}", t.name);
        let row = s.get(&last, T0 + 2_000).await.unwrap().unwrap();
        assert_eq!(row.state, "failed", "{}", t.name);
        assert_eq!(row.expires_at, Some(T0 + 2_000 + KEEP.failed), "{}", t.name);
        assert_eq!(
            s.get(&live, T0 + 2_000).await.unwrap().unwrap().state,
            "running"
        );
        let gone = s.gone(&[last.clone(), id(99)]).await.unwrap();
        assert!(
            gone.iter()
                .any(|g| g.id == last && g.state.as_deref() == Some("failed"))
        );
        assert!(gone.iter().any(|g| g.id == id(99) && g.state.is_none()));
        t.store.close().await;
    }
}

#[tokio::test]
async fn writes_check_the_owner_and_the_attempt() {
    for t in stores().await {
        let s = &t.store;
        let job = id(5);
        s.enqueue(&insert(&job, "q", T0)).await.unwrap();
        s.claim("q", 1, "a", T0, T0 + 1_000).await.unwrap();
        let event = [NewEvent {
            kind: "progress",
            data: "{\"n\":1}".to_owned(),
        }];
        assert!(!s.append(lease(&job, "b", 1), &event, T0).await.unwrap());
        assert!(!s.append(lease(&job, "a", 2), &event, T0).await.unwrap());
        assert!(s.append(lease(&job, "a", 1), &event, T0).await.unwrap());
        let failed = Ending::Failed {
            error: "no".to_owned(),
        };
        assert!(
            !s.finish(lease(&job, "b", 1), &[], &failed, T0, KEEP)
                .await
                .unwrap()
        );
        let row = s.get(&job, T0).await.unwrap().unwrap();
        assert_eq!(row.state, "running", "{}", t.name);
        assert_eq!(row.last_seq, 3, "{}", t.name);
        t.store.close().await;
    }
}

#[tokio::test]
async fn events_are_numbered_without_a_gap_and_the_last_goes_with_the_ending() {
    for t in stores().await {
        let s = &t.store;
        let job = id(6);
        s.enqueue(&insert(&job, "q", T0)).await.unwrap();
        s.claim("q", 1, "a", T0, T0 + 1_000).await.unwrap();
        let progress = |n: u32| NewEvent {
            kind: "progress",
            data: format!("{{\"n\":{n}}}"),
        };
        assert!(
            s.append(lease(&job, "a", 1), &[progress(1), progress(2)], T0)
                .await
                .unwrap()
        );
        assert!(
            s.append(lease(&job, "a", 1), &[progress(3)], T0)
                .await
                .unwrap()
        );
        let retry = Ending::Retry {
            run_at: T0 + 10_000,
            error: "upstream said \"no\"".to_owned(),
        };
        assert!(
            s.finish(
                lease(&job, "a", 1),
                &[progress(4), progress(5)],
                &retry,
                T0 + 10,
                KEEP
            )
            .await
            .unwrap()
        );
        let events = s.events_after(&job, 0, 100).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "{}", t.name);
        assert_eq!(events[2].kind, "progress");
        assert_eq!(events[2].data, "{\"n\":1}", "{}", t.name);
        assert_eq!(events[6].data, "{\"n\":5}", "{}", t.name);
        assert_eq!(events[7].kind, "retrying", "{}", t.name);
        let data: serde_json::Value = serde_json::from_str(&events[7].data).unwrap();
        assert_eq!(data["error"], "upstream said \"no\"", "{}", t.name);
        assert_eq!(data["run_at"], T0 + 10_000, "{}", t.name);
        // Not due yet; then due.
        assert!(
            s.claim("q", 1, "a", T0 + 20, T0 + 1_000)
                .await
                .unwrap()
                .is_empty()
        );
        let again = s
            .claim("q", 1, "a", T0 + 10_000, T0 + 11_000)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "{}", t.name);
        assert_eq!(s.events_after(&job, 8, 100).await.unwrap()[0].seq, 9);
        t.store.close().await;
    }
}

#[tokio::test]
async fn a_release_does_not_count_the_attempt_and_keeps_the_jobs_place() {
    for t in stores().await {
        let s = &t.store;
        let (job, later) = (id(7), id(8));
        s.enqueue(&insert(&job, "q", T0)).await.unwrap();
        s.claim("q", 1, "a", T0, T0 + 1_000).await.unwrap();
        // A backlog builds up behind the running job; then its process shuts down.
        s.enqueue(&insert(&later, "q", T0 + 1)).await.unwrap();
        assert!(
            s.finish(lease(&job, "a", 1), &[], &Ending::Release, T0 + 5, KEEP)
                .await
                .unwrap()
        );
        let row = s.get(&job, T0 + 5).await.unwrap().unwrap();
        assert_eq!(
            (row.state.as_str(), row.attempt),
            ("queued", 0),
            "{}",
            t.name
        );
        assert_eq!(row.run_at, T0, "{}: it keeps its due time", t.name);
        assert_eq!(row.finished_at, None, "{}", t.name);
        // The next claim takes it first, not the job queued while it ran.
        let next = s.claim("q", 1, "b", T0 + 6, T0 + 1_006).await.unwrap();
        assert_eq!(next.len(), 1, "{}", t.name);
        assert_eq!(next[0].id, job, "{}: it waited behind the backlog", t.name);
        t.store.close().await;
    }
}

#[tokio::test]
async fn claims_take_due_jobs_by_priority_then_due_time_and_never_twice() {
    for t in stores().await {
        let s = &t.store;
        let ids: Vec<String> = (10..20).map(id).collect();
        for (i, job) in ids.iter().enumerate() {
            let mut insert = insert(job, "q", T0);
            insert.run_at = T0 + i64::try_from(i).unwrap();
            insert.priority = if i == 7 { 5 } else { 0 };
            s.enqueue(&insert).await.unwrap();
        }
        let mut other = insert("ffffffffffffffffffffffffffffffff", "other", T0);
        other.priority = 100;
        s.enqueue(&other).await.unwrap();
        let first = s.claim("q", 3, "a", T0 + 100, T0 + 1_000).await.unwrap();
        let mut first: Vec<(i64, i64, String)> = first
            .into_iter()
            .map(|c| (-c.priority, c.run_at, c.id))
            .collect();
        first.sort();
        let got: Vec<&str> = first.iter().map(|(_, _, id)| id.as_str()).collect();
        assert_eq!(got, [&ids[7], &ids[0], &ids[1]], "{}", t.name);
        // Claims from several owners at once: each job once.
        let mut claims = Vec::new();
        for owner in ["b", "c", "d", "e"] {
            let s = s.clone();
            claims.push(tokio::spawn(async move {
                s.claim("q", 3, owner, T0 + 100, T0 + 1_000).await.unwrap()
            }));
        }
        let mut seen: Vec<String> = Vec::new();
        for claim in claims {
            seen.extend(claim.await.unwrap().into_iter().map(|c| c.id));
        }
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "{}: a job claimed twice", t.name);
        assert_eq!(seen.len(), 7, "{}", t.name);
        t.store.close().await;
    }
}

#[tokio::test]
async fn cancel_ends_queued_and_running_jobs_only() {
    for t in stores().await {
        let s = &t.store;
        let (queued, running, done) = (id(30), id(31), id(32));
        s.enqueue(&insert(&running, "q", T0)).await.unwrap();
        s.enqueue(&insert(&done, "q", T0 + 1)).await.unwrap();
        s.claim("q", 2, "a", T0 + 1, T0 + 1_000).await.unwrap();
        s.enqueue(&insert(&queued, "q", T0 + 2)).await.unwrap();
        let ok = Ending::Done {
            result: "1".to_owned(),
        };
        s.finish(lease(&done, "a", 1), &[], &ok, T0 + 3, KEEP)
            .await
            .unwrap();
        let at = T0 + 4;
        assert_eq!(
            s.cancel(&queued, "user", at, KEEP).await.unwrap(),
            Cancelled::Now { running: false },
            "{}",
            t.name
        );
        assert_eq!(
            s.cancel(&running, "user", at, KEEP).await.unwrap(),
            Cancelled::Now { running: true },
            "{}",
            t.name
        );
        assert_eq!(
            s.cancel(&done, "user", at, KEEP).await.unwrap(),
            Cancelled::Finished("done".to_owned())
        );
        assert_eq!(
            s.cancel(&id(99), "user", at, KEEP).await.unwrap(),
            Cancelled::NotFound
        );
        // The running job's worker writes after the cancel: refused.
        assert!(
            !s.finish(lease(&running, "a", 1), &[], &ok, at + 1, KEEP)
                .await
                .unwrap()
        );
        let row = s.get(&running, at + 1).await.unwrap().unwrap();
        assert_eq!(row.state, "cancelled");
        assert_eq!(row.cancel_reason.as_deref(), Some("user"));
        assert_eq!(
            kinds(s, &running).await,
            seq_kinds(&["queued", "running", "cancelled"]),
            "{}",
            t.name
        );
        // Its heartbeat no longer extends it, and it is not reaped either.
        assert!(
            s.heartbeat("a", std::slice::from_ref(&running), at + 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.reap(at + 5_000, 10, KEEP).await.unwrap().is_empty());
        t.store.close().await;
    }
}

#[tokio::test]
async fn an_idempotency_key_is_held_once() {
    for t in stores().await {
        let s = &t.store;
        let (a, b) = (id(40), id(41));
        let mut first = insert(&a, "q", T0);
        first.key = Some("upload-1");
        let mut second = insert(&b, "q", T0);
        second.key = Some("upload-1");
        assert_eq!(s.enqueue(&first).await.unwrap(), (a.clone(), true));
        assert_eq!(s.enqueue(&second).await.unwrap(), (a.clone(), false));
        assert!(s.get(&b, T0).await.unwrap().is_none(), "{}", t.name);
        assert_eq!(kinds(s, &a).await, seq_kinds(&["queued"]), "{}", t.name);
        t.store.close().await;
    }
}

#[tokio::test]
async fn pruning_deletes_expired_jobs_with_their_events_in_batches() {
    for t in stores().await {
        let s = &t.store;
        let keep = Retention {
            done: 100,
            failed: 100,
            cancelled: 100,
        };
        for n in 50..55 {
            let job = id(n);
            s.enqueue(&insert(&job, "q", T0)).await.unwrap();
            s.cancel(&job, "x", T0 + i64::from(n), keep).await.unwrap();
        }
        s.enqueue(&insert(&id(60), "q", T0)).await.unwrap();
        assert_eq!(s.counts().await.unwrap().events, 11, "{}", t.name);
        // Expired but not yet pruned: never read.
        assert!(s.get(&id(50), T0 + 1_000).await.unwrap().is_none());
        assert!(s.get(&id(50), T0 + 100).await.unwrap().is_some());
        assert_eq!(s.prune(T0 + 1_000, 2).await.unwrap(), 2, "{}", t.name);
        assert_eq!(s.prune(T0 + 1_000, 2).await.unwrap(), 2, "{}", t.name);
        assert_eq!(s.prune(T0 + 1_000, 2).await.unwrap(), 1, "{}", t.name);
        assert_eq!(s.prune(T0 + 1_000, 2).await.unwrap(), 0, "{}", t.name);
        let counts = s.counts().await.unwrap();
        assert_eq!(
            (counts.jobs(), counts.queued, counts.events),
            (1, 1, 1),
            "{}",
            t.name
        );
        t.store.close().await;
    }
}

/// Postgres: a completion in flight holds the row; the reaper that runs meanwhile skips it
/// (it never waits on it), and the completion lands. A reaper that picked its rows in one
/// statement and re-queued them by id in another (River #1302) would wait for the row, then
/// overwrite the completion.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_a_reaper_running_during_a_completion_skips_it() {
    use sqlx::Connection;
    let (store, url, schema) = postgres_store().await;
    let s = Store::Postgres(store);
    let job = id(70);
    s.enqueue(&insert(&job, "q", T0)).await.unwrap();
    s.claim("q", 1, "a", T0, T0 + 1_000).await.unwrap();
    // A transaction that holds the row, as a completion does while it commits.
    let mut holder = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!("SET search_path = {schema}"))
        .execute(&mut holder)
        .await
        .unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM brigade_jobs WHERE id = $1 FOR UPDATE")
        .bind(&job)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // The completion waits for the row...
    let finishing = {
        let s = s.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let done = Ending::Done {
                result: "\"ok\"".to_owned(),
            };
            s.finish(lease(&job, "a", 1), &[], &done, T0 + 1_500, KEEP)
                .await
                .unwrap()
        })
    };
    let mut observer = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid IN \
         (SELECT pid FROM pg_locks WHERE relation = '{schema}.brigade_jobs'::regclass)"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar(&waiting)
            .fetch_one(&mut observer)
            .await
            .unwrap();
        if n >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the completion never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...the reaper runs meanwhile, on an expired lease...
    let mut reaping = {
        let s = s.clone();
        tokio::spawn(async move { s.reap(T0 + 2_000, 10, KEEP).await.unwrap() })
    };
    let before_commit = tokio::time::timeout(Duration::from_secs(2), &mut reaping).await;
    // ...and the completion lands when the row is free.
    tx.commit().await.unwrap();
    assert!(finishing.await.unwrap());
    let waited = before_commit.is_err();
    let reaped = match before_commit {
        Ok(reaped) => reaped.unwrap(),
        Err(_) => reaping.await.unwrap(),
    };
    let row = s.get(&job, T0 + 3_000).await.unwrap().unwrap();
    assert_eq!(row.state, "done", "the reaper overwrote a completion");
    assert_eq!(row.result.as_deref(), Some("\"ok\""));
    assert!(reaped.is_empty(), "{reaped:?}");
    assert!(!waited, "the reaper waited on a row that a completion held");
    assert!(s.reap(T0 + 3_000, 10, KEEP).await.unwrap().is_empty());
    s.close().await;
}
