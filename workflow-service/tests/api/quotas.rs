//! Per-org quotas: `GET`/`PUT /admin/orgs/{orgId}/limits`, and the two this service
//! enforces, `maxWorkflows` and `maxVersionsKept`.

use crate::helpers::{assert_error, fields, spawn_app, workflow, Reply, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::limits::{self, OrgLimitOverrides};
use shared_models::schema::workflow_versions;
use thygon_testkit::{fixtures, ADMIN_KEY};

async fn admin(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> Reply {
    app.send_as(Some(ADMIN_KEY), method, path, body).await
}

fn limits_path(org: &str) -> String {
    format!("/admin/orgs/{org}/limits")
}

#[tokio::test]
async fn limits_read_as_defaults_then_overrides_then_defaults_again() {
    let app = spawn_app().await;
    let defaults = serde_json::to_value(limits::defaults()).unwrap();

    let r = admin(&app, "GET", &limits_path(ORG), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"],
        json!({"orgId": ORG, "limits": defaults, "overrides": {}})
    );

    let r = admin(
        &app,
        "PUT",
        &limits_path(ORG),
        Some(json!({"maxQueuedRuns": 3, "requestsPerSecond": 7})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"]["overrides"],
        json!({"maxQueuedRuns": 3, "requestsPerSecond": 7})
    );
    assert_eq!(r.body["data"]["limits"]["maxQueuedRuns"], 3);
    assert_eq!(r.body["data"]["limits"]["requestsPerSecond"], 7);
    assert_eq!(
        r.body["data"]["limits"]["maxWorkflows"],
        defaults["maxWorkflows"]
    );

    // A field left out keeps its value; null returns one to the default.
    let r = admin(
        &app,
        "PUT",
        &limits_path(ORG),
        Some(json!({"maxWorkflows": 5, "requestsPerSecond": null})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"]["overrides"],
        json!({"maxQueuedRuns": 3, "maxWorkflows": 5})
    );
    assert_eq!(
        r.body["data"]["limits"]["requestsPerSecond"],
        defaults["requestsPerSecond"]
    );
    let read = admin(&app, "GET", &limits_path(ORG), None).await;
    assert_eq!(read.body["data"], r.body["data"]);
}

#[tokio::test]
async fn bad_limits_are_400s_naming_the_field_and_unknown_orgs_404s() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({"maxQueuedRuns": 0}), "maxQueuedRuns"),
        (json!({"maxWorkflows": -1}), "maxWorkflows"),
        (json!({"maxEventStreams": 1.5}), "maxEventStreams"),
        (json!({"requestsPerSecond": "10"}), "requestsPerSecond"),
        (json!({"maxVersionsKept": 1_000_001}), "maxVersionsKept"),
        (json!({"maxQueued": 3}), "maxQueued"),
    ] {
        let r = admin(&app, "PUT", &limits_path(ORG), Some(body.clone())).await;
        assert_error(&r, 400, "VALIDATION_ERROR", &body.to_string());
        assert_eq!(fields(&r.body), vec![field.to_string()], "{}", r.body);
    }
    // Nothing was changed by the refused bodies.
    let r = admin(&app, "GET", &limits_path(ORG), None).await;
    assert_eq!(r.body["data"]["overrides"], json!({}));

    let r = admin(&app, "GET", &limits_path("org_nobody"), None).await;
    assert_error(&r, 404, "NOT_FOUND", "GET of an unknown org");
    let r = admin(
        &app,
        "PUT",
        &limits_path("org_nobody"),
        Some(json!({"maxWorkflows": 2})),
    )
    .await;
    assert_error(&r, 404, "NOT_FOUND", "PUT of an unknown org");

    // Org keys cannot read or set quotas.
    let r = app.send("GET", &limits_path(ORG), None).await;
    assert_error(&r, 403, "FORBIDDEN", "an org key");
    let r = app
        .send("PUT", &limits_path(ORG), Some(json!({"maxWorkflows": 1})))
        .await;
    assert_error(&r, 403, "FORBIDDEN", "an org key");
}

#[tokio::test]
async fn creating_a_workflow_over_max_workflows_is_a_429_and_deleted_ones_do_not_count() {
    let app = spawn_app().await;
    fixtures::set_limits(
        &mut app.conn(),
        ORG,
        &OrgLimitOverrides {
            max_workflows: Some(2),
            ..Default::default()
        },
    );
    for name in ["one", "two"] {
        let r = app.send("POST", "/workflows", Some(workflow(name))).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = app
        .send("POST", "/workflows", Some(workflow("three")))
        .await;
    assert_error(&r, 429, "QUOTA_EXCEEDED", "a third workflow");
    assert_eq!(
        r.body["error"]["message"],
        "maxWorkflows (2) reached: the org has 2 workflows (deleted ones do not count)"
    );
    let r = app.send("GET", "/workflows/wf_three", None).await;
    assert_eq!(r.status, 404, "nothing was created: {}", r.body);

    let r = app.send("DELETE", "/workflows/wf_one", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .send("POST", "/workflows", Some(workflow("three")))
        .await;
    assert_eq!(
        r.status, 201,
        "a deleted workflow frees its place: {}",
        r.body
    );
}

fn versions_of(app: &TestApp, id: &str) -> Vec<i32> {
    workflow_versions::table
        .filter(workflow_versions::org_id.eq(ORG))
        .filter(workflow_versions::workflow_id.eq(id))
        .select(workflow_versions::version)
        .order(workflow_versions::version)
        .load(&mut app.conn())
        .expect("versions")
}

#[tokio::test]
async fn versions_beyond_max_versions_kept_are_pruned_unless_a_run_uses_them() {
    let app = spawn_app().await;
    fixtures::set_limits(
        &mut app.conn(),
        ORG,
        &OrgLimitOverrides {
            max_versions_kept: Some(2),
            ..Default::default()
        },
    );
    let r = app.send("POST", "/workflows", Some(workflow("kept"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A run of version 1 keeps that version.
    fixtures::insert_run(&mut app.conn(), ORG, "wf_kept", json!({}));
    let update = json!({"definition": workflow("kept")["definition"]});
    for expected in 2..=5 {
        let r = app
            .send("PUT", "/workflows/wf_kept", Some(update.clone()))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["data"]["version"], expected);
    }
    // The newest two (4, 5), and 1, which a run uses; 2 and 3 are gone.
    assert_eq!(versions_of(&app, "wf_kept"), vec![1, 4, 5]);
    let r = app.send("GET", "/workflows/wf_kept/versions/3", None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.send("GET", "/workflows/wf_kept", None).await;
    assert_eq!(r.body["data"]["version"], 5, "{}", r.body);
}
