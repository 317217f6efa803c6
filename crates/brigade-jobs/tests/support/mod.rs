//! One test suite, every backend: SQLite in memory, a SQLite file, and (feature `postgres`)
//! Postgres at `$BRIGADE_POSTGRES_URL`, in a schema of each test's own.
//!
//! `backends! { async fn name(db) { ... } }` makes one test per backend, in modules
//! `memory`, `sqlite` and `postgres`. `db.open(builder)` opens a `Jobs` on the test's database;
//! calling it again opens another one on the same database (another replica, or the process
//! after a restart). A database in memory lives while one of its `Jobs` is open.
//!
//! Times are real but short (see [`fast`]); each wait has a deadline that fails the test, and
//! no outcome depends on how long a wait took, unless the test is about that bound.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brigade_jobs::{JobId, JobRecord, Jobs, JobsBuilder};

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

/// A test's database.
#[derive(Debug)]
pub struct TestDb {
    pub kind: Kind,
    url: String,
    dir: Option<std::path::PathBuf>,
    schema: Option<String>,
}

pub fn unique(prefix: &str) -> String {
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

/// Settings that make a test quick: a 1 s lease, 100 ms heartbeats, reaps and polls.
pub fn fast() -> JobsBuilder {
    Jobs::builder()
        .lease(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(100))
        .reap_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(100))
        .progress_interval(Duration::from_millis(20))
        .max_connections(4)
}

impl TestDb {
    pub async fn new(kind: Kind) -> Self {
        match kind {
            Kind::Memory => Self {
                kind,
                url: format!(
                    "sqlite:file:{}?mode=memory&cache=shared",
                    unique("brigade_jobs_test")
                ),
                dir: None,
                schema: None,
            },
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(unique("brigade-jobs-test"));
                std::fs::create_dir_all(&dir).unwrap();
                Self {
                    kind,
                    url: format!("sqlite://{}", dir.join("jobs.db").display()),
                    dir: Some(dir),
                    schema: None,
                }
            }
            Kind::Postgres => Self::postgres().await,
        }
    }

    #[cfg(feature = "postgres")]
    async fn postgres() -> Self {
        use sqlx::Connection;
        let url = std::env::var("BRIGADE_POSTGRES_URL").expect(
            "the `postgres` feature's tests need a server: set BRIGADE_POSTGRES_URL \
             (`bash .ci/with-servers cargo test -p brigade-jobs --all-features` starts one)",
        );
        let schema = unique("brigade_jobs_test");
        let mut conn = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        Self {
            kind: Kind::Postgres,
            url,
            dir: None,
            schema: Some(schema),
        }
    }

    #[cfg(not(feature = "postgres"))]
    async fn postgres() -> Self {
        unreachable!("Postgres tests need the `postgres` feature")
    }

    /// Opens a `Jobs` on this database.
    pub async fn open(&self, builder: JobsBuilder) -> Jobs {
        match &self.schema {
            #[cfg(feature = "postgres")]
            Some(schema) => {
                use std::str::FromStr;
                let options = sqlx::postgres::PgConnectOptions::from_str(&self.url)
                    .unwrap()
                    .options([("search_path", schema.as_str())]);
                builder.open_postgres(options).await.unwrap()
            }
            _ => builder.open(&self.url).await.unwrap(),
        }
    }

    /// Runs SQL on this database, on a connection of its own, as another process would (for
    /// tests that reach inside: a job stolen from under its worker).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match &self.schema {
            #[cfg(feature = "postgres")]
            Some(schema) => {
                let mut conn = sqlx::postgres::PgConnection::connect(&self.url)
                    .await
                    .unwrap();
                sqlx::raw_sql(&format!("SET search_path = {schema}; {sql}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            _ => {
                #[cfg(feature = "sqlite")]
                {
                    use std::str::FromStr;
                    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url)
                        .unwrap()
                        .busy_timeout(Duration::from_secs(10));
                    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
                        .await
                        .unwrap();
                    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                    conn.close().await.unwrap();
                }
            }
        }
    }

    /// Removes the database (the schema, or the file's directory).
    pub async fn drop_db(self) {
        #[cfg(feature = "postgres")]
        if let Some(schema) = &self.schema {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&self.url).await {
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&mut conn)
                    .await;
            }
        }
        drop(self);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits for the job to reach a final status (at most 20 s).
pub async fn finished(jobs: &Jobs, id: JobId) -> JobRecord {
    until(jobs, id, Duration::from_secs(20), |r| r.status.is_final()).await
}

/// Waits for the job to meet `done` (at most `within`), polling every 5 ms.
pub async fn until(
    jobs: &Jobs,
    id: JobId,
    within: Duration,
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(record) = jobs.get(id).await.unwrap()
            && done(&record)
        {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not get there within {within:?}: {:?}",
            jobs.get(id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One test per backend: `backends! { async fn name(db) { ... } }`.
#[macro_export]
macro_rules! backends {
    ($(async fn $name:ident($db:ident) $body:block)*) => {
        #[cfg(feature = "sqlite")]
        mod memory {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $db = support::TestDb::new(support::Kind::Memory).await;
                    $body
                    $db.drop_db().await;
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $db = support::TestDb::new(support::Kind::Sqlite).await;
                    $body
                    $db.drop_db().await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $db = support::TestDb::new(support::Kind::Postgres).await;
                    $body
                    $db.drop_db().await;
                }
            )*
        }
    };
}
