use std::sync::atomic::{AtomicBool, Ordering};

/// The context of one attempt, handed to the operation.
///
/// It says which attempt this is, and lets the operation mark the **commit point**: once the
/// attempt has done something that cannot be repeated (the first token of a stream went to the
/// client), it calls [`commit`](Self::commit), and if it then fails it is never retried; its
/// outcome is returned as is, with [`StopReason::Committed`](crate::StopReason::Committed).
/// Retrying after that point would send the client a second, duplicated answer.
///
/// # Examples
///
/// ```
/// use brigade_retry::{Retry, StopReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = Retry::builder().max_attempts(5).build().unwrap();
/// let mut sent = Vec::new();
/// let err = policy
///     .run(async |attempt| {
///         sent.push("first token");
///         attempt.commit(); // the client has seen output: no retry from here
///         Err::<(), _>("stream broke")
///     })
///     .await
///     .unwrap_err();
/// assert_eq!(err.stop(), StopReason::Committed);
/// assert_eq!(err.attempts(), 1);
/// assert_eq!(sent.len(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct Attempt {
    number: u32,
    committed: AtomicBool,
}

impl Attempt {
    pub(crate) const fn new() -> Self {
        Self {
            number: 1,
            committed: AtomicBool::new(false),
        }
    }

    /// Which attempt this is: 1 for the first, 2 for the first retry, ...
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// Whether this is a retry (not the first attempt).
    pub const fn is_retry(&self) -> bool {
        self.number > 1
    }

    /// Marks the commit point: from now on this attempt is never retried.
    pub fn commit(&self) {
        self.committed.store(true, Ordering::Relaxed);
    }

    /// Whether [`commit`](Self::commit) was called.
    pub fn is_committed(&self) -> bool {
        self.committed.load(Ordering::Relaxed)
    }

    pub(crate) const fn advance(&mut self) {
        self.number = self.number.saturating_add(1);
    }
}
