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
//!
//! The task, not the callers, judges Redis by a batch, as a lone caller judges by its call: a
//! batch that fails or times out is one failed round trip (an error about the request only
//! counts), and one that Redis answers is an answered one. The call timeout bounds the whole
//! exchange from when the batch is first sent, `NOSCRIPT` and its resend included.
//!
//! Load is the callers' own: a caller waits for its batch, queued or on the wire, at most its
//! patience (the call timeout, or the bound of `Overload::Wait`), from when it queued; past
//! it, it gets [`Failure::WaitTimeout`] and is refused as overloaded. That switches nothing and
//! is never answered by the fallback: with a deep queue, the wait is mostly the queue's, and
//! says nothing of Redis. An acquire does not queue at all when the queue ahead would outlast
//! its patience, by a [`Gauge`] of the operations queued and the recent round trips (the
//! batches' and the lone calls'; lone calls count so that a slow stretch cannot leave the
//! estimate high while nothing is queued to correct it): it gets [`Failure::Shed`] at once.
//! Both carry the queue's expected wait, as a retry hint. A settle always queues: shed, an
//! extra charge would be lost.

use std::fmt::{self, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};

use super::error::Failure;
use super::link::Health;
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

/// What a caller reads to decide whether to queue at all.
#[derive(Default)]
struct Gauge {
    /// Operations sent to the task and not yet taken into a batch (or left out of one).
    queued: AtomicUsize,
    /// A batch's round trip, in nanoseconds: the latest ones, each weighing half of what
    /// came before. 0 until a batch has been answered.
    round_trip: AtomicU64,
}

impl Gauge {
    fn note_round_trip(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .round_trip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { took } else { old / 2 + took / 2 })
            });
    }
}

/// How long a batch and a caller may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Bounds each batch, from when it is first sent.
    pub(crate) call_timeout: Duration,
    /// Bounds each caller's wait for its batch, queued and on the wire.
    pub(crate) patience: Duration,
}

