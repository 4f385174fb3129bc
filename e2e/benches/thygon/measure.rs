//! One measurement: a stack with a number of workers, and every figure of it.

use crate::bench::{cpu_by_group, e2e_rate, latencies, Bench};
use crate::stats::{chain, concurrency, mean, ms, percentile, running_cap, scaled, CLIENTS};
use crate::{agents, fairness};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The fixed rates (runs/s) of the 1-step latency rows, and how many runs each sends (as
/// Celery's, `scripts/celery-peer.sh`).
pub(crate) const PACED_ONE: [(f64, usize); 3] = [(10.0, 200), (100.0, 500), (500.0, 1000)];
use thygon_e2e::{Stack, StackOptions};

pub(crate) async fn measure(workers: usize) -> Value {
    eprintln!("bench: starting a stack with {workers} worker process(es) ...");
    let stand_ins = agents::StandIns::start().await;
    let mut env = vec![
        ("RUST_LOG".into(), "warn".into()),
        ("RATE_LIMIT_PER_SECOND".into(), "0".into()),
        ("MAX_RUNNING_PER_ORG".into(), running_cap().to_string()),
    ];
    env.extend(stand_ins.env());
    let stack = Stack::start_opts(StackOptions {
        workers,
        worker_concurrency: concurrency(),
        release: true,
        env,
        agents: stand_ins.agents_entry(),
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
    if fairness::only() {
        return json!({"workers": workers, "fan_out": fairness::fan_out(&bench).await});
    }
    let cpu_before = cpu_by_group(&bench.stack);
    let wall = Instant::now();
    for (name, n) in [
        ("flood", 1),
        ("alone", 1),
        ("one", 1),
        ("ten", 10),
        ("paced_ten", 10),
        ("forty", 40),
    ] {
        bench.stack.create_workflow(name, chain("s", n)).await;
    }
    for i in 0..PACED_ONE.len() {
        let name = format!("paced_one_{i}");
        bench.stack.create_workflow(&name, chain("s", 1)).await;
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
    let n = scaled(3000);
    bench.pause_workers(true);
    let (alone_rate, alone_lat, alone_failed) = bench.trigger_flood("wf_alone", n).await;
    bench.pause_workers(false);
    bench.settle("wf_alone", n, Duration::from_secs(300)).await;

    // 1. Trigger throughput and latency (workers running), and end to end at 1 step: the
    // same 3,000 runs as Celery's.
    let (trigger_rate, trigger_lat, trigger_failed) = bench.trigger_flood("wf_one", n).await;
    let one = bench.settle("wf_one", n, Duration::from_secs(300)).await;
    let one_rate = e2e_rate(&one);

    // 2. End to end, 10 steps, as fast as possible (600 runs, as Celery's).
    let n10 = scaled(600);
    let (_, _, ten_failed) = bench.trigger_flood("wf_ten", n10).await;
    let ten = bench.settle("wf_ten", n10, Duration::from_secs(300)).await;
    let ten_rate = e2e_rate(&ten);

    // 3. Latency at fixed rates: 1 step at 10, 100 and 500 runs/s (what batching costs a
    // lone run, and what it gains under load), 10 steps at 20 runs/s (the cost of a step).
    let mut paced_one = serde_json::Map::new();
    for (i, &(rate, count)) in PACED_ONE.iter().enumerate() {
        let workflow = format!("wf_paced_one_{i}");
        let count = scaled(count);
        let failed = bench.trigger_paced(&workflow, rate, count).await;
        let times = latencies(
            &bench
                .settle(&workflow, count, Duration::from_secs(120))
                .await,
        );
        paced_one.insert(
            format!("{rate}"),
            json!({
                "rate": rate, "runs": times.len(), "failed_triggers": failed,
                "p50_ms": ms(percentile(&times, 50.0)), "p99_ms": ms(percentile(&times, 99.0)),
                // The timestamps are whole milliseconds (the API's): the percentiles are too,
                // the mean of the differences is not (each end is cut by under 1 ms).
                "mean_ms": ms(mean(&times)),
            }),
        );
    }
    let p10 = scaled(200);
    let paced_ten_failed = bench.trigger_paced("wf_paced_ten", 20.0, p10).await;
    let paced_ten = latencies(
        &bench
            .settle("wf_paced_ten", p10, Duration::from_secs(120))
            .await,
    );
    // The measure of a step: a 10-step run's p50 at 20 runs/s, over its 10 steps.
    let per_step = percentile(&paced_ten, 50.0) / 10.0;

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

    // 4b. Agent steps on a model that answers at once: one turn, and a four-turn tool loop.
    let agent_rows = agents::measure(&bench, &stand_ins).await;

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

    // 6. Fairness: another org's p99 with and without a fan-out attack (after the figures
    // above, which it would disturb).
    let fan_out = fairness::fan_out(&bench).await;

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
        "latency_1_step": paced_one,
        "latency_10_steps_at_20_per_s": {
            "runs": paced_ten.len(), "failed_triggers": paced_ten_failed,
            "p50_ms": ms(percentile(&paced_ten, 50.0)), "p99_ms": ms(percentile(&paced_ten, 99.0)),
        },
        "per_step_ms": ms(per_step),
        "forty_steps_ms": ms(forty_best),
        "agents": agent_rows,
        "fan_out": fan_out,
        "cpu_seconds": cpu,
        "wall_seconds": (wall * 10.0).round() / 10.0,
        "peak_rss_mb": rss.into_iter().map(|(k, v)| (k, json!((v * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
    })
}
