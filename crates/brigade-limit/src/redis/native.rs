//! The native `GCRA` command: `GCRA key max-burst tokens-per-period period [TOKENS count]`.
//!
//! Its reply is five integers: limited (0 or 1), the most tokens at once (`max-burst + 1`),
//! the tokens available now, the seconds until a retry may succeed (`-1` when admitted, or
//! when the count can never be admitted), and the seconds until the full burst is back;
//! both times are whole seconds rounded up. Its arithmetic is in microseconds.
//!
//! Mapping a [`Quota`](crate::Quota) onto it: the burst `b` is `max-burst + 1` (the
//! redis-cell convention: `max-burst` counts the cells *beyond* the first), and the period
//! and tokens per period are chosen so that `period / tokens-per-period` is the quota's
//! interval, with a period of at least one second.
//!
//! Turning the reply back into the in-process limiter's numbers: `limit` and `remaining` are
//! exact. The reset and retry times come back in whole seconds, so they are rebuilt from
//! `remaining`, which pins the key's debt to within one interval: `reset` is
//! `(b - remaining) × interval` and a rejection's `retry_after` is
//! `(cells - remaining) × interval`, each capped by the reply's rounded-up seconds. Both are
//! upper bounds, never early by more than nothing and late by less than one interval.

use redis::{Cmd, Value};

use super::error::Failure;
use super::script::KeyArg;
use crate::gcra::Gcra;
use crate::rate::Snapshot;

/// One limit's constant arguments, formatted once.
#[derive(Clone, Debug)]
pub(crate) struct Args {
    max_burst: u32,
    per_period: u64,
    period: String,
}

impl Args {
    pub(crate) fn new(g: &Gcra) -> Self {
        const SECOND: u64 = 1_000_000_000;
        // A period of at least one second: `per_period` intervals of `t`.
        let per_period = if g.t >= SECOND {
            1
        } else {
            SECOND.div_ceil(g.t)
        };
        let period = per_period.saturating_mul(g.t);
        Self {
            max_burst: g.burst - 1,
            per_period,
            period: format!("{}.{:09}", period / SECOND, period % SECOND),
        }
    }
}

/// `GCRA key max-burst tokens-per-period period TOKENS tokens`.
pub(crate) fn command<K: std::fmt::Display>(args: &Args, key: KeyArg<'_, K>, tokens: u64) -> Cmd {
    let mut cmd = Cmd::with_capacity(7, 96 + key.prefix.len());
    cmd.arg("GCRA")
        .arg(key)
        .arg(args.max_burst)
        .arg(args.per_period)
        .arg(args.period.as_str())
        .arg("TOKENS")
        .arg(tokens);
    cmd
}

/// The command's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) limited: bool,
    pub(crate) remaining: i64,
    pub(crate) retry_after_secs: i64,
    pub(crate) reset_after_secs: i64,
}

pub(crate) fn reply(v: &Value) -> Result<Reply, Failure> {
    let Value::Array(items) = v else {
        return Err(Failure::Reply("GCRA reply is not an array"));
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        _ => Err(Failure::Reply("GCRA reply is not five integers")),
    };
    if items.len() != 5 {
        return Err(Failure::Reply("GCRA reply is not five integers"));
    }
    Ok(Reply {
        limited: int(0)? != 0,
        remaining: int(2)?,
        retry_after_secs: int(3)?,
        reset_after_secs: int(4)?,
    })
}

fn secs(n: i64) -> Option<u64> {
    u64::try_from(n)
        .ok()
        .map(|s| s.saturating_mul(1_000_000_000))
}

impl Reply {
    fn remaining(&self, g: &Gcra) -> u32 {
        u32::try_from(self.remaining.max(0))
            .unwrap_or(u32::MAX)
            .min(g.burst)
    }

    /// The decision's state, as a snapshot at time 0 whose TAT is the key's debt: the same
    /// `remaining`, and a `reset` at most one interval late.
    pub(crate) fn snapshot(&self, name: &'static str, g: Gcra) -> Snapshot {
        let mut debt = g.t.saturating_mul(u64::from(g.burst - self.remaining(&g)));
        if let Some(reset) = secs(self.reset_after_secs) {
            debt = debt.min(reset);
        }
        let mut snapshot = Snapshot::new(0);
        snapshot.push(name, g, debt);
        snapshot
    }

    /// A rejection's wait for `cells`: at most one interval late, never early.
    pub(crate) fn retry_after(&self, g: &Gcra, cells: u32) -> u64 {
        let short = u64::from(cells.saturating_sub(self.remaining(g)).max(1));
        let mut wait = g.t.saturating_mul(short);
        if let Some(retry) = secs(self.retry_after_secs).filter(|&r| r > 0) {
            wait = wait.min(retry);
        }
        wait.max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::Quota;

    fn gcra(q: Quota) -> Gcra {
        Gcra::new(q).unwrap()
    }

    #[test]
    fn the_burst_is_max_burst_plus_one_and_the_period_is_at_least_a_second() {
        let a = Args::new(&gcra(Quota::per_second(NonZeroU32::new(10).unwrap())));
        assert_eq!(
            (a.max_burst, a.per_period, a.period.as_str()),
            (9, 10, "1.000000000")
        );
        let a = Args::new(&gcra(Quota::per_minute(NonZeroU32::new(30).unwrap())));
        assert_eq!(
            (a.max_burst, a.per_period, a.period.as_str()),
            (29, 1, "2.000000000")
        );
        let a = Args::new(&gcra(
            Quota::with_period(Duration::from_millis(300)).unwrap(),
        ));
        assert_eq!(
            (a.max_burst, a.per_period, a.period.as_str()),
            (0, 4, "1.200000000")
        );
    }

    #[test]
    fn remaining_is_exact_and_reset_is_an_upper_bound_within_one_interval() {
        // 10 per second, 3 cells used 40 ms ago: the debt is 260 ms, 7 remain.
        let g = gcra(Quota::per_second(NonZeroU32::new(10).unwrap()));
        let r = Reply {
            limited: false,
            remaining: 7,
            retry_after_secs: -1,
            reset_after_secs: 1,
        };
        let status = crate::Admitted {
            snapshot: r.snapshot("default", g),
            shadow: None,
        }
        .tightest();
        assert_eq!(status.remaining(), 7);
        assert_eq!(status.limit(), 10);
        assert_eq!(status.reset(), Duration::from_millis(300));
        // Rejected for 9 cells with 7 left: 2 short, so 200 ms at most.
        assert_eq!(r.retry_after(&g, 9), 200_000_000);
    }

    #[test]
    fn odd_replies_are_errors_or_clamped_never_panics() {
        assert!(reply(&Value::Int(3)).is_err());
        assert!(reply(&Value::Array(vec![Value::Int(0); 4])).is_err());
        let g = gcra(Quota::per_second(NonZeroU32::new(2).unwrap()));
        let r = Reply {
            limited: true,
            remaining: 99,
            retry_after_secs: i64::MIN,
            reset_after_secs: i64::MAX,
        };
        assert!(r.retry_after(&g, 1) >= 1);
        let _ = r.snapshot("default", g);
    }
}
