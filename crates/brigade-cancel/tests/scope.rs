//! Cancel scopes through the public API: reasons, deadlines, links, waiting and guards.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use brigade_cancel::{CancelOnDrop, CancelReason, CancelScope};
use tokio::time::{Instant, advance};

#[test]
fn first_reason_wins_and_stays_readable() {
    let scope = CancelScope::new();
    assert_eq!(scope.reason(), None);
    assert!(scope.cancel(CancelReason::DeadlineExceeded));
    assert!(!scope.cancel(CancelReason::Shutdown));
    assert!(!scope.cancel("later"));
    for _ in 0..3 {
        assert_eq!(scope.reason(), Some(CancelReason::DeadlineExceeded));
    }
}

#[test]
fn first_reason_wins_across_threads() {
    for _ in 0..200 {
        let scope = CancelScope::new();
        let child = scope.child();
        let threads: Vec<_> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|name| {
                let scope = scope.clone();
                std::thread::spawn(move || scope.cancel(name).then_some(name))
            })
            .collect();
        let winners: Vec<_> = threads
            .into_iter()
            .filter_map(|thread| thread.join().unwrap())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one cancel sets the reason");
        let expected = Some(CancelReason::custom(winners[0]));
        assert_eq!(scope.reason(), expected);
        assert_eq!(
            child.reason(),
            expected,
            "the child sees the parent's reason"
        );
    }
}

#[test]
fn children_see_their_parents_reason_and_never_cancel_the_parent() {
    let root = CancelScope::new();
    let child = root.child();
    let grandchild = child.child();
    let sibling = root.child();

    assert!(sibling.cancel(CancelReason::custom("sibling only")));
    assert!(!root.is_cancelled());
    assert!(!child.is_cancelled());

    root.cancel(CancelReason::ClientDisconnected);
    assert_eq!(child.reason(), Some(CancelReason::ClientDisconnected));
    assert_eq!(grandchild.reason(), Some(CancelReason::ClientDisconnected));
    assert_eq!(sibling.reason(), Some(CancelReason::custom("sibling only")));

    let late = root.child();
    assert_eq!(
        late.reason(),
        Some(CancelReason::ClientDisconnected),
        "born cancelled"
    );
}

