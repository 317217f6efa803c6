//! SQLite: one file in WAL mode (or a database in memory), one writer.
//!
//! - **One writer.** Every write goes through a pool of one connection, in a transaction
//!   opened with `BEGIN IMMEDIATE`: it takes the write lock first, so two writers never both
//!   read and then race to upgrade (the deadlock SQLite answers with `SQLITE_BUSY` at once,
//!   whatever the busy timeout). In one process, writers queue for that connection; across
//!   processes, for the file's lock, each waiting up to the busy timeout set on every
//!   connection. A write that still meets `SQLITE_BUSY` or `SQLITE_LOCKED` is retried whole,
//!   with backoff, for up to a minute: "database is locked" does not reach a caller.
//! - **Readers** (`get`, events, the heartbeat's look-up of lost jobs, counts) use a pool of
//!   their own; WAL lets them read while the writer writes.
//! - **In memory**: one connection for reads and writes (the database lives as long as it).
//!   A shared-cache name (`sqlite:file:NAME?mode=memory&cache=shared`) lets two stores in one
//!   process share it, which is how the tests run two replicas without a file.
//! - Batches of events go in as one statement over `json_each` of a JSON array.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brigade_retry::{Backoff, Jitter};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Connection as _, Row as _};
use tokio::time::Instant;

use super::{
    Cancelled, Claimed, Ending, EventRow, Gone, Insert, Lease, NewEvent, Reaped, Retention,
    SCHEMA_VERSION, cancelled_data, ending_event,
};
use crate::error::OpenError;
use crate::record::{Counts, Row};

/// The schema, by version: each applied once, in order, in the transaction that records it.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE brigade_jobs (
        id TEXT PRIMARY KEY NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        priority INTEGER NOT NULL,
        payload TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        timeout_ms INTEGER,
        idempotency_key TEXT UNIQUE,
        run_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        expires_at INTEGER,
        lease_owner TEXT,
        lease_expires_at INTEGER,
        last_seq INTEGER NOT NULL,
        result TEXT,
        error TEXT,
        cancel_reason TEXT
    );
    CREATE INDEX brigade_jobs_due ON brigade_jobs (queue, priority DESC, run_at, id)
        WHERE state = 'queued';
    CREATE INDEX brigade_jobs_leases ON brigade_jobs (lease_expires_at)
        WHERE state = 'running';
    CREATE INDEX brigade_jobs_expiry ON brigade_jobs (expires_at)
        WHERE expires_at IS NOT NULL;
    CREATE TABLE brigade_job_events (
        job_id TEXT NOT NULL REFERENCES brigade_jobs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;",
)];

/// The columns of a job, in the order `row` reads them.
const COLUMNS: &str = "id, queue, state, priority, payload, attempt, max_attempts, timeout_ms, \
    idempotency_key, run_at, created_at, started_at, finished_at, expires_at, result, error, \
    cancel_reason, last_seq";

/// How long a write keeps retrying `SQLITE_BUSY` (each try already waits the busy timeout).
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// Runs an async block again, after a jittered backoff, while it fails busy or locked, for up
/// to [`BUSY_PATIENCE`].
macro_rules! retry_busy {
    ($op:expr) => {{
        let mut busy = Busy::new();
        loop {
            match sql($op).await {
                Err(error) if busy.again(&error) => busy.wait(&error).await,
                other => break other,
            }
        }
    }};
}

