use crate::helpers::{fields, spawn_app};
use serde_json::{json, Value};

/// The worked example of docs/WORKFLOWS.md ("Example: a branching support workflow"), verbatim.
fn branching_definition() -> Value {
    json!({"steps": [
      {"name": "classify", "type": "agent", "agentId": "support-classifier",
       "instructions": "Determine the category and priority of ticket {{ variables.ticketId }}."},
      {"name": "draft", "type": "agent", "agentId": "reply-drafter", "dependsOn": ["classify"],
       "when": "steps.classify.output.priority != 'low'",
       "instructions": "Draft a reply to ticket {{ variables.ticketId }}.",
       "inputs": {"category": "{{ steps.classify.output.category }}",
                  "priority": "{{ steps.classify.output.priority }}"}},
      {"name": "route", "type": "agent", "agentId": "ticket-router", "dependsOn": ["classify"],
       "instructions": "Choose the team and queue for this ticket.",
       "inputs": {"category": "{{ steps.classify.output.category }}",
                  "priority": "{{ steps.classify.output.priority }}"}},
      {"name": "notify", "type": "http", "dependsOn": ["draft", "route"],
       "request": {"method": "POST", "url": "{{ variables.webhookUrl }}",
                   "headers": {"X-Ticket-Id": "{{ variables.ticketId }}"},
                   "body": {"ticketId": "{{ variables.ticketId }}",
                            "classification": "{{ steps.classify.output }}",
                            "team": "{{ steps.route.output.team }}",
                            "queue": "{{ steps.route.output.queue }}",
                            "reply": "{{ steps.draft.output.reply if steps.draft.status == 'COMPLETED' else none }}"}},
       "retry": {"maxAttempts": 4, "backoffSeconds": 2},
       "timeoutSeconds": 10}
    ]})
}

/// The approval variant of docs/WORKFLOWS.md: `review` between `draft` and `notify`.
fn approval_definition() -> Value {
    let mut def = branching_definition();
    let steps = def["steps"].as_array_mut().unwrap();
    steps[3]["dependsOn"] = json!(["review", "route"]);
    steps.insert(
        3,
        json!({"name": "review", "type": "approval", "dependsOn": ["draft"],
               "when": "steps.classify.output.priority == 'high'", "timeoutSeconds": 86400}),
    );
    def
}

#[tokio::test]
async fn validate_answers_valid_for_a_good_definition_and_stores_nothing() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/workflows/validate",
            Some(json!({"definition": branching_definition()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"success": true, "data": {"valid": true}}));
    let r = app
        .send(
            "POST",
            "/workflows/validate",
            Some(json!({"definition": approval_definition()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app.send("GET", "/workflows", None).await.body["data"],
        json!([])
    );
}

#[tokio::test]
async fn validate_gives_the_same_400_a_create_gives_for_the_same_definition() {
    let app = spawn_app().await;
    let bad_definitions = [
        json!({"steps": [
            {"name": "a", "type": "agent", "agentId": "x"},
            {"name": "b", "type": "teleport"},
            {"name": "c", "type": "transform", "value": "{{ broken", "dependson": []}]}),
        json!({"steps": [
            {"name": "a", "type": "transform", "value": 1, "dependsOn": ["b"]},
            {"name": "b", "type": "transform", "value": 1, "dependsOn": ["a"]}]}),
        json!({"steps": [{"name": "h", "type": "http", "request": {"method": "FETCH"},
            "retry": {"maxAttempt": 2}, "when": "a =="}]}),
        json!({"steps": []}),
        json!({"stpes": []}),
        json!([1]),
    ];
    for definition in bad_definitions {
        let created = app
            .send(
                "POST",
                "/workflows",
                Some(json!({"name": "w", "definition": definition})),
            )
            .await;
        let checked = app
            .send(
                "POST",
                "/workflows/validate",
                Some(json!({"definition": definition})),
            )
            .await;
        assert_eq!(created.status, 400, "{}", created.body);
        assert_eq!(checked.status, 400, "{}", checked.body);
        assert_eq!(checked.body["success"], false);
        assert_eq!(checked.body["error"]["code"], "VALIDATION_ERROR");
        assert!(!fields(&checked.body).is_empty());
        assert_eq!(
            checked.body["error"], created.body["error"],
            "for {definition}"
        );
    }
    let r = app
        .send(
            "POST",
            "/workflows/validate",
            Some(json!({"definition": {"steps": [{"name": "a", "type": "agent"}, {"name": "b", "type": "nope"}]}})),
        )
        .await;
    assert_eq!(
        fields(&r.body),
        [
            "definition.steps[0].agentId",
            "definition.steps[0].instructions",
            "definition.steps[1].type"
        ]
    );
}

#[tokio::test]
async fn validate_names_unknown_fields_and_a_missing_definition() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/workflows/validate",
            Some(json!({"definition": branching_definition(), "name": "x", "isActive": true})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(fields(&r.body), ["isActive", "name"]);
    let r = app
        .send("POST", "/workflows/validate", Some(json!({})))
        .await;
    assert_eq!(
        (r.status, fields(&r.body)),
        (400, vec!["definition".to_string()])
    );
    let r = app
        .send(
            "POST",
            "/workflows/validate",
            Some(json!({"definition": null})),
        )
        .await;
    assert_eq!(fields(&r.body), ["definition"]);
    let r = app
        .raw(
            "POST",
            "/workflows/validate",
            "application/json",
            b"[]".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("INVALID_JSON"))
    );
}

#[tokio::test]
async fn validate_is_not_a_workflow_id() {
    let app = spawn_app().await;
    for method in ["GET", "PUT", "DELETE"] {
        let r = app.send(method, "/workflows/validate", None).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (405, Some("METHOD_NOT_ALLOWED")),
            "{method}"
        );
    }
    // Workflow ids start with `wf_`, so a workflow named "validate" is reachable as usual.
    let w = crate::helpers::workflow("validate");
    assert_eq!(app.send("POST", "/workflows", Some(w)).await.status, 201);
    let r = app.send("GET", "/workflows/wf_validate", None).await;
    assert_eq!(r.status, 200);
}
