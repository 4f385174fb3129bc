//! Hostile input: thousands of malformed and adversarial requests against the real app
//! (one app and database, reused across cases). Every answer must be an envelope with a
//! contract error code, 4xx answers must say `success: false`, and nothing may be a 5xx.
//! The generators and the harness are in `thygon_testkit::hostile`.

use crate::helpers::{spawn_app, TestApp};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use thygon_testkit::hostile::*;

// ---------------------------------------------------------------------------------------
// runtime-service
// ---------------------------------------------------------------------------------------

/// Placeholders for the ids the child's seeding makes (run ids are random); the child puts
/// the real ids in before sending (`prepare`).
const RUNS: &[&str] = &[
    "@run_pending@",
    "@run_triggered@",
    "@run_running@",
    "@run_completed@",
    "@run_failed@",
    "@run_waiting@",
];
const WORKFLOWS: &[&str] = &["wf_seed_a", "wf_seed_off", "wf_seed_appr"];

fn variables() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => json_value(),
        1 => Just(Value::Null),
        1 => Just(json!({})),
        1 => (1usize..40).prop_map(|d| {
            let mut v = json!(1);
            for _ in 0..d {
                v = json!({ "x": v });
            }
            v
        }),
    ]
    .boxed()
}

fn runtime_cases() -> BoxedStrategy<Case> {
    let mut existing: Vec<String> = RUNS.iter().map(|s| s.to_string()).collect();
    existing.extend(WORKFLOWS.iter().map(|s| s.to_string()));
    let seg = segment(existing);
    // Ids no run has: a GET of `/events` on one answers 404 at once, never a stream.
    let missing = prop_oneof![
        2 => "run_[0-9a-z]{26}",
        1 => segment(vec!["run_missing".to_string()]).prop_filter("not a seeded id", |s| !s.contains('@')),
    ];
    let workflow_id = prop_oneof![
        4 => prop::sample::select(WORKFLOWS).prop_map(str::to_string),
        2 => seg.clone(),
    ];
    let run = prop_oneof![
        4 => prop::sample::select(RUNS).prop_map(str::to_string),
        2 => seg.clone(),
    ];
    let step = prop_oneof![
        4 => prop::sample::select(vec!["gate", "classify", "nope"]).prop_map(str::to_string),
        2 => seg.clone(),
    ];
    let path = prop_oneof![
        3 => routed(&["POST"], workflow_id.clone().prop_map(|id| format!("/workflows/{id}/trigger"))),
        3 => routed(&["GET", "POST"], Just("/workflows/runs".to_string())),
        2 => routed(&["GET"], run.clone().prop_map(|id| format!("/workflows/runs/{id}"))),
        1 => routed(&["POST"], run.clone().prop_map(|id| format!("/workflows/runs/{id}/cancel"))),
        1 => routed(&["POST"], run.clone().prop_map(|id| format!("/workflows/runs/{id}/retry"))),
        2 => routed(&["POST"], (run.clone(), step).prop_map(|(id, s)| format!("/workflows/runs/{id}/steps/{s}/approve"))),
        // Events: GET only where no run is, any other method anywhere.
        1 => missing.prop_map(|id| ("GET".to_string(), format!("/workflows/runs/{id}/events"))),
        1 => (
            prop::sample::select(vec!["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
            run.clone(),
        )
            .prop_map(|(m, id)| (m.to_string(), format!("/workflows/runs/{id}/events"))),
        1 => routed(&["GET"], prop::collection::vec(seg.clone(), 0..5).prop_map(|s| format!("/{}", s.join("/")))),
        1 => routed(&["GET"], prop::sample::select(vec![
            "/", "//", "/workflows", "/workflows/", "/workflows/runs/", "//workflows/runs",
            "/workflows/runs//cancel", "/workflows/runs/x/steps", "/workflows/runs/x/steps//approve",
            "/workflows/wf_seed_a", "/workflows/wf_seed_a/trigger/", "/workflows//trigger",
            "/workflows/runs/trigger", "/workflows/runs/runs", "/healthz", "/readyz",
            "/workflows/%2e%2e/runs", "/WORKFLOWS/runs", "/workflows/runs;x=1",
        ])
        .prop_map(str::to_string)),
    ];
    let shaped = prop_oneof![
        // POST /workflows/{id}/trigger
        3 => (opt(0.8, variables()), opt(0.2, (json_key(), json_value()))).prop_map(|(v, extra)| {
            let mut m = Map::new();
            if let Some(v) = v { m.insert("variables".into(), v); }
            if let Some((k, v)) = extra { m.insert(k, v); }
            Value::Object(m)
        }),
        // POST /workflows/runs
        3 => (
            opt(0.9, prop_oneof![
                3 => prop::sample::select(WORKFLOWS).prop_map(|s| json!(s)),
                1 => nasty_string().prop_map(Value::String),
                1 => json_value(),
            ]),
            opt(0.6, variables()),
            opt(0.3, prop_oneof![
                prop::sample::select(vec!["org_test", "org_other", "", "org_test\u{0}"]).prop_map(|s| json!(s)),
                json_value(),
            ]),
            opt(0.2, (json_key(), json_value())),
        )
            .prop_map(|(w, v, o, extra)| {
                let mut m = Map::new();
                if let Some(w) = w { m.insert("workflowId".into(), w); }
                if let Some(v) = v { m.insert("variables".into(), v); }
                if let Some(o) = o { m.insert("orgId".into(), o); }
                if let Some((k, v)) = extra { m.insert(k, v); }
                Value::Object(m)
            }),
        // POST .../approve
        2 => (
            opt(0.9, prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => json_value()]),
            opt(0.5, prop_oneof![
                3 => nasty_string().prop_map(Value::String),
                1 => (1000usize..20_000).prop_map(|n| json!("c".repeat(n))),
                1 => json_value(),
            ]),
            opt(0.2, (json_key(), json_value())),
        )
            .prop_map(|(a, c, extra)| {
                let mut m = Map::new();
                if let Some(a) = a { m.insert("approved".into(), a); }
                if let Some(c) = c { m.insert("comment".into(), c); }
                if let Some((k, v)) = extra { m.insert(k, v); }
                Value::Object(m)
            }),
        1 => json_value(),
        // A workflow body sent to the wrong service.
        1 => workflow_body(vec!["seed_a".to_string()]),
    ]
    .boxed();
    let headers = (
        opt(0.25, header_value()),
        opt(0.1, prop_oneof![
            3 => prop::sample::select(vec!["0", "1", "-1", "99999999999999999999", "abc", " 5 ", "1.5", ""])
                .prop_map(|s| s.as_bytes().to_vec()),
            1 => header_value(),
        ]),
        opt(0.05, header_value()),
        credential(),
    )
        .prop_map(|(key, last_event, rid, credential)| {
            let mut h = Vec::new();
            if let Some(v) = key { h.push(("idempotency-key".to_string(), v)); }
            if let Some(v) = last_event { h.push(("last-event-id".to_string(), v)); }
            if let Some(v) = rid { h.push(("x-request-id".to_string(), v)); }
            with_credential(h, credential)
        });
    (
        path,
        opt(0.3, query_string()),
        content_type(),
        body(shaped),
        headers,
    )
        .prop_map(
            |((method, path), query, content_type, body, headers)| Case {
                path: match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                },
                method,
                content_type,
                headers,
                body,
            },
        )
        .boxed()
}

