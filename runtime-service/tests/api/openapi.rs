//! The API description of this service: every route it serves is in it, and it is public.

use crate::helpers::spawn_app;
use shared_models::openapi::coverage::{allow_set, assert_routes_documented, unserved_methods};

/// Every `(method, path)` registered in `src/routes/mod.rs` (less health, metrics, the
/// dashboard's files and the description itself: `coverage::is_excluded`) is an operation of
/// the description, and every operation is a registered route. A route added without a
/// `#[utoipa::path]` annotation listed in `src/routes/openapi.rs` fails here.
#[test]
fn every_route_is_documented_and_every_operation_is_served() {
    let doc = serde_json::to_value(runtime_service::openapi()).unwrap();
    assert_routes_documented(
        "runtime-service",
        include_str!("../../src/routes/mod.rs"),
        &doc,
    );
}

#[test]
fn operations_need_the_bearer_key_and_answer_envelopes() {
    let doc = serde_json::to_value(runtime_service::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Thygon API");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert_eq!(
                op["security"],
                serde_json::json!([{"bearer": []}]),
                "{method} {path}"
            );
            // The edge's errors, added to every operation by one pass (openapi::Edge).
            for (status, response) in [
                ("401", "Unauthorized"),
                ("403", "Forbidden"),
                ("500", "Internal"),
                ("503", "Unavailable"),
            ] {
                assert_eq!(
                    op["responses"][status]["$ref"],
                    format!("#/components/responses/{response}"),
                    "{method} {path} {status}"
                );
            }
            assert!(op["responses"]["429"].is_object(), "{method} {path}");
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
            if path.contains('{') {
                assert!(op["responses"]["404"].is_object(), "{method} {path}");
            }
        }
    }
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

/// A method a route does not serve is a 405 whose `Allow` lists the methods it does serve
/// (RFC 9110), as the description has them.
#[tokio::test]
async fn a_wrong_method_is_a_405_that_names_the_right_ones() {
    let app = spawn_app().await;
    let doc = serde_json::to_value(runtime_service::openapi()).unwrap();
    for (path, unserved, served) in unserved_methods(&doc) {
        for method in unserved {
            let r = app.send(&method, &path, None, &[]).await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "METHOD_NOT_ALLOWED");
            assert_eq!(allow_set(r.header("allow")), served, "{method} {path}");
        }
    }
}
