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
    // Premise: the worker holds the run (claimed, RUNNING) and its one step has not ended
    // when the signal goes (a transform's step row only changes when its render ends); that
    // the job was still in flight shows below in the worker waiting out its grace. (No fixed
    // sleep "to let the render start": the claim is what starts it.)
    stack
        .wait_until(&run, Duration::from_secs(30), "RUNNING", |r| {
            r["status"] == "RUNNING" && r["steps"][0]["status"] == "PENDING"
        })
        .await;

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
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "a SIGTERMed worker exits cleanly: {status:?}"
    );
    // The bound is the one wait_worker_exit was given (grace + 5 s): a margin a loaded
    // machine keeps. That the worker waited out the grace (above) is what shows the render
    // was still going; it stopped the render rather than waiting the 600 s deadline.
    let (status, body) = stack
        .call("GET", &format!("/workflows/runs/{run}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["status"], "RUNNING",
        "handed back, not ended: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_template_fails_naming_the_setting_while_another_run_completes() {
    // Only the fuel stops the render, however slowly a loaded machine runs the render
    // threads (at a low priority): the deadline is not what is tested here.
    let stack = Stack::start_with(1, &[("TEMPLATE_DEADLINE_SECONDS", "120")]).await;
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

    let calm = stack.wait_for_run(&calm, Duration::from_secs(30)).await;
    assert_eq!(calm["status"], "COMPLETED", "{calm}");
    let hostile = stack.wait_for_run(&hostile, Duration::from_secs(120)).await;
    assert_eq!(hostile["status"], "FAILED", "{hostile}");
    let error = hostile["error"].as_str().unwrap_or_default();
    assert!(error.contains("TEMPLATE_FUEL"), "{error}");
}
