//! The kitchen binary as real processes, for the tests that kill one with SIGKILL.
//!
//! The binary is `target/<profile>/examples/kitchen`, which `cargo test --workspace` builds
//! before it runs the tests; it is found next to this test binary (`target/<profile>/deps`).
//! Cargo is never run from here: it holds the build lock while the tests run.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

/// The kitchen binary of this build profile; fails the test, saying how to build it, if absent.
pub(crate) fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("kitchen{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "no kitchen binary at {}: run `cargo build --example kitchen` (with `--features \
         postgres` for the Postgres tests) first; `cargo test --workspace` builds it",
        binary.display()
    );
    binary
}

/// A kitchen process, killed (SIGKILL) when dropped if still running.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Process {
    /// Starts the kitchen on a free loopback port with these flags, its log appended to
    /// `log`, and waits until it answers `/healthz` (20 s at most).
    pub(crate) async fn start(flags: &[&str], log: &Path) -> Self {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(binary())
            .arg("--addr")
            .arg(addr.to_string())
            .args(flags)
            .env_remove("KITCHEN_API_KEYS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut process = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the kitchen exited at start ({status}); its log:\n{log}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && super::get(addr, "/healthz").await.status() == StatusCode::OK
            {
                return process;
            }
            assert!(
                Instant::now() < deadline,
                "the kitchen did not start in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    #[cfg_attr(
        not(feature = "postgres"),
        allow(dead_code, reason = "the Postgres replica tests use it")
    )]
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no shutdown, no release: as a crash) and reaps it.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
