//! The steps that park a run (delay, approval, subworkflow) and cancellation, through
//! `Engine::process` one job at a time (no broker), with the run lifecycle's own approve and
//! cancel (`shared_models::runs`). Real PostgreSQL with a database per test; agents are
//! wiremock servers.

mod common;

use common::*;
use executor_worker::engine::{Engine, JobOutcome};
use serde_json::{json, Value};
use shared_models::queue::RunJob;
use shared_models::runs::keys;
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::TestDb;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

/// The run's own transitions: it started, parked once, resumed and completed. Returns the
/// events it read.
async fn assert_parked_once_then_completed(
    db: &TestDb,
    run_id: &str,
) -> Vec<shared_models::models::RunEventRow> {
    let events = get_events(&db.pool, run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "WAITING"),
            ft("WAITING", "RUNNING"),
            ft("RUNNING", "COMPLETED"),
        ]
    );
    events
}

#[tokio::test]
async fn a_delay_parks_the_run_waiting_without_holding_it_and_a_later_job_finishes_it() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let definition = json!({ "steps": [
        { "name": "first", "type": "transform", "value": "before" },
        { "name": "pause", "type": "delay", "seconds": 0.2 },
        { "name": "then", "type": "transform", "value": {
            "waited": "{{ steps.pause.output.seconds }}", "first": "{{ steps.first.output }}" } },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "delayed", definition, json!({})).await;

    let before = shared_models::time::now();
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);
    let after = shared_models::time::now();

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "WAITING");
    assert_eq!(
        (run.lease_owner.as_deref(), run.lease_expires_at),
        (None, None),
        "a waiting run holds no worker"
    );
    assert_eq!(run.completed_at, None);
    let wake_at = run.wake_at.expect("a waiting delay sets the run's wakeAt");
    assert!(
        wake_at >= before + ms(200) && wake_at <= after + ms(200),
        "wakeAt {wake_at} is 0.2 s after the delay began (between {before} and {after})"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("first", "COMPLETED"), ("pause", "WAITING")],
        "the step after the delay has not started"
    );
    let pause = find_step(&steps, "pause");
    assert_eq!(pause.wake_at, Some(wake_at));
    assert!(pause.started_at.is_some() && pause.completed_at.is_none());
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "WAITING")]
    );

    wait_until_past(wake_at).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.wake_at, None);
    assert_eq!(
        run.output,
        Some(json!({ "then": { "waited": 0.2, "first": "before" } }))
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let pause = find_step(&steps, "pause");
    assert_eq!(pause.status, "COMPLETED");
    assert_eq!(pause.output, Some(json!({ "seconds": 0.2 })));
    assert!(
        pause.completed_at.expect("completedAt") >= wake_at,
        "the delay ended no earlier than its wake time"
    );
    assert_eq!(find_step(&steps, "then").status, "COMPLETED");
    let events = assert_parked_once_then_completed(&db, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("pause")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "COMPLETED")]
    );
}

/// `prepare`, then an approval `approve` (with `timeout` seconds, if any), then `ship`, which
/// reads the decision. The first job has run: the run is parked on the approval.
async fn run_parked_on_an_approval(timeout: Option<f64>) -> (TestDb, Arc<Engine>, String) {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let mut approve = json!({ "name": "approve", "type": "approval" });
    if let Some(secs) = timeout {
        approve["timeoutSeconds"] = json!(secs);
    }
    let definition = json!({ "steps": [
        { "name": "prepare", "type": "transform", "value": { "amount": "{{ variables.amount }}" } },
        approve,
        { "name": "ship", "type": "transform", "value": {
            "approved": "{{ steps.approve.output.approved }}",
            "comment": "{{ steps.approve.output.comment }}",
            "amount": "{{ steps.prepare.output.amount }}" } },
    ] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "approvals", definition, json!({ "amount": 120 })).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "WAITING");
    assert_eq!(run.lease_owner, None, "a waiting run holds no worker");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("prepare", "COMPLETED"), ("approve", "WAITING")]
    );
    let approve = find_step(&steps, "approve");
    assert_eq!(approve.output, None);
    assert_eq!(
        run.wake_at, approve.wake_at,
        "the run wakes at the approval's deadline, if it has one"
    );
    assert_eq!(approve.wake_at.is_some(), timeout.is_some());
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING")]
    );
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "WAITING")]
    );
    (db, engine, run_id)
}