/// Seed: workflows (live, inactive, one with an approval) and runs in every state; returns
/// the real id for each placeholder in `RUNS`.
async fn seed(app: &TestApp) -> Vec<(String, String)> {
    app.workflow("seed_a", true);
    app.workflow("seed_off", false);
    let appr = app.workflow_with(
        "seed_appr",
        json!({"steps": [{"name": "gate", "type": "approval"}]}),
    );
    let triggered = app
        .post(
            "/workflows/wf_seed_a/trigger",
            json!({"variables": {"ticketId": "T-1"}}),
        )
        .await;
    assert_eq!(triggered.status, 201, "{}", triggered.body);
    let triggered = triggered.body["data"]["id"]
        .as_str()
        .expect("run id")
        .to_string();
    let waiting = app.run_in(&appr, "WAITING");
    app.step(&waiting, 0, "gate", "approval", "WAITING", |_| {});
    let ids = [
        app.run_in("wf_seed_a", "PENDING"),
        triggered,
        app.run_in("wf_seed_a", "RUNNING"),
        app.run_in("wf_seed_a", "COMPLETED"),
        app.run_in("wf_seed_a", "FAILED"),
        waiting,
    ];
    RUNS.iter().map(|p| p.to_string()).zip(ids).collect()
}

/// The case with the seeded ids in place of their placeholders. A GET of an existing run's
/// events would stream, so the generator never makes one; this makes sure of it.
fn fill_in(c: Case, ids: &[(String, String)]) -> Case {
    let is_events_get =
        c.method == "GET" && c.path.split('?').next().unwrap_or("").ends_with("/events");
    let fill = |s: &str| {
        ids.iter().fold(s.to_string(), |s, (p, id)| {
            s.replace(p, if is_events_get { "run_missing" } else { id })
        })
    };
    let body = match std::str::from_utf8(&c.body) {
        Ok(text) if text.contains('@') => fill(text).into_bytes(),
        _ => c.body,
    };
    Case {
        path: fill(&c.path),
        body,
        ..c
    }
}

#[test]
fn hostile_requests_always_get_an_envelope_and_never_a_5xx() {
    supervise(
        "runtime-service",
        "hostile::hostile_requests_child",
        &runtime_cases(),
    );
}

#[tokio::test]
#[ignore = "run by hostile_requests_always_get_an_envelope_and_never_a_5xx in a child process"]
async fn hostile_requests_child() {
    let app = spawn_app().await;
    let ids = seed(&app).await;
    run_cases(
        &runtime_cases(),
        &app.address,
        |_| async {},
        |c| authorize(fill_in(c, &ids), &app.key),
    )
    .await;
}
