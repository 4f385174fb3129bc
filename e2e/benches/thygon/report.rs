//! The table of results, and the machine-bound rates scaled to the reference machine.

use serde_json::Value;

/// `"<p50> / <p99> ms"` of the measurement `key` of one result.
pub(crate) fn p50_p99(r: &Value, key: &str) -> String {
    format!("{} / {} ms", r[key]["p50_ms"], r[key]["p99_ms"])
}

/// A table row: what, the target, and how to read it from one result.
pub(crate) type Row = (&'static str, &'static str, Box<dyn Fn(&Value) -> String>);

pub(crate) fn print_table(results: &[Value]) {
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
            "org B p99 with / without a fan-out attack",
            "<= 2 x without",
            Box::new(|r| {
                let f = &r["fan_out"];
                let (with, without) = (f["with_p99_ms"].as_f64(), f["without_p99_ms"].as_f64());
                let verdict = match (with, without) {
                    (Some(w), Some(wo)) if w <= crate::fairness::MAX_RATIO * wo => "pass",
                    (Some(_), Some(_)) => "FAIL",
                    _ => "not measured",
                };
                format!(
                    "{} / {} ms {verdict}",
                    f["with_p99_ms"], f["without_p99_ms"]
                )
            }),
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

/// What the reference machine does on the yardstick (`scripts/yardstick.sh`): about
/// 5,600 insert+update transactions per second in PostgreSQL at 8 clients.
pub(crate) const REFERENCE_YARDSTICK_TPS: f64 = 5600.0;

/// This machine's yardstick, measured by `make bench` before the stack starts
/// (`BENCH_YARDSTICK_TPS`; absent when run without it).
pub(crate) fn yardstick() -> Option<f64> {
    std::env::var("BENCH_YARDSTICK_TPS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|tps: &f64| *tps > 0.0)
}

/// The rates that depend on the machine's speed, scaled to the reference machine the targets
/// are set on: this machine's figure times reference / yardstick.
pub(crate) fn print_against_reference(results: &[Value], tps: f64) {
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

/// Celery's figures for the same job (`scripts/celery-peer.sh`, which `make bench` runs first
/// unless `BENCH_PEER=0`): one JSON object per figure and pool, in `BENCH_PEER_OUT`
/// (default `target/bench/celery.json`).
pub(crate) fn peer_figures() -> Option<Vec<Value>> {
    let path = std::env::var("BENCH_PEER_OUT").unwrap_or_else(|_| {
        thygon_e2e::workspace_root()
            .join("target/bench/celery.json")
            .display()
            .to_string()
    });
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The best of Celery's pools for one figure: the most runs/s of `steps`-step runs, or the
/// lowest p99 at `rate` runs/s.
fn best_peer(peer: &[Value], steps: u64, rate: Option<f64>) -> Option<&Value> {
    let of = peer
        .iter()
        .filter(|f| f["steps"].as_u64() == Some(steps) && f["rate"].as_f64() == rate);
    match rate {
        None => of.max_by(|a, b| {
            a["runs_per_s"]
                .as_f64()
                .partial_cmp(&b["runs_per_s"].as_f64())
                .unwrap()
        }),
        Some(_) => of.min_by(|a, b| {
            a["p99_ms"]
                .as_f64()
                .partial_cmp(&b["p99_ms"].as_f64())
                .unwrap()
        }),
    }
}

/// Thygon (the first worker count measured) beside Celery doing the same job on the same
/// servers, with the ratio.
pub(crate) fn print_against_peer(results: &[Value], peer: &[Value]) {
    let Some(r) = results.first() else { return };
    println!("\nBeside Celery (the same job on the same PostgreSQL and RabbitMQ; {} Thygon worker(s)):\n", r["workers"]);
    println!("| measure | Celery | Thygon | ratio |");
    println!("|---|---|---|---|");
    for (what, key, steps) in [
        ("end to end, 1 step", "e2e_1_step", 1),
        ("end to end, 10 steps", "e2e_10_steps", 10),
    ] {
        let celery = best_peer(peer, steps, None).and_then(|f| f["runs_per_s"].as_f64());
        let thygon = r[key]["runs_per_second"].as_f64();
        let ratio = match (celery, thygon) {
            (Some(c), Some(t)) if c > 0.0 => format!("{:.2}x", t / c),
            _ => "-".into(),
        };
        println!(
            "| {what} | {} runs/s | {} runs/s | {ratio} |",
            fmt(celery),
            fmt(thygon)
        );
    }
    let celery = best_peer(peer, 1, Some(100.0));
    println!(
        "| latency at 100 runs/s (1 step) p50 / p99 | {} / {} ms | {} |  |",
        celery.map_or("-".into(), |f| f["p50_ms"].to_string()),
        celery.map_or("-".into(), |f| f["p99_ms"].to_string()),
        p50_p99(r, "latency_1_step_at_100_per_s"),
    );
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}
