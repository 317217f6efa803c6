//! Batching: the script calls of concurrent decisions share one `EVALSHA`.
//!
//! Most of a script call's cost on the server is fixed (the call itself, its `TIME`, its
//! reply), not per key. At most [`IN_FLIGHT`] calls are awaited at once per connection (a call
//! whose caller timed out may still be on the wire, unawaited, and is not counted).
//! A caller that finds a free slot sends its operation alone, at once, itself: a lone caller
//! pays nothing for batching. A caller that finds none queues its operation for the
//! connection's task, which waits for the next free slot, takes every queued operation (up to
//! the batch size), sends them as one call and hands each caller its own reply. So batches
//! grow with the load, and the slots keep Redis busy while the next batch forms.
//!
//! A caller that gave up (its call timed out, its future was dropped) before its batch was
//! formed is left out of it, and so never charged; so is one that gave up before a batch that
//! met `NOSCRIPT` is sent again.

use std::fmt::{self, Display};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::error::Failure;
use super::script::{self, Limits, Operation};
use crate::MAX_LIMITS;
use crate::gcra::Gcra;

/// Batches on the wire at once, per connection: while one is sent and answered, the next
/// forms (and the server can start on it as soon as the first is done).
const IN_FLIGHT: usize = 2;

/// What the task needs to write a command: the limiter's limits and key prefix.
pub(crate) struct Shape {
    pub(crate) len: usize,
    pub(crate) names: [&'static str; MAX_LIMITS],
    pub(crate) gcra: [Gcra; MAX_LIMITS],
    pub(crate) prefix: Box<str>,
}

impl Shape {
    fn limits(&self) -> Limits<'_> {
        Limits {
            len: self.len,
            names: &self.names,
            gcra: &self.gcra,
        }
    }
}

struct Pending {
    /// The caller's key, formatted (the task is not generic over the key type).
    key: String,
    op: Operation,
    clock: Option<u64>,
    reply: oneshot::Sender<Result<Value, Failure>>,
}

/// The sending side of a connection's batching task; the task ends when every clone is gone.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the task for `conn`, on the current tokio runtime.
    pub(crate) fn spawn(
        conn: MultiplexedConnection,
        script: Script,
        shape: Shape,
        max_batch: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(drive(
            rx,
            Arc::clone(&slots),
            conn,
            Arc::new(script),
            Arc::new(shape),
            max_batch,
        ));
        Self { tx, slots }
    }

    /// A free slot, if there is one and the task is not waiting for it: the caller then sends
    /// its operation alone, and holds the slot until its reply is in.
    pub(crate) fn free_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Sends `op` on `key` with the next batch; its reply, or the failure of its batch.
    pub(crate) async fn call(
        &self,
        key: String,
        op: Operation,
        clock: Option<u64>,
    ) -> Result<Value, Failure> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key,
            op,
            clock,
            reply,
        };
        // The task is gone only with its runtime: no call will be made on this connection.
        self.tx.send(pending).map_err(|_| Failure::Down)?;
        answer.await.unwrap_or(Err(Failure::Down))
    }
}

async fn drive(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    slots: Arc<Semaphore>,
    conn: MultiplexedConnection,
    script: Arc<Script>,
    shape: Arc<Shape>,
    max_batch: usize,
) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Operations queue while the task waits here. The semaphore is never closed, and is
        // fair: once the task waits here, a released slot goes to it before any caller's
        // `free_slot` (between the wake-up above and this wait, a caller may take it first).
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        let mut next = Some(first);
        while let Some(pending) = next {
            if !pending.reply.is_closed() {
                batch.push(pending);
            }
            next = if batch.len() < max_batch {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if batch.is_empty() {
            continue;
        }
        let (conn, script, shape) = (conn.clone(), Arc::clone(&script), Arc::clone(&shape));
        tokio::spawn(async move {
            send(conn, &script, &shape, batch).await;
            drop(slot);
        });
    }
}

/// One round trip for the batch (the connection's response timeout bounds it); three on
/// `NOSCRIPT`: the script is loaded, and the batch sent again without the callers that gave up
/// meanwhile, so that they are not charged.
async fn send(
    mut conn: MultiplexedConnection,
    script: &Script,
    shape: &Shape,
    mut batch: Vec<Pending>,
) {
    let command = |batch: &[Pending]| {
        let clock = batch.iter().filter_map(|p| p.clock).max();
        let ops = batch.iter().map(|p| (&p.key as &dyn Display, &p.op));
        script::command(
            script.get_hash(),
            &shape.limits(),
            &shape.prefix,
            ops,
            clock,
        )
    };
    let mut answer = command(&batch).query_async::<Value>(&mut conn).await;
    if let Err(e) = &answer
        && script::is_noscript(e)
    {
        answer = match script.load_async(&mut conn).await {
            Ok(_) => {
                batch.retain(|pending| !pending.reply.is_closed());
                if batch.is_empty() {
                    return;
                }
                command(&batch).query_async(&mut conn).await
            }
            Err(e) => Err(e),
        };
    }
    let replies = match answer {
        Ok(reply) => script::replies(reply, batch.len()),
        Err(e) => Err(Failure::from(e)),
    };
    match replies {
        Ok(replies) => {
            for (pending, reply) in batch.into_iter().zip(replies) {
                let _ = pending.reply.send(Ok(reply));
            }
        }
        Err(failure) => {
            for pending in batch {
                let _ = pending.reply.send(Err(failure.clone()));
            }
        }
    }
}
