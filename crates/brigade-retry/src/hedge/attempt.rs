use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inner;

/// Why a hedged request was stopped before it finished: [`HedgeAttempt::stopped`].
///
/// [`as_str`](Self::as_str) gives a label for logs, metrics, or the reason of a cancel scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stopped {
    /// Another request of its round committed, or finished with an accepted outcome, first.
    Lost,
    /// The call's [`CancellationToken`] was cancelled
    /// ([`HedgedCall::cancel_on`](crate::HedgedCall::cancel_on)).
    Cancelled,
    /// The call let its round go: the call's future was dropped, or the retry policy's
    /// attempt timeout or deadline passed.
    Abandoned,
}

impl Stopped {
    /// A short, stable label: `hedge_lost`, `cancelled` or `abandoned`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Lost => "hedge_lost",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lost => "another request answered first",
            Self::Cancelled => "call cancelled",
            Self::Abandoned => "call abandoned",
        })
    }
}

/// What the requests of one round share: the retry attempt they run for, who won, and whether
/// the round was let go.
///
/// `winner` goes from 0 to a request's number once and never changes again; `abandoned` goes
/// from `false` to `true` once, when the round's future is dropped before it ends.
///
/// It holds no references (nor do the requests hold any to types with lifetimes of their
/// own): a future holding `&'a T<'b>` trips the compiler's `Send` check for async closures
/// ("implementation of `Send` is not general enough").
pub(crate) struct Race {
    round: u32,
    winner: AtomicU32,
    abandoned: AtomicBool,
}

impl Race {
    pub(crate) const fn new(round: u32) -> Self {
        Self {
            round,
            winner: AtomicU32::new(0),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The number of the request that won, or 0.
    pub(crate) fn winner(&self) -> u32 {
        self.winner.load(Ordering::Acquire)
    }

    /// Makes request `number` the winner, unless one already is; `true` when it now is.
    pub(crate) fn win(&self, number: u32) -> bool {
        self.winner
            .compare_exchange(0, number, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the round as let go: its requests are about to be dropped.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }
}

/// What a round needs to make a request.
pub(crate) struct Start<'a> {
    pub(crate) race: &'a Race,
    pub(crate) hedge: &'a Inner,
    pub(crate) cancel: Option<&'a CancellationToken>,
}

impl<'a> Start<'a> {
    /// A request of the round.
    pub(crate) const fn request(
        &self,
        number: u32,
        is_hedge: bool,
        started: Instant,
    ) -> HedgeAttempt<'a> {
        HedgeAttempt {
            race: self.race,
            hedge: self.hedge,
            cancel: self.cancel,
            number,
            is_hedge,
            started,
            token: OnceLock::new(),
            keep: false,
        }
    }
}

/// One request of a hedged round, handed to the operation of
/// [`HedgedCall::run`](crate::HedgedCall::run).
///
/// It says which request this is ([`number`](Self::number), [`is_hedge`](Self::is_hedge),
/// [`round`](Self::round)) so the operation can send it to another upstream; it marks the
/// **commit point** ([`commit`](Self::commit)): the first byte arrived, so this request wins
/// and every other one of its round is cancelled at once; and it gives the request a
/// [`token`](Self::token) and says why it was [`stopped`](Self::stopped).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use brigade_retry::{Hedge, Retry};
/// use brigade_retry::hedge::Stopped;
/// use tokio::time::sleep;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstreams = ["slow.internal", "fast.internal"];
/// let retry = Retry::builder().build().unwrap();
/// let hedge = Hedge::builder().delay(Duration::from_millis(100)).build().unwrap();
/// let (tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
/// let answer = retry
///     .hedge(&hedge)
///     .run(async |attempt| {
///         // Request 1 to the first upstream, its hedge to the next one.
///         let upstream = upstreams[(attempt.number() as usize - 1) % upstreams.len()];
///         // Work spawned for this request stops with it.
///         let token = attempt.token();
///         let tx = tx.clone();
///         tokio::spawn(async move {
///             token.cancelled().await;
///             tx.send(upstream).unwrap();
///         });
///         sleep(Duration::from_millis(if upstream == "slow.internal" { 5_000 } else { 20 })).await;
///         attempt.commit();
///         Ok::<_, std::io::Error>(upstream)
///     })
///     .await
///     .unwrap();
/// assert_eq!(answer, "fast.internal");
/// assert_eq!(stopped.recv().await, Some("slow.internal")); // the loser's token was cancelled
/// # }
/// ```
pub struct HedgeAttempt<'a> {
    race: &'a Race,
    hedge: &'a Inner,
    cancel: Option<&'a CancellationToken>,
    number: u32,
    is_hedge: bool,
    started: Instant,
    token: OnceLock<CancellationToken>,
    /// Set on the winner when its round returns its outcome: its token is left alone.
    keep: bool,
}

