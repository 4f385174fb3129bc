//! Bounded work on the real binaries (issue 13): a worker busy with a tenant's long render
//! still stops within its shutdown grace on SIGTERM, and a hostile template fails its run
//! while another run completes.

use serde_json::json;
use std::time::{Duration, Instant};
use thygon_e2e::Stack;

const LOOPS: &str =
    "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";

/// Prints nothing, so only the fuel (or the deadline) stops it, not the output cap.
const SILENT_LOOPS: &str =
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_worker_busy_rendering_within_its_grace_period() {
    // Fuel and deadline far beyond the grace: the render is still going at SIGTERM.
    let grace = Duration::from_secs(2);
    let mut stack = Stack::start_with(
        1,
        &[
            ("SHUTDOWN_GRACE_SECONDS", "2"),
            ("TEMPLATE_FUEL", "100000000000"),
            ("TEMPLATE_DEADLINE_SECONDS", "600"),
        ],
    )
    .await;
    stack
        .create_workflow(
            "long-render",
            json!({ "steps": [{ "name": "t", "type": "transform", "value": SILENT_LOOPS }] }),
        )
        .await;
    let run = stack.trigger("wf_long-render", json!({})).await;
    stack
        .wait_until(&run, Duration::from_secs(30), "RUNNING", |r| {
            r["status"] == "RUNNING"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Instant::now();
    stack.signal_worker(0, "TERM");
    let status = stack
        .wait_worker_exit(0, grace + Duration::from_secs(5))
        .await;
    let took = sent.elapsed();
    println!(
        "the worker exited {:.1} s after SIGTERM ({status:?})",
        took.as_secs_f64()
    );
    assert!(
        status.is_some(),
        "the worker still runs {took:?} after SIGTERM"
    );
    assert!(
        took > grace,
        "the in-flight job had its grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(3), "{took:?}");
    let (_, body) = stack
        .call("GET", &format!("/workflows/runs/{run}"), None)
        .await;
    assert_eq!(
        body["data"]["status"], "RUNNING",
        "handed back, not ended: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_template_fails_naming_the_setting_while_another_run_completes() {
    let stack = Stack::start(1).await;
    stack
        .create_workflow(
            "loops",
            json!({ "steps": [{ "name": "t", "type": "transform", "value": LOOPS }] }),
        )
        .await;
    stack
        .create_workflow(
            "calm",
            json!({ "steps": [{ "name": "t", "type": "transform", "value": "{{ variables.n }}" }] }),
        )
        .await;
    let hostile = stack.trigger("wf_loops", json!({})).await;
    let calm = stack.trigger("wf_calm", json!({ "n": 1 })).await;

    let calm = stack.wait_for_run(&calm, Duration::from_secs(10)).await;
    assert_eq!(calm["status"], "COMPLETED", "{calm}");
    let hostile = stack.wait_for_run(&hostile, Duration::from_secs(10)).await;
    assert_eq!(hostile["status"], "FAILED", "{hostile}");
    let error = hostile["error"].as_str().unwrap_or_default();
    assert!(error.contains("TEMPLATE_FUEL"), "{error}");
}
