//! Wake-ups inside one process: a queue's workers when it has work, a job's followers when it
//! has events.
//!
//! These are hints. A worker also polls its queue every poll interval, and a follower reads
//! its job's events again on the same interval, so a hint that never comes (another process
//! wrote, and no `NOTIFY` carried it) costs latency, never a job or an event.
//!
//! Locks: each map's mutex is held only to find or insert an entry, never across an `.await`
//! and never with another lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The wake-ups of one queue's workers.
#[derive(Debug, Default)]
pub(crate) struct QueueWake {
    pub(crate) notify: Notify,
    /// The earliest `run_at` (ms) of a job this process queued for later, if any.
    next_due: Mutex<Option<i64>>,
}

impl QueueWake {
    /// Wakes every worker of the queue that is waiting, or about to wait (a `Notified` that
    /// was enabled before it looked for work).
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Remembers that a job becomes due at `at` (ms).
    pub(crate) fn due_at(&self, at: i64) {
        let mut next = lock(&self.next_due);
        if next.is_none_or(|next| at < next) {
            *next = Some(at);
        }
    }

    /// The earliest due time remembered after `now`; forgets those not after it.
    pub(crate) fn next_due(&self, now: i64) -> Option<i64> {
        let mut next = lock(&self.next_due);
        if next.is_some_and(|at| at <= now) {
            *next = None;
        }
        *next
    }
}

/// Every wake-up of one [`Jobs`](crate::Jobs).
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    queues: Mutex<HashMap<String, Arc<QueueWake>>>,
    /// A job's followers, and how many there are.
    jobs: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

impl Wakers {
    /// The wake-ups of `queue` (created on first use; queues are few and kept).
    pub(crate) fn queue(&self, queue: &str) -> Arc<QueueWake> {
        let mut queues = lock(&self.queues);
        if let Some(wake) = queues.get(queue) {
            return Arc::clone(wake);
        }
        let wake = Arc::new(QueueWake::default());
        queues.insert(queue.to_owned(), Arc::clone(&wake));
        wake
    }

    /// Wakes the workers of `queue`, if this process has any.
    pub(crate) fn wake_queue(&self, queue: &str) {
        let wake = lock(&self.queues).get(queue).cloned();
        if let Some(wake) = wake {
            wake.wake();
        }
    }

    /// Wakes every worker and follower (the hints may have been missed).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        let wakes: Vec<_> = lock(&self.queues).values().cloned().collect();
        for wake in wakes {
            wake.wake();
        }
        let jobs: Vec<_> = lock(&self.jobs).values().map(|(n, _)| n.clone()).collect();
        for notify in jobs {
            notify.notify_waiters();
        }
    }

    /// Registers a follower of job `id`; it is woken until the guard drops.
    pub(crate) fn follow(self: &Arc<Self>, id: &str) -> FollowGuard {
        let mut jobs = lock(&self.jobs);
        let entry = jobs
            .entry(id.to_owned())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        FollowGuard {
            wakers: Arc::clone(self),
            id: id.to_owned(),
            notify: Arc::clone(&entry.0),
        }
    }

    /// Wakes the followers of job `id` in this process.
    pub(crate) fn wake_job(&self, id: &str) {
        let notify = lock(&self.jobs).get(id).map(|(n, _)| n.clone());
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

/// A follower's registration; dropping it removes the job's entry with its last follower.
#[derive(Debug)]
pub(crate) struct FollowGuard {
    wakers: Arc<Wakers>,
    id: String,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        let mut jobs = lock(&self.wakers.jobs);
        if let Some(entry) = jobs.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                jobs.remove(&self.id);
            }
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent before anything that can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_are_counted_and_their_entry_goes_with_the_last() {
        let wakers = Arc::new(Wakers::default());
        let a = wakers.follow("job");
        let b = wakers.follow("job");
        assert!(Arc::ptr_eq(&a.notify, &b.notify));
        drop(a);
        assert_eq!(lock(&wakers.jobs).len(), 1);
        drop(b);
        assert!(lock(&wakers.jobs).is_empty());
    }

    #[test]
    fn the_earliest_due_time_is_kept_until_it_passes() {
        let wake = QueueWake::default();
        wake.due_at(50);
        wake.due_at(30);
        wake.due_at(40);
        assert_eq!(wake.next_due(10), Some(30));
        assert_eq!(wake.next_due(30), None);
    }
}
