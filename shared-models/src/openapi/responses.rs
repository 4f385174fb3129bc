//! The error responses, and [`Edge`]: the pass that gives every operation needing a key the
//! errors the edge answers for any route (docs/API.md "Error codes").

use super::BEARER;
use crate::envelope::ErrorCode;
use serde_json::json;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::{Modify, PartialSchema, ToResponse};

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
            .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorEnvelope"))))
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
error_response!(
    Internal,
    ErrorCode::Internal,
    "Anything else (INTERNAL); nothing internal is in the message, the details are in the log",
    "an internal error occurred"
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
        Internal::response(),
    ]
}

/// The pass over every operation of a document that needs a key (every path but the public
/// ones, [`crate::auth::is_public`]): it needs the bearer key, and it can answer what the
/// edge answers on any such route (docs/API.md "Error codes"), added where the operation's
/// own annotation does not already say it:
///
/// - 401 (no key, or a bad one) and 403 (the wrong kind of key: an org key on `/admin` or
///   `/ops`, the admin key elsewhere), from the authentication in front of every route;
/// - 429 `RATE_LIMITED` (the key's requests per second), also from the authentication; a
///   route that has a quota says so itself ([`RateLimitedOrQuota`]);
/// - 500 and 503 (the database or the broker away);
/// - with a body: 400 (not JSON, a bad field), 413 and 415, from [`crate::http::JsonObject`];
/// - with query or header parameters: 400 (a bad or unknown one), from [`crate::http::Query`]
///   and the header checks;
/// - with path parameters: 404 (an id that names nothing, or another org's).
///
/// So an annotation lists only its success answers and the errors that are its own: 409,
/// a quota's 429, a 404 that is not about a path id.
pub struct Edge;

impl Modify for Edge {
    fn modify(&self, doc: &mut OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            if crate::auth::is_public(path) {
                continue;
            }
            for op in operations(item) {
                secure(op);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn secure(op: &mut Operation) {
    op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    let params = op.parameters.as_deref().unwrap_or_default();
    let takes = |place: ParameterIn| params.iter().any(|p| p.parameter_in == place);
    let body = op.request_body.is_some();
    let mut standard = vec![
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("429", "RateLimited"),
        ("500", "Internal"),
        ("503", "Unavailable"),
    ];
    if body || takes(ParameterIn::Query) || takes(ParameterIn::Header) {
        standard.push(("400", "BadRequest"));
    }
    if body {
        standard.extend([("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")]);
    }
    if takes(ParameterIn::Path) {
        standard.push(("404", "NotFound"));
    }
    for (status, name) in standard {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}
