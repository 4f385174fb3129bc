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
//! the org's lock and counts its running runs. When `make bench` measured Celery doing the
//! same job first (`scripts/celery-peer.sh`, `BENCH_PEER_OUT`), Thygon's figures are also
//! printed beside Celery's, with the ratios the targets are set on.
//! `BENCH_ONLY=fan_out` measures only the fairness row (another org's p99 with and without a
//! fan-out attack, `fairness.rs`).
mod agents;
mod bench;
mod fairness;
mod measure;
mod report;
mod stats;

use measure::measure;
use report::print_table;
use stats::scale;

use serde_json::json;

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
    let doc = json!({
        "scale": scale(),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
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
    match report::peer_figures() {
        Some(peer) => {
            for r in &results {
                report::print_against_peer(r, &peer);
            }
        }
        None => println!("\n(Celery not measured: BENCH_PEER=0, or scripts/celery-peer.sh failed)"),
    }
    println!("\n(figures as JSON: {out})");
}
