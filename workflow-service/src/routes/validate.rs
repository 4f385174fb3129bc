//! `POST /workflows/validate`: check a definition without storing anything.

use crate::domain::DefinitionCheck;
use crate::error::WorkflowError;
use actix_web::HttpResponse;
use shared_models::auth::Caller;
use shared_models::envelope;
use shared_models::http::JsonObject;
use shared_models::openapi::{self as doc, Envelope, WorkflowDefinition};
use utoipa::ToSchema;

/// `POST /workflows/validate` body.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct ValidateBody {
    definition: WorkflowDefinition,
}

/// `{ "valid": true }`
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
struct Valid {
    #[schema(inline)]
    valid: doc::True,
}

/// 200 `{"valid": true}`, or exactly the 400 a create would give for the same definition
/// (both parse it with the same code, so the `details` cannot drift apart).
#[utoipa::path(
    post,
    path = "/workflows/validate",
    tag = "workflows",
    summary = "Check a definition without storing it",
    request_body(content = ValidateBody, example = json!({
        "definition": {"steps": [{"name": "classify", "type": "agent",
            "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]}
    })),
    responses(
        (status = 200, description = "The definition is valid", body = Envelope<Valid>),
    ),
)]
pub async fn validate_definition(
    // Unused today, but it makes the route need a caller like every other once keys exist.
    _caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    DefinitionCheck::try_from(&body.0)?;
    Ok(envelope::ok(serde_json::json!({ "valid": true })))
}
