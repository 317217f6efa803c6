//! The writer: one connection, one task, group commit.
//!
//! Every write of the store is an operation sent to this task. It takes the first waiting
//! operation and every other one already queued (up to [`MAX_BATCH`]), runs them one after
//! another in one `BEGIN IMMEDIATE` transaction, commits, and only then answers each caller:
//! a caller's `Ok` means its write is durable. A batch costs one commit (one WAL sync with
//! `synchronous = FULL`) however many operations it holds, so the busier the store, the
//! fewer syncs per job.
//!
//! - An operation that fails makes the batch roll back; then each operation of the batch runs
//!   again alone, in a transaction of its own, so one failure is its own caller's and no one
//!   else's. Operations are `Fn` for that reason: running one again starts from scratch.
//! - `BEGIN IMMEDIATE` takes the write lock before the first statement, so a transaction
//!   never has to upgrade a read lock (a deadlock SQLite answers with `SQLITE_BUSY` at once).
//!   Another process holding the lock makes it wait the busy timeout; a `BEGIN` or `COMMIT`
//!   that still reports busy or locked runs again after a jittered backoff, for up to
//!   [`BUSY_PATIENCE`](super::BUSY_PATIENCE), so "database is locked" reaches no caller.
//! - The task owns its connection and ends when the store is closed or every handle to it
//!   is dropped (the channel closes).

use std::future::Future;
use std::pin::Pin;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection as _, Executor as _};
use tokio::sync::{mpsc, oneshot};

use super::Busy;

/// The most operations one transaction holds.
const MAX_BATCH: usize = 256;

/// What an operation's statements return, borrowing the connection.
pub(crate) type OpFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// An operation with its caller's answer, its result type erased.
pub(super) trait Operation: Send {
    /// Runs the statements; whether they succeeded (the result is kept until the commit).
    fn run<'c>(
        &'c mut self,
        conn: &'c mut SqliteConnection,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'c>>;

    /// Answers the caller: its result if the transaction committed, else the commit's error.
    fn answer(self: Box<Self>, commit: Result<(), &sqlx::Error>);
}

pub(super) struct Op<T, F> {
    pub(super) statements: F,
    pub(super) result: Option<Result<T, sqlx::Error>>,
    pub(super) reply: oneshot::Sender<Result<T, sqlx::Error>>,
}

impl<T, F> Operation for Op<T, F>
where
    T: Send,
    F: for<'c> Fn(&'c mut SqliteConnection) -> OpFuture<'c, T> + Send,
{
    fn run<'c>(
        &'c mut self,
        conn: &'c mut SqliteConnection,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'c>> {
        Box::pin(async move {
            let result = (self.statements)(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn answer(self: Box<Self>, commit: Result<(), &sqlx::Error>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(error), _) => Err(copy(error)),
            (Ok(()), None) => Err(sqlx::Error::Protocol("an operation never ran".to_owned())),
        };
        let _ = self.reply.send(result);
    }
}

/// A message to the writer.
pub(super) enum Message {
    Op(Box<dyn Operation>),
    /// Stop after what is queued, closing the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// An error for each caller of a failed batch (`sqlx::Error` is not `Clone`): a database
/// error's code and message, as an I/O error.
fn copy(error: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "the transaction failed: {error}"
    )))
}

/// The writer task.
pub(super) async fn run(
    mut conn: SqliteConnection,
    options: SqliteConnectOptions,
    mut inbox: mpsc::Receiver<Message>,
) {
    let mut close = None;
    while close.is_none() {
        let Some(first) = inbox.recv().await else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Message::Op(op) => batch.push(op),
            Message::Close(reply) => close = Some(reply),
        }
        while close.is_none() && batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(Message::Op(op)) => batch.push(op),
                Ok(Message::Close(reply)) => close = Some(reply),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if !together(&mut conn, batch).await {
            // The connection may be broken: open another.
            match SqliteConnection::connect_with(&options).await {
                Ok(fresh) => conn = fresh,
                Err(error) => {
                    tracing::warn!(%error, "brigade-jobs: sqlite writer cannot reconnect")
                }
            }
        }
    }
    let _ = conn.close().await;
    if let Some(reply) = close {
        let _ = reply.send(());
    }
}

/// Runs a batch in one transaction; alone, each, if one fails. `false` if the connection
/// misbehaved (a rollback failed).
async fn together(conn: &mut SqliteConnection, mut batch: Vec<Box<dyn Operation>>) -> bool {
    if let Err(error) = begin(conn).await {
        for op in batch {
            op.answer(Err(&error));
        }
        return true;
    }
    let mut failed = false;
    for op in &mut batch {
        if !op.run(conn).await {
            failed = true;
            break;
        }
    }
    if !failed {
        return match commit(conn).await {
            Ok(()) => {
                for op in batch {
                    op.answer(Ok(()));
                }
                true
            }
            Err(error) => {
                let healthy = conn.execute("ROLLBACK").await.is_ok();
                for op in batch {
                    op.answer(Err(&error));
                }
                healthy
            }
        };
    }
    if conn.execute("ROLLBACK").await.is_err() {
        let error = sqlx::Error::Protocol("a rollback failed".to_owned());
        for op in batch {
            op.answer(Err(&error));
        }
        return false;
    }
    if batch.len() == 1 {
        // Its own error is its answer.
        for op in batch {
            op.answer(Ok(()));
        }
        return true;
    }
    let mut healthy = true;
    for op in batch {
        healthy &= alone(conn, op).await;
    }
    healthy
}

/// Runs one operation in a transaction of its own.
async fn alone(conn: &mut SqliteConnection, mut op: Box<dyn Operation>) -> bool {
    if let Err(error) = begin(conn).await {
        op.answer(Err(&error));
        return true;
    }
    if op.run(conn).await {
        match commit(conn).await {
            Ok(()) => op.answer(Ok(())),
            Err(error) => {
                let healthy = conn.execute("ROLLBACK").await.is_ok();
                op.answer(Err(&error));
                return healthy;
            }
        }
        return true;
    }
    let healthy = conn.execute("ROLLBACK").await.is_ok();
    op.answer(Ok(()));
    healthy
}

async fn begin(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut busy = Busy::new();
    loop {
        match conn.execute("BEGIN IMMEDIATE").await {
            Err(error) if busy.again(&error) => busy.wait(&error).await,
            other => return other.map(drop),
        }
    }
}

async fn commit(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    // A COMMIT that reports busy leaves the transaction open: it can be tried again.
    let mut busy = Busy::new();
    loop {
        match conn.execute("COMMIT").await {
            Err(error) if busy.again(&error) => busy.wait(&error).await,
            other => return other.map(drop),
        }
    }
}
