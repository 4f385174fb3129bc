//! The parts of the OpenAPI description both services share: the envelopes, the error
//! responses, the bearer security scheme, the document's info and servers, list parameters,
//! and the workflow definition's schema.
//!
//! Each service derives its own document from its annotated handlers (`#[utoipa::path]`) and
//! runs [`Common`] over it; workflow-service merges the two and serves the result at
//! `GET /openapi.json` (README "OpenAPI").
//!
//! Request bodies are read field by field from JSON maps (see [`crate::body`]), so the types
//! here and in the services' `routes/openapi.rs` only document them: they are never built.

use crate::envelope::{ApiError, ErrorCode, FieldError, Pagination};
use serde_json::{json, Value};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{
    Components, ContentBuilder, HeaderBuilder, OpenApi, RefOr, Response, ResponseBuilder,
};
use utoipa::{IntoParams, Modify, PartialSchema, ToResponse, ToSchema};

/// The name of the security scheme (`Authorization: Bearer <key>`).
pub const BEARER: &str = "bearer";
/// The document's title.
pub const TITLE: &str = "Thygon API";

/// Where each service serves its own part of the description (public, like `/openapi.json`).
pub const WORKFLOW_SERVICE_PART: &str = "/openapi/workflow-service.json";
pub const RUNTIME_SERVICE_PART: &str = "/openapi/runtime-service.json";

/// `true`, always: the `success` of a success envelope.
pub struct True;

impl PartialSchema for True {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([true]))
            .into()
    }
}

impl ToSchema for True {}

/// `false`, always: the `success` of an error envelope.
pub struct False;

impl PartialSchema for False {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([false]))
            .into()
    }
}

impl ToSchema for False {}

/// `{ "success": true, "data": ... }`
#[derive(ToSchema)]
pub struct Envelope<T> {
    #[schema(inline)]
    pub success: True,
    pub data: T,
}

/// `{ "success": true, "message": ..., "data": ... }` (the trigger endpoints).
#[derive(ToSchema)]
pub struct MessageEnvelope<T> {
    #[schema(inline)]
    pub success: True,
    #[schema(example = "Run queued — execution is asynchronous")]
    pub message: String,
    pub data: T,
}

/// `{ "success": true, "data": [...], "pagination": { "limit", "nextCursor" } }`
#[derive(ToSchema)]
pub struct PageEnvelope<T> {
    #[schema(inline)]
    pub success: True,
    pub data: Vec<T>,
    pub pagination: Pagination,
}

/// Every failure: `{ "success": false, "error": { "code", "message", "details" } }`.
#[derive(ToSchema)]
pub struct ErrorEnvelope {
    #[schema(inline)]
    pub success: False,
    pub error: ApiError,
}

/// `limit` and `cursor` of every list (newest first). Unknown query parameters are a 400.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// How many items (1-200, default 50).
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<i64>,
    /// The `pagination.nextCursor` of the previous page (opaque).
    pub cursor: Option<String>,
}

/// `{ "steps": [...] }`: the order of the array is the default order (a step without
/// `dependsOn` depends on the step before it).
#[derive(ToSchema)]
#[schema(example = json!({"steps": [{"name": "classify", "type": "agent",
    "agentId": "support-classifier", "instructions": "Determine ticket category and priority."}]}))]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    #[schema(min_items = 1, max_items = 200)]
    pub steps: Vec<Step>,
}

/// `retry`: omitted fields take these defaults (one attempt).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[schema(minimum = 1, maximum = 20, default = 1)]
    pub max_attempts: Option<u32>,
    #[schema(minimum = 0, maximum = 3600, default = 1.0)]
    pub backoff_seconds: Option<f64>,
    #[schema(minimum = 1, maximum = 10, default = 2.0)]
    pub backoff_multiplier: Option<f64>,
}

/// An `http` step's request; every string is a template.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStepRequest {
    #[schema(value_type = Option<HttpMethod>, default = "GET")]
    pub method: Option<String>,
    pub url: String,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// Any JSON (templated).
    pub body: Option<Value>,
}

#[derive(ToSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
    HEAD,
}

/// A step of a definition, by its `type`: the schema of [`StepVariants`], each variant closed
/// to unknown fields (the API rejects them; serde's `deny_unknown_fields` reaches only the
/// enum, not its variants).
pub struct Step;

impl PartialSchema for Step {
    fn schema() -> RefOr<Schema> {
        let mut schema = StepVariants::schema();
        if let RefOr::T(Schema::OneOf(one_of)) = &mut schema {
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
        schema
    }
}

impl ToSchema for Step {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        StepVariants::schemas(schemas);
    }
}

