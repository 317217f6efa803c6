//! The cancel tree behind [`CancelScope`](super::CancelScope).
//!
//! # Invariants
//!
//! - `state.reason` is written once, under `state`'s lock, and `cancelled` is set in the same
//!   critical section. `reason.is_some()` and `cancelled` always agree for a reader holding the
//!   lock; a reader seeing `cancelled` without the lock finds the reason once it takes it.
//! - A node registers in each parent's `children` under that parent's lock, and only while the
//!   parent is not cancelled; a parent takes all its children, and from then on accepts none,
//!   in the critical section that cancels it. So a child is either born cancelled or is
//!   reached by its parent's cancel: a cancel is never lost.
//! - Children are held weakly; a child holds its parents strongly. A dropped child removes its
//!   own entries (its keys are fixed at registration); a key is never reused while its entry
//!   is live, and no entry exists after the parent's cancel took them.
//! - Timer tasks hold their node weakly and are aborted when it is dropped.
//! - Waiters register their waker in `state.wakers` under the state lock, after checking the
//!   reason under that lock; a cancel takes the wakers in the critical section that sets the
//!   reason, and wakes them after releasing it. So a waiter either sees the reason or is woken:
//!   no wake-up is lost, and a cancel with nobody waiting wakes nothing. The same slab rules as
//!   for children apply to waker keys.
//!
//! # Lock order
//!
//! At most one `state` lock is held at a time: registration, removal and cancellation each lock
//! one node, release it, then go to the next.

use std::mem;
use std::sync::{Arc, OnceLock, Weak};

use std::task::Waker;

use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::CancelReason;
use crate::loom::{AtomicBool, Mutex, Ordering, lock};

pub(crate) struct Node {
    cancelled: AtomicBool,
    state: Mutex<State>,
    /// The first parent, and this node's key in its children.
    parent: Option<(Arc<Self>, usize)>,
    /// Earliest deadline of this node and its parents.
    pub(super) deadline: Option<Instant>,
    /// A tokio-util token cancelled with this node, made on first request.
    token: OnceLock<CancellationToken>,
}

#[derive(Default)]
struct State {
    reason: Option<CancelReason>,
    children: Slab<Weak<Node>>,
    wakers: Slab<Waker>,
    /// Further parents of a linked node, with this node's key in each.
    links: Vec<(Arc<Node>, usize)>,
    /// Deadline timer; aborted on drop.
    timer: Option<AbortHandle>,
}

/// A slab: O(1) insert and remove by key, and no other entry is touched on removal.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if let Some(key) = self.free.pop() {
            self.slots[key] = Some(value);
            key
        } else {
            self.slots.push(Some(value));
            self.slots.len() - 1
        }
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot @ Some(_)) = self.slots.get_mut(key) {
            *slot = None;
            self.len -= 1;
            if self.len == 0 {
                // Nothing is registered: start over, keeping the memory for the next burst.
                self.slots.clear();
                self.free.clear();
            } else {
                self.free.push(key);
            }
        }
    }

    fn take(&mut self) -> Vec<Option<T>> {
        self.free = Vec::new();
        self.len = 0;
        mem::take(&mut self.slots)
    }
}

impl Node {
    pub(super) fn root(deadline: Option<Instant>) -> Arc<Self> {
        Arc::new(Self::new(None, deadline, None))
    }

    fn new(
        parent: Option<(Arc<Self>, usize)>,
        deadline: Option<Instant>,
        reason: Option<CancelReason>,
    ) -> Self {
        Self {
            cancelled: AtomicBool::new(reason.is_some()),
            state: Mutex::new(State {
                reason,
                ..State::default()
            }),
            parent,
            deadline,
            token: OnceLock::new(),
        }
    }

    /// A child of `parent`, born cancelled with the parent's reason if the parent is.
    pub(super) fn child(parent: &Arc<Self>, deadline: Option<Instant>) -> Arc<Self> {
        let mut state = lock(&parent.state);
        if let Some(reason) = &state.reason {
            return Arc::new(Self::new(None, deadline, Some(reason.clone())));
        }
        let key = state.children.next_key();
        let child = Arc::new_cyclic(|weak| {
            let node = Self::new(Some((parent.clone(), key)), deadline, None);
            let inserted = state.children.insert(weak.clone());
            debug_assert_eq!(inserted, key);
            node
        });
        drop(state);
        child
    }

