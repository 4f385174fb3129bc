//! The bench's view of a running stack: its runs' server-side times and its CPU use.

use crate::stats::{sorted, CLIENTS};
use diesel::prelude::*;
use diesel::sql_types::{Double, Text};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_e2e::Stack;

#[derive(QueryableByName)]
pub(crate) struct RunTimes {
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    /// Seconds since the epoch.
    #[diesel(sql_type = Double)]
    pub(crate) created: f64,
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    pub(crate) completed: Option<f64>,
}

/// The bench's view of a running stack.
pub(crate) struct Bench {
    pub(crate) stack: Stack,
    pub(crate) client: reqwest::Client,
}

impl Bench {
    /// One trigger; returns (HTTP status, seconds the request took).
    pub(crate) async fn trigger(client: &reqwest::Client, url: &str) -> (u16, f64) {
        let started = Instant::now();
        let status = match client
            .post(url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
        {
            Ok(res) => {
                let status = res.status().as_u16();
                let _ = res.bytes().await;
                status
            }
            Err(_) => 0,
        };
        (status, started.elapsed().as_secs_f64())
    }

    /// `total` triggers of `workflow` from CLIENTS clients as fast as they go; returns
    /// (triggers per second, latencies in seconds, failures).
    pub(crate) async fn trigger_flood(
        &self,
        workflow: &str,
        total: usize,
    ) -> (f64, Vec<f64>, usize) {
        let url = Arc::new(format!(
            "{}/workflows/{workflow}/trigger",
            self.stack.base_url
        ));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (client, url, next) = (self.client.clone(), url.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = (Vec::new(), 0usize);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let (status, took) = Self::trigger(&client, &url).await;
                    if status == 201 {
                        out.0.push(took);
                    } else {
                        out.1 += 1;
                    }
                }
                out
            }));
        }
        let (mut latencies, mut failed) = (Vec::new(), 0);
        for t in tasks {
            let (l, f) = t.await.expect("client task");
            latencies.extend(l);
            failed += f;
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        (rate, sorted(latencies), failed)
    }

    /// Triggers at a fixed `rate` per second for `count` runs (open loop: each trigger is
    /// sent on schedule whether or not the previous one has answered).
    pub(crate) async fn trigger_paced(&self, workflow: &str, rate: f64, count: usize) -> usize {
        let url = format!("{}/workflows/{workflow}/trigger", self.stack.base_url);
        Self::paced(&self.client, &url, rate, count).await
    }

    /// [`Bench::trigger_paced`] with any client (another org's key) and trigger URL; returns
    /// how many triggers failed.
    pub(crate) async fn paced(
        client: &reqwest::Client,
        url: &str,
        rate: f64,
        count: usize,
    ) -> usize {
        let url = Arc::new(url.to_string());
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for _ in 0..count {
            ticker.tick().await;
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(
                async move { Self::trigger(&client, &url).await.0 },
            ));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.expect("trigger task") != 201 {
                failed += 1;
            }
        }
        failed
    }

    pub(crate) fn times(&self, workflow: &str) -> Vec<RunTimes> {
        let db = self.stack.db.as_ref().expect("the bench's own database");
        let mut conn = db.pool.get().expect("database");
        diesel::sql_query(
            "SELECT status, extract(epoch FROM created_at)::float8 AS created,
                    extract(epoch FROM completed_at)::float8 AS completed
             FROM runs WHERE workflow_id = $1",
        )
        .bind::<Text, _>(workflow)
        .load(&mut conn)
        .expect("run times")
    }

    /// Stop (SIGSTOP) or resume (SIGCONT) every worker process.
    pub(crate) fn pause_workers(&self, pause: bool) {
        let signal = if pause { "-STOP" } else { "-CONT" };
        for (name, pid) in self.stack.pids() {
            if name.starts_with("executor-worker") {
                let status = std::process::Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status()
                    .expect("kill");
                assert!(status.success(), "kill {signal} {pid}");
            }
        }
    }

    pub(crate) fn analyze(&self) {
        let db = self.stack.db.as_ref().expect("the bench's own database");
        let mut conn = db.pool.get().expect("database");
        diesel::sql_query("ANALYZE")
            .execute(&mut conn)
            .expect("ANALYZE");
    }

    /// Wait until every run of `workflow` has ended (at most `within`); returns their times.
    pub(crate) async fn settle(
        &self,
        workflow: &str,
        expected: usize,
        within: Duration,
    ) -> Vec<RunTimes> {
        let deadline = Instant::now() + within;
        loop {
            let times = self.times(workflow);
            let ended = times.iter().filter(|t| t.completed.is_some()).count();
            if ended >= expected || Instant::now() > deadline {
                if ended < expected {
                    eprintln!(
                        "bench: {workflow}: only {ended} of {expected} runs ended in {within:?}"
                    );
                }
                return times;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (VmHWM) of every process of the stack, in MB.
    pub(crate) fn peak_rss(&self) -> BTreeMap<String, f64> {
        self.stack
            .pids()
            .into_iter()
            .filter(|(name, _)| name != "gateway" && name != "support-agent")
            .filter_map(|(name, pid)| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb: f64 = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((name, kb / 1024.0))
            })
            .collect()
    }
}

/// CPU seconds used so far by each group of processes on the machine: the stack's own
/// (by name), PostgreSQL (every `postgres` process), RabbitMQ (`beam.smp`), nginx.
pub(crate) fn cpu_by_group(stack: &Stack) -> BTreeMap<String, f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let ours: BTreeMap<u32, String> = stack.pids().into_iter().map(|(n, p)| (p, n)).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let secs = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / ticks;
        let group = if let Some(name) = ours.get(&pid) {
            if name.starts_with("executor-worker") {
                "executor-worker".to_string()
            } else if name == "gateway" {
                "nginx".to_string()
            } else {
                name.clone()
            }
        } else if comm == "postgres" {
            "postgresql".into()
        } else if comm.starts_with("beam.smp") || comm == "erl_child_setup" {
            "rabbitmq".into()
        } else if comm == "nginx" {
            "nginx".into()
        } else if comm.starts_with("thygon") {
            "bench client".into()
        } else {
            continue;
        };
        *out.entry(group).or_default() += secs;
    }
    out
}

/// End-to-end runs per second: runs / (last completion - first creation).
pub(crate) fn e2e_rate(times: &[RunTimes]) -> f64 {
    let first = times
        .iter()
        .map(|t| t.created)
        .fold(f64::INFINITY, f64::min);
    let last = times
        .iter()
        .filter_map(|t| t.completed)
        .fold(f64::NEG_INFINITY, f64::max);
    let done = times.iter().filter(|t| t.status == "COMPLETED").count();
    done as f64 / (last - first)
}

/// Creation-to-completion latencies (seconds), sorted.
pub(crate) fn latencies(times: &[RunTimes]) -> Vec<f64> {
    sorted(
        times
            .iter()
            .filter_map(|t| t.completed.map(|c| c - t.created))
            .collect(),
    )
}