/// A step of a definition, by its `type`. Every step has a `name` (unique in the definition;
/// the workflow-name rule) and may have `dependsOn`, `when`, `retry` and `timeoutSeconds`.
/// Unknown fields are rejected (400 naming them).
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StepVariants {
    /// Ask the agent `agentId` to carry out `instructions`.
    #[serde(rename_all = "camelCase")]
    Agent {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
        agent_id: String,
        /// Templated.
        instructions: String,
        /// Any JSON (templated).
        inputs: Option<Value>,
    },
    /// Call a URL; a non-2xx status fails the attempt unless `allowStatus` lists it.
    #[serde(rename_all = "camelCase")]
    Http {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
        request: HttpStepRequest,
        allow_status: Option<Vec<u16>>,
    },
    /// Output `value` (templated JSON).
    #[serde(rename_all = "camelCase")]
    Transform {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
        value: Value,
    },
    /// Wait `seconds` (the run is WAITING and holds no worker).
    #[serde(rename_all = "camelCase")]
    Delay {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
        #[schema(minimum = 0, maximum = 2592000)]
        seconds: f64,
    },
    /// Wait for `POST /workflows/runs/{id}/steps/{step}/approve`.
    #[serde(rename_all = "camelCase")]
    Approval {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
    },
    /// Start a run of `workflowId` and wait for it; its output is the step's.
    #[serde(rename_all = "camelCase")]
    Subworkflow {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(exclusive_minimum = 0)]
        timeout_seconds: Option<f64>,
        workflow_id: String,
        /// An object, or a template that renders one.
        variables: Option<Value>,
    },
}

/// One error response, referenced from operations as `(status = N, response = Name)`.
macro_rules! error_response {
    ($name:ident, $code:expr, $description:expr, $message:expr) => {
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (
                    stringify!($name),
                    error_response($code, $description, $message),
                )
            }
        }
    };
}

fn error_response(code: ErrorCode, description: &str, message: &str) -> RefOr<Response> {
    let mut error = json!({"code": code, "message": message});
    if code == ErrorCode::ValidationError {
        error["details"] = json!([{"field": "definition.steps[0].type",
            "message": "unknown step type 'agnet' (expected one of: agent, http, transform, delay, approval, subworkflow)"}]);
    }
    let mut builder = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorEnvelope",
            ))))
            .example(Some(json!({"success": false, "error": error})))
            .build(),
    );
    if code == ErrorCode::RateLimited || description.contains("RATE_LIMITED") {
        builder = builder.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(i64::schema())
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    if code == ErrorCode::Unauthorized {
        builder = builder.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(String::schema())
                .description(Some("`Bearer`"))
                .build(),
        );
    }
    builder.build().into()
}

error_response!(
    BadRequest,
    ErrorCode::ValidationError,
    "The body is not JSON or not a JSON object (INVALID_JSON), or a field, header or query parameter is missing, of the wrong type, out of range or unknown (VALIDATION_ERROR, each named in `details`)",
    "definition.steps[0].type: unknown step type 'agnet' (expected one of: agent, http, transform, delay, approval, subworkflow)"
);
error_response!(
    Unauthorized,
    ErrorCode::Unauthorized,
    "No `Authorization: Bearer <key>`, or a key that is unknown or revoked (UNAUTHORIZED)",
    "send an API key: Authorization: Bearer <key>"
);
error_response!(
    Forbidden,
    ErrorCode::Forbidden,
    "The key may not do this: the admin key on an org route, an org key on an admin route, or another org's `orgId` (FORBIDDEN)",
    "the admin key reaches /admin and /ops routes only; use an org's API key"
);
error_response!(
    NotFound,
    ErrorCode::NotFound,
    "No such thing in the caller's org (another org's ids answer the same) (NOT_FOUND)",
    "workflow 'wf_support_triage' was not found"
);
error_response!(
    Conflict,
    ErrorCode::Conflict,
    "The request conflicts with the current state (CONFLICT)",
    "a workflow named 'support_triage' already exists"
);
error_response!(
    PayloadTooLarge,
    ErrorCode::PayloadTooLarge,
    "The body is larger than 1 MiB (PAYLOAD_TOO_LARGE)",
    "the request body is larger than 1048576 bytes"
);
error_response!(
    UnsupportedMediaType,
    ErrorCode::UnsupportedMediaType,
    "The body's Content-Type is not JSON (UNSUPPORTED_MEDIA_TYPE)",
    "Content-Type 'text/plain' is not supported; send application/json"
);
error_response!(
    RateLimited,
    ErrorCode::RateLimited,
    "More than RATE_LIMIT_PER_SECOND requests a second with this key (RATE_LIMITED); `Retry-After` says when to try again",
    "too many requests for this API key (RATE_LIMIT_PER_SECOND); retry after the time in Retry-After"
);
error_response!(
    QuotaExceeded,
    ErrorCode::QuotaExceeded,
    "One of the org's quotas is reached (QUOTA_EXCEEDED): the message names it and its value; nothing was created. GET /admin/orgs/{orgId}/limits lists them",
    "maxQueuedRuns (10000) reached: 10000 runs are PENDING or WAITING"
);
error_response!(
    RateLimitedOrQuota,
    ErrorCode::QuotaExceeded,
    "More than RATE_LIMIT_PER_SECOND requests a second with this key (RATE_LIMITED, with `Retry-After`), or one of the org's quotas is reached (QUOTA_EXCEEDED: the message names it and its value; nothing was created)",
    "maxQueuedRuns (10000) reached: 10000 runs are PENDING or WAITING"
);
error_response!(
    Unavailable,
    ErrorCode::Unavailable,
    "The database (or the broker, or another service) is unreachable (UNAVAILABLE)",
    "a backing service is unavailable; try again shortly"
);