    /// Makes `node` a child of `parent` too. Returns `false` when `parent` is already
    /// cancelled (then `node` is cancelled with its reason).
    pub(super) fn link(node: &Arc<Self>, parent: &Arc<Self>) -> bool {
        let key = {
            let mut state = lock(&parent.state);
            match &state.reason {
                Some(reason) => Err(reason.clone()),
                None => Ok(state.children.insert(Arc::downgrade(node))),
            }
        };
        match key {
            Ok(key) => {
                lock(&node.state).links.push((parent.clone(), key));
                true
            }
            Err(reason) => {
                node.cancel(&reason);
                false
            }
        }
    }

    pub(super) fn set_timer(&self, timer: AbortHandle) {
        lock(&self.state).timer = Some(timer);
    }

    #[inline]
    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The reason if cancelled; otherwise registers (or refreshes) the waker under `key`.
    pub(super) fn poll_reason(
        &self,
        key: &mut Option<usize>,
        waker: &Waker,
    ) -> Option<CancelReason> {
        if self.is_cancelled() {
            return self.reason();
        }
        let mut state = lock(&self.state);
        if let Some(reason) = &state.reason {
            return Some(reason.clone());
        }
        match key.and_then(|key| state.wakers.get_mut(key)) {
            Some(registered) => registered.clone_from(waker),
            None => *key = Some(state.wakers.insert(waker.clone())),
        }
        None
    }

    /// Forgets a waiter's waker.
    pub(super) fn remove_waker(&self, key: usize) {
        lock(&self.state).wakers.remove(key);
    }

    pub(super) fn reason(&self) -> Option<CancelReason> {
        if !self.is_cancelled() {
            return None;
        }
        lock(&self.state).reason.clone()
    }

    /// Cancels this node and, through the tree, every descendant that is not cancelled yet.
    /// Returns `false` when this node was already cancelled.
    pub(super) fn cancel(&self, reason: &CancelReason) -> bool {
        let Some(mut pending) = self.mark_cancelled(reason) else {
            return false;
        };
        // Iterative, so a deep tree cannot overflow the stack.
        while let Some(child) = pending.pop() {
            if let Some(child) = child.and_then(|weak| weak.upgrade())
                && let Some(grandchildren) = child.mark_cancelled(reason)
            {
                pending.extend(grandchildren);
            }
        }
        true
    }

    /// Sets the reason, wakes the waiters and detaches the children, which are returned for the
    /// caller to cancel. `None` when the node was already cancelled.
    fn mark_cancelled(&self, reason: &CancelReason) -> Option<Vec<Option<Weak<Self>>>> {
        let (children, token, wakers) = {
            let mut state = lock(&self.state);
            if state.reason.is_some() {
                return None;
            }
            state.reason = Some(reason.clone());
            self.cancelled.store(true, Ordering::Release);
            (
                state.children.take(),
                self.token.get().cloned(),
                state.wakers.take(),
            )
        };
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
        if let Some(token) = token {
            token.cancel();
        }
        Some(children)
    }

    /// A tokio-util token cancelled when this node is.
    pub(super) fn token(&self) -> CancellationToken {
        if let Some(token) = self.token.get() {
            return token.clone();
        }
        // Made under the lock, so a concurrent cancel either sees it or is seen by it.
        let state = lock(&self.state);
        let token = self.token.get_or_init(CancellationToken::new).clone();
        if state.reason.is_some() {
            token.cancel();
        }
        token
    }

    #[cfg(test)]
    pub(crate) fn registered_children(&self) -> usize {
        lock(&self.state).children.len
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let state = crate::loom::get_mut(&mut self.state);
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        for (parent, key) in state.links.drain(..) {
            lock(&parent.state).children.remove(key);
        }
        // Unregister from the first parent, and drop the chain of parents this node was the
        // last to hold one by one, not recursively.
        let mut next = self.parent.take();
        while let Some((parent, key)) = next {
            lock(&parent.state).children.remove(key);
            next = match Arc::try_unwrap(parent) {
                Ok(mut parent) => parent.parent.take(),
                Err(_) => None,
            };
        }
    }
}
