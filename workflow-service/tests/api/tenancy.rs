//! Tenancy: a key sees and changes only its org's workflows; another org's ids answer 404,
//! exactly as ids that do not exist, and change nothing.

use crate::helpers::{assert_error, spawn_app, workflow, Reply, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::models::{WorkflowRow, WorkflowVersionRow};
use shared_models::schema::{workflow_versions, workflows};

const OTHER: &str = "org_other";

/// Org A ([`ORG`], the app's key) with `wf_alpha` (2 versions) and `wf_shared`; org B
/// ([`OTHER`]) with `wf_beta` and its own `wf_shared`. Returns B's key.
async fn two_orgs(app: &TestApp) -> String {
    let b = app.key_for(OTHER);
    let create = |key: String, name: &'static str, description: &'static str| async move {
        let mut body = workflow(name);
        body["description"] = json!(description);
        let r = app
            .send_as(Some(&key), "POST", "/workflows", Some(body))
            .await;
        assert_eq!(r.status, 201, "{name}: {}", r.body);
    };
    create(app.key.clone(), "alpha", "A's alpha").await;
    create(app.key.clone(), "shared", "A's shared").await;
    create(b.clone(), "beta", "B's beta").await;
    create(b.clone(), "shared", "B's shared").await;
    let r = app
        .send(
            "PUT",
            "/workflows/wf_alpha",
            Some(json!({"definition": definition("second")})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    b
}

fn definition(agent: &str) -> Value {
    json!({"steps": [{"name": "classify", "type": "agent", "agentId": agent,
        "instructions": "Determine ticket category and priority."}]})
}

/// Every route that takes a workflow id, with a body where it needs one.
fn id_routes(id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/workflows/{id}"), None),
        (
            "PUT",
            format!("/workflows/{id}"),
            Some(json!({"definition": definition("intruder"), "isActive": false})),
        ),
        ("DELETE", format!("/workflows/{id}"), None),
        ("GET", format!("/workflows/{id}/versions"), None),
        ("GET", format!("/workflows/{id}/versions?limit=1"), None),
        ("GET", format!("/workflows/{id}/versions/1"), None),
        ("GET", format!("/workflows/{id}/versions/2"), None),
    ]
}

/// An org's rows, to show that nothing of it changed.
fn rows_of(app: &TestApp, org: &str) -> (Vec<WorkflowRow>, Vec<WorkflowVersionRow>) {
    let mut conn = app.conn();
    let wfs = workflows::table
        .filter(workflows::org_id.eq(org))
        .select(WorkflowRow::as_select())
        .order(workflows::id)
        .load(&mut conn)
        .expect("workflows");
    let versions = workflow_versions::table
        .filter(workflow_versions::org_id.eq(org))
        .select(WorkflowVersionRow::as_select())
        .order((workflow_versions::workflow_id, workflow_versions::version))
        .load(&mut conn)
        .expect("versions");
    (wfs, versions)
}

fn fingerprint(rows: &(Vec<WorkflowRow>, Vec<WorkflowVersionRow>)) -> String {
    format!("{:?}", rows)
}

/// A 404 that says no more than one for an id no org has.
fn assert_same_404(r: &Reply, unknown: &Reply, id: &str, what: &str) {
    assert_error(r, 404, "NOT_FOUND", what);
    assert_eq!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .replace(id, "<id>"),
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .replace("wf_nobody_has_it", "<id>"),
        "{what}: another org's id answers as an unknown one"
    );
}

#[tokio::test]
async fn another_orgs_workflows_are_404_on_every_route_and_stay_unchanged() {
    let app = spawn_app().await;
    let b = two_orgs(&app).await;
    let (a_before, b_before) = (rows_of(&app, ORG), rows_of(&app, OTHER));
    assert_eq!(a_before.1.len(), 3, "alpha v1, v2 and shared v1");

    for (key, id) in [(b.as_str(), "wf_alpha"), (app.key.as_str(), "wf_beta")] {
        let routes = id_routes(id);
        let unknown = id_routes("wf_nobody_has_it");
        for ((method, path, body), (_, unknown_path, _)) in routes.iter().zip(&unknown) {
            let what = format!("{method} {path}");
            let r = app.send_as(Some(key), method, path, body.clone()).await;
            let u = app
                .send_as(Some(key), method, unknown_path, body.clone())
                .await;
            assert_same_404(&r, &u, id, &what);
        }
    }

    assert_eq!(
        fingerprint(&rows_of(&app, ORG)),
        fingerprint(&a_before),
        "A's rows are untouched"
    );
    assert_eq!(
        fingerprint(&rows_of(&app, OTHER)),
        fingerprint(&b_before),
        "B's rows are untouched (nothing was created on its side either)"
    );
    // And both still read their own.
    let r = app.send("GET", "/workflows/wf_alpha", None).await;
    assert_eq!(
        (r.status, r.body["data"]["version"].as_i64()),
        (200, Some(2))
    );
    assert_eq!(r.body["data"]["isActive"], true);
    let r = app
        .send_as(Some(&b), "GET", "/workflows/wf_beta", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Every workflow a list shows `key`, page by page.
async fn listed(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("/workflows?limit=1{query}");
    for _ in 0..50 {
        let r = app.send_as(Some(key), "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        items.extend(r.body["data"].as_array().unwrap().iter().cloned());
        match r.body["pagination"]["nextCursor"].as_str() {
            Some(c) => path = format!("/workflows?limit=1{query}&cursor={c}"),
            None => return items,
        }
    }
    panic!("the pages never end");
}

fn ids_and_descriptions(items: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<_> = items
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn lists_show_only_the_callers_org() {
    let app = spawn_app().await;
    let b = two_orgs(&app).await;
    let pair = |id: &str, d: &str| (id.to_string(), d.to_string());
    for query in ["", "&isActive=true"] {
        assert_eq!(
            ids_and_descriptions(&listed(&app, &app.key, query).await),
            [
                pair("wf_alpha", "A's alpha"),
                pair("wf_shared", "A's shared")
            ]
        );
        assert_eq!(
            ids_and_descriptions(&listed(&app, &b, query).await),
            [pair("wf_beta", "B's beta"), pair("wf_shared", "B's shared")]
        );
    }
    assert!(listed(&app, &b, "&isActive=false").await.is_empty());
    // There is no org filter to point at another org: an `orgId` is refused, never obeyed.
    for org in [ORG, OTHER] {
        let r = app
            .send_as(Some(&b), "GET", &format!("/workflows?orgId={org}"), None)
            .await;
        assert_error(&r, 400, "VALIDATION_ERROR", "orgId on /workflows");
        assert!(!r.body.to_string().contains("wf_alpha"));
    }
    // A cursor made by one org walks only the other's own list, from where it points. A's
    // newest workflow is newer than all but one of B's (delta), so every other workflow of
    // both orgs lies past A's first page.
    for (key, name, description) in [(&app.key, "gamma", "A's gamma"), (&b, "delta", "B's delta")] {
        let mut body = workflow(name);
        body["description"] = json!(description);
        let r = app
            .send_as(Some(key), "POST", "/workflows", Some(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = app.send("GET", "/workflows?limit=1", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        ids_and_descriptions(r.body["data"].as_array().unwrap()),
        [pair("wf_gamma", "A's gamma")],
        "A's first page"
    );
    let cursor = r.body["pagination"]["nextCursor"]
        .as_str()
        .expect("A's first page has a next one");
    let r = app
        .send_as(
            Some(&b),
            "GET",
            &format!("/workflows?limit=50&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        ids_and_descriptions(r.body["data"].as_array().unwrap()),
        [pair("wf_beta", "B's beta"), pair("wf_shared", "B's shared")],
        "B's own workflows past the cursor (not delta), none of A's"
    );
    // Versions of the shared name: each org its own history.
    let r = app
        .send_as(Some(&b), "GET", "/workflows/wf_shared/versions", None)
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = app.send("GET", "/workflows/wf_alpha/versions", None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2, "{}", r.body);
}

#[tokio::test]
async fn the_same_name_in_two_orgs_is_allowed_and_independent() {
    let app = spawn_app().await;
    let b = two_orgs(&app).await;
    // A name another org uses is no conflict (a 409 would reveal it).
    let r = app
        .send_as(Some(&b), "POST", "/workflows", Some(workflow("alpha")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (
            r.body["data"]["id"].as_str(),
            r.body["data"]["version"].as_i64()
        ),
        (Some("wf_alpha"), Some(1))
    );
    // But a name the org itself uses is.
    let r = app
        .send_as(Some(&b), "POST", "/workflows", Some(workflow("shared")))
        .await;
    assert_error(&r, 409, "CONFLICT", "B's own shared");

    let a_shared = app.send("GET", "/workflows/wf_shared", None).await.body;
    // B changes, deactivates and deletes its wf_shared: A's does not move.
    let r = app
        .send_as(
            Some(&b),
            "PUT",
            "/workflows/wf_shared",
            Some(json!({"definition": definition("b-agent"), "isActive": false})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["data"]["version"].as_i64()),
        (200, Some(2)),
        "{}",
        r.body
    );
    let r = app
        .send_as(Some(&b), "GET", "/workflows/wf_shared/versions/2", None)
        .await;
    assert_eq!(r.body["data"]["definition"], definition("b-agent"));
    let r = app
        .send("GET", "/workflows/wf_shared/versions/2", None)
        .await;
    assert_error(&r, 404, "NOT_FOUND", "A has no version 2 of wf_shared");
    assert_eq!(
        app.send("GET", "/workflows/wf_shared", None).await.body,
        a_shared
    );

    let r = app
        .send_as(Some(&b), "DELETE", "/workflows/wf_shared", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .send_as(Some(&b), "GET", "/workflows/wf_shared", None)
        .await;
    assert_error(&r, 404, "NOT_FOUND", "B's deleted wf_shared");
    assert_eq!(
        app.send("GET", "/workflows/wf_shared", None).await.body,
        a_shared
    );
    // A deleting its own leaves B's (re-created) one alone.
    let r = app
        .send_as(Some(&b), "POST", "/workflows", Some(workflow("shared")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!([200, 204].contains(
        &app.send("DELETE", "/workflows/wf_shared", None)
            .await
            .status
    ));
    let r = app
        .send_as(Some(&b), "GET", "/workflows/wf_shared", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_error(
        &app.send("GET", "/workflows/wf_shared", None).await,
        404,
        "NOT_FOUND",
        "A's deleted wf_shared",
    );
}
