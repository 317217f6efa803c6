//! Model checks of the cancel tree: run with
//! `RUSTFLAGS="--cfg loom" cargo test -p brigade-cancel --release --lib loom`.

use loom::thread;

use super::CancelScope;
use crate::CancelReason;

#[test]
fn loom_a_cancel_racing_child_creation_is_never_lost() {
    loom::model(|| {
        let parent = CancelScope::new();
        let canceller = {
            let parent = parent.clone();
            thread::spawn(move || parent.cancel(CancelReason::Shutdown))
        };
        let child = parent.child();
        let grandchild = child.child();
        assert!(canceller.join().unwrap());
        assert_eq!(child.reason(), Some(CancelReason::Shutdown));
        assert_eq!(grandchild.reason(), Some(CancelReason::Shutdown));
    });
}

#[test]
fn loom_the_first_reason_wins_and_children_agree() {
    loom::model(|| {
        let scope = CancelScope::new();
        let child = scope.child();
        let first = {
            let scope = scope.clone();
            thread::spawn(move || scope.cancel(CancelReason::Shutdown))
        };
        let second = scope.cancel(CancelReason::ClientDisconnected);
        let first = first.join().unwrap();
        assert!(first ^ second, "exactly one cancel wins");
        let winner = if first {
            CancelReason::Shutdown
        } else {
            CancelReason::ClientDisconnected
        };
        assert_eq!(scope.reason(), Some(winner.clone()));
        assert_eq!(child.reason(), Some(winner));
    });
}

#[test]
fn loom_a_child_cancelled_while_its_parent_is_keeps_one_reason() {
    loom::model(|| {
        let parent = CancelScope::new();
        let child = parent.child();
        let from_parent = {
            let parent = parent.clone();
            thread::spawn(move || parent.cancel(CancelReason::Shutdown))
        };
        let own = child.cancel(CancelReason::DeadlineExceeded);
        from_parent.join().unwrap();
        let seen = child.reason().unwrap();
        assert_eq!(
            own,
            seen == CancelReason::DeadlineExceeded,
            "the child's own cancel won exactly when its reason is the child's"
        );
        assert_eq!(child.reason(), Some(seen), "stable once read");
        assert_eq!(parent.reason(), Some(CancelReason::Shutdown));
    });
}

#[test]
fn loom_a_child_dropped_while_its_parent_cancels_leaves_no_residue() {
    loom::model(|| {
        let parent = CancelScope::new();
        let child = parent.child();
        let other = CancelScope::new();
        let linked = CancelScope::linked([&other, &parent]);
        let dropper = thread::spawn(move || {
            drop(child);
            drop(linked);
        });
        parent.cancel(CancelReason::Shutdown);
        dropper.join().unwrap();
        assert_eq!(parent.node.registered_children(), 0);
        assert_eq!(other.node.registered_children(), 0);
        assert!(!other.is_cancelled());
    });
}

#[test]
fn loom_linked_parents_cancelling_together_give_one_reason() {
    loom::model(|| {
        let a = CancelScope::new();
        let b = CancelScope::new();
        let linked = CancelScope::linked([&a, &b]);
        let from_a = {
            let a = a.clone();
            thread::spawn(move || a.cancel(CancelReason::Shutdown))
        };
        b.cancel(CancelReason::ClientDisconnected);
        from_a.join().unwrap();
        let reason = linked.reason().unwrap();
        assert!(matches!(
            reason,
            CancelReason::Shutdown | CancelReason::ClientDisconnected
        ));
        assert_eq!(linked.reason(), Some(reason));
    });
}

#[test]
fn loom_a_token_made_while_cancelling_is_cancelled() {
    loom::model(|| {
        let scope = CancelScope::new();
        let canceller = {
            let scope = scope.clone();
            thread::spawn(move || scope.cancel(CancelReason::Shutdown))
        };
        let token = scope.token();
        canceller.join().unwrap();
        assert!(token.is_cancelled());
    });
}

#[test]
fn loom_a_waiter_never_misses_the_cancel() {
    loom::model(|| {
        let scope = CancelScope::new();
        let child = scope.child();
        let canceller = {
            let scope = scope.clone();
            thread::spawn(move || scope.cancel(CancelReason::Shutdown))
        };
        let reason = loom::future::block_on(child.cancelled());
        assert_eq!(reason, CancelReason::Shutdown);
        canceller.join().unwrap();
    });
}

/// `run_until_cancelled` checks the flag, polls the future, and registers only when it is
/// pending: a cancel in any gap between those steps still ends the wait.
#[test]
fn loom_run_until_cancelled_never_misses_the_cancel() {
    loom::model(|| {
        let scope = CancelScope::new();
        let canceller = {
            let scope = scope.clone();
            thread::spawn(move || scope.cancel(CancelReason::ClientDisconnected))
        };
        let outcome =
            loom::future::block_on(scope.run_until_cancelled(std::future::pending::<()>()));
        let cancelled = outcome.expect_err("a pending future ends only by the cancel");
        assert_eq!(cancelled.reason(), &CancelReason::ClientDisconnected);
        canceller.join().unwrap();
    });
}

/// A future that is ready at once wins over a cancel that races it, or loses to one that
/// came first; it never hangs and never sees both.
#[test]
fn loom_a_ready_future_races_a_cancel_cleanly() {
    loom::model(|| {
        let scope = CancelScope::new();
        let canceller = {
            let scope = scope.clone();
            thread::spawn(move || scope.cancel(CancelReason::Shutdown))
        };
        let outcome = loom::future::block_on(scope.run_until_cancelled(async { 7 }));
        match outcome {
            Ok(value) => assert_eq!(value, 7),
            Err(cancelled) => assert_eq!(cancelled.reason(), &CancelReason::Shutdown),
        }
        canceller.join().unwrap();
        assert!(scope.is_cancelled());
    });
}
