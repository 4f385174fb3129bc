//! The processes of a running stack: their environment, pids, signals, restarts and logs.

use crate::start::{worker_name, worker_spec};
use crate::Stack;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

impl Stack {
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

    /// The base URL (`http://127.0.0.1:<port>`) of runtime-service `i`: 0 is the one behind
    /// the gateway, the others come from [`crate::StackOptions::runtimes`].
    pub fn runtime_url(&self, i: usize) -> String {
        let name = match i {
            0 => "runtime-service".to_string(),
            i => format!("runtime-service-{i}"),
        };
        let addr = self
            .env_of(&name, "HTTP_ADDR")
            .unwrap_or_else(|| panic!("no process {name}"));
        format!("http://{addr}")
    }

    /// The process id of the running process `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Send `signal` (`"KILL"`, `"TERM"`, ...) to process `name` without waiting for it.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self
            .pid_of(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Wait up to `within` for process `name` to exit; `None` if it still runs (or never ran).
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> Option<ExitStatus> {
        let at = self.children.iter().position(|(n, _)| n == name)?;
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
        assert!(self.worker_pid(i).is_some(), "worker {i} is not running");
        self.signal(&worker_name(i), signal);
    }

    /// Wait up to `within` for worker `i` to exit; `None` if it still runs.
    pub async fn wait_worker_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        self.wait_exit(&worker_name(i), within).await
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

    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