/// The sending side of a connection's batching task; the task ends when every clone is gone.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    slots: Arc<Semaphore>,
    gauge: Arc<Gauge>,
    /// Operations one round of batches carries: a batch in each slot.
    per_round: usize,
    patience: Duration,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the task for `conn`, on the current tokio runtime; `health` is how it reports
    /// each batch's round trip.
    pub(crate) fn spawn(
        conn: MultiplexedConnection,
        script: Script,
        shape: Shape,
        max_batch: usize,
        health: Health,
        bounds: Bounds,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let gauge = Arc::new(Gauge::default());
        let task = Task {
            conn,
            script,
            shape,
            health,
            call_timeout: bounds.call_timeout,
            gauge: Arc::clone(&gauge),
        };
        tokio::spawn(drive(rx, Arc::clone(&slots), Arc::new(task), max_batch));
        Self {
            tx,
            slots,
            gauge,
            per_round: IN_FLIGHT * max_batch,
            patience: bounds.patience,
        }
    }

    /// A free slot, if there is one and the task is not waiting for it: the caller then sends
    /// its operation alone, and holds the slot until its reply is in.
    pub(crate) fn free_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Sends `op` on `key` with the next batch; its reply, or the failure of its batch (which
    /// the task has already judged Redis by), or [`Failure::WaitTimeout`] once the caller has
    /// waited its patience. An acquire gets [`Failure::Shed`] at once, without queueing, when
    /// the operations ahead would keep it longer than its patience by the recent round trips;
    /// a settle always queues (shed, an extra charge would be lost).
    ///
    /// Cancel safe: a caller dropped before its batch is formed is left out of it.
    pub(crate) async fn call(
        &self,
        key: String,
        op: Operation,
        clock: Option<u64>,
    ) -> Result<Value, Failure> {
        if self.tx.is_closed() {
            // The task is gone only with its runtime: no call will be made on this connection.
            return Err(Failure::Gone);
        }
        if matches!(op, Operation::Acquire(_)) {
            let wait = self.expected_wait();
            if wait > self.patience {
                return Err(Failure::Shed {
                    retry_after: wait.max(Duration::from_millis(1)),
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key,
            op,
            clock,
            reply,
        };
        // Counted before it is sent, so that the task's count down never passes zero.
        self.gauge.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(pending).is_err() {
            // The task is gone only with its runtime: no call will be made on this connection.
            self.gauge.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Failure::Gone);
        }
        match timeout(self.patience, answer).await {
            Ok(reply) => reply.unwrap_or(Err(Failure::Gone)),
            Err(_) => Err(Failure::WaitTimeout {
                retry_after: self.retry_after(),
            }),
        }
    }

    /// Counts the round trip of a call sent alone, as a batch's.
    pub(crate) fn note_round_trip(&self, took: Duration) {
        self.gauge.note_round_trip(took);
    }

    /// How long an operation queued now would wait for its reply, on average: half a round
    /// trip for the round on the wire, then one for each round of the queue ahead of it (a
    /// batch in each slot), then its own; zero until a round trip has been measured. (The
    /// queue's count includes operations whose callers gave up and that will be left out:
    /// after a burst of wait timeouts, it sheds a little early until the task has drained
    /// them.)
    fn expected_wait(&self) -> Duration {
        let round_trip = self.gauge.round_trip.load(Ordering::Relaxed);
        let ahead = self.gauge.queued.load(Ordering::Relaxed);
        let rounds = u64::try_from(ahead / self.per_round).unwrap_or(u64::MAX);
        // In half round trips: 1 for the wire, 2 per round ahead, 2 for its own.
        let halves = rounds.saturating_mul(2).saturating_add(3);
        Duration::from_nanos(halves.saturating_mul(round_trip / 2))
    }

    /// A refused caller's hint: the queue's expected wait (the patience while no round trip
    /// has been measured), at least a millisecond.
    fn retry_after(&self) -> Duration {
        let wait = self.expected_wait();
        let wait = if wait.is_zero() { self.patience } else { wait };
        wait.max(Duration::from_millis(1))
    }
}

/// What every batch of a connection is sent with.
struct Task {
    conn: MultiplexedConnection,
    script: Script,
    shape: Shape,
    health: Health,
    /// Bounds each batch, from when it is first sent.
    call_timeout: Duration,
    gauge: Arc<Gauge>,
}

async fn drive(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    slots: Arc<Semaphore>,
    task: Arc<Task>,
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
            task.gauge.queued.fetch_sub(1, Ordering::Relaxed);
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
        let task = Arc::clone(&task);
        tokio::spawn(async move {
            send(&task, batch).await;
            drop(slot);
        });
    }
}

/// One round trip for the batch (the connection's response timeout bounds it); three on
/// `NOSCRIPT`: the script is loaded, and the batch sent again without the callers that gave up
/// meanwhile, so that they are not charged. A failure of the whole batch is reported, then
/// handed to each caller.
async fn send(task: &Task, mut batch: Vec<Pending>) {
    let Task {
        conn,
        script,
        shape,
        health,
        call_timeout,
        gauge,
    } = task;
    let mut conn = conn.clone();
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
    // The whole exchange within the call timeout, from the first send: the connection bounds
    // each command, and on `NOSCRIPT` a batch takes three.
    let round_trips = async {
        let mut answer = command(&batch).query_async::<Value>(&mut conn).await;
        if let Err(e) = &answer
            && script::is_noscript(e)
        {
            answer = match script.load_async(&mut conn).await {
                Ok(_) => {
                    batch.retain(|pending| !pending.reply.is_closed());
                    if batch.is_empty() {
                        return None;
                    }
                    command(&batch).query_async(&mut conn).await
                }
                Err(e) => Err(e),
            };
        }
        Some(answer)
    };
    let sent = Instant::now();
    let answer = match timeout(*call_timeout, round_trips).await {
        Ok(Some(Ok(reply))) => {
            gauge.note_round_trip(sent.elapsed());
            Ok(reply)
        }
        Ok(Some(Err(e))) => Err(Failure::from(e)),
        // Every caller gave up before the batch could be sent again.
        Ok(None) => return,
        Err(_) => Err(Failure::Timeout),
    };
    let replies = answer.and_then(|reply| script::replies(reply, batch.len()));
    match replies {
        Ok(replies) => {
            health.answered();
            for (pending, reply) in batch.into_iter().zip(replies) {
                let _ = pending.reply.send(Ok(reply));
            }
        }
        Err(failure) => {
            health.report(&failure);
            for pending in batch {
                let _ = pending.reply.send(Err(failure.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use redis::Client;

    use super::*;
    use crate::Quota;
    use crate::redis::State;
    use crate::redis::link::{Link, Timing};
    use crate::redis::redis_server::RedisServer;

    /// A link that is up on `server` and switches at the first failed round trip, and a
    /// batching task's state for its connection: one limit of 10 a second, keys under `rl:`.
    async fn connected(server: &RedisServer, call_timeout: Duration) -> (Arc<Link>, Task) {
        let timing = Timing {
            call_timeout,
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(60),
            outage_after: 1,
        };
        let link = Arc::new(Link::new(Client::open(server.url()).unwrap(), timing, None));
        let script = Script::new(script::SOURCE);
        let live = link.open(false, &script).await.unwrap();
        link.set_up(live.clone());
        let g = Gcra::new(Quota::per_second(NonZeroU32::new(10).unwrap())).unwrap();
        let task = Task {
            conn: live.conn.clone(),
            script,
            shape: Shape {
                len: 1,
                names: ["requests", "", "", ""],
                gcra: [g; MAX_LIMITS],
                prefix: "rl:".into(),
            },
            health: link.health(&live),
            call_timeout,
            gauge: Arc::default(),
        };
        (link, task)
    }

    /// A connection of the test's own, for commands to the server.
    async fn plain(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// A queued acquire of one cell on `key`, and where its reply arrives.
    fn acquire(key: &str) -> (Pending, oneshot::Receiver<Result<Value, Failure>>) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: key.into(),
            op: Operation::Acquire([1, 0, 0, 0]),
            clock: None,
            reply,
        };
        (pending, answer)
    }

    /// A batch that meets `NOSCRIPT` (the server lost the script) loads it and is sent again
    /// without the callers that gave up meanwhile: they are never charged.
    #[tokio::test]
    async fn a_batch_sent_again_after_noscript_leaves_out_the_callers_that_gave_up() {
        let server = RedisServer::start();
        let (link, task) = connected(&server, Duration::from_secs(2)).await;
        let mut conn = plain(&server).await;
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();

        let (stays, answer) = acquire("alice");
        let (leaves, gone) = acquire("bob");
        drop(gone);
        send(&task, vec![stays, leaves]).await;

        let reply = answer.await.unwrap().unwrap();
        assert!(script::decided(&reply, 1).unwrap().admitted);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rl:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].contains("alice"), "{keys:?}");
        let c = link.counters();
        assert_eq!((c.redis_errors, c.switches_to_fallback), (0, 0), "{c:?}");
    }

    /// A batch that Redis does not answer within the call timeout takes the connection down,
    /// though every one of its callers has given up already: the task judges Redis by it.
    #[tokio::test]
    async fn a_batch_that_times_out_switches_to_the_fallback_with_no_caller_left() {
        let server = RedisServer::start();
        let (link, task) = connected(&server, Duration::from_millis(200)).await;

        // Redis stops answering for a second; its reply means the pause is in effect.
        let mut other = plain(&server).await;
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1000)
            .arg("ALL")
            .query_async(&mut other)
            .await
            .unwrap();

        let (pending, answer) = acquire("alice");
        // The caller stops waiting at once; the batch is sent all the same.
        let sent = tokio::spawn(async move { send(&task, vec![pending]).await });
        drop(answer);
        sent.await.unwrap();

        let c = link.counters();
        assert_eq!(link.state(), State::Fallback);
        assert_eq!(
            (c.switches_to_fallback, c.redis_errors, c.redis_timeouts),
            (1, 1, 1),
            "{c:?}"
        );
    }
}