/// Every error response, by name, for the document's components.
pub fn error_responses() -> Vec<(&'static str, RefOr<Response>)> {
    vec![
        BadRequest::response(),
        Unauthorized::response(),
        Forbidden::response(),
        NotFound::response(),
        Conflict::response(),
        PayloadTooLarge::response(),
        UnsupportedMediaType::response(),
        RateLimited::response(),
        QuotaExceeded::response(),
        RateLimitedOrQuota::response(),
        Unavailable::response(),
    ]
}

/// What every Thygon document has: the title and version, the one server (`/`, the base URL),
/// the bearer scheme, the error envelope's schemas and the error responses. Use it as the
/// `modifiers(&Common)` of a service's `#[derive(OpenApi)]`.
pub struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        doc.info.title = TITLE.to_string();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.info.description = Some(
            "Workflows (workflow-service) and their runs (runtime-service) behind one base URL. \
             Every route but `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs/` and \
             `/ui/` needs `Authorization: Bearer <key>`; every JSON answer is an envelope."
                .to_string(),
        );
        doc.info.license = None;
        doc.servers = Some(vec![Server::new("/")]);
        let components = doc.components.get_or_insert_with(Components::default);
        components.security_schemes.insert(
            BEARER.to_string(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An org's API key (`thy_...`), or the operator's ADMIN_API_KEY for /admin and /ops",
                    ))
                    .build(),
            ),
        );
        let mut schemas: Vec<(String, RefOr<Schema>)> = vec![
            (ErrorEnvelope::name().into(), ErrorEnvelope::schema()),
            (ApiError::name().into(), ApiError::schema()),
            (FieldError::name().into(), FieldError::schema()),
            (ErrorCode::name().into(), ErrorCode::schema()),
        ];
        ErrorEnvelope::schemas(&mut schemas);
        for (name, schema) in schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        for (name, response) in error_responses() {
            components
                .responses
                .entry(name.to_string())
                .or_insert(response);
        }
    }
}

