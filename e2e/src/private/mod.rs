//! Private PostgreSQL clusters and RabbitMQ nodes for fault tests: started on free ports in
//! a temp dir, stopped (and their files removed) when dropped. A fault test can stop, start
//! and restart them without touching the machine's own PostgreSQL (5432) and RabbitMQ
//! (5672, node `rabbit@<host>`), which the rest of the suite shares.
//!
//! The calls block (they run `pg_ctl`, `rabbitmqctl`); from async code call them inside
//! `tokio::task::block_in_place` (multi-threaded runtime) or `spawn_blocking`.
//!
//! [`TestCerts`] makes a throwaway CA and a server certificate for 127.0.0.1 / localhost;
//! [`PrivatePostgres::start_tls`] and [`PrivateRabbit::start_tls`] serve TLS with it.
mod certs;
mod pgbouncer;
mod postgres;
mod rabbit;

pub use certs::TestCerts;
pub use pgbouncer::PrivatePgBouncer;
pub use postgres::PrivatePostgres;
pub use rabbit::PrivateRabbit;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn token() -> String {
    thygon_testkit::unique_token()
}

pub(super) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run a command to its end with a deadline; `Err` carries what it printed.
pub(super) fn run(mut cmd: Command, within: Duration, log: &Path) -> Result<(), String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{cmd:?}: {status}\n{}", tail(log, 20))),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?}: no answer within {within:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
}
