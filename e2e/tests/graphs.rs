//! Workflow graphs end to end: waiting steps that survive restarts, delays that hold no
//! worker, run control (cancel, retry) and the event stream, through the gateway.

use serde_json::{json, Value};
use shared_models::runs::{run_may_become, step_may_become};
use shared_models::status::{RunStatus, StepStatus};
use std::time::Duration;
use thygon_e2e::Stack;

async fn create(stack: &Stack, name: &str, steps: Value) {
    stack.create_workflow(name, json!({ "steps": steps })).await;
}

async fn trigger(stack: &Stack, workflow: &str, variables: Value) -> String {
    stack.trigger(workflow, variables).await
}

/// Every status change the stack wrote (its `transition` events) is one of the run
/// lifecycle's tables (`shared_models::runs`): the tables say what the system really does.
fn assert_lifecycle_transitions(stack: &Stack) {
    use diesel::prelude::*;
    use shared_models::schema::run_events;
    let db = stack.db.as_ref().expect("the stack's own database");
    let seen: Vec<(Option<String>, Option<String>, Option<String>)> = run_events::table
        .filter(run_events::kind.eq("transition"))
        .select((
            run_events::step,
            run_events::from_status,
            run_events::to_status,
        ))
        .distinct()
        .load(&mut db.pool.get().expect("database"))
        .expect("transitions");
    assert!(!seen.is_empty(), "the test made no transition");
    let mut strays = Vec::new();
    for (step, from, to) in &seen {
        let (from, to) = (from.as_deref().unwrap_or(""), to.as_deref().unwrap_or(""));
        let allowed = match step {
            None => {
                RunStatus::parse(to).is_some_and(|to| run_may_become(RunStatus::parse(from), to))
            }
            Some(_) => match (StepStatus::parse(from), StepStatus::parse(to)) {
                (Some(from), Some(to)) => step_may_become(from, to),
                _ => false,
            },
        };
        if !allowed {
            let what = if step.is_some() { "step" } else { "run" };
            strays.push(format!("{what} {from} -> {to}"));
        }
    }
    assert!(
        strays.is_empty(),
        "transitions not in the lifecycle's tables: {strays:?}"
    );
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_resumes_the_run_after_every_process_restarted() {
    let mut stack = Stack::start(1).await;
    create(
        &stack,
        "approved_triage",
        json!([
            {"name": "classify", "type": "agent", "agentId": "support-classifier", "instructions": "Classify {{ variables.ticketId }}."},
            {"name": "approve", "type": "approval"},
            {"name": "route", "type": "agent", "agentId": "ticket-router", "instructions": "Route: {{ steps.approve.output.comment }}",
             "inputs": {"category": "{{ steps.classify.output.category }}", "priority": "{{ steps.classify.output.priority }}"}}
        ]),
    )
    .await;
    let run = trigger(
        &stack,
        "wf_approved_triage",
        json!({"ticketId": "TCK-9", "subject": "refund my invoice"}),
    )
    .await;
    let waiting = stack
        .wait_until(&run, Duration::from_secs(30), "WAITING", |r| {
            r["status"] == "WAITING"
        })
        .await;
    assert_eq!(step(&waiting, "approve")["status"], "WAITING");
    assert_eq!(step(&waiting, "classify")["status"], "COMPLETED");

    // Every process goes away and comes back: nothing of the run lived in memory.
    stack.restart_all().await;

    let (status, body) = stack
        .call(
            "POST",
            &format!("/workflows/runs/{run}/steps/approve/approve"),
            Some(json!({"approved": true, "comment": "refund ok"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = stack.wait_for_run(&run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        step(&done, "approve")["output"],
        json!({"approved": true, "comment": "refund ok"})
    );
    assert_eq!(
        step(&done, "classify")["attempt"],
        1,
        "the completed step was not run again"
    );
    assert!(done["output"]["route"]["team"].is_string());
    let (status, _) = stack
        .call(
            "POST",
            &format!("/workflows/runs/{run}/steps/approve/approve"),
            Some(json!({"approved": true})),
        )
        .await;
    assert_eq!(status, 409, "the step is no longer waiting");
    assert_lifecycle_transitions(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_of_many_runs_does_not_starve_a_quick_run() {
    // One worker with 4 slots: if waiting held slots, the quick run would queue behind 40.
    let stack = Stack::start(1).await;
    create(&stack, "slow", json!([{"name": "wait", "type": "delay", "seconds": 2}, {"name": "done", "type": "transform", "value": "late"}])).await;
    create(
        &stack,
        "quick",
        json!([{"name": "now", "type": "transform", "value": "{{ variables.n }}"}]),
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(trigger(&stack, "wf_slow", json!({})).await);
    }
    let quick = trigger(&stack, "wf_quick", json!({"n": 7})).await;
    let done = stack.wait_for_run(&quick, Duration::from_secs(30)).await;
    assert_eq!(done["output"], json!({"now": 7}));
    // Had each waiting run held one of the 4 slots, the quick run (queued behind 40) could
    // not have finished before 36 of them: counted from the runs' own timestamps, so a slow
    // machine (the delays ending while the 40 are still being triggered) changes nothing.
    let quick_done = done["completedAt"]
        .as_str()
        .expect("completedAt")
        .to_string();
    let mut before_quick = 0;
    for id in &slow {
        let (status, body) = stack
            .call("GET", &format!("/workflows/runs/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let ended = body["data"]["completedAt"].as_str().map(str::to_string);
        if ended.is_some_and(|at| at.as_str() <= quick_done.as_str()) {
            before_quick += 1;
        }
    }
    assert!(
        before_quick < 36,
        "{before_quick} delayed runs finished before the quick run ({quick_done}): the delays held the slots"
    );
    for id in &slow {
        let run = stack.wait_for_run(id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(step(&run, "wait")["output"], json!({"seconds": 2.0}));
    }
    assert_lifecycle_transitions(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_run_and_retry_reruns_only_what_failed_or_was_cancelled() {
    let stack = Stack::start(1).await;
    // `check` fails while wf_flag does not exist, and succeeds once it does.
    create(
        &stack,
        "flagged",
        json!([
            {"name": "prepare", "type": "transform", "value": {"ready": true}},
            {"name": "check", "type": "http", "request": {"url": "{{ variables.base }}/workflows/wf_flag",
                "headers": {"Authorization": "Bearer {{ variables.key }}"}}},
            {"name": "finish", "type": "transform", "value": "{{ steps.check.output.status }}"}
        ]),
    )
    .await;
    let run = trigger(
        &stack,
        "wf_flagged",
        json!({"base": stack.base_url, "key": stack.key}),
    )
    .await;
    let failed = stack.wait_for_run(&run, Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(step(&failed, "check")["status"], "FAILED");
    assert!(step(&failed, "check")["error"]
        .as_str()
        .unwrap()
        .contains("404"));
    assert_eq!(step(&failed, "finish")["status"], "CANCELLED");

    create(
        &stack,
        "flag",
        json!([{"name": "x", "type": "transform", "value": 1}]),
    )
    .await;
    let (status, body) = stack
        .call("POST", &format!("/workflows/runs/{run}/retry"), None)
        .await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("PENDING")),
        "{body}"
    );
    let retried = stack.wait_for_run(&run, Duration::from_secs(30)).await;
    assert_eq!(retried["status"], "COMPLETED", "{retried}");
    assert_eq!(
        step(&retried, "prepare")["attempt"],
        1,
        "completed steps keep their outputs and are not re-run"
    );
    assert_eq!(
        step(&retried, "check")["attempt"],
        2,
        "attempt numbers continue"
    );
    assert_eq!(retried["output"], json!({"finish": 200}));
    let (status, _) = stack
        .call("POST", &format!("/workflows/runs/{run}/retry"), None)
        .await;
    assert_eq!(status, 409, "only FAILED or CANCELLED runs can be retried");

    // Cancel a waiting run, then retry it: it waits again and can be approved.
    create(&stack, "gated", json!([{"name": "gate", "type": "approval"}, {"name": "after", "type": "transform", "value": "{{ steps.gate.output.approved }}"}])).await;
    let gated = trigger(&stack, "wf_gated", json!({})).await;
    stack
        .wait_until(&gated, Duration::from_secs(30), "WAITING", |r| {
            r["status"] == "WAITING"
        })
        .await;
    let (status, body) = stack
        .call("POST", &format!("/workflows/runs/{gated}/cancel"), None)
        .await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("CANCELLED")),
        "{body}"
    );
    assert_eq!(step(&body["data"], "gate")["status"], "CANCELLED");
    assert_eq!(step(&body["data"], "after")["status"], "CANCELLED");
    let (status, _) = stack
        .call("POST", &format!("/workflows/runs/{gated}/cancel"), None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = stack
        .call(
            "POST",
            &format!("/workflows/runs/{gated}/steps/gate/approve"),
            Some(json!({"approved": true})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = stack
        .call("POST", &format!("/workflows/runs/{gated}/retry"), None)
        .await;
    assert_eq!(status, 200);
    stack
        .wait_until(&gated, Duration::from_secs(30), "WAITING again", |r| {
            r["status"] == "WAITING"
        })
        .await;
    let (status, _) = stack
        .call(
            "POST",
            &format!("/workflows/runs/{gated}/steps/gate/approve"),
            Some(json!({"approved": true})),
        )
        .await;
    assert_eq!(status, 200);
    let done = stack.wait_for_run(&gated, Duration::from_secs(30)).await;
    assert_eq!(done["output"], json!({"after": true}));
    assert_lifecycle_transitions(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_replays_history_and_ends_with_the_run() {
    let stack = Stack::start(1).await;
    create(&stack, "two", json!([{"name": "a", "type": "transform", "value": 1}, {"name": "b", "type": "transform", "value": 2}])).await;
    let run = trigger(&stack, "wf_two", json!({})).await;
    stack.wait_for_run(&run, Duration::from_secs(30)).await;
    let res = stack
        .client
        .get(format!("{}/workflows/runs/{run}/events", stack.base_url))
        .send()
        .await
        .expect("events");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the stream ends with the run")
        .expect("body");
    let transitions = text.matches("event: transition").count();
    assert_eq!(
        transitions, 6,
        "run and two steps, start and end each:\n{text}"
    );
    assert!(text.contains("event: log"));
    let first_id: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let resumed = stack
        .client
        .get(format!("{}/workflows/runs/{run}/events", stack.base_url))
        .header("Last-Event-ID", first_id.to_string())
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("body");
    assert!(!resumed.contains(&format!("id: {first_id}\n")));
    assert_eq!(
        resumed.matches("id: ").count(),
        text.matches("id: ").count() - 1
    );
    assert_lifecycle_transitions(&stack);
}
