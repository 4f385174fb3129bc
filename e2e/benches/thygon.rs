//! `make bench`: Thygon's throughput, latency and memory, measured on the real binaries
//! (release builds) behind the nginx gateway, on a fresh database and fresh queues, with a
//! small Rust load generator (reqwest, 32 concurrent clients). Workflows are made of
//! `transform` steps, which cost nothing outside the engine, so what is measured is Thygon.
//!
//! Every figure that is a rate or a latency of runs comes from the server's own timestamps
//! (`runs.created_at`, `runs.completed_at`), not from the client.
//!
//! Prints a table and writes the same figures as JSON (`BENCH_OUT`, default
//! `target/bench/results.json`). `BENCH_SCALE` (default 1.0) scales every run count;
//! `BENCH_WORKERS` (default `1,2`) lists the worker-process counts to measure;
//! `BENCH_CONCURRENCY` (default 64, the worker's default) is each worker's `WORKER_CONCURRENCY`;
//! `BENCH_MAX_RUNNING_PER_ORG` (default 0: no cap) is the workers' `MAX_RUNNING_PER_ORG`. The
//! cap is tenancy, not the engine, so it is off unless asked for; with it, every claim takes
//! the org's lock and counts its running runs. `BENCH_YARDSTICK_TPS` (set by `make bench` from
//! `scripts/yardstick.sh`) is the machine's PostgreSQL yardstick; with it, the machine-bound
//! rates are also given scaled to the reference machine the targets are set on.

use diesel::prelude::*;
use diesel::sql_types::{Double, Text};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_e2e::{Stack, StackOptions};

const CLIENTS: usize = 32;

/// The positive number in the environment variable `name`, else `default`.
fn positive_env<T: std::str::FromStr + PartialOrd + Default>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|v: &T| *v > T::default())
        .unwrap_or(default)
}

fn scale() -> f64 {
    positive_env("BENCH_SCALE", 1.0)
}

/// `WORKER_CONCURRENCY` of each worker process (`BENCH_CONCURRENCY`, default 64 as the worker's).
fn concurrency() -> usize {
    positive_env("BENCH_CONCURRENCY", 64)
}

/// The workers' `MAX_RUNNING_PER_ORG` (`BENCH_MAX_RUNNING_PER_ORG`, default 0 = no cap).
fn running_cap() -> u32 {
    positive_env("BENCH_MAX_RUNNING_PER_ORG", 0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()).round() as usize).max(1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn chain(prefix: &str, n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("{prefix}{i}"), "type": "transform", "value": {"i": i, "previous": if i == 0 { Value::Null } else { json!(format!("{{{{ steps.{prefix}{}.output.i }}}}", i - 1)) }}}))
        .collect();
    json!({ "steps": steps })
}

#[derive(QueryableByName)]
struct RunTimes {
    #[diesel(sql_type = Text)]
    status: String,
    /// Seconds since the epoch.
    #[diesel(sql_type = Double)]
    created: f64,
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    completed: Option<f64>,
}

/// The bench's view of a running stack.
struct Bench {
    stack: Stack,
    client: reqwest::Client,
}

