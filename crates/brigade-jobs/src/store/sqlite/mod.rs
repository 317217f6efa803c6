//! SQLite: one file in WAL mode (or a database in memory), one writer.
//!
//! - **One writer**, with group commit: every write is an operation queued to one task that
//!   owns the only writing connection and runs each batch of waiting operations in one
//!   `BEGIN IMMEDIATE` transaction (see `writer`). Writers of one process queue there, never
//!   for SQLite's lock; writers of other processes wait for the file's lock up to the busy
//!   timeout, set on every connection, and a `BEGIN` or `COMMIT` still busy after it runs
//!   again with backoff: "database is locked" does not reach a caller.
//! - **Readers** (`get`, events, the heartbeat's look-up of lost jobs, counts) use a pool of
//!   their own, and run again on busy or locked like the writer; WAL lets them read while the
//!   writer writes.
//! - **In memory**: the writer and one reader on a shared-cache database, which lives while
//!   one of them is open. A name of one's own (`sqlite:file:NAME?mode=memory&cache=shared`)
//!   lets two stores in one process share it, which is how the tests run two replicas
//!   without a file.
//! - Batches of events go in as one statement over `json_each` of a JSON array.

mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brigade_retry::{Backoff, Jitter};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Connection as _, Row as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::writer::OpFuture;

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

/// Gives an async block the error type of the store's operations.
fn sql<T, F: Future<Output = Result<T, sqlx::Error>>>(block: F) -> F {
    block
}

