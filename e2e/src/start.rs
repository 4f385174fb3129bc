//! Starting a stack: its processes, their environment, and the wait until each is ready.

use crate::{
    binary, free_port, nginx, workspace_root, Spec, Stack, StackOptions, ADMIN_KEY, AGENT_SECRET,
    ORG,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thygon_testkit::{unique_queue_prefix, TestDb};

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
        let dir =
            std::env::temp_dir().join(format!("thygon-e2e-{}", thygon_testkit::unique_token()));
        std::fs::create_dir_all(dir.join("nginx")).expect("temp dir");

        let agent_port = free_port();
        let agents_file = dir.join("agents.toml");
        std::fs::write(
            &agents_file,
            format!(
                "[agents.support-classifier]\nurl = \"http://127.0.0.1:{agent_port}/classify\"\n\
                 headers = {{ Authorization = \"Bearer {AGENT_SECRET}\" }}\n\
                 [agents.reply-drafter]\nurl = \"http://127.0.0.1:{agent_port}/draft-reply\"\n\
                 [agents.ticket-router]\nurl = \"http://127.0.0.1:{agent_port}/route\"\n\n{}",
                options
                    .agents
                    .replace("${SUPPORT_AGENT_ADDR}", &format!("127.0.0.1:{agent_port}"))
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
        for i in 1..options.runtimes {
            let port = free_port();
            specs.push(spec(
                &format!("runtime-service-{i}"),
                "runtime-service",
                vec![("HTTP_ADDR", format!("127.0.0.1:{port}"))],
                format!("http://127.0.0.1:{port}/readyz"),
            ));
        }
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
    pub(crate) async fn launch(&mut self) {
        for spec in self.specs.clone() {
            self.spawn(&spec);
        }
        let urls: Vec<String> = self.specs.iter().filter_map(|s| s.ready.clone()).collect();
        for url in urls {
            self.wait_ready(&url).await;
        }
    }

    pub(crate) fn spawn(&mut self, spec: &Spec) {
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

    pub(crate) async fn wait_ready(&mut self, url: &str) {
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
}

pub(crate) fn worker_name(i: usize) -> String {
    format!("executor-worker-{i}")
}

/// Worker `i`: its own port and `WORKER_ID` (`e2e-worker-<i>`).
pub(crate) fn worker_spec(
    env: &[(String, String)],
    i: usize,
    release: bool,
    metrics_addr: bool,
) -> Spec {
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
