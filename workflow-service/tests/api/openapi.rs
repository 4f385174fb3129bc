//! The API description: every route of this service is in it; `/openapi.json` merges it with
//! runtime-service's part and needs no key; `/docs/` is Swagger UI over it.

use crate::helpers::{spawn_app_with_runtime, TestApp};
use serde_json::{json, Value};
use shared_models::openapi::RUNTIME_SERVICE_PART;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

// The checks every HTTP service's description gets.
thygon_testkit::openapi_suite!(crate::helpers::TestApp);

#[test]
fn the_description_carries_the_version_and_the_seed_example() {
    let doc = serde_json::to_value(workflow_service::openapi()).unwrap();
    assert_eq!(doc["servers"], json!([{"url": "/"}]));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let create = &doc["paths"]["/workflows"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(create["example"]["name"], "support_triage");
    assert_eq!(
        create["schema"]["$ref"],
        "#/components/schemas/CreateWorkflowBody"
    );
}

/// What runtime-service serves at `/openapi/runtime-service.json`, in small.
fn runtime_part() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Thygon API", "version": "0.1.0"},
        "paths": {
            "/workflows/runs/{id}": {"get": {"operationId": "get_run", "responses": {
                "200": {"description": "the run", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RunView"}}}}},
                "security": [{"bearer": []}]}},
            "/workflows/{id}/trigger": {"post": {"operationId": "trigger_run",
                "responses": {"201": {"description": "queued"}}}},
        },
        // `{}` (any value) is a schema utoipa writes but cannot read back: the merge must
        // keep it.
        "components": {"schemas": {"RunView": {"type": "object", "properties": {"output": {}}}}},
    })
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn the_merged_description_needs_no_key_and_holds_both_services() {
    let runtime = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RUNTIME_SERVICE_PART))
        .respond_with(ResponseTemplate::new(200).set_body_json(runtime_part()))
        .mount(&runtime)
        .await;
    let app = spawn_app_with_runtime(&runtime.uri()).await;

    let r = get(&app, "/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Thygon API");
    for p in [
        "/workflows",
        "/workflows/{id}",
        "/admin/orgs",
        "/workflows/validate",
    ] {
        assert!(doc["paths"][p].is_object(), "workflow-service's {p}");
    }
    for p in ["/workflows/runs/{id}", "/workflows/{id}/trigger"] {
        assert!(doc["paths"][p].is_object(), "runtime-service's {p}");
    }
    assert_eq!(
        doc["components"]["schemas"]["RunView"]["properties"]["output"],
        json!({})
    );
    assert!(doc["components"]["schemas"]["WorkflowView"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let own: Value = get(&app, "/openapi/workflow-service.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        own,
        serde_json::to_value(workflow_service::openapi()).unwrap()
    );
    assert!(own["paths"]["/workflows/runs/{id}"].is_null());
}

#[tokio::test]
async fn with_runtime_service_unreachable_the_answer_is_503_not_half_a_description() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with_runtime(&url).await;
    let started = std::time::Instant::now();
    let r = get(&app, "/openapi.json").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(3));
    // This service's own part does not depend on the other.
    assert_eq!(
        get(&app, "/openapi/workflow-service.json").await.status(),
        200
    );
}

#[tokio::test]
async fn the_docs_page_is_swagger_ui_over_openapi_json_with_its_own_assets() {
    let app = spawn_app_with_runtime("http://127.0.0.1:1").await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/docs/");

    let r = get(&app, "/docs/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Every asset comes from this service, none from a CDN.
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(external), "{external} in {html}");
    }
    let init = get(&app, "/docs/swagger-initializer.js").await;
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/openapi.json"));
    let bundle = get(&app, "/docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    // Unknown files are the envelope 404, like any unknown route.
    let r = get(&app, "/docs/nope.js").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}