/// What the approve endpoint's transition leaves on a parked run before any worker looks:
/// the step decided (`to`), its log line (`log`), the run still WAITING, and one job queued
/// in the outbox (`job`, the row `decide_approval` returned) to resume it.
async fn assert_decision_recorded(
    db: &TestDb,
    run_id: &str,
    job: Option<i64>,
    log: (&str, &str),
    to: &str,
) {
    let job = job.expect("a parked run gets a job to resume it");
    let outbox = get_outbox(&db.pool).await;
    let row = outbox
        .iter()
        .find(|o| o.id == job)
        .unwrap_or_else(|| panic!("job {job} is not in the outbox: {outbox:?}"));
    assert_eq!(row.run_id, run_id);
    assert_eq!(
        row.payload,
        serde_json::to_value(run_job(run_id)).expect("a job as JSON")
    );
    assert_eq!((row.sent_at, row.dedupe_key.as_deref()), (None, None));
    assert_eq!(
        outbox.iter().filter(|o| o.run_id == run_id).count(),
        1,
        "one job for the decision"
    );
    assert_eq!(get_run(&db.pool, run_id).await.status, "WAITING");
    assert_eq!(
        find_step(&get_steps(&db.pool, run_id).await, "approve").status,
        to
    );
    let events = get_events(&db.pool, run_id).await;
    assert_eq!(
        logs_of(&events, Some("approve")).last(),
        Some(&(log.0.to_string(), log.1.to_string())),
        "the decision's log line"
    );
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", to)]
    );
}

#[tokio::test]
async fn an_approval_parks_the_run_until_approved_and_later_steps_see_the_decision() {
    let (db, engine, run_id) = run_parked_on_an_approval(None).await;
    assert_eq!(get_run(&db.pool, &run_id).await.wake_at, None);

    let job = decide_approval(&db.pool, &run_id, "approve", true, "ok").await;
    assert_decision_recorded(&db, &run_id, job, ("INFO", "approved: ok"), "COMPLETED").await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    let shipped = json!({ "approved": true, "comment": "ok", "amount": 120 });
    assert_eq!(run.output, Some(json!({ "ship": shipped })));
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("prepare", "COMPLETED"),
            ("approve", "COMPLETED"),
            ("ship", "COMPLETED")
        ]
    );
    assert_eq!(
        find_step(&steps, "approve").output,
        Some(json!({ "approved": true, "comment": "ok" })),
        "the decision is kept as the approval's output"
    );
    assert_parked_once_then_completed(&db, &run_id).await;
}

#[tokio::test]
async fn a_rejected_approval_fails_the_run_and_cancels_the_rest() {
    let (db, engine, run_id) = run_parked_on_an_approval(None).await;

    let job = decide_approval(&db.pool, &run_id, "approve", false, "no").await;
    assert_decision_recorded(&db, &run_id, job, ("WARN", "rejected: no"), "FAILED").await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("'approve'") && error.contains("rejected: no"),
        "{error}"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("prepare", "COMPLETED"),
            ("approve", "FAILED"),
            ("ship", "CANCELLED")
        ]
    );
    assert_eq!(find_step(&steps, "ship").started_at, None);
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("ship")),
        vec![ft("PENDING", "CANCELLED")]
    );
    assert_eq!(
        transitions_of(&events, None).last(),
        Some(&ft("RUNNING", "FAILED"))
    );
}

#[tokio::test]
async fn an_approval_past_its_timeout_fails_its_step_saying_it_timed_out() {
    let (db, engine, run_id) = run_parked_on_an_approval(Some(0.2)).await;
    let deadline = get_run(&db.pool, &run_id)
        .await
        .wake_at
        .expect("the run wakes at the deadline");

    wait_until_past(deadline).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let steps = get_steps(&db.pool, &run_id).await;
    let approve = find_step(&steps, "approve");
    assert_eq!(approve.status, "FAILED");
    let error = approve.error.clone().unwrap_or_default();
    assert!(
        error.contains("timed out") && error.contains("waiting for approval"),
        "{error}"
    );
    assert_eq!(find_step(&steps, "ship").status, "CANCELLED");
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    assert!(run.error.unwrap_or_default().contains("timed out"));
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "FAILED")]
    );
}

