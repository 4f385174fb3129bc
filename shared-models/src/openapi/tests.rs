use super::coverage::*;
use super::*;
use serde_json::{json, Value};
use utoipa::openapi::path::{OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::{HttpMethod, PathsBuilder, ResponseBuilder};

#[test]
fn routes_are_read_from_configure_sources() {
    let src = r#"
        cfg.route("/healthz", web::get().to(healthz))
            // web::resource("/commented") .route(web::get())
            .service(
                web::resource("/workflows/{id}")
                    .route(web::get().to(get))
                    .route(web::put().to(put))
                    .default_service(web::to(method_not_allowed)),
            )
            .route("/metrics", web::get().to(metrics))
            .service(web::resource("/a/{x:.*}/b").route(web::delete().to(d)));
    "#;
    let routes: Vec<_> = routes_in_source(src).into_iter().collect();
    let pair = |m: &str, p: &str| (m.to_string(), p.to_string());
    assert_eq!(
        routes,
        vec![
            pair("DELETE", "/a/{}/b"),
            pair("GET", "/healthz"),
            pair("GET", "/metrics"),
            pair("GET", "/workflows/{}"),
            pair("PUT", "/workflows/{}"),
        ]
    );
    assert!(is_excluded("/healthz") && is_excluded("/ui/index.html"));
    assert!(is_excluded("/openapi.json") && is_excluded("/docs/{}"));
    assert!(!is_excluded("/workflows"));
}

#[test]
fn the_common_parts_are_added_and_error_codes_are_an_enum() {
    let mut doc = OpenApi::default();
    Common.modify(&mut doc);
    let v = serde_json::to_value(&doc).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    assert_eq!(v["info"]["title"], TITLE);
    assert_eq!(v["servers"], json!([{"url": "/"}]));
    assert_eq!(
        v["components"]["securitySchemes"][BEARER],
        json!({"type": "http", "scheme": "bearer",
            "description": "An org's API key (`thy_...`), or the operator's ADMIN_API_KEY for /admin and /ops"})
    );
    let codes = &v["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "INVALID_JSON",
        "VALIDATION_ERROR",
        "RATE_LIMITED",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
    ] {
        assert!(codes.as_array().unwrap().contains(&json!(code)), "{code}");
    }
    let envelope = &v["components"]["schemas"]["ErrorEnvelope"];
    assert_eq!(envelope["properties"]["success"]["enum"], json!([false]));
    assert_eq!(
        v["components"]["responses"]["RateLimited"]["headers"]["Retry-After"]["schema"]["type"],
        "integer"
    );
}

#[test]
fn documents_merge_as_utoipa_merges_them_and_any_value_schemas_survive() {
    let mut doc = json!({
        "openapi": "3.1.0", "info": {"title": TITLE, "version": "1"},
        "paths": {"/workflows/{id}": {"get": {"operationId": "get_workflow"}}},
        "components": {"schemas": {"ErrorEnvelope": {"type": "object"}}},
        "tags": [{"name": "workflows"}],
    });
    let other = json!({
        "openapi": "3.1.0", "info": {"title": "other", "version": "2"},
        "paths": {
            "/workflows/{id}": {"get": {"operationId": "other"}, "post": {"operationId": "p"}},
            "/workflows/runs": {"get": {"operationId": "list_runs"}},
        },
        "components": {
            "schemas": {"ErrorEnvelope": {"type": "string"}, "RunView": {"type": "object",
                "properties": {"output": {}}}},
            "responses": {"NotFound": {"description": "no"}},
        },
        "tags": [{"name": "workflows"}, {"name": "runs"}],
    });
    merge_json(&mut doc, other).unwrap();
    assert_eq!(doc["info"]["title"], TITLE);
    assert_eq!(
        doc["paths"]["/workflows/{id}"]["get"]["operationId"],
        "get_workflow"
    );
    assert_eq!(doc["paths"]["/workflows/{id}"]["post"]["operationId"], "p");
    assert_eq!(
        doc["paths"]["/workflows/runs"]["get"]["operationId"],
        "list_runs"
    );
    assert_eq!(
        doc["components"]["schemas"]["ErrorEnvelope"]["type"],
        "object"
    );
    assert_eq!(
        doc["components"]["schemas"]["RunView"]["properties"]["output"],
        json!({})
    );
    assert_eq!(
        doc["components"]["responses"]["NotFound"]["description"],
        "no"
    );
    assert_eq!(
        doc["tags"],
        json!([{"name": "workflows"}, {"name": "runs"}])
    );

    for bad in [
        json!([]),
        json!({"openapi": "3.0.3", "paths": {"/a": {}}}),
        json!({"openapi": "3.1.0", "paths": {}}),
        json!({"openapi": "3.1.0"}),
    ] {
        assert!(merge_json(&mut doc.clone(), bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn the_error_envelope_schema_matches_what_the_envelope_serializes() {
    let response =
        actix_web::ResponseError::error_response(&ApiError::validation(vec![FieldError::new(
            "name",
            "is required",
        )]));
    let body = actix_web::body::to_bytes(response.into_body());
    let body = futures_util::FutureExt::now_or_never(body)
        .unwrap()
        .unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let schema = serde_json::to_value(ErrorEnvelope::schema()).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&sent), keys(&schema["properties"]));
    let api_error = serde_json::to_value(ApiError::schema()).unwrap();
    assert_eq!(keys(&sent["error"]), keys(&api_error["properties"]));
    let field = serde_json::to_value(FieldError::schema()).unwrap();
    assert_eq!(
        keys(&sent["error"]["details"][0]),
        keys(&field["properties"])
    );
}

#[test]
fn every_operation_with_a_key_gets_the_edge_errors_and_keeps_its_own() {
    let param = |name: &str, place: ParameterIn| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(place)
            .build()
    };
    let own_404 = ResponseBuilder::new().description("own").build();
    let paths = PathsBuilder::new()
        .path(
            "/things/{id}",
            PathItem::new(
                HttpMethod::Get,
                OperationBuilder::new().parameter(param("id", ParameterIn::Path)),
            ),
        )
        .path(
            "/things",
            PathItem::new(
                HttpMethod::Post,
                OperationBuilder::new()
                    .request_body(Some(RequestBody::new()))
                    .response("404", own_404),
            ),
        )
        .path(
            "/lists",
            PathItem::new(
                HttpMethod::Get,
                OperationBuilder::new().parameter(param("limit", ParameterIn::Query)),
            ),
        )
        .path(
            "/healthz",
            PathItem::new(HttpMethod::Get, OperationBuilder::new()),
        )
        .build();
    let mut doc = OpenApi::new(utoipa::openapi::Info::new("t", "1"), paths);
    Common.modify(&mut doc);
    let v = serde_json::to_value(&doc).unwrap();
    let statuses = |path: &str, method: &str| -> Vec<String> {
        v["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        statuses("/things/{id}", "get"),
        ["401", "403", "404", "429", "500", "503"]
    );
    assert_eq!(
        statuses("/things", "post"),
        ["400", "401", "403", "404", "413", "415", "429", "500", "503"]
    );
    assert_eq!(
        v["paths"]["/things"]["post"]["responses"]["404"]["description"],
        "own"
    );
    assert_eq!(
        v["paths"]["/things"]["post"]["responses"]["415"]["$ref"],
        "#/components/responses/UnsupportedMediaType"
    );
    assert_eq!(
        statuses("/lists", "get"),
        ["400", "401", "403", "429", "500", "503"]
    );
    assert_eq!(
        v["paths"]["/lists"]["get"]["security"],
        json!([{"bearer": []}])
    );
    // Public routes need no key and get nothing.
    assert!(v["paths"]["/healthz"]["get"]["security"].is_null());
    assert!(v["paths"]["/healthz"]["get"]["responses"]
        .as_object()
        .unwrap()
        .is_empty());
    for name in ["Internal", "BadRequest", "NotFound", "Unavailable"] {
        assert!(v["components"]["responses"][name].is_object(), "{name}");
    }
}
