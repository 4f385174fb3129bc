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

/// Two turns of the agent step `classify` (attempts 1 and 2), as the worker writes them.
fn insert_turns(app: &crate::helpers::TestApp, run_id: &str, workflow_id: &str) {
    use crate::helpers::Turn;
    let now = shared_models::time::now();
    app.turn(Turn {
        reply: json!({"role": "assistant", "content": "", "toolCalls": [{"id": "c1", "name": "lookup", "arguments": {"q": 1}}]}),
        tool_results: json!({"c1": {"role": "tool", "toolCallId": "c1", "name": "lookup", "content": "{\"plan\":\"pro\"}", "isError": false}}),
        tokens: (100, 10, 40),
        cost_picos: 400_000_000,
        ..Turn::of(ORG, workflow_id, run_id, 1, now)
    });
    app.turn(Turn {
        attempt: 2,
        tokens: (200, 20, 0),
        cost_picos: 700_000_000,
        ..Turn::of(ORG, workflow_id, run_id, 2, now)
    });
}

#[tokio::test]
async fn an_agent_steps_turns_and_usage_are_in_run_detail_and_lists() {
    let app = spawn_app().await;
    app.workflow("support_triage", true);
    let used = app.run_in("wf_support_triage", "COMPLETED");
    app.step(&used, 0, "classify", "agent", "COMPLETED", |s| {
        s.attempt = 2
    });
    insert_turns(&app, &used, "wf_support_triage");
    let unused = app.run_in("wf_support_triage", "PENDING");

    let d = app.get(&format!("/workflows/runs/{used}")).await.body["data"].clone();
    let usage =
        json!({"inputTokens": 300, "outputTokens": 30, "cachedTokens": 40, "costUsd": 0.0011});
    assert_eq!(d["usage"], usage);
    let step = &d["steps"][0];
    assert_eq!(
        step["usage"], usage,
        "the step's usage sums its turns of every attempt"
    );
    let turns = step["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        (turns[0]["turn"].clone(), turns[0]["attempt"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(turns[0]["model"], "gpt-test");
    assert_eq!(turns[0]["reply"]["toolCalls"][0]["name"], "lookup");
    assert_eq!(turns[0]["toolResults"][0]["content"], "{\"plan\":\"pro\"}");
    assert_eq!(
        turns[0]["usage"],
        json!({"inputTokens": 100, "outputTokens": 10, "cachedTokens": 40, "costUsd": 0.0004})
    );
    assert_eq!(turns[1]["toolResults"], json!([]));

    let list = app.get("/workflows/runs?limit=10").await.body["data"].clone();
    let of = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(of(&used)["usage"], usage);
    assert_eq!(
        of(&unused)["usage"],
        json!({"inputTokens": 0, "outputTokens": 0, "cachedTokens": 0, "costUsd": 0.0})
    );
    let fresh = app.get(&format!("/workflows/runs/{unused}")).await.body["data"].clone();
    assert!(fresh["steps"][0].get("turns").is_none() && fresh["steps"][0].get("usage").is_none());
}