impl Bench {
    /// One trigger; returns (HTTP status, seconds the request took).
    async fn trigger(client: &reqwest::Client, url: &str) -> (u16, f64) {
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
    async fn trigger_flood(&self, workflow: &str, total: usize) -> (f64, Vec<f64>, usize) {
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
    async fn trigger_paced(&self, workflow: &str, rate: f64, count: usize) -> usize {
        let url = Arc::new(format!(
            "{}/workflows/{workflow}/trigger",
            self.stack.base_url
        ));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for _ in 0..count {
            ticker.tick().await;
            let (client, url) = (self.client.clone(), url.clone());
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

    fn times(&self, workflow: &str) -> Vec<RunTimes> {
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
    fn pause_workers(&self, pause: bool) {
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

    fn analyze(&self) {
        let db = self.stack.db.as_ref().expect("the bench's own database");
        let mut conn = db.pool.get().expect("database");
        diesel::sql_query("ANALYZE")
            .execute(&mut conn)
            .expect("ANALYZE");
    }

    /// Wait until every run of `workflow` has ended (at most `within`); returns their times.
    async fn settle(&self, workflow: &str, expected: usize, within: Duration) -> Vec<RunTimes> {
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
    fn peak_rss(&self) -> BTreeMap<String, f64> {
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
fn cpu_by_group(stack: &Stack) -> BTreeMap<String, f64> {
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
fn e2e_rate(times: &[RunTimes]) -> f64 {
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
fn latencies(times: &[RunTimes]) -> Vec<f64> {
    sorted(
        times
            .iter()
            .filter_map(|t| t.completed.map(|c| c - t.created))
            .collect(),
    )
}

fn ms(s: f64) -> f64 {
    (s * 1000.0 * 100.0).round() / 100.0
}

async fn measure(workers: usize) -> Value {
    eprintln!("bench: starting a stack with {workers} worker process(es) ...");
    let stack = Stack::start_opts(StackOptions {
        workers,
        worker_concurrency: concurrency(),
        release: true,
        env: vec![
            ("RUST_LOG".into(), "warn".into()),
            ("RATE_LIMIT_PER_SECOND".into(), "0".into()),
            ("MAX_RUNNING_PER_ORG".into(), running_cap().to_string()),
        ],
        ..StackOptions::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", stack.key).parse().expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let bench = Bench { stack, client };
    let cpu_before = cpu_by_group(&bench.stack);
    let wall = Instant::now();
    for (name, n) in [
        ("flood", 1),
        ("alone", 1),
        ("one", 1),
        ("ten", 10),
        ("paced_one", 1),
        ("paced_ten", 10),
        ("forty", 40),
    ] {
        bench.stack.create_workflow(name, chain("s", n)).await;
    }
    // Warm-up: connections, caches, the JIT of nothing (Rust), PostgreSQL's plans.
    bench.trigger_flood("wf_flood", scaled(300)).await;
    bench
        .settle("wf_flood", scaled(300), Duration::from_secs(120))
        .await;
    // What autovacuum does within a minute of a new database's first rows: give the planner
    // the tables' sizes. Without it, the plans the services cached while the tables were
    // empty (a sequential scan is the cheapest way to read an empty table) stay until then,
    // and the measurement would be of a database no deployment runs on for long.
    bench.analyze();

    // 0. The trigger path on its own: the workers paused (SIGSTOP), so the flood does not
    // share the two cores with the execution of the runs it creates. Its runs are executed
    // once the workers resume, before anything else is measured.
    let n = scaled(5000);
    bench.pause_workers(true);
    let (alone_rate, alone_lat, alone_failed) = bench.trigger_flood("wf_alone", n).await;
    bench.pause_workers(false);
    bench.settle("wf_alone", n, Duration::from_secs(300)).await;

    // 1. Trigger throughput and latency (workers running).
    let (trigger_rate, trigger_lat, trigger_failed) = bench.trigger_flood("wf_one", n).await;
    let one = bench.settle("wf_one", n, Duration::from_secs(300)).await;
    let one_rate = e2e_rate(&one);

    // 2. End to end, 10 steps, as fast as possible.
    let n10 = scaled(1000);
    let (_, _, ten_failed) = bench.trigger_flood("wf_ten", n10).await;
    let ten = bench.settle("wf_ten", n10, Duration::from_secs(300)).await;
    let ten_rate = e2e_rate(&ten);

    // 3. Latency at a fixed rate.
    let p1 = scaled(1000);
    let paced_one_failed = bench.trigger_paced("wf_paced_one", 100.0, p1).await;
    let paced_one = latencies(
        &bench
            .settle("wf_paced_one", p1, Duration::from_secs(120))
            .await,
    );
    let p10 = scaled(200);
    let paced_ten_failed = bench.trigger_paced("wf_paced_ten", 20.0, p10).await;
    let paced_ten = latencies(
        &bench
            .settle("wf_paced_ten", p10, Duration::from_secs(120))
            .await,
    );
    let per_step = (percentile(&paced_ten, 50.0) - percentile(&paced_one, 50.0)) / 9.0;

    // 4. One run of 40 steps on an idle system (best of 3).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut forty = Vec::new();
    for i in 0..3 {
        Bench::trigger(
            &bench.client,
            &format!("{}/workflows/wf_forty/trigger", bench.stack.base_url),
        )
        .await;
        forty = latencies(
            &bench
                .settle("wf_forty", i + 1, Duration::from_secs(60))
                .await,
        );
    }
    let forty_best = forty.first().copied().unwrap_or(f64::NAN);

    // 5. Peak memory of each process over all of the above, and where the CPU went.
    let rss = bench.peak_rss();
    let cpu_after = cpu_by_group(&bench.stack);
    let cpu: serde_json::Map<String, Value> = cpu_after
        .iter()
        .map(|(k, v)| {
            let used = v - cpu_before.get(k).copied().unwrap_or(0.0);
            (k.clone(), json!((used * 10.0).round() / 10.0))
        })
        .collect();
    let wall = wall.elapsed().as_secs_f64();

    json!({
        "workers": workers,
        "worker_concurrency": concurrency(),
        "trigger": {
            "clients": CLIENTS, "count": n, "failed": trigger_failed,
            "per_second": trigger_rate.round(),
            "p50_ms": ms(percentile(&trigger_lat, 50.0)),
            "p99_ms": ms(percentile(&trigger_lat, 99.0)),
        },
        "trigger_alone": {
            "clients": CLIENTS, "count": n, "failed": alone_failed, "workers": "paused",
            "per_second": alone_rate.round(),
            "p50_ms": ms(percentile(&alone_lat, 50.0)),
            "p99_ms": ms(percentile(&alone_lat, 99.0)),
        },
        "e2e_1_step": {"runs": one.len(), "runs_per_second": one_rate.round()},
        "e2e_10_steps": {"runs": ten.len(), "failed_triggers": ten_failed, "runs_per_second": ten_rate.round()},
        "latency_1_step_at_100_per_s": {
            "runs": paced_one.len(), "failed_triggers": paced_one_failed,
            "p50_ms": ms(percentile(&paced_one, 50.0)), "p99_ms": ms(percentile(&paced_one, 99.0)),
        },
        "latency_10_steps_at_20_per_s": {
            "runs": paced_ten.len(), "failed_triggers": paced_ten_failed,
            "p50_ms": ms(percentile(&paced_ten, 50.0)), "p99_ms": ms(percentile(&paced_ten, 99.0)),
        },
        "per_step_transition_ms": ms(per_step),
        "forty_steps_ms": ms(forty_best),
        "cpu_seconds": cpu,
        "wall_seconds": (wall * 10.0).round() / 10.0,
        "peak_rss_mb": rss.into_iter().map(|(k, v)| (k, json!((v * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
    })
}

/// `"<p50> / <p99> ms"` of the measurement `key` of one result.
fn p50_p99(r: &Value, key: &str) -> String {
    format!("{} / {} ms", r[key]["p50_ms"], r[key]["p99_ms"])
}

/// A table row: what, the target, and how to read it from one result.
type Row = (&'static str, &'static str, Box<dyn Fn(&Value) -> String>);

fn print_table(results: &[Value]) {
    let cols: Vec<String> = results
        .iter()
        .map(|r| format!("{} worker(s)", r["workers"]))
        .collect();
    let rows: Vec<Row> = vec![
        (
            "trigger throughput (32 clients)",
            ">= 3000/s",
            Box::new(|r| format!("{}/s", r["trigger"]["per_second"])),
        ),
        (
            "trigger latency p50 / p99",
            "p99 <= 20 ms",
            Box::new(|r| p50_p99(r, "trigger")),
        ),
        (
            "trigger throughput, workers paused",
            ">= 3000/s",
            Box::new(|r| format!("{}/s", r["trigger_alone"]["per_second"])),
        ),
        (
            "  its latency p50 / p99",
            "p99 <= 20 ms",
            Box::new(|r| p50_p99(r, "trigger_alone")),
        ),
        (
            "end to end, 1 step",
            ">= 1500 runs/s",
            Box::new(|r| format!("{} runs/s", r["e2e_1_step"]["runs_per_second"])),
        ),
        (
            "end to end, 10 steps",
            ">= 540 runs/s",
            Box::new(|r| format!("{} runs/s", r["e2e_10_steps"]["runs_per_second"])),
        ),
        (
            "latency at 100 runs/s (1 step) p50 / p99",
            "<= 5 / 10 ms",
            Box::new(|r| p50_p99(r, "latency_1_step_at_100_per_s")),
        ),
        (
            "latency at 20 runs/s (10 steps) p50 / p99",
            "",
            Box::new(|r| p50_p99(r, "latency_10_steps_at_20_per_s")),
        ),
        (
            "per step transition",
            "<= 1.5 ms",
            Box::new(|r| format!("{} ms", r["per_step_transition_ms"])),
        ),
        (
            "one 40-step run",
            "<= 100 ms",
            Box::new(|r| format!("{} ms", r["forty_steps_ms"])),
        ),
        (
            "peak RSS workflow-service",
            "< 60 MB",
            Box::new(|r| format!("{} MB", r["peak_rss_mb"]["workflow-service"])),
        ),
        (
            "peak RSS runtime-service",
            "< 60 MB",
            Box::new(|r| format!("{} MB", r["peak_rss_mb"]["runtime-service"])),
        ),
        (
            "peak RSS executor-worker (each)",
            "< 60 MB",
            Box::new(|r| {
                let m = r["peak_rss_mb"].as_object().cloned().unwrap_or_default();
                m.iter()
                    .filter(|(k, _)| k.starts_with("executor-worker"))
                    .map(|(_, v)| format!("{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + " MB"
            }),
        ),
    ];
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    print!("| {:w0$} | {:14} |", "measure", "target");
    for c in &cols {
        print!(" {c:>20} |");
    }
    println!();
    print!("|{}|{}|", "-".repeat(w0 + 2), "-".repeat(16));
    for _ in &cols {
        print!("{}|", "-".repeat(22));
    }
    println!();
    for (name, target, f) in &rows {
        print!("| {name:w0$} | {target:14} |");
        for r in results {
            print!(" {:>20} |", f(r));
        }
        println!();
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let workers: Vec<usize> = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.push(measure(w).await);
    }
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        thygon_e2e::workspace_root()
            .join("target/bench/results.json")
            .display()
            .to_string()
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("output folder");
    }
    let yardstick = yardstick();
    let doc = json!({
        "scale": scale(),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "yardstick_tps": yardstick,
            "reference_yardstick_tps": REFERENCE_YARDSTICK_TPS,
        },
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("json")).expect("write results");
    println!();
    print_table(&results);
    for r in &results {
        println!(
            "\nCPU seconds over the {} s of the {}-worker measurement (2 cores = {} CPU-s available): {}",
            r["wall_seconds"],
            r["workers"],
            r["wall_seconds"].as_f64().unwrap_or(0.0) * 2.0,
            r["cpu_seconds"]
        );
    }
    if let Some(tps) = yardstick {
        print_against_reference(&results, tps);
    }
    println!("\n(figures as JSON: {out})");
}

/// What the reference machine does on the yardstick (`scripts/yardstick.sh`): about
/// 5,600 insert+update transactions per second in PostgreSQL at 8 clients.
const REFERENCE_YARDSTICK_TPS: f64 = 5600.0;

/// This machine's yardstick, measured by `make bench` before the stack starts
/// (`BENCH_YARDSTICK_TPS`; absent when run without it).
fn yardstick() -> Option<f64> {
    std::env::var("BENCH_YARDSTICK_TPS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|tps: &f64| *tps > 0.0)
}

/// The rates that depend on the machine's speed, scaled to the reference machine the targets
/// are set on: this machine's figure times reference / yardstick.
fn print_against_reference(results: &[Value], tps: f64) {
    let factor = REFERENCE_YARDSTICK_TPS / tps;
    println!(
        "\nMachine yardstick (scripts/yardstick.sh): {tps:.0} insert+update transactions/s at 8 \
         clients, {:.2} x the reference machine of the targets ({REFERENCE_YARDSTICK_TPS:.0}).",
        tps / REFERENCE_YARDSTICK_TPS
    );
    for r in results {
        let scaled = |v: &Value| (v.as_f64().unwrap_or(0.0) * factor).round();
        println!(
            "Scaled to the reference machine, {} worker(s): end to end {} runs/s at 1 step \
             (target 1500), {} at 10 steps (target 540); triggers {}/s with the workers \
             running, {}/s paused (target 3000).",
            r["workers"],
            scaled(&r["e2e_1_step"]["runs_per_second"]),
            scaled(&r["e2e_10_steps"]["runs_per_second"]),
            scaled(&r["trigger"]["per_second"]),
            scaled(&r["trigger_alone"]["per_second"]),
        );
    }
}
