//! `JobsBuilder`: the settings of a job store, and opening it.

use std::time::Duration;

use brigade_cancel::CancelScope;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::Backend;
use super::{Config, Jobs};
use crate::error::{InvalidConfig, OpenError};
use crate::store::Retention;

/// Settings of a [`Jobs`], then the store to open. From [`Jobs::builder`].
///
/// Each setter documents its default. `open*` checks the settings before connecting: one that
/// cannot work is [`OpenError::InvalidConfig`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_jobs::Jobs;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let jobs = Jobs::builder()
///     .lease(Duration::from_secs(10))
///     .keep_done(Duration::from_secs(600))
///     .open("sqlite::memory:")
///     .await?;
/// # jobs.shutdown(Duration::ZERO).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct JobsBuilder {
    pub(super) config: Config,
    pub(super) scope: Option<CancelScope>,
    pub(super) listen: bool,
    pub(super) max_connections: u32,
    pub(super) busy_timeout: Duration,
    pub(super) acquire_timeout: Duration,
}

impl Default for JobsBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                lease: Duration::from_secs(30),
                heartbeat: Duration::from_millis(500),
                reap_interval: Duration::from_secs(1),
                poll_interval: Duration::from_secs(1),
                prune_interval: Duration::from_secs(10),
                prune_batch: 500,
                retention: Retention {
                    done: DAY_MS,
                    failed: 7 * DAY_MS,
                    cancelled: DAY_MS,
                },
                progress_interval: Duration::from_millis(50),
                progress_buffer: 1_024,
            },
            scope: None,
            listen: true,
            max_connections: 10,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

const DAY_MS: i64 = 24 * 60 * 60 * 1_000;

impl JobsBuilder {
    /// How long a claimed job stays leased to its worker without a heartbeat. A worker that
    /// dies loses its jobs when their leases expire: the reaper, on any replica, queues them
    /// again (or fails those out of attempts) within [`reap_interval`](Self::reap_interval)
    /// after that.
    ///
    /// Default: 30 s.
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often this process extends the leases of every job it runs, in one statement,
    /// and learns which ones it lost (cancelled, or its lease expired): their handlers'
    /// scopes are cancelled then. It is the backstop of cancels from other replicas when no
    /// notification carries them (SQLite in other processes, Postgres without `LISTEN`).
    /// Must be shorter than half the lease.
    ///
    /// Default: 500 ms.
    pub const fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// How often this process looks for expired leases (every replica does).
    ///
    /// Default: 1 s.
    pub const fn reap_interval(mut self, every: Duration) -> Self {
        self.config.reap_interval = every;
        self
    }