/// A parent `wf_parent` whose step `child` runs `child_workflow` (with templated variables)
/// and whose step `report` reads the child's output, and a PENDING run of it.
async fn parent_and_child(db: &TestDb, child_workflow: &str, child_steps: Option<Value>) -> String {
    if let Some(steps) = child_steps {
        let name = child_workflow.strip_prefix("wf_").expect("a workflow id");
        insert_workflow(&db.pool, name, json!({ "steps": steps })).await;
    }
    let definition = json!({ "steps": [
        { "name": "child", "type": "subworkflow", "workflowId": child_workflow,
          "variables": { "n": "{{ variables.n }}", "parent": "{{ run.id }}" } },
        { "name": "report", "type": "transform", "value": "{{ steps.child.output.double.doubled + 1 }}" },
    ] });
    workflow_with_run(&db.pool, "parent", definition, json!({ "n": 21 }))
        .await
        .1
}

#[tokio::test]
async fn a_subworkflow_starts_a_child_run_and_waits_for_its_output() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "double", "type": "transform",
        "value": { "doubled": "{{ variables.n * 2 }}", "parent": "{{ variables.parent }}" } }]);
    let parent_id = parent_and_child(&db, "wf_child_flow", Some(child_steps)).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "WAITING");
    assert_eq!((parent.lease_owner, parent.wake_at), (None, None));
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1, "one child run");
    let child = &children[0];
    assert_eq!(
        (
            child.status.as_str(),
            child.workflow_id.as_str(),
            child.workflow_version,
            child.org_id.as_str(),
            child.parent_step.as_deref()
        ),
        ("PENDING", "wf_child_flow", 1, ORG, Some("child"))
    );
    assert_eq!(child.variables, json!({ "n": 21, "parent": parent_id }));
    let steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(statuses(&steps), vec![("child", "WAITING")]);
    assert_eq!(
        find_step(&steps, "child").child_run_id.as_deref(),
        Some(child.id.as_str())
    );
    let outbox = get_outbox(&db.pool).await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].run_id, child.id);
    assert_eq!(
        outbox[0].dedupe_key.as_deref(),
        Some(keys::child_start(&child.id).as_str())
    );
    let job: RunJob = serde_json::from_value(outbox[0].payload.clone()).expect("a job");
    assert_eq!(
        (job.run_id.as_str(), job.org_id.as_str()),
        (child.id.as_str(), ORG)
    );

    assert_eq!(process(&engine, &child.id).await, JobOutcome::Done);

    let ended = get_run(&db.pool, &child.id).await;
    assert_eq!(ended.status, "COMPLETED");
    let child_output = json!({ "double": { "doubled": 42, "parent": parent_id } });
    assert_eq!(ended.output, Some(child_output.clone()));
    let outbox = get_outbox(&db.pool).await;
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!(outbox[1].run_id, parent_id, "the parent is woken up");
    assert_eq!(
        outbox[1].dedupe_key.as_deref(),
        Some(keys::child_ended(&child.id).as_str())
    );
    assert_eq!(
        get_run(&db.pool, &parent_id).await.status,
        "WAITING",
        "the child's end only queues a job for the parent"
    );

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "COMPLETED");
    assert_eq!(parent.output, Some(json!({ "report": 43 })));
    let steps = get_steps(&db.pool, &parent_id).await;
    let step = find_step(&steps, "child");
    assert_eq!(step.status, "COMPLETED");
    assert_eq!(
        step.output,
        Some(child_output),
        "the step's output is the child's"
    );
    assert_eq!(step.child_run_id.as_deref(), Some(child.id.as_str()));
    let events = get_events(&db.pool, &parent_id).await;
    assert_eq!(
        transitions_of(&events, Some("child")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "COMPLETED")]
    );
}

