//! The table of results, and Thygon's figures beside Celery's (the peer the targets are set
//! against: ratios measured on this machine in the same run, not figures of another machine).

use serde_json::Value;

/// `"<p50> / <p99> ms (mean <mean>)"` of the agent row `key` of one result.
fn agent_row(r: &Value, key: &str) -> String {
    let row = &r["agents"]["rows"][key];
    format!(
        "{} / {} ms (mean {})",
        row["p50_ms"], row["p99_ms"], row["mean_ms"]
    )
}

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
            ">= 3x Celery",
            Box::new(|r| format!("{} runs/s", r["e2e_1_step"]["runs_per_second"])),
        ),
        (
            "end to end, 10 steps",
            ">= 10x Celery",
            Box::new(|r| format!("{} runs/s", r["e2e_10_steps"]["runs_per_second"])),
        ),
        (
            "latency at 10 runs/s (1 step) p50 / p99 (mean)",
            "",
            Box::new(|r| at_rate(r, 10.0)),
        ),
        (
            "latency at 100 runs/s (1 step) p50 / p99 (mean)",
            "< Celery's",
            Box::new(|r| at_rate(r, 100.0)),
        ),
        (
            "latency at 500 runs/s (1 step) p50 / p99 (mean)",
            "",
            Box::new(|r| at_rate(r, 500.0)),
        ),
        (
            "latency at 20 runs/s (10 steps) p50 / p99",
            "",
            Box::new(|r| p50_p99(r, "latency_10_steps_at_20_per_s")),
        ),
        (
            "per step (10-step p50 at 20/s / 10)",
            "<= 1.5 ms",
            Box::new(|r| format!("{} ms", r["per_step_ms"])),
        ),
        (
            "one 40-step run",
            "<= 40 ms",
            Box::new(|r| format!("{} ms", r["forty_steps_ms"])),
        ),
        (
            "1-step transform at 20 runs/s p50 / p99 (mean)",
            "",
            Box::new(|r| agent_row(r, "agent_base")),
        ),
        (
            "agent step, 1 turn, at 20 runs/s p50 / p99 (mean)",
            "overhead unchanged",
            Box::new(|r| agent_row(r, "agent_one")),
        ),
        (
            "  its overhead over the transform (means)",
            "",
            Box::new(|r| format!("{} ms", r["agents"]["one_turn_over_transform_ms"])),
        ),
        (
            "agent step, 4-turn tool loop p50 / p99 (mean)",
            "",
            Box::new(|r| agent_row(r, "agent_loop")),
        ),
        (
            "  a tool turn's overhead (means: loop - 1 turn) / 3",
            "",
            Box::new(|r| format!("{} ms", r["agents"]["per_tool_turn_ms"])),
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

/// `"<p50> / <p99> ms (mean <mean>)"` of the 1-step latency at `rate` runs/s of one result.
fn at_rate(r: &Value, rate: f64) -> String {
    let at = &r["latency_1_step"][format!("{rate}")];
    format!(
        "{} / {} ms (mean {})",
        at["p50_ms"], at["p99_ms"], at["mean_ms"]
    )
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

/// Thygon (one worker count's result) beside Celery doing the same job on the same servers:
/// each figure, the ratio, and whether the target set against Celery is met.
pub(crate) fn print_against_peer(r: &Value, peer: &[Value]) {
    println!(
        "\nBeside Celery (the same job on the same PostgreSQL and RabbitMQ; {} Thygon worker(s)):\n",
        r["workers"]
    );
    println!("| figure | Celery | Thygon | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for (what, key, steps, times) in [
        ("end to end, 1 step", "e2e_1_step", 1, 3.0),
        ("end to end, 10 steps", "e2e_10_steps", 10, 10.0),
    ] {
        let celery = best_peer(peer, steps, None).and_then(|f| f["runs_per_s"].as_f64());
        let thygon = r[key]["runs_per_second"].as_f64();
        let (ratio, met) = match (celery, thygon) {
            (Some(c), Some(t)) if c > 0.0 => (format!("{:.2}x", t / c), verdict(t / c >= times)),
            _ => ("-".into(), "-"),
        };
        println!(
            "| {what} | {} runs/s | {} runs/s | {ratio} | >= {times}x | {met} |",
            fmt(celery),
            fmt(thygon)
        );
    }
    for (rate, _) in crate::measure::PACED_ONE {
        let celery = best_peer(peer, 1, Some(rate));
        let thygon = &r["latency_1_step"][format!("{rate}")];
        let below = |k: &str| match (celery.and_then(|c| c[k].as_f64()), thygon[k].as_f64()) {
            (Some(c), Some(t)) => Some(t < c),
            _ => None,
        };
        let (target, met) = if rate == 100.0 {
            let met = match (below("p50_ms"), below("p99_ms")) {
                (Some(a), Some(b)) => verdict(a && b),
                _ => "-",
            };
            ("below Celery's, both", met)
        } else {
            ("(shown)", "")
        };
        let of = |f: &Value| {
            format!(
                "{} / {} ms (mean {})",
                f["p50_ms"], f["p99_ms"], f["mean_ms"]
            )
        };
        println!(
            "| trigger to completion at {rate} runs/s, p50 / p99 | {} | {} | | {target} | {met} |",
            celery.map_or("-".into(), of),
            of(thygon),
        );
    }
    let celery_step = best_peer(peer, 10, Some(20.0))
        .and_then(|f| f["p50_ms"].as_f64())
        .map(|p50| format!("{:.2} ms", p50 / 10.0));
    let per_step = r["per_step_ms"].as_f64();
    println!(
        "| per step (10 steps at 20 runs/s, p50 / 10) | {} | {} ms | | <= 1.5 ms | {} |",
        celery_step.unwrap_or_else(|| "-".into()),
        r["per_step_ms"],
        per_step.map_or("-", |s| verdict(s <= 1.5)),
    );
    let t = &r["trigger"];
    let ok = t["per_second"].as_f64().is_some_and(|v| v >= 3000.0)
        && t["p99_ms"].as_f64().is_some_and(|v| v <= 20.0);
    println!(
        "| triggers/s through the gateway, 32 clients, workers running | - | {}/s, p99 {} ms | | >= 3000/s, p99 <= 20 ms | {} |",
        t["per_second"], t["p99_ms"], verdict(ok)
    );
    let forty = r["forty_steps_ms"].as_f64();
    println!(
        "| one 40-step run | - | {} ms | | <= 40 ms | {} |",
        r["forty_steps_ms"],
        forty.map_or("-", |v| verdict(v <= 40.0))
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "NO"
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}
