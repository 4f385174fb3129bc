//! The API description, checked the same way in every HTTP service: every route registered
//! in its `src/routes/mod.rs` is an operation and every operation a route; every operation
//! needs the bearer key and carries the errors of the edge (one pass adds them:
//! `openapi::Edge`); a method a path does not serve is a 405 whose `Allow` names the ones it
//! does (RFC 9110), as the description has them.

use super::ServiceUnderTest;
use serde_json::json;
use shared_models::openapi::coverage::{allow_set, assert_routes_documented, unserved_methods};

/// Every `(method, path)` registered in `src/routes/mod.rs` (less health, metrics, the
/// dashboard's files and the description itself: `coverage::is_excluded`) is an operation of
/// the description, and every operation is a registered route. A route added without a
/// `#[utoipa::path]` annotation listed in `src/routes/openapi.rs` fails here.
pub async fn every_route_is_documented_and_every_operation_is_served<S: ServiceUnderTest>() {
    assert_routes_documented(S::NAME, S::ROUTES_SOURCE, &S::description());
}

pub async fn operations_need_the_bearer_key_and_carry_the_edge_errors<S: ServiceUnderTest>() {
    let doc = S::description();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Thygon API");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
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
}

pub async fn a_wrong_method_is_a_405_that_names_the_right_ones<S: ServiceUnderTest>() {
    let app = S::start(crate::auth_config()).await;
    for (path, unserved, served) in unserved_methods(&S::description()) {
        for method in unserved {
            let r = app.send_as(Some(app.key()), &method, &path, None).await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "METHOD_NOT_ALLOWED");
            assert_eq!(allow_set(r.header("allow")), served, "{method} {path}");
        }
    }
}
