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

pub struct Stack {
    pub base_url: String,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    pub prefix: String,
    children: Vec<(String, Child)>,
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
        let db = TestDb::create();
        let prefix = unique_queue_prefix();
        let dir = std::env::temp_dir().join(format!(
            "thygon-e2e-{}",
            shared_models::testing::unique_token()
        ));
        std::fs::create_dir_all(dir.join("nginx")).expect("temp dir");
        let mut stack = Stack {
            base_url: String::new(),
            client: reqwest::Client::new(),
            dir: dir.clone(),
            prefix: prefix.clone(),
            children: Vec::new(),
            db,
        };

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
        let common: Vec<(&str, String)> = vec![
            ("DATABASE_URL", stack.db.url.clone()),
            ("QUEUE_PREFIX", prefix.clone()),
            ("AGENTS_FILE", agents_file.display().to_string()),
            ("RUST_LOG", "info".into()),
            // The seed document's orgId, so its examples run verbatim.
            ("DEFAULT_ORG_ID", "org_acme_123".into()),
        ];
        let mut ready = Vec::new();
        let agent_addr = format!("127.0.0.1:{agent_port}");
        stack.spawn(
            "support-agent",
            &[("SUPPORT_AGENT_ADDR", agent_addr.clone())],
            &common,
        );
        ready.push(format!("http://{agent_addr}/healthz"));
        let (wf, rt) = (free_port(), free_port());
        stack.spawn(
            "workflow-service",
            &[("HTTP_ADDR", format!("127.0.0.1:{wf}"))],
            &common,
        );
        stack.spawn(
            "runtime-service",
            &[("HTTP_ADDR", format!("127.0.0.1:{rt}"))],
            &common,
        );
        ready.push(format!("http://127.0.0.1:{wf}/readyz"));
        ready.push(format!("http://127.0.0.1:{rt}/readyz"));
        for i in 0..workers {
            let port = free_port();
            stack.spawn_named(
                &format!("executor-worker-{i}"),
                "executor-worker",
                &[
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                    ("WORKER_CONCURRENCY", "4".into()),
                    ("WORKER_ID", format!("e2e-worker-{i}")),
                ],
                &common,
            );
            ready.push(format!("http://127.0.0.1:{port}/readyz"));
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
        let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
        let child = Command::new(nginx())
            .args([
                "-p",
                &prefix_dir.display().to_string(),
                "-c",
                &conf_path.display().to_string(),
                "-e",
                "stderr",
                "-g",
                "daemon off;",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nginx");
        stack.children.push(("gateway".into(), child));
        stack.base_url = format!("http://127.0.0.1:{gateway}");
        ready.push(format!("{}/workflows?limit=1", stack.base_url));

        for url in ready {
            stack.wait_ready(&url).await;
        }
        stack
    }

    fn spawn(&mut self, name: &str, env: &[(&str, String)], common: &[(&str, String)]) {
        self.spawn_named(name, name, env, common);
    }

    fn spawn_named(
        &mut self,
        name: &str,
        bin: &str,
        env: &[(&str, String)],
        common: &[(&str, String)],
    ) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let mut cmd = Command::new(binary(bin));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in common.iter().chain(env) {
            cmd.env(k, v);
        }
        self.children.push((
            name.to_string(),
            cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}")),
        ));
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
