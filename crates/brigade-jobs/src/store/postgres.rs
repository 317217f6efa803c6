//! Postgres: row locks, `FOR UPDATE SKIP LOCKED`, and `NOTIFY` as a wake-up hint.
//!
//! - Every operation on a job is one statement: data-modifying CTEs write the job and its
//!   events together (one round trip, one snapshot).
//! - The `NOTIFY` hints on the channel [`CHANNEL`](super::CHANNEL) are sent after the write
//!   has committed, by a task of the store's own, in batches: one statement for all the hints
//!   that piled up while the last one ran. In the write's own transaction, a `NOTIFY` would hold
//!   Postgres's notification-queue lock from before the commit until after it, so every such
//!   commit would wait for the one before to reach the disk: no group commit, one flush per
//!   enqueue. A hint is sent only for a write that committed, as before, a moment later.
//! - Claims and the reaper pick rows with `FOR UPDATE SKIP LOCKED` (claims through the
//!   partial index of queued jobs), and the update re-checks the condition it picked on, so
//!   two replicas never take the same job and the reaper never touches a job whose completion
//!   holds or has released the row lock.
//! - Hints (the payload): `q:QUEUE` a job became due, `c:ID:REASON` a job was cancelled, `e:ID`
//!   a job has new events. They only wake; a replica that misses one (poll-only mode, a
//!   dropped listener) finds the same by polling.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row as _};
use std::time::Duration;
use tokio::sync::mpsc;

use super::{
    CHANNEL, Cancelled, Claimed, Ending, EventRow, Gone, Insert, Lease, NewEvent, Reaped,
    Retention, SCHEMA_VERSION, cancelled_data, ending_event,
};
use crate::error::OpenError;
use crate::record::{Counts, Row};

/// The schema, by version: each applied once, in order, in the transaction that records it.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE brigade_jobs (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        priority BIGINT NOT NULL,
        payload TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        max_attempts BIGINT NOT NULL,
        timeout_ms BIGINT,
        idempotency_key TEXT UNIQUE,
        run_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        expires_at BIGINT,
        lease_owner TEXT,
        lease_expires_at BIGINT,
        last_seq BIGINT NOT NULL,
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
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );",
)];

/// The advisory lock that serializes schema changes across replicas ("brigjobs").
const MIGRATION_LOCK: i64 = 0x6272_6967_6a6f_6273;

/// The columns of a job, in the order `row_of` reads them.
const COLUMNS: &str = "id, queue, state, priority, payload, attempt, max_attempts, timeout_ms, \
    idempotency_key, run_at, created_at, started_at, finished_at, expires_at, result, error, \
    cancel_reason, last_seq";

/// A `NOTIFY` payload may hold 8,000 bytes; a cancel hint carries its reason up to this.
const MAX_REASON_IN_HINT: usize = 1_000;

/// The Postgres store: one pool, and the task that sends its hints.
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
    hints: Hints,
}

/// Sends `NOTIFY` hints after their writes commit, batched, on a task that ends when the last
/// clone of the store is dropped or its pool closes.
#[derive(Clone, Debug)]
struct Hints(mpsc::UnboundedSender<String>);

impl Hints {
    fn start(pool: PgPool) -> Self {
        let (send, mut hints) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(hint) = hints.recv().await {
                batch.push(hint);
                while let Ok(hint) = hints.try_recv() {
                    batch.push(hint);
                }
                batch.sort_unstable();
                batch.dedup();
                if pool.is_closed() {
                    break;
                }
                // A hint only wakes: one lost (the server gone a moment) is found by polling.
                if let Err(error) =
                    sqlx::query("SELECT pg_notify($1, hint) FROM unnest($2::text[]) AS hint")
                        .bind(CHANNEL)
                        .bind(&batch)
                        .execute(&pool)
                        .await
                {
                    tracing::debug!(%error, hints = batch.len(), "sending NOTIFY hints failed");
                }
                batch.clear();
            }
        });
        Self(send)
    }

    fn send(&self, hint: String) {
        // Closed only once the task has stopped with the pool: nobody listens then.
        let _ = self.0.send(hint);
    }
}

