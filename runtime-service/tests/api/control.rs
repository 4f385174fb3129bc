use crate::helpers::{fields, seconds_from_now, spawn_app, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::models::RunRow;
use shared_models::schema::runs;
use thygon_testkit::fixtures;

/// classify (agent) -> review (approval) -> reply (transform)
fn three_steps(app: &TestApp) -> String {
    app.workflow_with(
        "triage",
        json!({"steps": [
            {"name": "classify", "type": "agent", "agentId": "a", "instructions": "Classify."},
            {"name": "review", "type": "approval"},
            {"name": "reply", "type": "transform", "value": {"ok": true}}
        ]}),
    )
}

fn run_row(app: &TestApp, id: &str) -> RunRow {
    runs::table
        .find(id)
        .select(RunRow::as_select())
        .first(&mut app.conn())
        .expect("run")
}

fn step_summary(run: &Value) -> Vec<(String, String, i64)> {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["attempt"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn transitions(run: &Value) -> Vec<(Value, String, String)> {
    run["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| {
            (
                t["step"].clone(),
                t["from"].as_str().unwrap().to_string(),
                t["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn t(step: Option<&str>, from: &str, to: &str) -> (Value, String, String) {
    (json!(step), from.to_string(), to.to_string())
}

fn s(name: &str, status: &str, attempt: i64) -> (String, String, i64) {
    (name.to_string(), status.to_string(), attempt)
}

#[tokio::test]
async fn cancel_of_a_pending_run_cancels_every_step_and_records_the_transitions() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = app.run_in(&wf, "PENDING");
    let r = app
        .post(&format!("/workflows/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    assert_eq!(d["id"], id);
    assert_eq!(d["status"], "CANCELLED");
    assert!(d["completedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        step_summary(d),
        [
            s("classify", "CANCELLED", 0),
            s("review", "CANCELLED", 0),
            s("reply", "CANCELLED", 0)
        ]
    );
    assert_eq!(
        transitions(d),
        [
            t(None, "PENDING", "CANCELLED"),
            t(Some("classify"), "PENDING", "CANCELLED"),
            t(Some("review"), "PENDING", "CANCELLED"),
            t(Some("reply"), "PENDING", "CANCELLED"),
        ]
    );
    assert_eq!(d["logs"][0]["message"], "run cancelled");
    assert_eq!(d["logs"][0]["level"], "INFO");
    assert_eq!(d["logs"][0]["step"], json!(null));
    let again = app.get(&format!("/workflows/runs/{id}")).await;
    assert_eq!(
        &again.body["data"], d,
        "the answer is the run as GET shows it"
    );
}

#[tokio::test]
async fn cancel_of_a_running_run_clears_its_lease_and_keeps_finished_steps() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = app.run_in(&wf, "RUNNING");
    diesel::update(runs::table.find(&id))
        .set((
            runs::lease_owner.eq("worker-1"),
            runs::lease_expires_at.eq(seconds_from_now(30)),
            runs::wake_at.eq(seconds_from_now(60)),
        ))
        .execute(&mut app.conn())
        .unwrap();
    app.step(&id, 0, "classify", "agent", "COMPLETED", |r| {
        r.attempt = 1;
        r.output = Some(json!({"category": "billing"}));
    });
    app.step(&id, 1, "review", "approval", "RUNNING", |r| r.attempt = 2);
    let r = app
        .post(&format!("/workflows/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    assert_eq!(
        step_summary(d),
        [
            s("classify", "COMPLETED", 1),
            s("review", "CANCELLED", 2),
            s("reply", "CANCELLED", 0)
        ]
    );
    assert_eq!(d["steps"][0]["output"], json!({"category": "billing"}));
    assert_eq!(
        transitions(d),
        [
            t(None, "RUNNING", "CANCELLED"),
            t(Some("review"), "RUNNING", "CANCELLED"),
            t(Some("reply"), "PENDING", "CANCELLED"),
        ]
    );
    let row = run_row(&app, &id);
    assert_eq!(
        (row.lease_owner, row.lease_expires_at, row.wake_at),
        (None, None, None),
        "the worker's next fenced write fails"
    );
    assert!(app.outbox(&id).is_empty(), "nothing further starts");
}

#[tokio::test]
async fn cancel_of_an_ended_run_is_a_409() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    for status in ["COMPLETED", "FAILED", "CANCELLED"] {
        let id = app.run_in(&wf, status);
        let r = app
            .post(&format!("/workflows/runs/{id}/cancel"), json!({}))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("CONFLICT")),
            "{status}"
        );
    }
    let id = app.run_in(&wf, "WAITING");
    let path = format!("/workflows/runs/{id}/cancel");
    assert_eq!(app.post(&path, json!({})).await.status, 200);
    assert_eq!(app.post(&path, json!({})).await.status, 409);
}

#[tokio::test]
async fn control_of_an_unknown_or_another_orgs_run_is_a_404() {
    let app = spawn_app().await;
    let other = {
        let mut conn = app.conn();
        let def = json!({"steps": [{"name": "review", "type": "approval"}]});
        let wf = fixtures::insert_workflow(&mut conn, "org_other", "theirs", def, true);
        fixtures::insert_run(&mut conn, "org_other", &wf, json!({}))
    };
    for id in [
        "run_01m8hcprkqey8xhsdk0tek7x7n",
        "not-a-run",
        other.as_str(),
    ] {
        for action in ["cancel", "retry", "steps/review/approve", "events"] {
            let path = format!("/workflows/runs/{id}/{action}");
            let r = if action == "events" {
                app.get(&path).await
            } else {
                app.post(&path, json!({"approved": true})).await
            };
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (404, Some("NOT_FOUND")),
                "{path}"
            );
        }
    }
    let row = run_row(&app, &other);
    assert_eq!(row.status, "PENDING", "another org's run is untouched");
    let r = app
        .send("GET", &format!("/workflows/runs/{other}/cancel"), None, &[])
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn cancel_follows_subworkflow_steps_into_their_child_runs() {
    let app = spawn_app().await;
    let parent_wf = app.workflow_with(
        "parent",
        json!({"steps": [{"name": "child", "type": "subworkflow", "workflowId": "wf_kid"},
                         {"name": "after", "type": "transform", "value": 1}]}),
    );
    let kid_wf = app.workflow_with(
        "kid",
        json!({"steps": [{"name": "wait", "type": "delay", "seconds": 60}]}),
    );
    let parent = app.run_in(&parent_wf, "WAITING");
    let child = app.run_in(&kid_wf, "WAITING");
    diesel::update(runs::table.find(&child))
        .set((
            runs::parent_run_id.eq(&parent),
            runs::parent_step.eq("child"),
            runs::wake_at.eq(seconds_from_now(60)),
        ))
        .execute(&mut app.conn())
        .unwrap();
    app.step(&parent, 0, "child", "subworkflow", "WAITING", |r| {
        r.attempt = 1;
        r.child_run_id = Some(child.clone());
    });
    app.step(&child, 0, "wait", "delay", "WAITING", |r| {
        r.attempt = 1;
        r.wake_at = Some(seconds_from_now(60));
    });
    let r = app
        .post(&format!("/workflows/runs/{parent}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        step_summary(&r.body["data"]),
        [s("child", "CANCELLED", 1), s("after", "CANCELLED", 0)]
    );
    let c = app.get(&format!("/workflows/runs/{child}")).await.body["data"].clone();
    assert_eq!(c["status"], "CANCELLED");
    assert_eq!(step_summary(&c), [s("wait", "CANCELLED", 1)]);
    assert_eq!(
        transitions(&c),
        [
            t(None, "WAITING", "CANCELLED"),
            t(Some("wait"), "WAITING", "CANCELLED")
        ]
    );
    assert_eq!(
        c["logs"][0]["message"],
        format!("run cancelled with its parent run {parent}")
    );
    assert!(app.outbox(&parent).is_empty() && app.outbox(&child).is_empty());
}

#[tokio::test]
async fn cancel_of_a_child_run_wakes_its_waiting_parent() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let parent = app.run_in(&wf, "WAITING");
    let child = app.run_in(&wf, "RUNNING");
    diesel::update(runs::table.find(&child))
        .set((
            runs::parent_run_id.eq(&parent),
            runs::parent_step.eq("review"),
        ))
        .execute(&mut app.conn())
        .unwrap();
    let r = app
        .post(&format!("/workflows/runs/{child}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let jobs = app.outbox(&parent);
    assert_eq!(
        jobs.len(),
        1,
        "the parent gets a job to see its child ended"
    );
    assert_eq!(jobs[0].payload["runId"], parent.as_str());
    assert!(jobs[0].sent_at.is_some());
    assert_eq!(app.queued().await, 1);
}

#[tokio::test]
async fn retry_of_a_failed_run_reruns_failed_and_cancelled_steps_and_keeps_completed_ones() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = app.run_in(&wf, "FAILED");
    diesel::update(runs::table.find(&id))
        .set((
            runs::error.eq("step 'review' failed"),
            runs::output.eq(json!({"partial": true})),
        ))
        .execute(&mut app.conn())
        .unwrap();
    app.step(&id, 0, "classify", "agent", "COMPLETED", |r| {
        r.attempt = 1;
        r.output = Some(json!({"category": "billing"}));
        r.started_at = Some(seconds_from_now(-5));
        r.completed_at = Some(seconds_from_now(-4));
    });
    app.step(&id, 1, "review", "approval", "FAILED", |r| {
        r.attempt = 3;
        r.error = Some("rejected".into());
        r.output = Some(json!({"approved": false, "comment": null}));
        r.completed_at = Some(seconds_from_now(-3));
    });
    app.step(&id, 2, "reply", "transform", "CANCELLED", |r| {
        r.completed_at = Some(seconds_from_now(-3));
    });
    let r = app
        .post(&format!("/workflows/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    assert_eq!(d["status"], "PENDING");
    assert_eq!(
        (&d["error"], &d["output"], &d["completedAt"]),
        (&json!(null), &json!(null), &json!(null))
    );
    assert_eq!(
        step_summary(d),
        [
            s("classify", "COMPLETED", 1),
            s("review", "PENDING", 3),
            s("reply", "PENDING", 0)
        ],
        "attempt numbers continue"
    );
    assert_eq!(d["steps"][0]["output"], json!({"category": "billing"}));
    assert!(d["steps"][0]["completedAt"].is_string());
    for step in &d["steps"].as_array().unwrap()[1..] {
        assert_eq!(
            (&step["error"], &step["output"], &step["completedAt"]),
            (&json!(null), &json!(null), &json!(null))
        );
    }
    assert_eq!(
        transitions(d),
        [
            t(None, "FAILED", "PENDING"),
            t(Some("review"), "FAILED", "PENDING"),
            t(Some("reply"), "CANCELLED", "PENDING"),
        ]
    );
    assert_eq!(d["logs"][0]["message"], "run retried");
    let jobs = app.outbox(&id);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            &jobs[0].payload["v"],
            &jobs[0].payload["runId"],
            &jobs[0].payload["orgId"]
        ),
        (&json!(1), &json!(id), &json!(ORG))
    );
    assert!(jobs[0].sent_at.is_some(), "published after commit");
    assert_eq!(app.queued().await, 1);
}

#[tokio::test]
async fn a_cancelled_run_can_be_retried_from_the_start() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = app.run_in(&wf, "RUNNING");
    app.step(&id, 0, "classify", "agent", "RUNNING", |r| r.attempt = 1);
    assert_eq!(
        app.post(&format!("/workflows/runs/{id}/cancel"), json!({}))
            .await
            .status,
        200
    );
    let r = app
        .post(&format!("/workflows/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        step_summary(&r.body["data"]),
        [
            s("classify", "PENDING", 1),
            s("review", "PENDING", 0),
            s("reply", "PENDING", 0)
        ]
    );
    let row = run_row(&app, &id);
    assert_eq!((row.status.as_str(), row.lease_owner), ("PENDING", None));
}

#[tokio::test]
async fn retry_of_a_run_that_has_not_failed_is_a_409() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    for status in ["PENDING", "RUNNING", "WAITING", "COMPLETED"] {
        let id = app.run_in(&wf, status);
        let r = app
            .post(&format!("/workflows/runs/{id}/retry"), json!({}))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("CONFLICT")),
            "{status}"
        );
        assert_eq!(run_row(&app, &id).status, status);
        assert!(app.outbox(&id).is_empty());
    }
}

/// A run parked on its `review` approval, after `classify` completed.
fn waiting_for_review(app: &TestApp, wf: &str, run_status: &str) -> String {
    let id = app.run_in(wf, run_status);
    app.step(&id, 0, "classify", "agent", "COMPLETED", |r| r.attempt = 1);
    app.step(&id, 1, "review", "approval", "WAITING", |r| {
        r.attempt = 1;
        r.wake_at = Some(seconds_from_now(3600));
    });
    id
}

#[tokio::test]
async fn approving_a_waiting_step_completes_it_and_queues_the_parked_run() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = waiting_for_review(&app, &wf, "WAITING");
    let r = app
        .post(
            &format!("/workflows/runs/{id}/steps/review/approve"),
            json!({"approved": true, "comment": "looks fine"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    assert_eq!(d["status"], "WAITING", "the worker moves the run on");
    let review = &d["steps"][1];
    assert_eq!(review["status"], "COMPLETED");
    assert_eq!(
        review["output"],
        json!({"approved": true, "comment": "looks fine"})
    );
    assert_eq!(review["error"], json!(null));
    assert!(review["completedAt"].is_string());
    assert_eq!(transitions(d), [t(Some("review"), "WAITING", "COMPLETED")]);
    assert_eq!(
        d["logs"][0],
        json!({"at": d["logs"][0]["at"], "level": "INFO", "step": "review",
               "message": "approved: looks fine"})
    );
    let jobs = app.outbox(&id);
    assert_eq!(jobs.len(), 1, "the parked run gets a job");
    assert!(jobs[0].sent_at.is_some());
    assert_eq!(app.queued().await, 1);
}

#[tokio::test]
async fn rejecting_a_waiting_step_fails_it() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = waiting_for_review(&app, &wf, "WAITING");
    let r = app
        .post(
            &format!("/workflows/runs/{id}/steps/review/approve"),
            json!({"approved": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let review = &r.body["data"]["steps"][1];
    assert_eq!(review["status"], "FAILED");
    assert_eq!(
        review["output"],
        json!({"approved": false, "comment": null})
    );
    assert_eq!(review["error"], "rejected");
    assert_eq!(r.body["data"]["logs"][0]["level"], "WARN");
    assert_eq!(r.body["data"]["logs"][0]["message"], "rejected");
    assert_eq!(app.outbox(&id).len(), 1);
}

#[tokio::test]
async fn an_approval_while_a_worker_holds_the_run_queues_nothing() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = waiting_for_review(&app, &wf, "RUNNING");
    let r = app
        .post(
            &format!("/workflows/runs/{id}/steps/review/approve"),
            json!({"approved": false, "comment": "no"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["steps"][1]["error"], "rejected: no");
    assert!(
        app.outbox(&id).is_empty(),
        "its worker re-reads waiting steps before it parks"
    );
}

#[tokio::test]
async fn approvals_of_steps_that_are_not_waiting_approvals_are_409s() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = waiting_for_review(&app, &wf, "WAITING");
    let approve = |step: &str| format!("/workflows/runs/{id}/steps/{step}/approve");
    let conflict = |r: crate::helpers::Reply| {
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("CONFLICT")),
            "{}",
            r.body
        )
    };
    // Not an approval step (completed or not), and an approval step with no row yet.
    conflict(
        app.post(&approve("classify"), json!({"approved": true}))
            .await,
    );
    conflict(app.post(&approve("reply"), json!({"approved": true})).await);
    let not_started = app.run_in(&wf, "WAITING");
    let r = app
        .post(
            &format!("/workflows/runs/{not_started}/steps/review/approve"),
            json!({"approved": true}),
        )
        .await;
    conflict(r);
    // Decided once: a second decision is too late.
    assert_eq!(
        app.post(&approve("review"), json!({"approved": true}))
            .await
            .status,
        200
    );
    conflict(
        app.post(&approve("review"), json!({"approved": false}))
            .await,
    );
    let r = app.post(&approve("nope"), json!({"approved": true})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    assert_eq!(app.outbox(&id).len(), 1, "only the decision queued a job");
}

#[tokio::test]
async fn approval_bodies_are_checked() {
    let app = spawn_app().await;
    let wf = three_steps(&app);
    let id = waiting_for_review(&app, &wf, "WAITING");
    let path = format!("/workflows/runs/{id}/steps/review/approve");
    let r = app.post(&path, json!({})).await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["approved".to_string()])
    );
    let r = app
        .post(
            &path,
            json!({"approved": "yes", "comment": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str(), fields(&r.body)),
        (
            400,
            Some("VALIDATION_ERROR"),
            vec!["approved".into(), "comment".into(), "reason".into()]
        )
    );
    let r = app
        .post(
            &path,
            json!({"approved": true, "comment": "x".repeat(2001)}),
        )
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["comment".to_string()])
    );
    let r = app.send("POST", &path, None, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );
    let r = app
        .post(
            &path,
            json!({"approved": true, "comment": "x".repeat(2000)}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