#[tokio::test]
async fn a_failing_child_run_fails_the_subworkflow_step_naming_the_child() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "broken", "type": "transform",
                               "value": "{{ variables.missing }}" }]);
    let parent_id = parent_and_child(&db, "wf_broken_child", Some(child_steps)).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1);
    let child_id = children[0].id.clone();
    assert_eq!(process(&engine, &child_id).await, JobOutcome::Done);
    let child = get_run(&db.pool, &child_id).await;
    assert_eq!(child.status, "FAILED");
    assert!(get_outbox(&db.pool)
        .await
        .iter()
        .any(|o| o.run_id == parent_id
            && o.dedupe_key.as_deref() == Some(keys::child_ended(&child_id).as_str())));

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let steps = get_steps(&db.pool, &parent_id).await;
    let step = find_step(&steps, "child");
    assert_eq!(step.status, "FAILED");
    let error = step.error.clone().unwrap_or_default();
    assert!(
        error.contains(&child_id) && error.contains("failed") && error.contains("'broken'"),
        "the error names the child run and carries its error: {error}"
    );
    assert_eq!(find_step(&steps, "report").status, "CANCELLED");
    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "FAILED");
    assert!(parent.error.unwrap_or_default().contains(&child_id));
}

#[tokio::test]
async fn a_subworkflow_naming_an_unknown_workflow_fails_its_step_at_once() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let parent_id = parent_and_child(&db, "wf_nowhere", None).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "FAILED", "nothing to wait for");
    let steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("child", "FAILED"), ("report", "CANCELLED")]
    );
    let error = find_step(&steps, "child").error.clone().unwrap_or_default();
    assert!(error.contains("'wf_nowhere'"), "{error}");
    assert!(parent.error.unwrap_or_default().contains("'wf_nowhere'"));
    assert!(child_runs(&db.pool, &parent_id).await.is_empty());
    assert!(get_outbox(&db.pool).await.is_empty(), "no job is queued");
}

#[tokio::test]
async fn cancellation_stops_the_run_at_the_next_step_boundary() {
    let Setup { db, server, engine } = Setup::new(&["slow", "next"]).await;
    mount_post(
        &server,
        "/slow",
        agent_output(json!("late")).set_delay(Duration::from_millis(500)),
        1,
    )
    .await;
    mount_post(&server, "/next", agent_output(json!("never")), 0).await;
    let definition = json!({ "steps": [
        { "name": "slow", "type": "agent", "agentId": "slow", "instructions": "Slowly" },
        { "name": "next", "type": "agent", "agentId": "next", "instructions": "Never" },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "cancelled", definition, json!({})).await;

    let job = run_job(&run_id);
    let worker = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.process(&job).await })
    };
    wait_for(
        "the slow step to be RUNNING",
        Duration::from_secs(10),
        || async {
            let steps = get_steps(&db.pool, &run_id).await;
            steps
                .iter()
                .any(|s| s.name == "slow" && s.status == "RUNNING")
                .then_some(())
        },
    )
    .await;
    cancel_run(&db.pool, &run_id).await;
    let events_at_cancel = get_events(&db.pool, &run_id).await.len();

    assert_eq!(
        worker.await.expect("process does not panic"),
        JobOutcome::Done
    );

    server.verify().await;
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "CANCELLED");
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.output, None);
    let steps = get_steps(&db.pool, &run_id).await;
    // The cancel endpoint's transition cancels every step not yet ended, those not yet
    // started included (a hand-written copy of it here used to leave them out).
    assert_eq!(
        statuses(&steps),
        vec![("slow", "CANCELLED"), ("next", "CANCELLED")],
        "the late answer is not recorded over the cancellation"
    );
    assert_eq!(find_step(&steps, "slow").output, None);
    assert_eq!(
        find_step(&steps, "next").started_at,
        None,
        "the next step never starts"
    );
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        events.len(),
        events_at_cancel,
        "the worker wrote nothing after the cancellation"
    );
    assert_eq!(
        logs_of(&events, None).last(),
        Some(&("INFO".to_string(), "run cancelled".to_string())),
        "the cancellation's own log line"
    );
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "CANCELLED")]
    );
    assert_eq!(
        transitions_of(&events, Some("next")),
        vec![ft("PENDING", "CANCELLED")],
        "the unstarted step's cancellation is recorded"
    );
}