/// The SQLite store: the writer task's inbox and a reader pool.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    inbox: mpsc::Sender<writer::Message>,
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
    /// Opens the database (`memory`: shared cache, no WAL), applies the schema and starts the
    /// writer task (call inside a tokio runtime).
    pub(crate) async fn open(
        options: SqliteConnectOptions,
        memory: bool,
        settings: &SqliteSettings,
    ) -> Result<Self, OpenError> {
        // The busy timeout on every connection, and foreign keys (events go with their job).
        let options = options
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        let writer_options = if memory {
            options.clone()
        } else {
            options.clone().journal_mode(SqliteJournalMode::Wal)
        };
        let mut conn = SqliteConnection::connect_with(&writer_options).await?;
        migrate(&mut conn).await?;
        // Opened after the writer has made the file WAL (which lasts) and the schema.
        let reader = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { settings.readers.max(1) })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(if memory {
                options
            } else {
                options.read_only(true)
            })
            .await?;
        let (inbox, messages) = mpsc::channel(1_024);
        tokio::spawn(writer::run(conn, writer_options, messages));
        Ok(Self { inbox, reader })
    }

    /// Stops the writer after what is queued, and closes the connections.
    pub(crate) async fn close(&self) {
        let (reply, closed) = oneshot::channel();
        if self.inbox.send(writer::Message::Close(reply)).await.is_ok() {
            let _ = closed.await;
        }
        self.reader.close().await;
    }

    /// Runs `statements` in the writer's next transaction; their result once it committed.
    async fn write<T, F>(&self, statements: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut SqliteConnection) -> OpFuture<'c, T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = writer::Op {
            statements,
            result: None,
            reply,
        };
        self.inbox
            .send(writer::Message::Op(Box::new(op)))
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    pub(crate) async fn enqueue(&self, job: &Insert<'_>) -> Result<(String, bool), sqlx::Error> {
        let job = Arc::new(OwnedInsert::from(job));
        self.write(move |conn| {
            let job = Arc::clone(&job);
            Box::pin(async move {
                let inserted: Option<String> = sqlx::query_scalar(
                    "INSERT INTO brigade_jobs (id, queue, state, priority, payload, attempt, \
                     max_attempts, timeout_ms, idempotency_key, run_at, created_at, last_seq) \
                     VALUES (?1, ?2, 'queued', ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, 1) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                )
                .bind(&job.id)
                .bind(&job.queue)
                .bind(job.priority)
                .bind(&job.payload)
                .bind(job.max_attempts)
                .bind(job.timeout_ms)
                .bind(&job.key)
                .bind(job.run_at)
                .bind(job.now)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(id) = inserted {
                    insert_events(conn, &[(&id, 1, "queued", "{}")], job.now).await?;
                    return Ok((id, true));
                }
                // The key is held; this transaction holds the write lock, so it stays held.
                let id: String =
                    sqlx::query_scalar("SELECT id FROM brigade_jobs WHERE idempotency_key = ?1")
                        .bind(&job.key)
                        .fetch_one(&mut *conn)
                        .await?;
                Ok((id, false))
            })
        })
        .await
    }

    pub(crate) async fn claim(
        &self,
        queue: &str,
        limit: i64,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let (queue, owner): (Arc<str>, Arc<str>) = (queue.into(), owner.into());
        self.write(move |conn| {
            let (queue, owner) = (Arc::clone(&queue), Arc::clone(&owner));
            Box::pin(async move {
                let rows = sqlx::query(
                    "UPDATE brigade_jobs SET state = 'running', attempt = attempt + 1, \
                     lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, \
                     last_seq = last_seq + 1 \
                     WHERE id IN (SELECT id FROM brigade_jobs \
                         WHERE state = 'queued' AND queue = ?4 AND run_at <= ?3 \
                         ORDER BY priority DESC, run_at, id LIMIT ?5) \
                     RETURNING id, priority, run_at, attempt, max_attempts, timeout_ms, \
                     payload, last_seq",
                )
                .bind(&*owner)
                .bind(lease_until)
                .bind(now)
                .bind(&*queue)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
                let mut claimed = Vec::with_capacity(rows.len());
                let mut seqs = Vec::with_capacity(rows.len());
                for row in &rows {
                    claimed.push(Claimed {
                        id: row.try_get(0)?,
                        priority: row.try_get(1)?,
                        run_at: row.try_get(2)?,
                        attempt: row.try_get(3)?,
                        max_attempts: row.try_get(4)?,
                        timeout_ms: row.try_get(5)?,
                        payload: row.try_get(6)?,
                    });
                    seqs.push(row.try_get::<i64, _>(7)?);
                }
                let data: Vec<String> = claimed.iter().map(|j| attempt_data(j.attempt)).collect();
                let events: Vec<_> = claimed
                    .iter()
                    .zip(&seqs)
                    .zip(&data)
                    .map(|((job, seq), data)| (job.id.as_str(), *seq, "running", data.as_str()))
                    .collect();
                insert_events(conn, &events, now).await?;
                Ok(claimed)
            })
        })
        .await
    }

    pub(crate) async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let ids: Arc<str> = serde_json::to_string(ids)
            .map_err(|e| sqlx::Error::Encode(e.into()))?
            .into();
        let owner: Arc<str> = owner.into();
        self.write(move |conn| {
            let (ids, owner) = (Arc::clone(&ids), Arc::clone(&owner));
            Box::pin(async move {
                let rows = sqlx::query(
                    "UPDATE brigade_jobs SET lease_expires_at = ?1 \
                     WHERE state = 'running' AND lease_owner = ?2 \
                     AND id IN (SELECT value FROM json_each(?3)) \
                     RETURNING id, attempt",
                )
                .bind(lease_until)
                .bind(&*owner)
                .bind(&*ids)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect()
            })
        })
        .await
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
        let lease = Arc::new(OwnedLease::from(lease));
        let events: Arc<[NewEvent]> = events.into();
        self.write(move |conn| {
            let (lease, events) = (Arc::clone(&lease), Arc::clone(&events));
            Box::pin(async move {
                let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
                let last: Option<i64> = sqlx::query_scalar(
                    "UPDATE brigade_jobs SET last_seq = last_seq + ?1 \
                     WHERE id = ?2 AND lease_owner = ?3 AND attempt = ?4 \
                     AND state = 'running' \
                     RETURNING last_seq",
                )
                .bind(n)
                .bind(&lease.id)
                .bind(&lease.owner)
                .bind(lease.attempt)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(last) = last else {
                    return Ok(false);
                };
                let events: Vec<&NewEvent> = events.iter().collect();
                let rows = numbered(&lease.id, last, &events);
                insert_events(conn, &rows, now).await?;
                Ok(true)
            })
        })
        .await
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
        let mut events = progress.to_vec();
        events.push(ending_event(ending, lease.attempt));
        let events: Arc<[NewEvent]> = events.into();
        let (result, error, run_at, uncount) = match ending {
            Ending::Done { result } => (Some(result.clone()), None, None, 0_i64),
            Ending::Retry { run_at, error } => (None, Some(error.clone()), Some(*run_at), 0),
            Ending::Failed { error } => (None, Some(error.clone()), None, 0),
            // A released job keeps its due time, so its place ahead of the jobs queued since.
            Ending::Release => (None, None, None, 1),
        };
        let texts = Arc::new((result, error));
        let expires_at = retention.expires_at(state, now);
        let finished_at = expires_at.map(|_| now);
        let lease = Arc::new(OwnedLease::from(lease));
        self.write(move |conn| {
            let (lease, events, texts) =
                (Arc::clone(&lease), Arc::clone(&events), Arc::clone(&texts));
            Box::pin(async move {
                let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
                let last: Option<i64> = sqlx::query_scalar(
                    "UPDATE brigade_jobs SET state = ?1, result = ?2, \
                     error = CASE WHEN ?1 = 'done' THEN NULL ELSE COALESCE(?3, error) END, \
                     run_at = COALESCE(?4, run_at), attempt = attempt - ?5, \
                     finished_at = ?6, expires_at = ?7, \
                     lease_owner = CASE WHEN ?1 = 'queued' THEN NULL ELSE lease_owner END, \
                     lease_expires_at = NULL, last_seq = last_seq + ?8 \
                     WHERE id = ?9 AND lease_owner = ?10 AND attempt = ?11 \
                     AND state = 'running' \
                     RETURNING last_seq",
                )
                .bind(state)
                .bind(&texts.0)
                .bind(&texts.1)
                .bind(run_at)
                .bind(uncount)
                .bind(finished_at)
                .bind(expires_at)
                .bind(n)
                .bind(&lease.id)
                .bind(&lease.owner)
                .bind(lease.attempt)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(last) = last else {
                    return Ok(false);
                };
                let events: Vec<&NewEvent> = events.iter().collect();
                let rows = numbered(&lease.id, last, &events);
                insert_events(conn, &rows, now).await?;
                Ok(true)
            })
        })
        .await
    }

    pub(crate) async fn cancel(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        retention: Retention,
    ) -> Result<Cancelled, sqlx::Error> {
        let data: Arc<str> = cancelled_data(reason).into();
        let (id, reason): (Arc<str>, Arc<str>) = (id.into(), reason.into());
        let expires_at = retention.expires_at("cancelled", now);
        self.write(move |conn| {
            let (id, reason, data) = (Arc::clone(&id), Arc::clone(&reason), Arc::clone(&data));
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE brigade_jobs SET state = 'cancelled', cancel_reason = ?1, \
                     finished_at = ?2, expires_at = ?3, lease_expires_at = NULL, \
                     last_seq = last_seq + 1 \
                     WHERE id = ?4 AND state IN ('queued', 'running') \
                     RETURNING last_seq, lease_owner IS NOT NULL",
                )
                .bind(&*reason)
                .bind(now)
                .bind(expires_at)
                .bind(&*id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = row {
                    let seq: i64 = row.try_get(0)?;
                    let running: bool = row.try_get(1)?;
                    insert_events(conn, &[(&id, seq, "cancelled", &data)], now).await?;
                    return Ok(Cancelled::Now { running });
                }
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM brigade_jobs WHERE id = ?1")
                        .bind(&*id)
                        .fetch_optional(&mut *conn)
                        .await?;
                Ok(state.map_or(Cancelled::NotFound, Cancelled::Finished))
            })
        })
        .await
    }

    pub(crate) async fn reap(
        &self,
        now: i64,
        limit: i64,
        retention: Retention,
    ) -> Result<Vec<Reaped>, sqlx::Error> {
        let failed_expiry = retention.expires_at("failed", now);
        self.write(move |conn| {
            Box::pin(async move {
                // The expiry is checked by the statement that re-queues: a job whose
                // completion landed first is no longer `running`, and is left alone. A job
                // queued again keeps its `run_at`: it is claimed before the jobs queued while
                // it ran, not behind the whole backlog.
                let rows = sqlx::query(
                    "UPDATE brigade_jobs SET \
                     state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END, \
                     error = 'lease expired', \
                     lease_owner = CASE WHEN attempt < max_attempts \
                         THEN NULL ELSE lease_owner END, \
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
                    let state: String = row.try_get(2)?;
                    let attempt: i64 = row.try_get(3)?;
                    let seq: i64 = row.try_get(4)?;
                    let requeued = state == "queued";
                    let error = "lease expired".to_owned();
                    let ending = if requeued {
                        Ending::Retry { run_at: now, error }
                    } else {
                        Ending::Failed { error }
                    };
                    events.push((id.clone(), seq, ending_event(&ending, attempt)));
                    reaped.push(Reaped {
                        id,
                        queue: row.try_get(1)?,
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
        })
        .await
    }

    pub(crate) async fn prune(&self, now: i64, limit: i64) -> Result<u64, sqlx::Error> {
        self.write(move |conn| {
            Box::pin(async move {
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
        })
        .await
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

    pub(crate) async fn queued(&self, queue: &str, at_most: i64) -> Result<i64, sqlx::Error> {
        retry_busy!(async {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM brigade_jobs \
                 WHERE state = 'queued' AND queue = ?1 LIMIT ?2)",
            )
            .bind(queue)
            .bind(at_most)
            .fetch_one(&self.reader)
            .await
        })
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

/// Applies the schema in a transaction of its own.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), OpenError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
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

/// An [`Insert`] the writer task can own.
#[derive(Debug)]
struct OwnedInsert {
    id: String,
    queue: String,
    priority: i64,
    payload: String,
    max_attempts: i64,
    timeout_ms: Option<i64>,
    key: Option<String>,
    run_at: i64,
    now: i64,
}

impl From<&Insert<'_>> for OwnedInsert {
    fn from(job: &Insert<'_>) -> Self {
        Self {
            id: job.id.to_owned(),
            queue: job.queue.to_owned(),
            priority: job.priority,
            payload: job.payload.to_owned(),
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            key: job.key.map(str::to_owned),
            run_at: job.run_at,
            now: job.now,
        }
    }
}

/// A [`Lease`] the writer task can own.
#[derive(Debug)]
struct OwnedLease {
    id: String,
    owner: String,
    attempt: i64,
}

impl From<Lease<'_>> for OwnedLease {
    fn from(lease: Lease<'_>) -> Self {
        Self {
            id: lease.id.to_owned(),
            owner: lease.owner.to_owned(),
            attempt: lease.attempt,
        }
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
