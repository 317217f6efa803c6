//! The Lua script (`gcra.lua`): its commands and its replies.
//!
//! A command is built straight into one [`Cmd`] sized up front: the keys are formatted into
//! its buffer (no intermediate `String`), the numbers are written by redis-rs without
//! allocating. `EVALSHA` sends the script's hash; a server that lost the script (restarted,
//! `SCRIPT FLUSH`) answers `NOSCRIPT`, and the call loads it and sends again, within the same
//! call timeout.

use std::fmt::Display;
use std::io::Write as _;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind, RedisWrite, Script, ServerErrorKind, ToRedisArgs, Value};

use super::error::Failure;
use crate::MAX_LIMITS;
use crate::gcra::Gcra;

/// The script's source.
pub(crate) const SOURCE: &str = include_str!("gcra.lua");

/// One limit's Redis key: `{prefix}{{{key}}}:{limit}`, with `:gcra` after it for the native
/// command's keys (a different value format). The key sits in a hash tag so that every limit
/// of one key lands on one cluster slot, as a multi-key script needs.
pub(crate) struct KeyArg<'a, K: ?Sized> {
    pub(crate) prefix: &'a str,
    pub(crate) key: &'a K,
    pub(crate) limit: &'a str,
    pub(crate) native: bool,
}

impl<K: Display + ?Sized> ToRedisArgs for KeyArg<'_, K> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut w = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = write!(w, "{}{{{}}}:{}", self.prefix, self.key, self.limit);
        if self.native {
            let _ = w.write_all(b":gcra");
        }
    }
}

/// The limits' constants, as the script needs them.
pub(crate) struct Limits<'a> {
    pub(crate) len: usize,
    pub(crate) names: &'a [&'static str; MAX_LIMITS],
    pub(crate) gcra: &'a [Gcra; MAX_LIMITS],
}

/// One operation of a script call, on every limit of one key.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operation {
    /// Decide and charge `cells[i]` cells on limit `i`.
    Acquire([u32; MAX_LIMITS]),
    /// Settle a reservation.
    Settle([Adjust; MAX_LIMITS]),
}

/// What a settle does to one limit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Adjust {
    #[default]
    None,
    /// Charge this many nanoseconds more.
    Charge(u64),
    /// Refund this many nanoseconds, of a charge that left the TAT at `until`.
    Refund { amount: u64, until: u64 },
}

impl Operation {
    fn args(&self, n: usize) -> usize {
        match self {
            Self::Acquire(_) => 1 + 2 * n,
            Self::Settle(_) => 1 + 3 * n,
        }
    }

    fn write(&self, cmd: &mut Cmd, limits: &Limits<'_>) {
        match self {
            Self::Acquire(cells) => {
                cmd.arg("a");
                for (g, &n) in limits.gcra[..limits.len].iter().zip(cells) {
                    if n == 0 {
                        cmd.arg("").arg(0u8);
                    } else {
                        // `n <= burst` (checked by the caller) and `t × burst` fits (checked
                        // by `Gcra::new`).
                        cmd.arg(g.t * u64::from(g.burst - n))
                            .arg(g.t * u64::from(n));
                    }
                }
            }
            Self::Settle(adjust) => {
                cmd.arg("s");
                for a in &adjust[..limits.len] {
                    match *a {
                        Adjust::None => cmd.arg("").arg(0u8).arg(0u8),
                        Adjust::Charge(ns) => cmd.arg("+").arg(ns).arg(0u8),
                        Adjust::Refund { amount, until } => cmd.arg("-").arg(amount).arg(until),
                    };
                }
            }
        }
    }
}

/// `EVALSHA` of a batch of operations, each on the key beside it, done in order. `ops` is
/// walked twice: the keys go before every other argument.
pub(crate) fn command<'a, I>(
    sha: &str,
    limits: &Limits<'_>,
    prefix: &str,
    ops: I,
    clock: Option<u64>,
) -> Cmd
where
    I: Iterator<Item = (&'a dyn Display, &'a Operation)> + Clone,
{
    let n = limits.len;
    let (count, args) = ops
        .clone()
        .fold((0, 0), |(c, a), (_, op)| (c + 1, a + op.args(n)));
    let key_bytes = prefix.len() + 48;
    let mut cmd = Cmd::with_capacity(5 + count * n + args, 64 + count * n * (key_bytes + 48));
    cmd.arg("EVALSHA").arg(sha).arg(count * n);
    for (key, _) in ops.clone() {
        for name in &limits.names[..n] {
            cmd.arg(KeyArg {
                prefix,
                key,
                limit: name,
                native: false,
            });
        }
    }
    match clock {
        Some(ns) => cmd.arg(ns),
        None => cmd.arg(""),
    };
    cmd.arg(n);
    for (_, op) in ops {
        op.write(&mut cmd, limits);
    }
    cmd
}

/// Sends a script command; on `NOSCRIPT`, loads the script and sends it again.
pub(crate) async fn run(
    conn: &mut MultiplexedConnection,
    script: &Script,
    cmd: &Cmd,
) -> Result<Value, Failure> {
    match cmd.query_async(conn).await {
        Err(e) if is_noscript(&e) => {
            script.load_async(conn).await?;
            Ok(cmd.query_async(conn).await?)
        }
        other => Ok(other?),
    }
}