    /// How often an idle worker looks for due jobs, and a follower for new events, without a
    /// wake-up. Jobs queued in this process, and on Postgres with `LISTEN` anywhere, wake
    /// workers at once; a job that comes due later is found by this poll, or by a timer when
    /// it was queued in this process.
    ///
    /// Default: 1 s.
    pub const fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every;
        self
    }

    /// How often this process deletes final jobs whose time to live is over, with their
    /// events, in batches of [`prune_batch`](Self::prune_batch) (batch after batch while
    /// they come full).
    ///
    /// Default: 10 s.
    pub const fn prune_interval(mut self, every: Duration) -> Self {
        self.config.prune_interval = every;
        self
    }

    /// The most jobs one prune statement deletes (with their events).
    ///
    /// Default: 500.
    pub const fn prune_batch(mut self, jobs: u32) -> Self {
        self.config.prune_batch = jobs;
        self
    }

    /// How long a `done` job (its result and events) is kept.
    ///
    /// Default: 24 h.
    pub fn keep_done(mut self, keep: Duration) -> Self {
        self.config.retention.done = crate::clock::millis(keep);
        self
    }

    /// How long a `failed` job is kept.
    ///
    /// Default: 7 days.
    pub fn keep_failed(mut self, keep: Duration) -> Self {
        self.config.retention.failed = crate::clock::millis(keep);
        self
    }

    /// How long a `cancelled` job is kept.
    ///
    /// Default: 24 h.
    pub fn keep_cancelled(mut self, keep: Duration) -> Self {
        self.config.retention.cancelled = crate::clock::millis(keep);
        self
    }

    /// How long a handler's progress events wait to be written together: the first one sent
    /// starts the wait, and every one sent meanwhile goes in the same statement. Each job's
    /// last events go in the transaction that ends it.
    ///
    /// Default: 50 ms.
    pub const fn progress_interval(mut self, wait: Duration) -> Self {
        self.config.progress_interval = wait;
        self
    }

    /// The most progress events a running job holds unwritten; a handler that sends more
    /// waits in [`Progress::send`](crate::Progress::send) until they are written.
    ///
    /// Default: 1,024.
    pub const fn progress_buffer(mut self, events: usize) -> Self {
        self.config.progress_buffer = events;
        self
    }

    /// The scope every job's scope is a child of: cancelling it (a shutdown's) cancels every
    /// running handler, and each job is released to run again (its attempt not counted, its due
    /// time kept). The
    /// workers stop claiming once it is cancelled.
    ///
    /// Default: a scope of its own, cancelled by [`Jobs::shutdown`].
    pub fn scope(mut self, scope: CancelScope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Postgres: whether to `LISTEN` for wake-up hints (new jobs, cancels, events) on a
    /// connection of its own. Turn it off behind a connection pooler in transaction mode,
    /// where `LISTEN` does not work: workers then poll, and cancels reach running handlers by
    /// the heartbeat. Ignored by SQLite.
    ///
    /// Default: on.
    pub const fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Postgres: the most connections of the pool (the listener holds one of them). SQLite:
    /// the most reader connections (a file has one writer connection besides; in memory, one
    /// connection does everything).
    ///
    /// Default: 10.
    pub const fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }

    /// SQLite: how long a connection waits for another process's write lock before SQLite
    /// reports busy (set on every connection); then the write is retried whole, with
    /// backoff, for up to a minute.
    ///
    /// Default: 5 s.
    pub const fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How long an operation waits for a connection of the pool.
    ///
    /// Default: 30 s.
    pub const fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        let c = &self.config;
        for (value, name) in [
            (c.lease, "lease"),
            (c.heartbeat, "heartbeat"),
            (c.reap_interval, "reap_interval"),
            (c.poll_interval, "poll_interval"),
            (c.prune_interval, "prune_interval"),
            (self.acquire_timeout, "acquire_timeout"),
        ] {
            if value.is_zero() {
                return Err(InvalidConfig::Zero(name));
            }
        }
        if c.prune_batch == 0 {
            return Err(InvalidConfig::Zero("prune_batch"));
        }
        if c.progress_buffer == 0 {
            return Err(InvalidConfig::Zero("progress_buffer"));
        }
        if c.heartbeat.saturating_mul(2) >= c.lease {
            return Err(InvalidConfig::HeartbeatTooLong {
                heartbeat: c.heartbeat,
                lease: c.lease,
            });
        }
        Ok(())
    }

    /// Opens the store a URL names, applies its schema (creating the tables, or migrating
    /// them, in a transaction of their own) and starts this process's heartbeat, reaper and
    /// pruner (and listener, on Postgres).
    ///
    /// - `sqlite:PATH` or `sqlite://PATH`: a file, created if missing, in WAL mode (sqlx's URL
    ///   form: `?mode=ro` and the like apply).
    /// - `sqlite::memory:`: a database in memory, for tests; it lives as long as this `Jobs`.
    ///   `sqlite:file:NAME?mode=memory&cache=shared` names one that two `Jobs` in this
    ///   process share while either is open.
    /// - `postgres://…` or `postgresql://…`: a Postgres database (libpq's URL form).
    ///
    /// # Errors
    ///
    /// The settings cannot work, the URL names no backend of this build, the database cannot
    /// be reached, or its schema is newer than this crate's.
    pub async fn open(self, url: &str) -> Result<Jobs, OpenError> {
        self.validate()?;
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
                let memory = url == "sqlite::memory:"
                    || url.starts_with("sqlite::memory:?")
                    || url.contains("mode=memory");
                let options = if memory {
                    options
                } else {
                    options.create_if_missing(true)
                };
                self.open_sqlite_as(options, memory).await
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                use std::str::FromStr;
                let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
                self.open_postgres(options).await
            }
            _ => Err(OpenError::UnsupportedUrl(scheme.to_owned())),
        }
    }

    /// Opens a SQLite file with these options (WAL mode and the busy timeout are set on
    /// them), as [`open`](Self::open) does.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub async fn open_sqlite(
        self,
        options: sqlx::sqlite::SqliteConnectOptions,
    ) -> Result<Jobs, OpenError> {
        self.validate()?;
        self.open_sqlite_as(options, false).await
    }

    /// Opens a new SQLite database in memory: for tests. It lives as long as this `Jobs`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub async fn open_memory(self) -> Result<Jobs, OpenError> {
        self.open("sqlite::memory:").await
    }

    #[cfg(feature = "sqlite")]
    async fn open_sqlite_as(
        self,
        options: sqlx::sqlite::SqliteConnectOptions,
        memory: bool,
    ) -> Result<Jobs, OpenError> {
        use crate::store::sqlite::{SqliteSettings, SqliteStore};
        let settings = SqliteSettings {
            busy_timeout: self.busy_timeout,
            readers: self.max_connections,
            acquire_timeout: self.acquire_timeout,
        };
        let store = SqliteStore::open(options, memory, &settings).await?;
        let backend = if memory {
            Backend::Memory
        } else {
            Backend::Sqlite
        };
        Ok(Jobs::start(
            self,
            crate::store::Store::Sqlite(store),
            backend,
        ))
    }

    /// Opens a Postgres database with these options, as [`open`](Self::open) does.
    ///
    /// TLS: this crate turns on no TLS backend of sqlx. A server that requires TLS needs one
    /// of sqlx's TLS features in the application's own manifest, for example
    /// `sqlx = { version = "0.8", features = ["tls-rustls-ring-webpki"] }`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub async fn open_postgres(
        self,
        options: sqlx::postgres::PgConnectOptions,
    ) -> Result<Jobs, OpenError> {
        self.validate()?;
        let store = crate::store::postgres::PgStore::open(
            options,
            self.max_connections,
            self.acquire_timeout,
        )
        .await?;
        Ok(Jobs::start(
            self,
            crate::store::Store::Postgres(store),
            Backend::Postgres,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let zero = JobsBuilder::default().lease(Duration::ZERO).validate();
        assert_eq!(zero, Err(InvalidConfig::Zero("lease")));
        let slow = JobsBuilder::default()
            .lease(Duration::from_secs(2))
            .heartbeat(Duration::from_secs(1))
            .validate();
        assert!(matches!(slow, Err(InvalidConfig::HeartbeatTooLong { .. })));
        assert_eq!(
            JobsBuilder::default().prune_batch(0).validate(),
            Err(InvalidConfig::Zero("prune_batch"))
        );
        assert_eq!(JobsBuilder::default().validate(), Ok(()));
    }

    #[tokio::test]
    async fn a_url_without_a_backend_is_refused() {
        let error = JobsBuilder::default().open("mysql://localhost/jobs").await;
        assert!(matches!(error, Err(OpenError::UnsupportedUrl(s)) if s == "mysql"));
    }
}
