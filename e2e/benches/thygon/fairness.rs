//! Fairness between orgs under a fan-out attack: org B's trigger-to-completion p99 at a steady
//! load, without and then with org A fanning out (the hostile-tenant test's attack,
//! e2e/tests/hostile_tenants.rs: a workflow that starts three of itself, each tree capped by
//! `maxDescendantsPerRun`). A timing ratio, so measured here and not asserted in a test.

use crate::bench::{latencies, Bench};
use crate::stats::{chain, ms, percentile, scaled};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thygon_e2e::{ADMIN_KEY, ORG};

/// B's steady load, runs per second.
const RATE: f64 = 20.0;
/// A's trees: at most this many descendants each (the test's limit).
const DESCENDANTS: u32 = 30;
/// A starts a new tree this often while B's load runs, so the attack lasts as long as it.
const NEW_TREE_EVERY: Duration = Duration::from_millis(250);
/// The target: B's p99 with the attack at most this many times its p99 without.
pub(crate) const MAX_RATIO: f64 = 2.0;

/// Whether `BENCH_ONLY=fan_out` asks for this measurement alone (a quick look at its row).
pub(crate) fn only() -> bool {
    std::env::var("BENCH_ONLY").is_ok_and(|v| v.trim() == "fan_out")
}

pub(crate) async fn fan_out(bench: &Bench) -> Value {
    let stack = &bench.stack;
    let b_key = stack.provision("org_bench_b").await;
    let b = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {b_key}").parse().expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .expect("client");
    for name in ["b_calm", "b_attacked"] {
        let res = b
            .post(format!("{}/workflows", stack.base_url))
            .json(&json!({"name": name, "definition": chain("s", 2)}))
            .send()
            .await
            .expect("create B's workflow");
        assert_eq!(res.status().as_u16(), 201, "create {name}");
    }
    stack
        .create_workflow(
            "fan",
            json!({"steps": [
                {"name": "a", "type": "subworkflow", "workflowId": "wf_fan"},
                {"name": "b", "type": "subworkflow", "workflowId": "wf_fan", "dependsOn": []},
                {"name": "c", "type": "subworkflow", "workflowId": "wf_fan", "dependsOn": []}]}),
        )
        .await;
    set_limits(stack, json!({"maxDescendantsPerRun": DESCENDANTS})).await;

    let n = scaled(200);
    let url = |w: &str| format!("{}/workflows/{w}/trigger", stack.base_url);
    let calm_failed = Bench::paced(&b, &url("wf_b_calm"), RATE, n).await;
    let calm = latencies(&bench.settle("wf_b_calm", n, Duration::from_secs(120)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let attack = {
        let (client, url, stop) = (bench.client.clone(), url("wf_fan"), stop.clone());
        tokio::spawn(async move {
            let mut trees = 0;
            while !stop.load(Ordering::SeqCst) {
                if Bench::trigger(&client, &url).await.0 == 201 {
                    trees += 1;
                }
                tokio::time::sleep(NEW_TREE_EVERY).await;
            }
            trees
        })
    };
    let attacked_failed = Bench::paced(&b, &url("wf_b_attacked"), RATE, n).await;
    stop.store(true, Ordering::SeqCst);
    let trees = attack.await.expect("the attack");
    let attacked = latencies(
        &bench
            .settle("wf_b_attacked", n, Duration::from_secs(120))
            .await,
    );
    set_limits(stack, json!({"maxDescendantsPerRun": null})).await;

    let (without, with) = (percentile(&calm, 99.0), percentile(&attacked, 99.0));
    json!({
        "runs": n, "per_second": RATE, "trees": trees, "descendants_per_tree": DESCENDANTS,
        "failed_triggers": calm_failed + attacked_failed,
        "completed": {"without": calm.len(), "with": attacked.len()},
        "without_p99_ms": ms(without), "with_p99_ms": ms(with),
        "ratio": (with / without * 100.0).round() / 100.0,
    })
}

async fn set_limits(stack: &thygon_e2e::Stack, limits: Value) {
    let (status, body) = stack
        .call_as(
            Some(ADMIN_KEY),
            "PUT",
            &format!("/admin/orgs/{ORG}/limits"),
            Some(limits),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Limits are read through the key lookup, cached for at most a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}