#[tokio::test]
async fn cancelling_a_parent_parked_on_a_subworkflow_cancels_its_child_and_the_worker_leaves_it() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "gate", "type": "approval" }]);
    let parent_id = parent_and_child(&db, "wf_child_cancelled", Some(child_steps)).await;
    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1, "the parent started its child");
    let child_id = children[0].id.clone();
    assert_eq!(
        (
            get_run(&db.pool, &parent_id).await.status.as_str(),
            children[0].status.as_str()
        ),
        ("WAITING", "PENDING"),
        "the parent waits for its child, which has not started"
    );

    cancel_run(&db.pool, &parent_id).await;

    let parent_steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(
        statuses(&parent_steps),
        vec![("child", "CANCELLED"), ("report", "CANCELLED")]
    );
    let child = get_run(&db.pool, &child_id).await;
    assert_eq!(
        child.status, "CANCELLED",
        "the child is cancelled with its parent"
    );
    let child_events = get_events(&db.pool, &child_id).await;
    assert_eq!(
        logs_of(&child_events, None),
        vec![(
            "INFO".to_string(),
            format!("run cancelled with its parent run {parent_id}")
        )]
    );
    assert_eq!(
        statuses(&get_steps(&db.pool, &child_id).await),
        vec![("gate", "CANCELLED")],
        "the child's unstarted step is cancelled too"
    );

    // The child's start job (queued before the cancel) reaches a worker: it leaves the run.
    assert_eq!(process(&engine, &child_id).await, JobOutcome::Done);
    assert_eq!(get_run(&db.pool, &child_id).await.status, "CANCELLED");
    assert_eq!(
        get_events(&db.pool, &child_id).await.len(),
        child_events.len(),
        "the worker wrote nothing to the cancelled child"
    );
}

#[tokio::test]
async fn a_redelivered_waiting_run_whose_delay_is_not_due_parks_again_unchanged() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let definition = json!({ "steps": [
        { "name": "pause", "type": "delay", "seconds": 3600 },
        { "name": "then", "type": "transform", "value": 1 },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "not_due", definition, json!({})).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);
    let run_before = get_run(&db.pool, &run_id).await;
    assert_eq!(run_before.status, "WAITING");
    let steps_before = get_steps(&db.pool, &run_id).await;
    assert_eq!(statuses(&steps_before), vec![("pause", "WAITING")]);
    let mut seen = get_events(&db.pool, &run_id).await.len();

    for delivery in 2..=3 {
        assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

        let run = get_run(&db.pool, &run_id).await;
        assert_eq!(
            (
                run.status.as_str(),
                run.wake_at,
                run.lease_owner.as_deref(),
                run.lease_expires_at
            ),
            ("WAITING", run_before.wake_at, None, None),
            "delivery {delivery}"
        );
        assert_eq!(run.started_at, run_before.started_at);
        assert_eq!(
            format!("{:?}", get_steps(&db.pool, &run_id).await),
            format!("{steps_before:?}"),
            "delivery {delivery} left the steps alone"
        );
        let events = get_events(&db.pool, &run_id).await;
        let new = &events[seen..];
        assert!(
            new.iter().all(|e| e.step.is_none()),
            "delivery {delivery} only moved the run: {new:?}"
        );
        assert_eq!(
            transitions_of(new, None),
            vec![ft("WAITING", "RUNNING"), ft("RUNNING", "WAITING")],
            "delivery {delivery}"
        );
        seen = events.len();
    }
}

#[tokio::test]
async fn a_failing_branch_cancels_a_waiting_subworkflow_and_its_child_run() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("GET"))
        .and(path("/boom"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    insert_workflow(
        &db.pool,
        "child_gate",
        json!({ "steps": [{ "name": "gate", "type": "approval" }] }),
    )
    .await;
    let definition = json!({ "steps": [
        { "name": "sub", "type": "subworkflow", "workflowId": "wf_child_gate" },
        { "name": "boom", "type": "http", "dependsOn": [], "request": { "url": "{{ variables.base }}/boom" } }
    ] });
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "parent_fails",
        definition,
        json!({ "base": server.uri() }),
    )
    .await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let steps = get_steps(&db.pool, &run_id).await;
    let sub = find_step(&steps, "sub");
    assert_eq!(sub.status, "CANCELLED");
    assert!(
        sub.started_at.is_some(),
        "the cancelled row keeps when it started"
    );
    let children = child_runs(&db.pool, &run_id).await;
    assert_eq!(children.len(), 1);
    assert_eq!(
        sub.child_run_id.as_deref(),
        Some(children[0].id.as_str()),
        "and which child it waited for"
    );
    assert_eq!(
        children[0].status, "CANCELLED",
        "no orphan child keeps running"
    );
}
