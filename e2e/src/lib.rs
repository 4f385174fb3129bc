//! A whole Thygon stack for end-to-end tests, started from the real binaries: the example
//! agent, workflow-service, runtime-service, executor workers and the nginx gateway, on free
//! ports, with a fresh database and private queue names. Everything stops when the
//! [`Stack`] is dropped.
//!
//! The binaries must be built first (`make test` runs `cargo build --workspace --bins`).
//!
//! Fault tests start a stack with [`StackOptions`] on a private PostgreSQL cluster and
//! RabbitMQ node ([`private`]) and stop, kill and start single workers.

pub mod private;

use serde_json::Value;
use shared_models::testing::{unique_queue_prefix, TestDb};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start a stack. `Default` is one worker on the machine's PostgreSQL and RabbitMQ
/// (`DATABASE_URL`, `AMQP_URL` or the local defaults).
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub workers: usize,
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
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            workers: 1,
            worker_concurrency: 4,
            env: Vec::new(),
            database_url: None,
            amqp_url: None,
            release: false,
            metrics_addr: false,
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
/// `target/release`).
pub fn binary(name: &str, release: bool) -> PathBuf {
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

impl Stack {
    /// Start everything and wait until every part is ready.
    pub async fn start(workers: usize) -> Stack {
        Self::start_with(workers, &[]).await
    }

    /// Like [`Stack::start`], with extra environment for every process.
    pub async fn start_with(workers: usize, extra_env: &[(&str, &str)]) -> Stack {
        Self::start_opts(StackOptions {
            workers,
            env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..StackOptions::default()
        })
        .await
    }

    /// Start a stack as `options` say and wait until every part is ready.
    pub async fn start_opts(options: StackOptions) -> Stack {
        let (db, database_url) = match &options.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let db = TestDb::create();
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let amqp_url = options.amqp_url.clone().unwrap_or_else(|| {
            shared_models::config::env_or("AMQP_URL", shared_models::config::DEFAULT_AMQP_URL)
        });
        let prefix = unique_queue_prefix();
        let dir = std::env::temp_dir().join(format!(
            "thygon-e2e-{}",
            shared_models::testing::unique_token()
        ));
        std::fs::create_dir_all(dir.join("nginx")).expect("temp dir");

        let agent_port = free_port();
        let agents_file = dir.join("agents.toml");
        std::fs::write(
            &agents_file,
            format!(
                "[agents.support-classifier]\nurl = \"http://127.0.0.1:{agent_port}/classify\"\n\
                 headers = {{ Authorization = \"Bearer {AGENT_SECRET}\" }}\n\
                 [agents.reply-drafter]\nurl = \"http://127.0.0.1:{agent_port}/draft-reply\"\n\
                 [agents.ticket-router]\nurl = \"http://127.0.0.1:{agent_port}/route\"\n"
            ),
        )
        .expect("agents file");
        let mut common: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.clone()),
            ("AMQP_URL".into(), amqp_url.clone()),
            ("QUEUE_PREFIX".into(), prefix.clone()),
            ("AGENTS_FILE".into(), agents_file.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
            ("ADMIN_API_KEY".into(), ADMIN_KEY.into()),
            // The fault tests trigger in bursts; the limit has tests of its own.
            ("RATE_LIMIT_PER_SECOND".into(), "0".into()),
        ];
        common.extend(options.env.iter().cloned());
        let ca_file = common
            .iter()
            .rev()
            .find(|(k, _)| k == "AMQP_TLS_CA_FILE")
            .map(|(_, v)| v.as_str());
        let broker = shared_models::queue::Broker::from_settings(&amqp_url, ca_file)
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = |name: &str, bin: &str, env: Vec<(&str, String)>, ready: String| Spec {
            name: name.to_string(),
            program: binary(bin, options.release),
            args: Vec::new(),
            env: common
                .iter()
                .cloned()
                .chain(env.into_iter().map(|(k, v)| (k.to_string(), v)))
                .chain(own_metrics_addr(
                    options.metrics_addr && bin != "support-agent",
                ))
                .collect(),
            ready: Some(ready),
        };
        let mut specs = Vec::new();
        let agent_addr = format!("127.0.0.1:{agent_port}");
        specs.push(spec(
            "support-agent",
            "support-agent",
            vec![("SUPPORT_AGENT_ADDR", agent_addr.clone())],
            format!("http://{agent_addr}/healthz"),
        ));
        let (wf, rt) = (free_port(), free_port());
        specs.push(spec(
            "workflow-service",
            "workflow-service",
            vec![
                ("HTTP_ADDR", format!("127.0.0.1:{wf}")),
                // Where `/openapi.json` fetches runtime-service's part from.
                ("RUNTIME_SERVICE_URL", format!("http://127.0.0.1:{rt}")),
            ],
            format!("http://127.0.0.1:{wf}/readyz"),
        ));
        specs.push(spec(
            "runtime-service",
            "runtime-service",
            vec![("HTTP_ADDR", format!("127.0.0.1:{rt}"))],
            format!("http://127.0.0.1:{rt}/readyz"),
        ));
        let gateway = free_port();
        // `http` steps may call this stack's own gateway (tests use it as a real endpoint) and
        // nothing else inside; `env` may set EGRESS_ALLOW otherwise (the later value wins).
        let mut worker_env = vec![("EGRESS_ALLOW".to_string(), format!("127.0.0.1:{gateway}"))];
        worker_env.extend(common.iter().cloned());
        worker_env.push((
            "WORKER_CONCURRENCY".into(),
            options.worker_concurrency.to_string(),
        ));
        for i in 0..options.workers {
            specs.push(worker_spec(
                &worker_env,
                i,
                options.release,
                options.metrics_addr,
            ));
        }

        let template =
            std::fs::read_to_string(workspace_root().join("deploy/nginx/thygon.conf.template"))
                .expect("nginx template");
        let prefix_dir = dir.join("nginx");
        let conf = template
            .replace("${GATEWAY_PORT}", &format!("127.0.0.1:{gateway}"))
            .replace("${WORKFLOW_UPSTREAM}", &format!("127.0.0.1:{wf}"))
            .replace("${RUNTIME_UPSTREAM}", &format!("127.0.0.1:{rt}"))
            .replace("${NGINX_PREFIX}", &prefix_dir.display().to_string());
        let conf_path = prefix_dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx conf");
        let base_url = format!("http://127.0.0.1:{gateway}");
        specs.push(Spec {
            name: "gateway".into(),
            program: nginx(),
            args: [
                "-p",
                &prefix_dir.display().to_string(),
                "-c",
                &conf_path.display().to_string(),
                "-e",
                "stderr",
                "-g",
                "daemon off;",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            env: Vec::new(),
            ready: Some(format!("{base_url}/healthz")),
        });

        let mut stack = Stack {
            base_url,
            client: reqwest::Client::new(),
            key: String::new(),
            anon: reqwest::Client::new(),
            dir,
            prefix,
            children: Vec::new(),
            specs,
            db,
            database_url,
            amqp_url,
            broker,
            worker_env,
            release: options.release,
            metrics_addr: options.metrics_addr,
        };
        stack.launch().await;
        stack.key = stack.provision(ORG).await;
        stack.client = reqwest::Client::builder()
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {}", stack.key).parse().expect("header"),
                )]
                .into_iter()
                .collect(),
            )
            .build()
            .expect("client");
        stack
    }

    /// Make `org_id` (if new) and a key of it through the gateway, as an operator would.
    pub async fn provision(&self, org_id: &str) -> String {
        let admin = Some(ADMIN_KEY);
        let body = serde_json::json!({"id": org_id, "name": org_id});
        let (status, org) = self.call_as(admin, "POST", "/admin/orgs", Some(body)).await;
        assert!(status == 201 || status == 409, "create org: {status} {org}");
        let (status, key) = self
            .call_as(
                admin,
                "POST",
                &format!("/admin/orgs/{org_id}/keys"),
                Some(serde_json::json!({"name": "e2e"})),
            )
            .await;
        assert_eq!(status, 201, "create key: {key}");
        key["data"]["key"].as_str().expect("key").to_string()
    }

    /// Start every process of the stack and wait until each is ready.
    async fn launch(&mut self) {
        for spec in self.specs.clone() {
            self.spawn(&spec);
        }
        let urls: Vec<String> = self.specs.iter().filter_map(|s| s.ready.clone()).collect();
        for url in urls {
            self.wait_ready(&url).await;
        }
    }

    fn spawn(&mut self, spec: &Spec) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", spec.name)))
            .expect("log file");
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
        self.children.push((spec.name.clone(), child));
    }

    /// The value of `var` in the environment `process` (`workflow-service`,
    /// `executor-worker-0`, ...) was started with: its `HTTP_ADDR`, `METRICS_ADDR`, ...
    pub fn env_of(&self, process: &str, var: &str) -> Option<String> {
        let spec = self.specs.iter().find(|s| s.name == process)?;
        // The last value wins, as in the process's environment.
        spec.env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
    }

    /// Every running process of the stack: (name, pid).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(name, child)| (name.clone(), child.id()))
            .collect()
    }

    /// The process id of worker `i`, while it runs.
    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        let name = worker_name(i);
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
    }

    /// Send `signal` (`"KILL"`, `"TERM"`, ...) to worker `i` without waiting for it.
    pub fn signal_worker(&self, i: usize, signal: &str) {
        let pid = self
            .worker_pid(i)
            .unwrap_or_else(|| panic!("worker {i} is not running"));
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Wait up to `within` for worker `i` to exit; `None` if it still runs.
    pub async fn wait_worker_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        let name = worker_name(i);
        let at = self.children.iter().position(|(n, _)| *n == name)?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.children[at].1.try_wait() {
                self.children.remove(at);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send `signal` to worker `i` and wait (up to 60 s) until it exited.
    pub async fn kill_worker(&mut self, i: usize, signal: &str) -> ExitStatus {
        self.signal_worker(i, signal);
        self.wait_worker_exit(i, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("worker {i} still runs 60 s after SIG{signal}"))
    }

    /// Start worker `i` again (after it was killed), or a new worker `i` (the next index, as
    /// [`Stack::workers`] counts), and wait until it is ready.
    pub async fn start_worker(&mut self, i: usize) {
        assert!(self.worker_pid(i).is_none(), "worker {i} is running");
        let name = worker_name(i);
        let spec = match self.specs.iter().find(|s| s.name == name) {
            Some(spec) => spec.clone(),
            None => {
                let spec = worker_spec(&self.worker_env, i, self.release, self.metrics_addr);
                self.specs.push(spec.clone());
                spec
            }
        };
        self.spawn(&spec);
        if let Some(url) = &spec.ready {
            self.wait_ready(url).await;
        }
    }

    /// How many workers the stack has had (running or not): the next new worker's index.
    pub fn workers(&self) -> usize {
        self.specs
            .iter()
            .filter(|s| s.name.starts_with("executor-worker-"))
            .count()
    }

    /// SIGTERM every process and wait for each to exit (killing what outlives 10 s).
    pub fn stop_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (_, child) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Stop every process, then start them all again on the same database and queues.
    pub async fn restart_all(&mut self) {
        self.stop_all();
        self.launch().await;
    }

    async fn wait_ready(&mut self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            let exited =
                self.children
                    .iter_mut()
                    .find_map(|(name, child)| match child.try_wait() {
                        Ok(Some(status)) => Some((name.clone(), status)),
                        _ => None,
                    });
            if let Some((name, status)) = exited {
                panic!(
                    "{name} exited ({status}) while starting:\n{}",
                    self.log_tail(&name)
                );
            }
            assert!(Instant::now() < deadline, "{url} was not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Like [`Stack::call`], but a failed request or a body that is not JSON (an outage) is
    /// an `Err`, not a panic.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .client
            .request(
                method.parse().map_err(|_| format!("bad method {method}"))?,
                format!("{}{path}", self.base_url),
            )
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text)
            .map_err(|_| format!("{method} {path} answered {status} with non-JSON: {text:?}"))?;
        Ok((status, body))
    }

    /// Create workflow `wf_<name>` with `definition`; the test fails unless it is a 201.
    pub async fn create_workflow(&self, name: &str, definition: Value) {
        let body = serde_json::json!({"name": name, "definition": definition});
        let (status, answer) = self.call("POST", "/workflows", Some(body)).await;
        assert_eq!(status, 201, "create {name}: {answer}");
    }

    /// Trigger a run of `workflow` with `variables`; returns its id (the test fails unless
    /// the trigger is a 201).
    pub async fn trigger(&self, workflow: &str, variables: Value) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/workflows/{workflow}/trigger"),
                Some(serde_json::json!({ "variables": variables })),
            )
            .await;
        assert_eq!(status, 201, "trigger {workflow}: {body}");
        body["data"]["id"].as_str().expect("run id").to_string()
    }

    /// Send a request through the gateway with the org's key; returns (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.key), method, path, body).await
    }

    /// Like [`Stack::call`], with `key` as the bearer token (or no Authorization at all).
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.anon.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base_url),
        );
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.expect("request through the gateway");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{method} {path} answered {status} with non-JSON: {text:?}")
            }),
        )
    }

    /// Poll a run until `done` holds for its details (or the deadline passes: the test fails).
    pub async fn wait_until(
        &self,
        run_id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .call("GET", &format!("/workflows/runs/{run_id}"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            if done(&body["data"]) {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} not {what} after {within:?}: {}",
                body["data"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll a run until it ends (or the deadline passes, which fails the test).
    pub async fn wait_for_run(&self, run_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .call("GET", &format!("/workflows/runs/{run_id}"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            let state = body["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ["COMPLETED", "FAILED", "CANCELLED"].contains(&state.as_str()) {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} still {state} after {within:?}:\n{}",
                self.log_tail("executor-worker-0")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn worker_name(i: usize) -> String {
    format!("executor-worker-{i}")
}

/// Worker `i`: its own port and `WORKER_ID` (`e2e-worker-<i>`).
fn worker_spec(env: &[(String, String)], i: usize, release: bool, metrics_addr: bool) -> Spec {
    let port = free_port();
    let mut env = env.to_vec();
    env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
    env.push(("WORKER_ID".into(), format!("e2e-worker-{i}")));
    env.extend(own_metrics_addr(metrics_addr));
    Spec {
        name: worker_name(i),
        program: binary("executor-worker", release),
        args: Vec::new(),
        env,
        ready: Some(format!("http://127.0.0.1:{port}/readyz")),
    }
}

/// `METRICS_ADDR` on a free port of its own, when `wanted`.
fn own_metrics_addr(wanted: bool) -> Option<(String, String)> {
    wanted.then(|| ("METRICS_ADDR".into(), format!("127.0.0.1:{}", free_port())))
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_all();
        let (broker, prefix) = (self.broker.clone(), self.prefix.clone());
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(shared_models::testing::delete_queues(&broker, &prefix));
            }
        })
        .join()
        .ok();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
