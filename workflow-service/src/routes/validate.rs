//! `POST /workflows/validate`: check a definition without storing anything.

use crate::domain::DefinitionCheck;
use crate::error::WorkflowError;
use actix_web::HttpResponse;
use shared_models::auth::Caller;
use shared_models::envelope;
use shared_models::http::JsonObject;

/// 200 `{"valid": true}`, or exactly the 400 a create would give for the same definition
/// (both parse it with the same code, so the `details` cannot drift apart).
pub async fn validate_definition(
    // Unused today, but it makes the route need a caller like every other once keys exist.
    _caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    DefinitionCheck::try_from(&body.0)?;
    Ok(envelope::ok(serde_json::json!({ "valid": true })))
}