/// Runs `$body` (an async block using `$conn`) in a `BEGIN IMMEDIATE` transaction on the
/// writer, committed if it returns `Ok`; the whole transaction again while SQLite says busy
/// or locked.
macro_rules! write {
    ($self:expr, |$conn:ident| $body:expr) => {
        retry_busy!(async {
            let mut tx = $self.writer.begin_with("BEGIN IMMEDIATE").await?;
            let value = {
                let $conn: &mut SqliteConnection = &mut tx;
                sql($body).await?
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(value)
        })
    };
}

/// Gives an async block the error type of the store's operations.
fn sql<T, F: Future<Output = Result<T, sqlx::Error>>>(block: F) -> F {
    block
}

/// The SQLite store: a writer pool of one connection and a reader pool (the same pool in
/// memory).
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

/// How to open a SQLite store.
#[derive(Clone, Debug)]
pub(crate) struct SqliteSettings {
    pub(crate) busy_timeout: Duration,
    pub(crate) readers: u32,
    pub(crate) acquire_timeout: Duration,
}

impl SqliteStore {
    /// Opens the database (`memory`: one connection, no WAL) and applies the schema.
    pub(crate) async fn open(
        options: SqliteConnectOptions,
        memory: bool,
        settings: &SqliteSettings,
    ) -> Result<Self, OpenError> {
        // The busy timeout on every connection, and foreign keys (events go with their job).
        let options = options
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        let store = if memory {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options)
                .await?;
            Self {
                writer: pool.clone(),
                reader: pool,
            }
        } else {
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
                .await?;
            // Opened after the writer has put the file in WAL mode (which lasts).
            let reader = SqlitePoolOptions::new()
                .max_connections(settings.readers.max(1))
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options.read_only(true))
                .await?;
            Self { writer, reader }
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), OpenError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS brigade_jobs_schema (
                version INTEGER PRIMARY KEY NOT NULL,
                applied_at INTEGER NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        let found: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM brigade_jobs_schema")
                .fetch_one(&mut *tx)
                .await?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO brigade_jobs_schema (version, applied_at) \
                 VALUES (?1, CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
            )
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    pub(crate) async fn enqueue(&self, job: &Insert<'_>) -> Result<(String, bool), sqlx::Error> {
        write!(self, |conn| async {
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO brigade_jobs (id, queue, state, priority, payload, attempt, \
                 max_attempts, timeout_ms, idempotency_key, run_at, created_at, last_seq) \
                 VALUES (?1, ?2, 'queued', ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, 1) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            )
            .bind(job.id)
            .bind(job.queue)
            .bind(job.priority)
            .bind(job.payload)
            .bind(job.max_attempts)
            .bind(job.timeout_ms)
            .bind(job.key)
            .bind(job.run_at)
            .bind(job.now)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(id) = inserted {
                insert_events(conn, &[(&id, 1, "queued", "{}")], job.now).await?;
                return Ok((id, true));
            }
            // The key is held: the writer holds the lock, so the holder is still there.
            let id: String =
                sqlx::query_scalar("SELECT id FROM brigade_jobs WHERE idempotency_key = ?1")
                    .bind(job.key)
                    .fetch_one(&mut *conn)
                    .await?;
            Ok((id, false))
        })
    }

    pub(crate) async fn claim(
        &self,
        queue: &str,
        limit: i64,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        write!(self, |conn| async {
            let rows = sqlx::query(
                "UPDATE brigade_jobs SET state = 'running', attempt = attempt + 1, \
                 lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, \
                 last_seq = last_seq + 1 \
                 WHERE id IN (SELECT id FROM brigade_jobs \
                     WHERE state = 'queued' AND queue = ?4 AND run_at <= ?3 \
                     ORDER BY priority DESC, run_at, id LIMIT ?5) \
                 RETURNING id, priority, run_at, attempt, max_attempts, timeout_ms, payload, \
                 last_seq",
            )
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(queue)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                let job = Claimed {
                    id: row.try_get(0)?,
                    priority: row.try_get(1)?,
                    run_at: row.try_get(2)?,
                    attempt: row.try_get(3)?,
                    max_attempts: row.try_get(4)?,
                    timeout_ms: row.try_get(5)?,
                    payload: row.try_get(6)?,
                };
                let seq: i64 = row.try_get(7)?;
                events.push((seq, attempt_data(job.attempt)));
                claimed.push(job);
            }
            let events: Vec<_> = claimed
                .iter()
                .zip(&events)
                .map(|(job, (seq, data))| (job.id.as_str(), *seq, "running", data.as_str()))
                .collect();
            insert_events(conn, &events, now).await?;
            Ok(claimed)
        })
    }

    pub(crate) async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let ids = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
        write!(self, |conn| async {
            let rows = sqlx::query(
                "UPDATE brigade_jobs SET lease_expires_at = ?1 \
                 WHERE state = 'running' AND lease_owner = ?2 \
                 AND id IN (SELECT value FROM json_each(?3)) \
                 RETURNING id, attempt",
            )
            .bind(lease_until)
            .bind(owner)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    pub(crate) async fn gone(&self, ids: &[String]) -> Result<Vec<Gone>, sqlx::Error> {
        let list = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let rows = retry_busy!(async {
            sqlx::query(
                "SELECT id, state, cancel_reason FROM brigade_jobs \
                 WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&list)
            .fetch_all(&self.reader)
            .await
        })?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            found.push(Gone {
                id: row.try_get(0)?,
                state: Some(row.try_get(1)?),
                cancel_reason: row.try_get(2)?,
            });
        }
        for id in ids {
            if !found.iter().any(|g| &g.id == id) {
                found.push(Gone {
                    id: id.clone(),
                    state: None,
                    cancel_reason: None,
                });
            }
        }
        Ok(found)
    }

    pub(crate) async fn append(
        &self,
        lease: Lease<'_>,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        write!(self, |conn| async {
            let last: Option<i64> = sqlx::query_scalar(
                "UPDATE brigade_jobs SET last_seq = last_seq + ?1 \
                 WHERE id = ?2 AND lease_owner = ?3 AND attempt = ?4 AND state = 'running' \
                 RETURNING last_seq",
            )
            .bind(n)
            .bind(lease.id)
            .bind(lease.owner)
            .bind(lease.attempt)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(last) = last else {
                return Ok(false);
            };
            let events: Vec<&NewEvent> = events.iter().collect();
            let rows = numbered(lease.id, last, &events);
            insert_events(conn, &rows, now).await?;
            Ok(true)
        })
    }

    pub(crate) async fn finish(
        &self,
        lease: Lease<'_>,
        progress: &[NewEvent],
        ending: &Ending,
        now: i64,
        retention: Retention,
    ) -> Result<bool, sqlx::Error> {
        let state = ending.state();
        let last_event = ending_event(ending, lease.attempt);
        let n = i64::try_from(progress.len() + 1).unwrap_or(i64::MAX);
        let (result, error, run_at, uncount) = match ending {
            Ending::Done { result } => (Some(result.as_str()), None, None, 0_i64),
            Ending::Retry { run_at, error } => (None, Some(error.as_str()), Some(*run_at), 0),
            Ending::Failed { error } => (None, Some(error.as_str()), None, 0),
            Ending::Release => (None, None, Some(now), 1),
        };
        let expires_at = retention.expires_at(state, now);
        let finished_at = expires_at.map(|_| now);
        write!(self, |conn| async {
            let last: Option<i64> = sqlx::query_scalar(
                "UPDATE brigade_jobs SET state = ?1, result = ?2, \
                 error = CASE WHEN ?1 = 'done' THEN NULL ELSE COALESCE(?3, error) END, \
                 run_at = COALESCE(?4, run_at), attempt = attempt - ?5, \
                 finished_at = ?6, expires_at = ?7, \
                 lease_owner = CASE WHEN ?1 = 'queued' THEN NULL ELSE lease_owner END, \
                 lease_expires_at = NULL, last_seq = last_seq + ?8 \
                 WHERE id = ?9 AND lease_owner = ?10 AND attempt = ?11 AND state = 'running' \
                 RETURNING last_seq",
            )
            .bind(state)
            .bind(result)
            .bind(error)
            .bind(run_at)
            .bind(uncount)
            .bind(finished_at)
            .bind(expires_at)
            .bind(n)
            .bind(lease.id)
            .bind(lease.owner)
            .bind(lease.attempt)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(last) = last else {
                return Ok(false);
            };
            let events: Vec<&NewEvent> = progress.iter().chain([&last_event]).collect();
            let rows = numbered(lease.id, last, &events);
            insert_events(conn, &rows, now).await?;
            Ok(true)
        })
    }

    pub(crate) async fn cancel(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        retention: Retention,
    ) -> Result<Cancelled, sqlx::Error> {
        let data = cancelled_data(reason);
        let expires_at = retention.expires_at("cancelled", now);
        write!(self, |conn| async {
            let row = sqlx::query(
                "UPDATE brigade_jobs SET state = 'cancelled', cancel_reason = ?1, \
                 finished_at = ?2, expires_at = ?3, lease_expires_at = NULL, \
                 last_seq = last_seq + 1 \
                 WHERE id = ?4 AND state IN ('queued', 'running') \
                 RETURNING last_seq, lease_owner IS NOT NULL",
            )
            .bind(reason)
            .bind(now)
            .bind(expires_at)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                let seq: i64 = row.try_get(0)?;
                let running: bool = row.try_get(1)?;
                insert_events(conn, &[(id, seq, "cancelled", &data)], now).await?;
                return Ok(Cancelled::Now { running });
            }
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM brigade_jobs WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            Ok(state.map_or(Cancelled::NotFound, Cancelled::Finished))
        })
    }

    pub(crate) async fn reap(
        &self,
        now: i64,
        limit: i64,
        retention: Retention,
    ) -> Result<Vec<Reaped>, sqlx::Error> {
        let failed_expiry = retention.expires_at("failed", now);
        write!(self, |conn| async {
            // The expiry is checked by the statement that re-queues: a job whose completion
            // landed first is no longer `running`, and is left alone.
            let rows = sqlx::query(
                "UPDATE brigade_jobs SET \
                 state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END, \
                 run_at = ?1, error = 'lease expired', \
                 lease_owner = CASE WHEN attempt < max_attempts THEN NULL ELSE lease_owner END, \
                 lease_expires_at = NULL, \
                 finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE ?1 END, \
                 expires_at = CASE WHEN attempt < max_attempts THEN NULL ELSE ?2 END, \
                 last_seq = last_seq + 1 \
                 WHERE id IN (SELECT id FROM brigade_jobs \
                     WHERE state = 'running' AND lease_expires_at < ?1 \
                     ORDER BY lease_expires_at LIMIT ?3) \
                 AND state = 'running' AND lease_expires_at < ?1 \
                 RETURNING id, queue, state, attempt, last_seq",
            )
            .bind(now)
            .bind(failed_expiry)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            let mut reaped = Vec::with_capacity(rows.len());
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get(0)?;
                let queue: String = row.try_get(1)?;
                let state: String = row.try_get(2)?;
                let attempt: i64 = row.try_get(3)?;
                let seq: i64 = row.try_get(4)?;
                let requeued = state == "queued";
                let event = ending_event(
                    &if requeued {
                        Ending::Retry {
                            run_at: now,
                            error: "lease expired".to_owned(),
                        }
                    } else {
                        Ending::Failed {
                            error: "lease expired".to_owned(),
                        }
                    },
                    attempt,
                );
                events.push((id.clone(), seq, event));
                reaped.push(Reaped {
                    id,
                    queue,
                    requeued,
                });
            }
            let events: Vec<_> = events
                .iter()
                .map(|(id, seq, e)| (id.as_str(), *seq, e.kind, e.data.as_str()))
                .collect();
            insert_events(conn, &events, now).await?;
            Ok(reaped)
        })
    }

    pub(crate) async fn prune(&self, now: i64, limit: i64) -> Result<u64, sqlx::Error> {
        write!(self, |conn| async {
            // Their events go with them (ON DELETE CASCADE), in this statement.
            let done = sqlx::query(
                "DELETE FROM brigade_jobs WHERE id IN (SELECT id FROM brigade_jobs \
                 WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
            )
            .bind(now)
            .bind(limit)
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected())
        })
    }

    pub(crate) async fn get(&self, id: &str, now: i64) -> Result<Option<Row>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM brigade_jobs \
             WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)"
        );
        let row = retry_busy!(async {
            sqlx::query(&sql)
                .bind(id)
                .bind(now)
                .fetch_optional(&self.reader)
                .await
        })?;
        row.as_ref().map(row_of).transpose()
    }

    pub(crate) async fn events_after(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        let rows = retry_busy!(async {
            sqlx::query(
                "SELECT seq, kind, data, created_at FROM brigade_job_events \
                 WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.reader)
            .await
        })?;
        rows.iter()
            .map(|row| {
                Ok(EventRow {
                    seq: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    data: row.try_get(2)?,
                    at: row.try_get(3)?,
                })
            })
            .collect()
    }

    pub(crate) async fn counts(&self) -> Result<Counts, sqlx::Error> {
        retry_busy!(async {
            let mut conn = self.reader.acquire().await?;
            let mut tx = conn.begin().await?;
            let rows = sqlx::query("SELECT state, COUNT(*) FROM brigade_jobs GROUP BY state")
                .fetch_all(&mut *tx)
                .await?;
            let mut counts = Counts::default();
            for row in &rows {
                counts.add(row.try_get::<&str, _>(0)?, row.try_get(1)?);
            }
            let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM brigade_job_events")
                .fetch_one(&mut *tx)
                .await?;
            counts.events = u64::try_from(events).unwrap_or(0);
            tx.commit().await?;
            Ok(counts)
        })
    }
}