#[test]
fn a_child_cancelled_first_keeps_its_own_reason() {
    let root = CancelScope::new();
    let child = root.child();
    child.cancel(CancelReason::DeadlineExceeded);
    root.cancel(CancelReason::Shutdown);
    assert_eq!(child.reason(), Some(CancelReason::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn deadline_cancels_with_deadline_exceeded_exactly_when_it_passes() {
    let start = Instant::now();
    let scope = CancelScope::with_timeout(Duration::from_secs(3));
    assert_eq!(scope.deadline(), Some(start + Duration::from_secs(3)));

    advance(Duration::from_millis(2_999)).await;
    assert!(!scope.is_cancelled());
    assert_eq!(scope.remaining(), Some(Duration::from_millis(1)));

    advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(scope.reason(), Some(CancelReason::DeadlineExceeded));
    assert_eq!(scope.remaining(), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn a_child_inherits_the_earliest_deadline() {
    let start = Instant::now();
    let parent = CancelScope::with_timeout(Duration::from_secs(5));

    let later = parent.child_with_timeout(Duration::from_secs(10));
    assert_eq!(later.deadline(), Some(start + Duration::from_secs(5)));
    let plain = parent.child();
    assert_eq!(plain.deadline(), parent.deadline());

    let earlier = parent.child_with_timeout(Duration::from_secs(2));
    assert_eq!(earlier.deadline(), Some(start + Duration::from_secs(2)));
    let grandchild = earlier.child_with_timeout(Duration::from_secs(60));
    assert_eq!(grandchild.deadline(), Some(start + Duration::from_secs(2)));

    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(earlier.reason(), Some(CancelReason::DeadlineExceeded));
    assert_eq!(grandchild.reason(), Some(CancelReason::DeadlineExceeded));
    assert!(!parent.is_cancelled(), "a child's deadline is its own");

    let reason = later.cancelled().await;
    assert_eq!(reason, CancelReason::DeadlineExceeded);
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
    assert_eq!(parent.reason(), Some(CancelReason::DeadlineExceeded));
    assert_eq!(plain.reason(), Some(CancelReason::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_past_cancels_at_once() {
    let scope = CancelScope::with_deadline(Instant::now());
    assert_eq!(scope.reason(), Some(CancelReason::DeadlineExceeded));
    let child = CancelScope::new().child_with_timeout(Duration::ZERO);
    assert_eq!(child.reason(), Some(CancelReason::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn a_huge_timeout_does_not_overflow() {
    let scope = CancelScope::with_timeout(Duration::MAX);
    assert!(scope.remaining().unwrap() > Duration::from_secs(86_400 * 365));
    assert!(!scope.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn an_earlier_cancel_keeps_its_reason_past_the_deadline() {
    let scope = CancelScope::with_timeout(Duration::from_secs(1));
    scope.cancel(CancelReason::ClientDisconnected);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));
}

#[test]
fn a_linked_scope_is_cancelled_by_any_parent_with_its_reason() {
    for which in 0..3 {
        let parents: Vec<_> = (0..3).map(|_| CancelScope::new()).collect();
        let linked = CancelScope::linked(&parents);
        let child = linked.child();
        parents[which].cancel(CancelReason::custom(format!("parent {which}")));
        let expected = Some(CancelReason::custom(format!("parent {which}")));
        assert_eq!(linked.reason(), expected);
        assert_eq!(child.reason(), expected);
        for (i, parent) in parents.iter().enumerate() {
            assert_eq!(
                parent.is_cancelled(),
                i == which,
                "links never cancel upwards"
            );
        }
    }
}

#[test]
fn a_linked_scope_with_a_cancelled_parent_is_born_cancelled() {
    let live = CancelScope::new();
    let gone = CancelScope::new();
    gone.cancel(CancelReason::Shutdown);
    let linked = CancelScope::linked([&live, &gone]);
    assert_eq!(linked.reason(), Some(CancelReason::Shutdown));
    live.cancel(CancelReason::ClientDisconnected);
    assert_eq!(linked.reason(), Some(CancelReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn a_linked_scope_takes_the_earliest_deadline_of_its_parents() {
    let start = Instant::now();
    let slow = CancelScope::with_timeout(Duration::from_secs(30));
    let fast = CancelScope::with_timeout(Duration::from_secs(3));
    let none = CancelScope::new();
    let linked = CancelScope::linked([&slow, &none, &fast]);
    assert_eq!(linked.deadline(), Some(start + Duration::from_secs(3)));
    assert_eq!(linked.cancelled().await, CancelReason::DeadlineExceeded);
    assert_eq!(Instant::now(), start + Duration::from_secs(3));
    assert!(!slow.is_cancelled());
}

#[test]
fn a_linked_scope_with_no_parents_is_a_root() {
    let linked = CancelScope::linked([]);
    assert!(!linked.is_cancelled());
    assert_eq!(linked.deadline(), None);
}

#[tokio::test]
async fn cancelled_wakes_every_waiter_with_the_reason() {
    let scope = CancelScope::new();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let scope = scope.child();
            tokio::spawn(async move { scope.cancelled().await })
        })
        .collect();
    let owned = tokio::spawn(scope.clone().cancelled_owned());
    tokio::task::yield_now().await;
    scope.cancel(CancelReason::Shutdown);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), CancelReason::Shutdown);
    }
    assert_eq!(owned.await.unwrap(), CancelReason::Shutdown);
}

#[tokio::test]
async fn cancelled_is_cancel_safe() {
    let scope = CancelScope::new();
    // Poll once and drop: nothing is lost, a new wait still completes.
    let mut first = Box::pin(scope.cancelled());
    poll_fn(|cx| {
        assert!(first.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    drop(first);
    scope.cancel(CancelReason::Shutdown);
    assert_eq!(scope.cancelled().await, CancelReason::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn run_until_cancelled_gives_the_output_or_the_reason() {
    let scope = CancelScope::new();
    assert_eq!(scope.run_until_cancelled(async { 7 }).await, Ok(7));

    let deadline = scope.child_with_timeout(Duration::from_secs(1));
    let slow = tokio::time::sleep(Duration::from_secs(10));
    let err = deadline.run_until_cancelled(slow).await.unwrap_err();
    assert_eq!(err.reason(), &CancelReason::DeadlineExceeded);
    assert_eq!(err.to_string(), "cancelled: deadline exceeded");

    let owned = tokio::spawn(
        scope
            .child()
            .run_until_cancelled_owned(std::future::pending::<()>()),
    );
    tokio::task::yield_now().await;
    scope.cancel(CancelReason::Shutdown);
    let err = owned.await.unwrap().unwrap_err();
    assert_eq!(err.into_reason(), CancelReason::Shutdown);
}

#[tokio::test]
async fn run_until_cancelled_never_polls_work_of_a_cancelled_scope() {
    let polls = Arc::new(AtomicUsize::new(0));
    let scope = CancelScope::new();
    scope.cancel(CancelReason::ClientDisconnected);
    let counted = {
        let polls = polls.clone();
        poll_fn(move |_| {
            polls.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(())
        })
    };
    let result = scope.run_until_cancelled(counted).await;
    assert_eq!(
        result.unwrap_err().reason(),
        &CancelReason::ClientDisconnected
    );
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_token_follows_the_scope_one_way() {
    let scope = CancelScope::new();
    let token = scope.token();
    let same = scope.token();
    token.cancel();
    assert!(same.is_cancelled(), "every call hands out the same token");
    assert!(
        !scope.is_cancelled(),
        "cancelling the token does not cancel the scope"
    );

    let scope = CancelScope::new();
    let token = scope.token();
    let waiter = tokio::spawn(async move { token.cancelled().await });
    scope.cancel(CancelReason::Shutdown);
    waiter.await.unwrap();

    // Made after the cancel: already cancelled.
    assert!(scope.token().is_cancelled());
    assert!(scope.child().token().is_cancelled());
}

#[test]
fn cancel_on_drop_cancels_unless_disarmed() {
    let scope = CancelScope::new();
    {
        let guard = CancelOnDrop::new(scope.clone(), CancelReason::ClientDisconnected);
        assert!(!guard.scope().is_cancelled());
    }
    assert_eq!(scope.reason(), Some(CancelReason::ClientDisconnected));

    let scope = CancelScope::new();
    let guard = scope.clone().drop_guard(CancelReason::ClientDisconnected);
    let back = guard.disarm();
    drop(back);
    assert!(!scope.is_cancelled());
}

#[test]
fn reasons_have_stable_labels() {
    assert_eq!(
        CancelReason::ClientDisconnected.as_str(),
        "client_disconnected"
    );
    assert_eq!(CancelReason::DeadlineExceeded.as_str(), "deadline_exceeded");
    assert_eq!(CancelReason::Shutdown.as_str(), "shutdown");
    assert_eq!(CancelReason::from("mine").as_str(), "mine");
    assert_eq!(
        CancelReason::from(String::from("mine")),
        CancelReason::custom("mine")
    );
    assert_eq!(CancelReason::Shutdown.to_string(), "shutting down");
}

#[tokio::test(start_paused = true)]
async fn a_huge_child_timeout_does_not_overflow() {
    let start = Instant::now();
    let root = CancelScope::new();
    let child = root.child_with_timeout(Duration::MAX);
    assert_eq!(
        child.deadline(),
        Some(start + Duration::from_secs(86_400 * 365 * 30)),
        "saturates at the far future"
    );
    assert!(!child.is_cancelled());

    // Under a parent with a deadline, the parent's (earlier) deadline applies.
    let parent = CancelScope::with_timeout(Duration::from_secs(5));
    let child = parent.child_with_timeout(Duration::MAX);
    assert_eq!(child.deadline(), Some(start + Duration::from_secs(5)));
    assert_eq!(child.cancelled().await, CancelReason::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn a_huge_timeout_saturates_at_the_far_future() {
    let start = Instant::now();
    let scope = CancelScope::with_timeout(Duration::MAX);
    assert_eq!(
        scope.deadline(),
        Some(start + Duration::from_secs(86_400 * 365 * 30))
    );
    let longer = CancelScope::with_timeout(Duration::from_secs(86_400 * 365 * 100));
    assert_eq!(longer.deadline(), scope.deadline());
}