impl HedgeAttempt<'_> {
    /// Which request of the call this is, in the order they started, counting every round's:
    /// 1 for the first, 2 for the next (a hedge, or the first request of a retry), ...
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// Whether this request is a hedge: not the first of its round.
    pub const fn is_hedge(&self) -> bool {
        self.is_hedge
    }

    /// The retry attempt this request's round runs for: 1 for the first round, 2 after the
    /// first retry, ...
    pub const fn round(&self) -> u32 {
        self.race.round
    }

    /// Marks the commit point: the first byte arrived. The first request of a round to commit
    /// wins: every other request of the round is cancelled at once, no hedge starts after it,
    /// and if it then fails, it is not retried
    /// ([`StopReason::Committed`](crate::StopReason::Committed)).
    ///
    /// With a [percentile delay](super::LatencyPercentile), the first commit of a round records
    /// the time from this request's start as a first-byte latency sample.
    pub fn commit(&self) {
        if self.race.win(self.number) && self.hedge.is_tracked() {
            self.hedge.record(self.started.elapsed());
        }
    }

    /// Whether this request committed.
    pub fn is_committed(&self) -> bool {
        self.race.winner() == self.number
    }

    /// This request's cancellation token, made on the first call: a child of the call's token
    /// ([`HedgedCall::cancel_on`](crate::HedgedCall::cancel_on)) if it has one. It is cancelled
    /// when the request loses, when it finishes with a failure, and when the call lets its
    /// round go (dropped, timed out, past its deadline); the winner's is never cancelled by the
    /// round, so a stream it returned can keep it. Every call returns a handle to the same
    /// token.
    ///
    /// A request that never asks for its token never makes one: the call allocates nothing
    /// for it.
    pub fn token(&self) -> CancellationToken {
        self.token
            .get_or_init(|| {
                self.cancel
                    .map_or_else(CancellationToken::new, CancellationToken::child_token)
            })
            .clone()
    }

    /// Why this request was stopped, or `None` while it is not: [`Stopped::Lost`] once another
    /// request of its round won, [`Stopped::Cancelled`] once the call's token is cancelled,
    /// [`Stopped::Abandoned`] once the call lets its round go.
    ///
    /// A stopped request's future is dropped: read this from a drop guard the operation holds
    /// (it is set before the future is dropped), for example to cancel a `brigade-cancel`
    /// scope of the request's with a reason of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use std::time::Duration;
    /// use brigade_retry::hedge::Stopped;
    /// use brigade_retry::{Hedge, HedgeAttempt, Retry};
    ///
    /// /// Notes why its request stopped, if it did, when the request's future is dropped.
    /// struct OnStop<'a>(&'a HedgeAttempt<'a>, &'a Mutex<Vec<(u32, Stopped)>>);
    ///
    /// impl Drop for OnStop<'_> {
    ///     fn drop(&mut self) {
    ///         if let Some(why) = self.0.stopped() {
    ///             self.1.lock().unwrap().push((self.0.number(), why));
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let retry = Retry::builder().build().unwrap();
    /// let hedge = Hedge::builder().delay(Duration::from_millis(100)).build().unwrap();
    /// let log = Mutex::new(Vec::new());
    /// retry
    ///     .hedge(&hedge)
    ///     .run(async |attempt| {
    ///         let _guard = OnStop(attempt, &log);
    ///         let wait = if attempt.is_hedge() { 10 } else { 1_000 };
    ///         tokio::time::sleep(Duration::from_millis(wait)).await;
    ///         attempt.commit();
    ///         Ok::<_, std::io::Error>(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(log.into_inner().unwrap(), [(1, Stopped::Lost)]);
    /// # }
    /// ```
    pub fn stopped(&self) -> Option<Stopped> {
        let race = self.race;
        let winner = race.winner();
        if winner != 0 && winner != self.number {
            Some(Stopped::Lost)
        } else if self.cancel.is_some_and(CancellationToken::is_cancelled) {
            Some(Stopped::Cancelled)
        } else if race.abandoned.load(Ordering::Acquire) {
            Some(Stopped::Abandoned)
        } else {
            None
        }
    }

    /// When this request started.
    pub(crate) const fn started(&self) -> Instant {
        self.started
    }

    /// Drops the winner, leaving its token alone.
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for HedgeAttempt<'_> {
    fn drop(&mut self) {
        if !self.keep
            && let Some(token) = self.token.get()
        {
            token.cancel();
        }
    }
}

impl fmt::Debug for HedgeAttempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeAttempt")
            .field("number", &self.number)
            .field("is_hedge", &self.is_hedge)
            .field("round", &self.round())
            .field("committed", &self.is_committed())
            .field("stopped", &self.stopped())
            .finish_non_exhaustive()
    }
}
