//! A whole Thygon stack for end-to-end tests, started from the real binaries: the example
//! agent, workflow-service, runtime-service, executor workers and the nginx gateway, on free
//! ports, with a fresh database and private queue names. Everything stops when the
//! [`Stack`] is dropped.
//!
//! The binaries must be built first (`make test` runs `cargo build --workspace --bins`).
//!
//! Fault tests start a stack with [`StackOptions`] on a private PostgreSQL cluster and
//! RabbitMQ node ([`private`]) and stop, kill and start single workers.
mod calls;
pub mod model;
pub mod private;
mod processes;
pub mod standin;
mod start;

use std::path::{Path, PathBuf};
use std::process::Child;
use thygon_testkit::TestDb;

/// How to start a stack. `Default` is one worker on the machine's PostgreSQL and RabbitMQ
/// (`DATABASE_URL`, `AMQP_URL` or the local defaults).
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub workers: usize,
    /// How many runtime-service processes (at least 1), all on the stack's database and
    /// queues: `runtime-service` (behind the gateway), then `runtime-service-1`, ... on ports
    /// of their own ([`Stack::runtime_url`]).
    pub runtimes: usize,
    /// `WORKER_CONCURRENCY` of every worker.
    pub worker_concurrency: usize,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
    /// An existing, migrated database to use instead of a fresh test database.
    pub database_url: Option<String>,
    /// The broker to use instead of `AMQP_URL`.
    pub amqp_url: Option<String>,
    /// Run the binaries of `target/release` instead of `target/debug` (the benchmark does).
    pub release: bool,
    /// Give each Thygon process (services and workers) a `METRICS_ADDR` of its own, on a
    /// free port ([`Stack::env_of`] tells which).
    pub metrics_addr: bool,
    /// More entries for the stack's agents file (TOML, appended after the example agent's
    /// three): model stand-ins of a test, say. `${SUPPORT_AGENT_ADDR}` in it becomes the
    /// address (`127.0.0.1:<port>`) of the stack's example agent.
    pub agents: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            workers: 1,
            runtimes: 1,
            worker_concurrency: 4,
            env: Vec::new(),
            database_url: None,
            amqp_url: None,
            release: false,
            metrics_addr: false,
            agents: String::new(),
        }
    }
}

/// How to start one process again after a restart.
#[derive(Clone)]
struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready: Option<String>,
}

/// The operator key of every stack.
pub const ADMIN_KEY: &str = "thygon-e2e-admin-key-0123456789abcdef";
/// The org every stack makes a key for: the seed document's, so its examples run verbatim.
pub const ORG: &str = "org_acme_123";
/// A secret in an agent's headers (agents.toml), which no log may show.
pub const AGENT_SECRET: &str = "agent-secret-e2e-7f3a9c";

pub struct Stack {
    pub base_url: String,
    /// Sends [`Stack::key`] with every request.
    pub client: reqwest::Client,
    /// An API key of [`ORG`], made through the gateway's `/admin` routes at start.
    pub key: String,
    /// Sends no key unless told ([`Stack::call_as`]).
    anon: reqwest::Client,
    pub dir: PathBuf,
    pub prefix: String,
    children: Vec<(String, Child)>,
    specs: Vec<Spec>,
    /// The fresh test database, unless [`StackOptions::database_url`] named one.
    pub db: Option<TestDb>,
    pub database_url: String,
    pub amqp_url: String,
    /// [`Stack::amqp_url`] with the `AMQP_TLS_CA_FILE` of the stack's environment.
    pub broker: shared_models::queue::Broker,
    /// Environment of every worker (without its own address and id).
    worker_env: Vec<(String, String)>,
    /// Whether the binaries are the release builds.
    release: bool,
    /// Whether every Thygon process gets a `METRICS_ADDR` ([`StackOptions::metrics_addr`]).
    metrics_addr: bool,
}

/// A port no other process of this test binary has been given, free when probed.
///
/// `bind("127.0.0.1:0")` alone is not enough: the kernel picks such ports from the same
/// ephemeral range it takes outgoing connections' source ports from, and forgets one as soon
/// as the probe closes, so two stacks starting at once could both be handed it (CI saw a
/// test's gateway forward `POST /admin/orgs` to another stack's worker). Ports here come from
/// below the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never
/// picks one by itself, in turn from a per-process counter (never twice in one binary) that
/// starts at an offset from the pid (so two binaries at once start far apart), and are probed
/// before use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = port_pool();
    let size = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % size;
    for _ in 0..size {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % size) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range when that leaves
/// room (10000 up to its start), else above it.
fn port_pool() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let bounds: Vec<u16> = range
        .iter()
        .flat_map(|r| r.split_whitespace())
        .filter_map(|n| n.parse().ok())
        .collect();
    match bounds[..] {
        [first, _] if first >= 12_000 => (10_000, first),
        [_, last] if last <= 60_000 => (last + 1, 65_535),
        _ => (20_000, 32_768),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The path of one of the workspace's binaries (`target/debug` or, with `release`,
/// `target/release`; `THYGON_BIN_DIR`, when set and not empty, names the folder instead: the
/// bench runs a saved build of another commit that way).
pub fn binary(name: &str, release: bool) -> PathBuf {
    if let Some(dir) = std::env::var_os("THYGON_BIN_DIR").filter(|d| !d.is_empty()) {
        let path = PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "{} is missing (THYGON_BIN_DIR)",
            path.display()
        );
        return path;
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)", path.display());
    path
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "nginx is not installed (`make test` installs it through scripts/ensure-services.sh)",
        )
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_all();
        thygon_testkit::delete_queues_blocking(&self.broker, &self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
