//! A redis-server process for one test (or bench) on a free loopback port, stopped and
//! restarted at will, killed on drop.
//!
//! The binary is `$BRIGADE_REDIS_SERVER`, or `redis-server` on `PATH`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    #[allow(
        dead_code,
        reason = "the bench needs the port for redis-benchmark; the tests do not"
    )]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (no clean shutdown: as a crash or a network cut looks).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, and waits until it answers `PING` (a real
    /// server takes real time to start: bounded at 10 s).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("BRIGADE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {bin:?} ({e}): install redis-server (`apt-get install -y \
                     redis-server`), set BRIGADE_REDIS_SERVER to its path, or run \
                     `.ci/redis-tests`"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{bin:?} exited with {status} on port {}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Holds every client of the server paused, `times` pauses of `each` back to back, from a
    /// thread of its own (a flood on the caller's runtime cannot delay it); returns once the
    /// first pause is in effect (its reply is in), with the thread to join.
    ///
    /// The next pause is asked for halfway through the current one: the server queues it
    /// behind the clients it paused before it, so each pause ends by answering what they sent,
    /// and the next begins at once, with no gap in which a whole flood could go through. So a
    /// command waits at most about two pauses (plus the server's tick, up to 100 ms each).
    #[allow(
        dead_code,
        reason = "the load tests hold the server paused; the other tests and the bench do not"
    )]
    pub(crate) fn hold(&self, each: Duration, times: u32) -> std::thread::JoinHandle<()> {
        let port = self.port;
        let (started, paused) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let mut conn =
                TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("the server to hold");
            let command = format!("CLIENT PAUSE {} ALL\r\n", each.as_millis());
            for _ in 0..times {
                let mut reply = [0u8; 5];
                conn.write_all(command.as_bytes()).unwrap();
                conn.read_exact(&mut reply).unwrap();
                assert_eq!(&reply, b"+OK\r\n", "CLIENT PAUSE");
                let _ = started.send(());
                std::thread::sleep(each / 2);
            }
        });
        paused.recv().expect("the first pause");
        holder
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
