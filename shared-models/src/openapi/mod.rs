//! The parts of the OpenAPI description both services share: the envelopes, the error
//! responses and the edge every operation has ([`Edge`]), the bearer security scheme, the
//! document's info and servers, list parameters, and the workflow definition's schema.
//!
//! Each service derives its own document from its annotated handlers (`#[utoipa::path]`) and
//! runs [`Common`] over it; workflow-service merges the two ([`merge_json`]) and serves the
//! result at `GET /openapi.json` (docs/API.md "OpenAPI"). An annotation names only what is its
//! route's own: its success answers, and the errors that only it gives (a 409, a quota's 429,
//! a 404 without a path id); [`Edge`] adds the rest to every operation at once.
//!
//! Request bodies are read field by field from JSON maps (see [`crate::body`]), so the types
//! here and in the services' `routes/` only document them: they are never built.

pub mod coverage;
mod definition;
mod merge;
mod responses;
#[cfg(test)]
mod tests;

pub use definition::*;
pub use merge::merge_json;
pub use responses::*;

use crate::envelope::{ApiError, ErrorCode, FieldError, Pagination};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{Components, OpenApi, RefOr};
use utoipa::{IntoParams, Modify, PartialSchema, ToSchema};

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
    /// The `pagination.nextCursor` of the previous page, as it was given (opaque): any other
    /// value is a 400 naming `cursor`.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// What every Thygon document has: the title and version, the one server (`/`, the base URL),
/// the bearer scheme, the error envelope's schemas, the error responses, and [`Edge`] over
/// every operation. Use it as the `modifiers(&Common)` of a service's `#[derive(OpenApi)]`.
pub struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        doc.info.title = TITLE.to_string();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.info.description = Some(
            "Workflows (workflow-service) and their runs (runtime-service) behind one base URL. \
             Every route but `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs/` and \
             `/ui/` needs `Authorization: Bearer <key>`; every JSON answer is an envelope. \
             A string holding U+0000, anywhere in a body (keys too), a query parameter or a \
             header, is a 400 naming it."
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
        Edge.modify(doc);
    }
}