/// The data of a `running` event: `{"attempt":n}`.
fn attempt_data(attempt: i64) -> String {
    format!("{{\"attempt\":{attempt}}}")
}

/// Numbers `events` so that the last one is `last`.
fn numbered<'a>(
    id: &'a str,
    last: i64,
    events: &[&'a NewEvent],
) -> Vec<(&'a str, i64, &'a str, &'a str)> {
    let first = last - i64::try_from(events.len()).unwrap_or(i64::MAX) + 1;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let seq = first + i64::try_from(i).unwrap_or(i64::MAX);
            (id, seq, e.kind, e.data.as_str())
        })
        .collect()
}

/// Inserts events (`job_id`, `seq`, `kind`, `data`): one at a time as one row, more as one
/// statement over a JSON array.
async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[(&str, i64, &str, &str)],
    now: i64,
) -> Result<(), sqlx::Error> {
    match events {
        [] => Ok(()),
        [(id, seq, kind, data)] => {
            sqlx::query(
                "INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(*id)
            .bind(*seq)
            .bind(*kind)
            .bind(*data)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        many => {
            let array = serde_json::to_string(many).map_err(|e| sqlx::Error::Encode(e.into()))?;
            sqlx::query(
                "INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                 json_extract(value, '$[2]'), json_extract(value, '$[3]'), ?2 \
                 FROM json_each(?1)",
            )
            .bind(array)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

fn row_of(row: &SqliteRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        id: row.try_get(0)?,
        queue: row.try_get(1)?,
        state: row.try_get(2)?,
        priority: row.try_get(3)?,
        payload: row.try_get(4)?,
        attempt: row.try_get(5)?,
        max_attempts: row.try_get(6)?,
        timeout_ms: row.try_get(7)?,
        idempotency_key: row.try_get(8)?,
        run_at: row.try_get(9)?,
        created_at: row.try_get(10)?,
        started_at: row.try_get(11)?,
        finished_at: row.try_get(12)?,
        expires_at: row.try_get(13)?,
        result: row.try_get(14)?,
        error: row.try_get(15)?,
        cancel_reason: row.try_get(16)?,
        last_seq: row.try_get(17)?,
    })
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, whatever the extended code.
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// The state of one operation's retries of `SQLITE_BUSY`: a jittered backoff, for up to
/// [`BUSY_PATIENCE`].
struct Busy {
    started: Instant,
    delays: Option<brigade_retry::schedule::Delays>,
}

impl Busy {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            delays: None,
        }
    }

    /// Whether `error` is worth running the operation again.
    fn again(&self, error: &sqlx::Error) -> bool {
        is_busy(error) && self.started.elapsed() < BUSY_PATIENCE
    }

    async fn wait(&mut self, error: &sqlx::Error) {
        static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let delays = self.delays.get_or_insert_with(|| {
            Backoff::exponential(Duration::from_millis(2), 2.0)
                .max_delay(Duration::from_millis(250))
                .jitter(Jitter::Full)
                .delays(SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
        });
        tracing::debug!(%error, "brigade-jobs: sqlite busy; the operation runs again");
        let delay = delays.next().unwrap_or(Duration::from_millis(250));
        tokio::time::sleep(delay).await;
    }
}
