use crate::helpers::{fields, spawn_app, workflow, TestApp};
use serde_json::{json, Value};

fn definition(value: &str) -> Value {
    json!({"steps": [{"name": "t", "type": "transform", "value": value}]})
}

/// `wf_support_triage` at version 3: the seed's definition, then two updates.
async fn three_versions(app: &TestApp) -> Vec<Value> {
    let first = workflow("support_triage");
    assert_eq!(
        app.send("POST", "/workflows", Some(first.clone()))
            .await
            .status,
        201
    );
    let mut written = vec![first["definition"].clone()];
    for value in ["second", "third"] {
        let def = definition(value);
        let r = app
            .send(
                "PUT",
                "/workflows/wf_support_triage",
                Some(json!({"definition": def})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        written.push(def);
    }
    written
}

fn versions_of(body: &Value) -> Vec<i64> {
    body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v["version"].as_i64().expect("a version number"))
        .collect()
}

#[tokio::test]
async fn versions_list_every_definition_as_written_newest_first() {
    let app = spawn_app().await;
    let written = three_versions(&app).await;
    let r = app
        .send("GET", "/workflows/wf_support_triage/versions", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["success"], true);
    assert_eq!(versions_of(&r.body), [3, 2, 1]);
    assert_eq!(
        r.body["pagination"],
        json!({"limit": 50, "nextCursor": null})
    );
    let items = r.body["data"].as_array().unwrap();
    for (item, def) in items.iter().zip(written.iter().rev()) {
        assert_eq!(&item["definition"], def);
        let mut keys: Vec<_> = item.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["createdAt", "definition", "version"]);
        let at = item["createdAt"].as_str().unwrap();
        assert_eq!(at.len(), "2026-06-16T17:15:00.000Z".len());
        assert!(at.ends_with('Z'));
    }
    let created: Vec<&str> = items
        .iter()
        .map(|i| i["createdAt"].as_str().unwrap())
        .collect();
    assert!(
        created[0] >= created[1] && created[1] >= created[2],
        "{created:?}"
    );
}

#[tokio::test]
async fn one_version_is_read_by_its_number() {
    let app = spawn_app().await;
    let written = three_versions(&app).await;
    for (n, def) in written.iter().enumerate() {
        let r = app
            .send(
                "GET",
                &format!("/workflows/wf_support_triage/versions/{}", n + 1),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["data"]["version"], n + 1);
        assert_eq!(&r.body["data"]["definition"], def);
        assert!(r.body["data"]["createdAt"].is_string());
    }
    // The current version is what GET /workflows/{id} shows.
    let current = app.send("GET", "/workflows/wf_support_triage", None).await;
    assert_eq!(current.body["data"]["definition"], written[2]);
}

#[tokio::test]
async fn versions_of_unknown_workflows_and_missing_versions_are_404s() {
    let app = spawn_app().await;
    three_versions(&app).await;
    for path in [
        "/workflows/wf_missing/versions",
        "/workflows/wf_missing/versions/1",
        "/workflows/not-an-id/versions",
        "/workflows/not-an-id/versions/1",
        "/workflows/wf_support_triage/versions/4",
        "/workflows/wf_support_triage/versions/0",
        "/workflows/wf_support_triage/versions/-1",
        "/workflows/wf_support_triage/versions/01",
        "/workflows/wf_support_triage/versions/1.0",
        "/workflows/wf_support_triage/versions/latest",
        "/workflows/wf_support_triage/versions/99999999999",
    ] {
        let r = app.send("GET", path, None).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{path}: {}",
            r.body
        );
    }
    let r = app
        .send("POST", "/workflows/wf_support_triage/versions", None)
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    let r = app
        .send("DELETE", "/workflows/wf_support_triage/versions/1", None)
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn a_deleted_workflow_has_no_versions_until_it_is_created_again() {
    let app = spawn_app().await;
    three_versions(&app).await;
    let r = app
        .send("DELETE", "/workflows/wf_support_triage", None)
        .await;
    assert_eq!(r.status, 200);
    for path in [
        "/workflows/wf_support_triage/versions",
        "/workflows/wf_support_triage/versions/1",
    ] {
        assert_eq!(app.send("GET", path, None).await.status, 404, "{path}");
    }
    // Re-created: the numbering continues and the history before the delete is listed too.
    let mut again = workflow("support_triage");
    again["definition"] = definition("fourth");
    let r = app.send("POST", "/workflows", Some(again)).await;
    assert_eq!(r.body["data"]["version"], 4);
    let r = app
        .send("GET", "/workflows/wf_support_triage/versions", None)
        .await;
    assert_eq!(versions_of(&r.body), [4, 3, 2, 1]);
    assert_eq!(r.body["data"][0]["definition"], definition("fourth"));
    let r = app
        .send("GET", "/workflows/wf_support_triage/versions/2", None)
        .await;
    assert_eq!(r.body["data"]["definition"], definition("second"));
}

#[tokio::test]
async fn versions_page_with_limit_and_cursor() {
    let app = spawn_app().await;
    three_versions(&app).await;
    for value in ["fourth", "fifth"] {
        let body = json!({"definition": definition(value)});
        let r = app
            .send("PUT", "/workflows/wf_support_triage", Some(body))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut seen = Vec::new();
    let mut path = "/workflows/wf_support_triage/versions?limit=2".to_string();
    let mut pages = 0;
    loop {
        let r = app.send("GET", &path, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["pagination"]["limit"], 2);
        seen.extend(versions_of(&r.body));
        pages += 1;
        match r.body["pagination"]["nextCursor"].as_str() {
            Some(c) => path = format!("/workflows/wf_support_triage/versions?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [5, 4, 3, 2, 1]);
    assert_eq!(pages, 3);
    // A page that ends exactly at the last version says there is no next one.
    let r = app
        .send("GET", "/workflows/wf_support_triage/versions?limit=5", None)
        .await;
    assert_eq!(versions_of(&r.body), [5, 4, 3, 2, 1]);
    assert!(r.body["pagination"]["nextCursor"].is_null());

    let r = app
        .send(
            "GET",
            "/workflows/wf_support_triage/versions?limit=0&isActive=true",
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(fields(&r.body), ["limit", "isActive"]);
    // Neither garbage nor a cursor of another list (GET /workflows) is a versions cursor.
    let r = app
        .send("POST", "/workflows", Some(workflow("other")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let list = app.send("GET", "/workflows?limit=1", None).await;
    let workflows_cursor = list.body["pagination"]["nextCursor"].as_str().unwrap();
    for cursor in ["garbage", workflows_cursor] {
        let r = app
            .send(
                "GET",
                &format!("/workflows/wf_support_triage/versions?cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(
            (r.status, fields(&r.body)),
            (400, vec!["cursor".to_string()])
        );
    }
}
