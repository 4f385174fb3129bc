//! A whole Thygon stack for end-to-end tests, started from the real binaries: the example
//! agent, workflow-service, runtime-service, executor workers and the nginx gateway, on free
//! ports, with a fresh database and private queue names. Everything stops when the
//! [`Stack`] is dropped.
//!
//! The binaries must be built first (`make test` runs `cargo build --workspace --bins`).

use serde_json::Value;
use shared_models::testing::{unique_queue_prefix, TestDb};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start one process again after a restart.
struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready: Option<String>,
}

pub struct Stack {
    pub base_url: String,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    pub prefix: String,
    children: Vec<(String, Child)>,
    specs: Vec<Spec>,
    pub db: TestDb,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let path = target.join("debug").join(name);
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
        let db = TestDb::create();
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
                 [agents.reply-drafter]\nurl = \"http://127.0.0.1:{agent_port}/draft-reply\"\n\
                 [agents.ticket-router]\nurl = \"http://127.0.0.1:{agent_port}/route\"\n"
            ),
        )
        .expect("agents file");
        let mut common: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("QUEUE_PREFIX".into(), prefix.clone()),
            ("AGENTS_FILE".into(), agents_file.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
            // The seed document's orgId, so its examples run verbatim.
            ("DEFAULT_ORG_ID".into(), "org_acme_123".into()),
        ];
        common.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let spec = |name: &str, bin: &str, env: Vec<(&str, String)>, ready: String| Spec {
            name: name.to_string(),
            program: binary(bin),
            args: Vec::new(),
            env: common
                .iter()
                .cloned()
                .chain(env.into_iter().map(|(k, v)| (k.to_string(), v)))
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
            vec![("HTTP_ADDR", format!("127.0.0.1:{wf}"))],
            format!("http://127.0.0.1:{wf}/readyz"),
        ));
        specs.push(spec(
            "runtime-service",
            "runtime-service",
            vec![("HTTP_ADDR", format!("127.0.0.1:{rt}"))],
            format!("http://127.0.0.1:{rt}/readyz"),
        ));
        for i in 0..workers {
            let port = free_port();
            specs.push(spec(
                &format!("executor-worker-{i}"),
                "executor-worker",
                vec![
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                    ("WORKER_CONCURRENCY", "4".into()),
                    ("WORKER_ID", format!("e2e-worker-{i}")),
                ],
                format!("http://127.0.0.1:{port}/readyz"),
            ));
        }

        let gateway = free_port();
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
            ready: Some(format!("{base_url}/workflows?limit=1")),
        });

        let mut stack = Stack {
            base_url,
            client: reqwest::Client::new(),
            dir,
            prefix,
            children: Vec::new(),
            specs,
            db,
        };
        stack.launch().await;
        stack
    }

    /// Start every process of the stack and wait until each is ready.
    async fn launch(&mut self) {
        for spec in &self.specs {
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
        let urls: Vec<String> = self.specs.iter().filter_map(|s| s.ready.clone()).collect();
        for url in urls {
            self.wait_ready(&url).await;
        }
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

    /// Send a request through the gateway; returns (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base_url),
        );
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

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_all();
        let (url, prefix) = (
            shared_models::config::env_or("AMQP_URL", shared_models::config::DEFAULT_AMQP_URL),
            self.prefix.clone(),
        );
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(shared_models::testing::delete_queues(&url, &prefix));
            }
        })
        .join()
        .ok();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
