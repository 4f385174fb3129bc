//! Hostile input: thousands of malformed and adversarial requests against the real app
//! (one app and database, reused across cases). Every answer must be an envelope with a
//! contract error code, 4xx answers must say `success: false`, and nothing may be a 5xx.
//! The generators and the harness are in `thygon_testkit::hostile`.

use crate::helpers::{spawn_app, workflow, TestApp};
use proptest::prelude::*;
use serde_json::json;
use thygon_testkit::hostile::*;

// ---------------------------------------------------------------------------------------
// workflow-service
// ---------------------------------------------------------------------------------------

const SEEDS: &[&str] = &["seed_a", "seed_b", "seed_c"];

/// Create the seed workflows; `again`: some may still exist (409), those deleted come back.
async fn seed(app: &TestApp, again: bool) {
    for name in SEEDS {
        let r = app.send("POST", "/workflows", Some(workflow(name))).await;
        let created = r.status == 201 || (again && r.status == 409);
        assert!(created, "{name}: {} {}", r.status, r.body);
    }
}

fn workflow_cases() -> BoxedStrategy<Case> {
    let ids: Vec<String> = SEEDS.iter().map(|s| format!("wf_{s}")).collect();
    let names: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    let seg = segment(ids);
    let version = prop_oneof![
        4 => prop::sample::select(vec!["1", "2", "3", "0", "-1", "01", "+1", "1.0", "2147483648",
            "99999999999999999999", "abc", "latest", "1e3", "%31", " 1"]).prop_map(str::to_string),
        1 => seg.clone(),
    ];
    const ANY: &[&str] = &["GET"];
    let path = prop_oneof![
        3 => routed(&["GET", "POST"], Just("/workflows".to_string())),
        3 => routed(&["GET", "PUT", "DELETE"], seg.clone().prop_map(|id| format!("/workflows/{id}"))),
        2 => routed(&["POST"], Just("/workflows/validate".to_string())),
        1 => routed(&["GET"], seg.clone().prop_map(|id| format!("/workflows/{id}/versions"))),
        1 => routed(&["GET"], (seg.clone(), version).prop_map(|(id, v)| format!("/workflows/{id}/versions/{v}"))),
        1 => routed(ANY, prop::collection::vec(seg.clone(), 0..5).prop_map(|s| format!("/{}", s.join("/")))),
        1 => routed(ANY, prop::sample::select(vec![
            "/", "//", "/workflows/", "//workflows", "/workflows//", "/workflows/validate/",
            "/workflows/runs", "/workflows/runs/x", "/workflows/x/trigger", "/healthz", "/readyz",
            "/workflows/%2e%2e/%2e%2e/etc/passwd", "/workflows/wf_seed_a/versions/1/x", "/WORKFLOWS",
            "/workflows/wf_seed_a/", "/workflows;x=1", "/workflows/wf_seed_a%00",
        ])
        .prop_map(str::to_string)),
    ];
    let wf_body = workflow_body(names);
    let shaped = prop_oneof![
        4 => wf_body.clone(),
        3 => near_valid_workflow(),
        // PUT-shaped: no name, or the wrong one.
        2 => wf_body.prop_map(|mut v| {
            if let Some(m) = v.as_object_mut() {
                m.remove("name");
            }
            v
        }),
        1 => definition().prop_map(|d| json!({ "definition": d })),
        1 => json_value(),
    ]
    .boxed();
    let case = (
        path,
        opt(0.3, query_string()),
        content_type(),
        body(shaped),
        opt(0.1, header_value()),
        credential(),
    )
        .prop_map(
            |((method, path), query, content_type, body, rid, credential)| Case {
                path: match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                },
                method,
                content_type,
                headers: with_credential(
                    rid.map(|v| ("x-request-id".to_string(), v))
                        .into_iter()
                        .collect(),
                    credential,
                ),
                body,
            },
        );
    case.boxed()
}

#[test]
fn hostile_requests_always_get_an_envelope_and_never_a_5xx() {
    supervise(
        "workflow-service",
        "hostile::hostile_requests_child",
        &workflow_cases(),
    );
}

#[tokio::test]
#[ignore = "run by hostile_requests_always_get_an_envelope_and_never_a_5xx in a child process"]
async fn hostile_requests_child() {
    let app = spawn_app().await;
    seed(&app, false).await;
    // A second version, so version routes have history to find.
    let r = app
        .send(
            "PUT",
            "/workflows/wf_seed_a",
            Some(
                json!({"definition": {"steps": [{"name": "t", "type": "transform", "value": 1}]}}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    run_cases(
        &workflow_cases(),
        &app.address,
        |i| {
            let app = &app;
            async move {
                if i % 200 == 199 {
                    // Deletes remove seeds; bring them back so later cases meet existing things.
                    seed(app, true).await;
                }
            }
        },
        |c| authorize(c, &app.key),
    )
    .await;
}
