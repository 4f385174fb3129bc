use crate::helpers::{fields, spawn_app, workflow};
use serde_json::json;

#[tokio::test]
async fn create_answers_201_with_the_seed_shape() {
    let app = spawn_app().await;
    let r = app
        .send("POST", "/workflows", Some(workflow("support_triage")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["success"], true);
    let d = &r.body["data"];
    assert_eq!(d["id"], "wf_support_triage");
    assert_eq!(d["name"], "support_triage");
    assert_eq!(
        d["description"],
        "Categorize and route incoming support tickets"
    );
    assert_eq!(d["isActive"], true);
    assert_eq!(d["version"], 1);
    assert_eq!(d["definition"]["steps"][0]["agentId"], "support-classifier");
    let created = d["createdAt"].as_str().unwrap();
    assert_eq!(created.len(), "2026-06-16T17:15:00.000Z".len());
    assert!(created.ends_with('Z'));
}

#[tokio::test]
async fn a_taken_name_is_a_409() {
    let app = spawn_app().await;
    let r = app.send("POST", "/workflows", Some(workflow("dup"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.send("POST", "/workflows", Some(workflow("dup"))).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "CONFLICT");
}

#[tokio::test]
async fn bad_bodies_get_400_naming_each_field() {
    let app = spawn_app().await;
    let r = app
        .raw(
            "POST",
            "/workflows",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );
    let r = app
        .raw("POST", "/workflows", "application/json", b"[1,2]".to_vec())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );
    let r = app
        .raw(
            "POST",
            "/workflows",
            "application/json",
            vec![b'"', 0xff, 0xfe, b'"'],
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );

    let body = json!({"name": "ok", "isActive": "yes", "definitoin": {},
        "definition": {"steps": [{"name": "a", "type": "agent", "agentId": "x"}, {"name": "b", "type": "teleport"}]}});
    let r = app.send("POST", "/workflows", Some(body)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(
        fields(&r.body),
        [
            "definition.steps[0].instructions",
            "definition.steps[1].type",
            "isActive",
            "definitoin"
        ]
    );
    let r = app.send("POST", "/workflows", Some(json!({}))).await;
    assert_eq!(fields(&r.body), ["name", "definition"]);
}

#[tokio::test]
async fn wrong_media_types_and_oversized_bodies_are_refused_with_envelopes() {
    let app = spawn_app().await;
    let r = app
        .raw("POST", "/workflows", "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (415, Some("UNSUPPORTED_MEDIA_TYPE"))
    );
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let r = app
        .raw("POST", "/workflows", "application/json", big.into_bytes())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_envelopes() {
    let app = spawn_app().await;
    let r = app.send("GET", "/nowhere", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = app.send("PATCH", "/workflows", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (405, Some("METHOD_NOT_ALLOWED"))
    );
    let r = app.send("POST", "/workflows/wf_x", None).await;
    assert_eq!(r.status, 405);
    let r = app.send("GET", "/workflows/not-an-id", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn list_is_newest_first_with_cursor_pagination_and_filters() {
    let app = spawn_app().await;
    for i in 0..5 {
        let mut w = workflow(&format!("w{i}"));
        w["isActive"] = json!(i % 2 == 0);
        assert_eq!(app.send("POST", "/workflows", Some(w)).await.status, 201);
    }
    let r = app.send("GET", "/workflows?limit=2", None).await;
    assert_eq!(r.status, 200);
    let ids: Vec<_> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["wf_w4", "wf_w3"]);
    assert!(r.body["data"][0].get("definition").is_none());
    assert_eq!(r.body["pagination"]["limit"], 2);
    let mut seen = ids;
    let mut cursor = r.body["pagination"]["nextCursor"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let r = app
            .send("GET", &format!("/workflows?limit=2&cursor={cursor}"), None)
            .await;
        seen.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_string()),
        );
        match r.body["pagination"]["nextCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["wf_w4", "wf_w3", "wf_w2", "wf_w1", "wf_w0"]);
    let r = app.send("GET", "/workflows?isActive=false", None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let r = app
        .send("GET", "/workflows?limit=0&isactive=true", None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(fields(&r.body), ["limit", "isactive"]);
    let r = app.send("GET", "/workflows?cursor=garbage", None).await;
    assert_eq!(fields(&r.body), ["cursor"]);
}

#[tokio::test]
async fn get_returns_the_definition_and_404_for_unknown_ids() {
    let app = spawn_app().await;
    let r = app
        .send("POST", "/workflows", Some(workflow("support_triage")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.send("GET", "/workflows/wf_support_triage", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["definition"]["steps"][0]["name"], "classify");
    let r = app.send("GET", "/workflows/wf_missing", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn update_makes_a_new_version_and_keeps_the_name() {
    let app = spawn_app().await;
    let r = app
        .send("POST", "/workflows", Some(workflow("support_triage")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let def =
        json!({"steps": [{"name": "t", "type": "transform", "value": {"x": "{{ variables.a }}"}}]});
    let r = app
        .send(
            "PUT",
            "/workflows/wf_support_triage",
            Some(json!({"definition": def, "isActive": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["version"], 2);
    assert_eq!(r.body["data"]["isActive"], false);
    assert_eq!(
        r.body["data"]["description"],
        "Categorize and route incoming support tickets"
    );
    assert_eq!(r.body["data"]["definition"], def);
    let r = app
        .send(
            "PUT",
            "/workflows/wf_support_triage",
            Some(json!({"definition": def, "name": "renamed"})),
        )
        .await;
    assert_eq!((r.status, fields(&r.body)), (400, vec!["name".to_string()]));
    let r = app
        .send(
            "PUT",
            "/workflows/wf_support_triage",
            Some(json!({"definition": def, "name": "support_triage"})),
        )
        .await;
    assert_eq!(r.body["data"]["version"], 3);
    let r = app
        .send(
            "PUT",
            "/workflows/wf_nope",
            Some(json!({"definition": def})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app.send("PUT", "/workflows/wf_support_triage", Some(json!({"definition": {"steps": [{"name": "t", "type": "transform", "value": "{{ broken"}]}}))).await;
    assert_eq!(fields(&r.body), ["definition.steps[0].value"]);
}

#[tokio::test]
async fn delete_hides_the_workflow_and_a_recreated_one_continues_its_versions() {
    let app = spawn_app().await;
    let r = app
        .send("POST", "/workflows", Some(workflow("support_triage")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app
        .send("DELETE", "/workflows/wf_support_triage", None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["data"],
        json!({"id": "wf_support_triage", "deleted": true})
    );
    assert_eq!(
        app.send("GET", "/workflows/wf_support_triage", None)
            .await
            .status,
        404
    );
    assert_eq!(
        app.send("DELETE", "/workflows/wf_support_triage", None)
            .await
            .status,
        404
    );
    assert_eq!(
        app.send("GET", "/workflows", None).await.body["data"],
        json!([])
    );
    let r = app
        .send("POST", "/workflows", Some(workflow("support_triage")))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["data"]["id"], "wf_support_triage");
    assert_eq!(r.body["data"]["version"], 2);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    assert_eq!(app.send("GET", "/healthz", None).await.status, 200);
    let r = app.send("GET", "/readyz", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["database"], true);
}

#[tokio::test]
async fn hostile_bodies_get_clear_400s() {
    let app = spawn_app().await;
    // Nested deeper than 32 levels.
    let deep = format!(
        "{{\"name\":\"d\",\"definition\":{}{{}}{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let r = app
        .raw("POST", "/workflows", "application/json", deep.into_bytes())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );
    // A template longer than 64 KiB.
    let mut w = workflow("long");
    w["definition"]["steps"][0]["instructions"] = json!("x".repeat(64 * 1024 + 1));
    let r = app.send("POST", "/workflows", Some(w)).await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["definition.steps[0].instructions".to_string()])
    );
    // A name over 64 characters, a description over 2000.
    let mut w = workflow(&"n".repeat(65));
    w["description"] = json!("d".repeat(2001));
    let r = app.send("POST", "/workflows", Some(w)).await;
    assert_eq!(fields(&r.body), ["name", "description"]);
}