/// Whether Redis answered `NOSCRIPT`: it does not have the script (restarted, flushed).
pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// The replies of a batch of `count` operations, in order.
pub(crate) fn replies(reply: Value, count: usize) -> Result<Vec<Value>, Failure> {
    match reply {
        Value::Array(items) if items.len() == count => Ok(items),
        Value::Array(_) => Err(Failure::Reply("script reply has the wrong length")),
        _ => Err(Failure::Reply("script reply is not an array")),
    }
}

/// A settle's reply.
pub(crate) fn settled(reply: &Value) -> Result<(), Failure> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(-1) => Err(Failure::NotATime),
        _ => Err(Failure::Reply("settle reply is not 1")),
    }
}

/// An acquire's reply: admitted or not, the server's time, and each limit's TAT after the
/// decision (nanoseconds since the Unix epoch).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decided {
    pub(crate) admitted: bool,
    pub(crate) now: u64,
    pub(crate) tats: [u64; MAX_LIMITS],
}

pub(crate) fn decided(reply: &Value, len: usize) -> Result<Decided, Failure> {
    if matches!(reply, Value::Int(-1)) {
        return Err(Failure::NotATime);
    }
    let Value::Array(items) = reply else {
        return Err(Failure::Reply("script reply is not an array"));
    };
    if items.len() != 2 + len {
        return Err(Failure::Reply("script reply has the wrong length"));
    }
    let admitted = match items[0] {
        Value::Int(1) => true,
        Value::Int(0) => false,
        _ => return Err(Failure::Reply("script reply does not start with 0 or 1")),
    };
    let mut tats = [0; MAX_LIMITS];
    for (tat, item) in tats.iter_mut().zip(&items[2..]) {
        *tat = decimal(item)?;
    }
    Ok(Decided {
        admitted,
        now: decimal(&items[1])?,
        tats,
    })
}

fn decimal(v: &Value) -> Result<u64, Failure> {
    let parsed = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    parsed.ok_or(Failure::Reply(
        "script reply holds a time that is not a number",
    ))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::Quota;

    fn limits() -> ([&'static str; MAX_LIMITS], [Gcra; MAX_LIMITS]) {
        let g = Gcra::new(Quota::per_second(NonZeroU32::new(5).unwrap())).unwrap();
        (["requests", "tokens", "", ""], [g; MAX_LIMITS])
    }

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn an_acquire_sends_slack_and_charge_per_limit_and_skips_uncharged_limits() {
        let (names, gcra) = limits();
        let limits = Limits {
            len: 2,
            names: &names,
            gcra: &gcra,
        };
        let op = Operation::Acquire([1, 0, 0, 0]);
        let ops = [(&"alice" as &dyn Display, &op)];
        let cmd = command(
            "sha",
            &limits,
            "rl:",
            ops.iter().copied(),
            Some(1_700_000_000_000_000_000),
        );
        assert_eq!(
            args(&cmd),
            [
                "EVALSHA",
                "sha",
                "2",
                "rl:{alice}:requests",
                "rl:{alice}:tokens",
                "1700000000000000000",
                "2",
                "a",
                "800000000",
                "200000000",
                "",
                "0"
            ]
        );
    }

    #[test]
    fn a_batch_puts_every_key_first_then_the_clock_then_each_operation() {
        let (names, gcra) = limits();
        let limits = Limits {
            len: 2,
            names: &names,
            gcra: &gcra,
        };
        let adjust = [
            Adjust::None,
            Adjust::Refund {
                amount: 5,
                until: 9,
            },
            Adjust::None,
            Adjust::None,
        ];
        let settle = Operation::Settle(adjust);
        let acquire = Operation::Acquire([1, 2, 0, 0]);
        let ops = [
            (&7u64 as &dyn Display, &settle),
            (&"bob" as &dyn Display, &acquire),
        ];
        let cmd = command("sha", &limits, "rl:", ops.iter().copied(), None);
        assert_eq!(
            args(&cmd)[2..],
            [
                "4",
                "rl:{7}:requests",
                "rl:{7}:tokens",
                "rl:{bob}:requests",
                "rl:{bob}:tokens",
                "",
                "2",
                "s",
                "",
                "0",
                "0",
                "-",
                "5",
                "9",
                "a",
                "800000000",
                "200000000",
                "600000000",
                "400000000"
            ]
        );
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_an_error_not_a_panic() {
        assert!(replies(Value::Nil, 1).is_err());
        assert!(replies(Value::Array(vec![Value::Int(1)]), 2).is_err());
        assert!(settled(&Value::Int(-1)).is_err());
        assert!(settled(&Value::Nil).is_err());
        assert!(settled(&Value::Int(1)).is_ok());
        assert!(decided(&Value::Int(-1), 1).is_err());
        assert!(decided(&Value::Nil, 1).is_err());
        assert!(decided(&Value::Array(vec![Value::Int(1)]), 1).is_err());
        let bad = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"12".to_vec()),
            Value::BulkString(b"x".to_vec()),
        ]);
        assert!(decided(&bad, 1).is_err());
        let good = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"12".to_vec()),
            Value::BulkString(b"34".to_vec()),
        ]);
        assert_eq!(
            decided(&good, 1).unwrap(),
            Decided {
                admitted: false,
                now: 12,
                tats: [34, 0, 0, 0]
            }
        );
    }
}