/// Merge the document `other` into `doc`, both as JSON, by the rules of utoipa's
/// `OpenApi::merge`: `doc` keeps its `info` and everything it has, and takes from `other`
/// the operations, schemas, responses, security schemes, servers, security requirements and
/// tags it lacks. (On JSON because utoipa cannot read back every schema it writes: one without
/// a `type`, such as `{}` for any value, does not deserialize.)
///
/// `other` must be an OpenAPI 3.1 document with at least one path.
pub fn merge_json(doc: &mut Value, other: Value) -> Result<(), String> {
    let Value::Object(mut other) = other else {
        return Err("not a JSON object".into());
    };
    if !other
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("3.1"))
    {
        return Err("not an OpenAPI 3.1 document".into());
    }
    let Some(Value::Object(paths)) = other.remove("paths") else {
        return Err("it has no paths".into());
    };
    if paths.is_empty() {
        return Err("it has no paths".into());
    }
    let Value::Object(target) = doc else {
        return Err("the document is not a JSON object".into());
    };
    let own_paths = target
        .entry("paths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("the document's paths are not an object")?;
    for (path, item) in paths {
        match (own_paths.get_mut(&path), item) {
            (Some(Value::Object(own)), Value::Object(item)) => {
                for (key, value) in item {
                    own.entry(key).or_insert(value);
                }
            }
            (Some(_), _) => {}
            (None, item) => {
                own_paths.insert(path, item);
            }
        }
    }
    if let Some(Value::Object(components)) = other.remove("components") {
        let own = target
            .entry("components")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("the document's components are not an object")?;
        for (kind, entries) in components {
            let Value::Object(entries) = entries else {
                continue;
            };
            let Value::Object(own_entries) = own.entry(kind).or_insert_with(|| json!({})) else {
                continue;
            };
            for (name, value) in entries {
                own_entries.entry(name).or_insert(value);
            }
        }
    }
    for list in ["servers", "security", "tags"] {
        if let Some(Value::Array(items)) = other.remove(list) {
            if let Value::Array(own) = target.entry(list).or_insert_with(|| json!([])) {
                for item in items {
                    if !own.contains(&item) {
                        own.push(item);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Route-coverage checks: the routes a service's `routes/mod.rs` registers, and the
/// operations its document describes, as `(METHOD, path)` with every `{name}` made `{}`.
pub mod coverage {
    use std::collections::BTreeSet;

    /// Routes the description leaves out on purpose: health, metrics, the dashboard's static
    /// files, the description itself and its docs page.
    pub fn is_excluded(path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz" | "/metrics")
            || path.starts_with("/ui")
            || path.starts_with("/openapi")
            || path.starts_with("/docs")
    }

    /// `/workflows/{id}/versions/{version}` -> `/workflows/{}/versions/{}`.
    pub fn normalise(path: &str) -> String {
        let mut out = String::with_capacity(path.len());
        let mut depth = 0usize;
        for c in path.chars() {
            match c {
                '{' => {
                    if depth == 0 {
                        out.push_str("{}");
                    }
                    depth += 1;
                }
                '}' => depth = depth.saturating_sub(1),
                _ if depth > 0 => {}
                _ => out.push(c),
            }
        }
        out
    }

    const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

    /// The first string literal at the start of `s` (after `"`), up to its closing quote.
    fn literal(s: &str) -> Option<&str> {
        s.find('"').map(|end| &s[..end])
    }

    /// The HTTP methods named as `web::<method>()` in `s`, in order.
    fn methods_in(s: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("web::") {
            rest = &rest[i + 5..];
            for m in METHODS {
                if rest.starts_with(m) && rest[m.len()..].starts_with("()") {
                    found.push(m.to_ascii_uppercase());
                }
            }
        }
        found
    }

    /// Every `(METHOD, path)` registered in an actix `configure` function's source: each
    /// `web::resource("<path>")` with the `web::<method>()` routes that follow it (up to the
    /// next resource or route), and each `.route("<path>", web::<method>()...)`.
    pub fn routes_in_source(src: &str) -> BTreeSet<(String, String)> {
        // Comments may mention routes; they register nothing.
        let code: String = src
            .lines()
            .map(|l| match l.find("//") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let markers = ["web::resource(\"", ".route(\""];
        let mut starts: Vec<(usize, &str)> = markers
            .iter()
            .flat_map(|m| code.match_indices(m).map(|(i, _)| (i, *m)))
            .collect();
        starts.sort();
        let mut routes = BTreeSet::new();
        for (n, (at, marker)) in starts.iter().enumerate() {
            let body_start = at + marker.len();
            let end = starts.get(n + 1).map_or(code.len(), |(next, _)| *next);
            let Some(path) = literal(&code[body_start..]) else {
                continue;
            };
            let after = &code[body_start + path.len()..end];
            let methods = methods_in(after);
            let methods = if *marker == ".route(\"" {
                methods.into_iter().take(1).collect()
            } else {
                methods
            };
            for m in methods {
                routes.insert((m, normalise(path)));
            }
        }
        routes
    }

    /// Every `(METHOD, path)` a document describes.
    pub fn operations_in_spec(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                for m in METHODS {
                    if item.get(m).is_some() {
                        ops.insert((m.to_ascii_uppercase(), normalise(path)));
                    }
                }
            }
        }
        ops
    }

    /// Panics, naming each difference, unless the routes registered in `routes_src` (less the
    /// [`is_excluded`] ones) are exactly the operations of `doc`.
    pub fn assert_routes_documented(service: &str, routes_src: &str, doc: &serde_json::Value) {
        let routes: BTreeSet<_> = routes_in_source(routes_src)
            .into_iter()
            .filter(|(_, p)| !is_excluded(p))
            .collect();
        assert!(
            !routes.is_empty(),
            "{service}: no route found in routes/mod.rs: has the registration style changed?"
        );
        let ops = operations_in_spec(doc);
        let undocumented: Vec<_> = routes.difference(&ops).collect();
        let phantom: Vec<_> = ops.difference(&routes).collect();
        assert!(
            undocumented.is_empty() && phantom.is_empty(),
            "{service}: routes without an OpenAPI operation (annotate the handler with \
             #[utoipa::path] and list it in routes/openapi.rs): {undocumented:?}; \
             operations the routes do not serve: {phantom:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::coverage::*;
    use super::*;

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
}