impl PgStore {
    /// Connects and applies the schema.
    pub(crate) async fn open(
        options: PgConnectOptions,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        let hints = Hints::start(pool.clone());
        let store = Self { pool, hints };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool (the listener takes its connection from it).
    pub(crate) const fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), OpenError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS brigade_jobs_schema (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
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
            sqlx::query("INSERT INTO brigade_jobs_schema (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn enqueue(&self, job: &Insert<'_>) -> Result<(String, bool), sqlx::Error> {
        // An insert that loses the key to a job being pruned at the same moment finds neither
        // its row nor the other one: it tries again.
        for _ in 0..3 {
            let inserted: Option<(String, bool)> = sqlx::query_as(
                "WITH ins AS ( \
                     INSERT INTO brigade_jobs (id, queue, state, priority, payload, attempt, \
                     max_attempts, timeout_ms, idempotency_key, run_at, created_at, last_seq) \
                     VALUES ($1, $2, 'queued', $3, $4, 0, $5, $6, $7, $8, $9, 1) \
                     ON CONFLICT (idempotency_key) DO NOTHING \
                     RETURNING id, queue, run_at \
                 ), ev AS ( \
                     INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                     SELECT id, 1, 'queued', '{}', $9 FROM ins \
                 ) \
                 SELECT id, run_at <= $9 FROM ins",
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
            .fetch_optional(&self.pool)
            .await?;
            if let Some((id, due)) = inserted {
                if due {
                    self.hints.send(format!("q:{}", job.queue));
                }
                return Ok((id, true));
            }
            let held: Option<String> =
                sqlx::query_scalar("SELECT id FROM brigade_jobs WHERE idempotency_key = $1")
                    .bind(job.key)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(id) = held {
                return Ok((id, false));
            }
        }
        Err(sqlx::Error::Protocol(
            "an idempotency key kept conflicting with a job that could not be found".to_owned(),
        ))
    }

    pub(crate) async fn claim(
        &self,
        queue: &str,
        limit: i64,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let rows = sqlx::query(
            "WITH picked AS ( \
                 SELECT id FROM brigade_jobs \
                 WHERE state = 'queued' AND queue = $4 AND run_at <= $3 \
                 ORDER BY priority DESC, run_at, id \
                 LIMIT $5 \
                 FOR UPDATE SKIP LOCKED \
             ), claimed AS ( \
                 UPDATE brigade_jobs j SET state = 'running', attempt = j.attempt + 1, \
                 lease_owner = $1, lease_expires_at = $2, started_at = $3, \
                 last_seq = j.last_seq + 1 \
                 FROM picked WHERE j.id = picked.id AND j.state = 'queued' \
                 RETURNING j.id, j.priority, j.run_at, j.attempt, j.max_attempts, \
                 j.timeout_ms, j.payload, j.last_seq \
             ), ev AS ( \
                 INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT id, last_seq, 'running', '{\"attempt\":' || attempt || '}', $3 \
                 FROM claimed \
             ) \
             SELECT id, priority, run_at, attempt, max_attempts, timeout_ms, payload \
             FROM claimed",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(queue)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Claimed {
                    id: row.try_get(0)?,
                    priority: row.try_get(1)?,
                    run_at: row.try_get(2)?,
                    attempt: row.try_get(3)?,
                    max_attempts: row.try_get(4)?,
                    timeout_ms: row.try_get(5)?,
                    payload: row.try_get(6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "UPDATE brigade_jobs SET lease_expires_at = $1 \
             WHERE state = 'running' AND lease_owner = $2 AND id = ANY($3) \
             RETURNING id, attempt",
        )
        .bind(lease_until)
        .bind(owner)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn gone(&self, ids: &[String]) -> Result<Vec<Gone>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT id, state, cancel_reason FROM brigade_jobs WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        let mut found = Vec::with_capacity(ids.len());
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
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let row = sqlx::query(
            "WITH job AS ( \
                 UPDATE brigade_jobs SET last_seq = last_seq + $1 \
                 WHERE id = $2 AND lease_owner = $3 AND attempt = $4 AND state = 'running' \
                 RETURNING id, last_seq \
             ), ev AS ( \
                 INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT job.id, job.last_seq - $1 + e.ord, e.kind, e.data, $7 \
                 FROM job, unnest($5::text[], $6::text[]) WITH ORDINALITY AS e(kind, data, ord) \
             ) \
             SELECT last_seq FROM job",
        )
        .bind(n)
        .bind(lease.id)
        .bind(lease.owner)
        .bind(lease.attempt)
        .bind(&kinds)
        .bind(&data)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if row.is_some() {
            self.hints.send(format!("e:{}", lease.id));
        }
        Ok(row.is_some())
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
        let events: Vec<&NewEvent> = progress.iter().chain([&last_event]).collect();
        let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let (result, error, run_at, uncount) = match ending {
            Ending::Done { result } => (Some(result.as_str()), None, None, 0_i64),
            Ending::Retry { run_at, error } => (None, Some(error.as_str()), Some(*run_at), 0),
            Ending::Failed { error } => (None, Some(error.as_str()), None, 0),
            // A released job keeps its due time, so its place ahead of the jobs queued since.
            Ending::Release => (None, None, None, 1),
        };
        let expires_at = retention.expires_at(state, now);
        let finished_at = expires_at.map(|_| now);
        let row = sqlx::query(
            "WITH job AS ( \
                 UPDATE brigade_jobs SET state = $1, result = $2, \
                 error = CASE WHEN $1 = 'done' THEN NULL ELSE COALESCE($3, error) END, \
                 run_at = COALESCE($4, run_at), attempt = attempt - $5, \
                 finished_at = $6, expires_at = $7, \
                 lease_owner = CASE WHEN $1 = 'queued' THEN NULL ELSE lease_owner END, \
                 lease_expires_at = NULL, last_seq = last_seq + $8 \
                 WHERE id = $9 AND lease_owner = $10 AND attempt = $11 AND state = 'running' \
                 RETURNING id, queue, state, run_at, last_seq \
             ), ev AS ( \
                 INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT job.id, job.last_seq - $8 + e.ord, e.kind, e.data, $14 \
                 FROM job, unnest($12::text[], $13::text[]) WITH ORDINALITY AS e(kind, data, ord) \
             ) \
             SELECT queue, state = 'queued' AND run_at <= $14 FROM job",
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
        .bind(&kinds)
        .bind(&data)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        self.hints.send(format!("e:{}", lease.id));
        if row.try_get::<bool, _>(1)? {
            self.hints
                .send(format!("q:{}", row.try_get::<String, _>(0)?));
        }
        Ok(true)
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
        let hint_reason = truncated(reason, MAX_REASON_IN_HINT);
        let row = sqlx::query(
            "WITH job AS ( \
                 UPDATE brigade_jobs SET state = 'cancelled', cancel_reason = $1, \
                 finished_at = $2, expires_at = $3, lease_expires_at = NULL, \
                 last_seq = last_seq + 1 \
                 WHERE id = $4 AND state IN ('queued', 'running') \
                 RETURNING id, last_seq, lease_owner IS NOT NULL AS running \
             ), ev AS ( \
                 INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT id, last_seq, 'cancelled', $5, $2 FROM job \
             ) \
             SELECT running FROM job",
        )
        .bind(reason)
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .bind(&data)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let running: bool = row.try_get(0)?;
            if running {
                self.hints.send(format!("c:{id}:{hint_reason}"));
            }
            self.hints.send(format!("e:{id}"));
            return Ok(Cancelled::Now { running });
        }
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM brigade_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state.map_or(Cancelled::NotFound, Cancelled::Finished))
    }

    pub(crate) async fn reap(
        &self,
        now: i64,
        limit: i64,
        retention: Retention,
    ) -> Result<Vec<Reaped>, sqlx::Error> {
        let failed_expiry = retention.expires_at("failed", now);
        // One statement: the rows are picked, locked, re-checked and re-queued together. A
        // completion holding a row's lock makes the pick skip it; one that committed first
        // left it no longer `running`, which the update's own condition sees. A job queued
        // again keeps its `run_at`: it is claimed before the jobs queued while it ran, not
        // behind the whole backlog.
        let rows = sqlx::query(
            "WITH picked AS ( \
                 SELECT id FROM brigade_jobs \
                 WHERE state = 'running' AND lease_expires_at < $1 \
                 ORDER BY lease_expires_at LIMIT $3 \
                 FOR UPDATE SKIP LOCKED \
             ), reaped AS ( \
                 UPDATE brigade_jobs j SET \
                 state = CASE WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'failed' END, \
                 error = 'lease expired', \
                 lease_owner = CASE WHEN j.attempt < j.max_attempts \
                     THEN NULL ELSE j.lease_owner END, \
                 lease_expires_at = NULL, \
                 finished_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE $1 END, \
                 expires_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE $2 END, \
                 last_seq = j.last_seq + 1 \
                 FROM picked \
                 WHERE j.id = picked.id AND j.state = 'running' AND j.lease_expires_at < $1 \
                 RETURNING j.id, j.queue, j.state, j.attempt, j.last_seq \
             ), ev AS ( \
                 INSERT INTO brigade_job_events (job_id, seq, kind, data, created_at) \
                 SELECT id, last_seq, \
                 CASE WHEN state = 'queued' THEN 'retrying' ELSE 'failed' END, \
                 CASE WHEN state = 'queued' \
                     THEN '{\"attempt\":' || attempt \
                         || ',\"error\":\"lease expired\",\"run_at\":' || $1 || '}' \
                     ELSE '{\"attempt\":' || attempt || ',\"error\":\"lease expired\"}' END, \
                 $1 \
                 FROM reaped \
             ) \
             SELECT id, queue, state FROM reaped",
        )
        .bind(now)
        .bind(failed_expiry)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: String = row.try_get(2)?;
            reaped.push(Reaped {
                id: row.try_get(0)?,
                queue: row.try_get(1)?,
                requeued: state == "queued",
            });
        }
        // Wake the other replicas' workers of the queues that have jobs again.
        let mut queues: Vec<&str> = reaped
            .iter()
            .filter(|r| r.requeued)
            .map(|r| r.queue.as_str())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            self.hints.send(format!("q:{queue}"));
        }
        Ok(reaped)
    }

    pub(crate) async fn prune(&self, now: i64, limit: i64) -> Result<u64, sqlx::Error> {
        // Their events go with them (ON DELETE CASCADE), in this statement.
        let done = sqlx::query(
            "DELETE FROM brigade_jobs WHERE id IN (SELECT id FROM brigade_jobs \
             WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn get(&self, id: &str, now: i64) -> Result<Option<Row>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM brigade_jobs \
             WHERE id = $1 AND (expires_at IS NULL OR expires_at > $2)"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_of).transpose()
    }

    pub(crate) async fn events_after(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT seq, kind, data, created_at FROM brigade_job_events \
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
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
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM brigade_jobs \
             WHERE state = 'queued' AND queue = $1 LIMIT $2) AS q",
        )
        .bind(queue)
        .bind(at_most)
        .fetch_one(&self.pool)
        .await
    }

    pub(crate) async fn counts(&self) -> Result<Counts, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
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
    }
}

/// `text`, cut to at most `max` bytes at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn row_of(row: &PgRow) -> Result<Row, sqlx::Error> {
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
