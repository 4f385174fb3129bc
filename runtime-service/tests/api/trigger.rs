use crate::helpers::{fields, spawn_app, ORG};
use serde_json::json;

#[tokio::test]
async fn trigger_answers_201_pending_with_the_seed_shape() {
    let app = spawn_app().await;
    app.workflow("support_triage", true);
    let r = app
        .post(
            "/workflows/wf_support_triage/trigger",
            json!({"variables": {"priorityOverride": "high"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["message"], "Run queued — execution is asynchronous");
    let d = &r.body["data"];
    assert!(d["id"].as_str().unwrap().starts_with("run_"));
    assert_eq!(d["workflowId"], "wf_support_triage");
    assert_eq!(d["status"], "PENDING");
    assert_eq!(d["variables"], json!({"priorityOverride": "high"}));
    assert_eq!(d["workflowVersion"], 1);
    assert_eq!(d["orgId"], ORG);
    assert_eq!(app.queued().await, 1, "the job was published and confirmed");
}

#[tokio::test]
async fn trigger_accepts_an_empty_body_and_null_variables() {
    let app = spawn_app().await;
    app.workflow("w", true);
    let r = app.send("POST", "/workflows/wf_w/trigger", None, &[]).await;
    assert_eq!((r.status, &r.body["data"]["variables"]), (201, &json!({})));
    let r = app
        .post("/workflows/wf_w/trigger", json!({"variables": null}))
        .await;
    assert_eq!((r.status, &r.body["data"]["variables"]), (201, &json!({})));
}

#[tokio::test]
async fn trigger_refuses_bad_bodies_unknown_and_inactive_workflows() {
    let app = spawn_app().await;
    app.workflow("off", false);
    app.workflow("on", true);
    let r = app.post("/workflows/wf_missing/trigger", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = app.post("/workflows/not-an-id/trigger", json!({})).await;
    assert_eq!(r.status, 404);
    let r = app.post("/workflows/wf_off/trigger", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
    let r = app
        .post(
            "/workflows/wf_on/trigger",
            json!({"variables": [1], "varaibles": {}}),
        )
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["variables".to_string(), "varaibles".to_string()])
    );
    let r = app.send("GET", "/workflows/wf_on/trigger", None, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
}

#[tokio::test]
async fn create_run_directly_checks_the_body_and_the_org() {
    let app = spawn_app().await;
    app.workflow("support_triage", true);
    let r = app.post("/workflows/runs", json!({"workflowId": "wf_support_triage", "variables": {"ticketId": "TCK-101"}, "orgId": ORG})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["message"], "Run queued — execution is asynchronous");
    assert_eq!(r.body["data"]["variables"]["ticketId"], "TCK-101");
    let r = app
        .post(
            "/workflows/runs",
            json!({"workflowId": "wf_support_triage", "orgId": "org_acme_123"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let r = app
        .post("/workflows/runs", json!({"variables": {}, "org": "x"}))
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["workflowId".to_string(), "org".to_string()])
    );
    let r = app.post("/workflows/runs", json!({"workflowId": 7})).await;
    assert_eq!(fields(&r.body), ["workflowId"]);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_run_or_a_409_for_another_body() {
    let app = spawn_app().await;
    app.workflow("w", true);
    let key = [("Idempotency-Key", "order-42")];
    let body = json!({"variables": {"a": 1}});
    let first = app
        .send("POST", "/workflows/wf_w/trigger", Some(body.clone()), &key)
        .await;
    assert_eq!(first.status, 201);
    let again = app
        .send("POST", "/workflows/wf_w/trigger", Some(body), &key)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["data"]["id"], first.body["data"]["id"]);
    let other = app
        .send(
            "POST",
            "/workflows/wf_w/trigger",
            Some(json!({"variables": {"a": 2}})),
            &key,
        )
        .await;
    assert_eq!(
        (other.status, other.body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
    let bad = app
        .send(
            "POST",
            "/workflows/wf_w/trigger",
            None,
            &[("Idempotency-Key", "has space")],
        )
        .await;
    assert_eq!(
        (bad.status, fields(&bad.body)),
        (400, vec!["Idempotency-Key".to_string()])
    );
    assert_eq!(app.queued().await, 1, "a replay publishes nothing");
}

#[tokio::test]
async fn oversized_variables_are_a_400_naming_them() {
    let app = spawn_app().await;
    app.workflow("w", true);
    let r = app
        .post(
            "/workflows/wf_w/trigger",
            json!({"variables": {"blob": "x".repeat(70 * 1024)}}),
        )
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["variables".to_string()])
    );
    assert_eq!(
        app.get("/workflows/runs").await.body["data"],
        json!([]),
        "no run was created"
    );
}

/// The `budget` column of a run.
fn stored_budget(app: &crate::helpers::TestApp, run_id: &str) -> Option<serde_json::Value> {
    use diesel::prelude::*;
    use shared_models::schema::runs;
    runs::table
        .find(run_id)
        .select(runs::budget)
        .first(&mut app.conn())
        .expect("the run")
}

#[tokio::test]
async fn a_triggers_budget_is_kept_with_its_run_and_a_bad_one_is_a_400() {
    let app = spawn_app().await;
    app.workflow("w", true);
    // Batched (no key) and single (with a key): both keep it.
    let plain = app
        .post(
            "/workflows/wf_w/trigger",
            json!({"budget": {"maxTokens": 5000}}),
        )
        .await;
    assert_eq!(plain.status, 201, "{}", plain.body);
    let id = plain.body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(stored_budget(&app, &id), Some(json!({"maxTokens": 5000})));
    let keyed = app
        .send(
            "POST",
            "/workflows/runs",
            Some(json!({"workflowId": "wf_w", "budget": {"maxCostUsd": 0.25}})),
            &[("Idempotency-Key", "budgeted-1")],
        )
        .await;
    assert_eq!(keyed.status, 201, "{}", keyed.body);
    let id = keyed.body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(stored_budget(&app, &id), Some(json!({"maxCostUsd": 0.25})));
    // The same key with another budget is another request.
    let other = app
        .send(
            "POST",
            "/workflows/runs",
            Some(json!({"workflowId": "wf_w", "budget": {"maxCostUsd": 0.5}})),
            &[("Idempotency-Key", "budgeted-1")],
        )
        .await;
    assert_eq!(other.status, 409);
    let none = app.post("/workflows/wf_w/trigger", json!({})).await;
    let id = none.body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(stored_budget(&app, &id), None);

    let bad = app
        .post(
            "/workflows/wf_w/trigger",
            json!({"budget": {"maxTokens": 0, "maxCostUsd": "a lot", "tokens": 1}}),
        )
        .await;
    assert_eq!(
        (bad.status, fields(&bad.body)),
        (
            400,
            vec![
                "budget.maxTokens".to_string(),
                "budget.maxCostUsd".to_string(),
                "budget.tokens".to_string()
            ]
        )
    );
    assert_eq!(app.queued().await, 3, "a refused trigger queues nothing");
}
