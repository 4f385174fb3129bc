//! The API description of this service: every route it serves is in it, and it is public.

use crate::helpers::spawn_app;

// The checks every HTTP service's description gets.
thygon_testkit::openapi_suite!(crate::helpers::TestApp);

#[test]
fn the_trigger_body_is_the_seed_s_and_may_be_empty() {
    let doc = serde_json::to_value(runtime_service::openapi()).unwrap();
    // The seed's trigger body is the example, and an empty body is allowed.
    let trigger = &doc["paths"]["/workflows/{id}/trigger"]["post"]["requestBody"];
    assert_eq!(trigger["required"], false);
    assert_eq!(
        trigger["content"]["application/json"]["example"],
        serde_json::json!({"variables": {"priorityOverride": "high"}})
    );
}

#[tokio::test]
async fn the_part_is_served_without_a_key() {
    let app = spawn_app().await;
    let r = app
        .send_auth(None, "GET", "/openapi/runtime-service.json", None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(r.body["paths"]["/workflows/runs/{id}"]["get"].is_object());
    assert_eq!(
        r.body,
        serde_json::to_value(runtime_service::openapi()).unwrap()
    );
}
