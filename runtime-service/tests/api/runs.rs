use crate::helpers::{fields, spawn_app, ORG};
use serde_json::{json, Value};

#[tokio::test]
async fn a_new_run_shows_every_step_pending_and_no_progress_yet() {
    let app = spawn_app().await;
    app.workflow("support_triage", true);
    let id = app
        .post(
            "/workflows/wf_support_triage/trigger",
            json!({"variables": {"ticketId": "TCK-101"}}),
        )
        .await
        .body["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.get(&format!("/workflows/runs/{id}")).await;
    assert_eq!(r.status, 200);
    let d = &r.body["data"];
    assert_eq!(d["id"], id);
    assert_eq!(d["status"], "PENDING");
    assert_eq!(d["variables"], json!({"ticketId": "TCK-101"}));
    for key in ["createdAt", "updatedAt"] {
        assert!(d[key].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(d["startedAt"], json!(null));
    assert_eq!(
        d["steps"],
        json!([{"name": "classify", "type": "agent", "dependsOn": [], "status": "PENDING", "attempt": 0,
        "startedAt": null, "completedAt": null, "output": null, "error": null}])
    );
    assert_eq!(d["transitions"], json!([]));
    assert_eq!(d["logs"], json!([]));
}

#[tokio::test]
async fn each_step_names_the_steps_it_depends_on() {
    let app = spawn_app().await;
    let t = |name: &str| json!({"name": name, "type": "transform", "value": 1});
    let with_deps = |name: &str, deps: &[&str]| {
        let mut s = t(name);
        s["dependsOn"] = json!(deps);
        s
    };
    let wf = app.workflow_with(
        "branches",
        json!({"steps": [
            t("a"),
            t("b"),
            with_deps("c", &["a"]),
            with_deps("d", &["b", "c"]),
            t("e"),
            with_deps("f", &[]),
        ]}),
    );
    let id = app.run_in(&wf, "PENDING");
    let r = app.get(&format!("/workflows/runs/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deps: Vec<(String, Value)> = r.body["data"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["dependsOn"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, Value)> = [
        ("a", json!([])),
        ("b", json!(["a"])),
        ("c", json!(["a"])),
        ("d", json!(["b", "c"])),
        ("e", json!(["d"])),
        ("f", json!([])),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect();
    assert_eq!(deps, expected);
}

#[tokio::test]
async fn unknown_and_malformed_run_ids_are_404() {
    let app = spawn_app().await;
    let r = app.get("/workflows/runs/run_01h3j4k5m6").await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = app
        .get("/workflows/runs/run_01m8hcprkqey8xhsdk0tek7x7n")
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn list_runs_is_newest_first_with_filters_and_cursors() {
    let app = spawn_app().await;
    app.workflow("a", true);
    app.workflow("b", true);
    let mut ids = Vec::new();
    for wf in ["a", "b", "a", "b", "a"] {
        let r = app
            .post(&format!("/workflows/wf_{wf}/trigger"), json!({}))
            .await;
        ids.push(r.body["data"]["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let r = app.get("/workflows/runs?limit=2").await;
    assert_eq!(r.status, 200);
    let page: Vec<String> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(page, ids[..2]);
    let cursor = r.body["pagination"]["nextCursor"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .get(&format!("/workflows/runs?limit=2&cursor={cursor}"))
        .await;
    let page: Vec<String> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(page, ids[2..4]);

    let r = app.get("/workflows/runs?workflowId=wf_b").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["pagination"]["nextCursor"], json!(null));
    let r = app
        .get(&format!("/workflows/runs?status=PENDING&orgId={ORG}"))
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 5);
    let r = app.get("/workflows/runs?status=COMPLETED").await;
    assert_eq!(r.body["data"], json!([]));

    let r = app
        .get("/workflows/runs?status=done&limit=500&sort=asc")
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (
            400,
            vec![
                "limit".to_string(),
                "status".to_string(),
                "sort".to_string()
            ]
        )
    );
    let r = app.get("/workflows/runs?orgId=org_acme_123").await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
}

#[tokio::test]
async fn runs_is_never_taken_for_a_workflow_id() {
    let app = spawn_app().await;
    let r = app.send("POST", "/workflows/runs/trigger", None, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    let r = app.send("DELETE", "/workflows/runs", None, &[]).await;
    assert_eq!(r.status, 405);
}
