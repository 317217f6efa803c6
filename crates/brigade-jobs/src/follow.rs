//! Following a job's events: what the store holds after a cursor, then each new one, to the
//! final one.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::JobId;
use crate::error::Error;
use crate::event::Event;
use crate::jobs::{Core, read_events};
use crate::wake::FollowGuard;

/// Events read per statement.
const PAGE: usize = 256;

struct State {
    core: Arc<Core>,
    id: JobId,
    hex: String,
    after: u64,
    guard: FollowGuard,
    buffer: VecDeque<Event>,
    done: bool,
}

/// The events of one job, from [`Jobs::follow`](crate::Jobs::follow): a `Stream` of
/// `Result<Event, Error>` that ends after the job's final event.
///
/// # Cancel safety
///
/// Dropping it between items loses nothing: a new one with the last `seq` seen resumes.
#[must_use = "streams do nothing unless polled"]
pub struct Follow {
    inner: Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>,
}

impl fmt::Debug for Follow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follow").finish_non_exhaustive()
    }
}

impl Stream for Follow {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

pub(crate) fn follow(core: Arc<Core>, id: JobId, after: u64) -> Follow {
    Follow {
        inner: Box::pin(events(core, id, after)),
    }
}

fn events(
    core: Arc<Core>,
    id: JobId,
    after: u64,
) -> impl Stream<Item = Result<Event, Error>> + Send {
    let hex = id.hex();
    let guard = core.wakers.follow(&hex);
    let state = State {
        core,
        id,
        hex,
        after,
        guard,
        buffer: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                s.after = event.seq;
                if event.kind.is_final() {
                    s.done = true;
                }
                return Some((Ok(event), s));
            }
            if s.done {
                return None;
            }
            // Registered before the read: an event written after it wakes this follower.
            let notify = Arc::clone(&s.guard.notify);
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match read_events(&s.core, &s.hex, s.after, PAGE).await {
                Err(error) => {
                    s.done = true;
                    return Some((Err(error), s));
                }
                Ok(events) if !events.is_empty() => {
                    s.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
            }
            // Nothing new: the job may be unknown, pruned, or over with its last event seen.
            match s.core.store.get(&s.hex, s.core.now()).await {
                Err(error) => {
                    s.done = true;
                    return Some((Err(error.into()), s));
                }
                Ok(None) => {
                    s.done = true;
                    return Some((Err(Error::NotFound(s.id)), s));
                }
                Ok(Some(row)) => {
                    let last = u64::try_from(row.last_seq).unwrap_or(0);
                    let ended = matches!(row.state.as_str(), "done" | "failed" | "cancelled");
                    if ended && s.after >= last {
                        return None;
                    }
                    if last > s.after {
                        // Written between the two reads.
                        continue;
                    }
                }
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(s.core.config.poll_interval) => {}
            }
        }
    })
}
