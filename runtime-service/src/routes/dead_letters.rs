//! `POST /ops/dead-letters/redrive`: dead letters back to the job queue ([`crate::redrive`]).
//! The admin key only ([`Admin`]); org keys get 403.

use crate::domain;
use crate::error::RuntimeError;
use crate::redrive::{self, RedriveReport};
use crate::startup::AppState;
use actix_web::{web, HttpResponse};
use shared_models::auth::Admin;
use shared_models::envelope;
use shared_models::http::OptionalJsonObject;
use shared_models::openapi::Envelope;

/// `POST /ops/dead-letters/redrive` body; every field is optional, and so is the body.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct RedriveBody {
    /// Only jobs of this org.
    #[schema(example = "org_acme_123", min_length = 1, max_length = 64)]
    org_id: Option<String>,
    /// Only jobs of runs of this workflow.
    #[schema(
        example = "wf_support_triage",
        pattern = "^wf_[A-Za-z][A-Za-z0-9_-]{0,63}$"
    )]
    workflow_id: Option<String>,
    /// The most letters this call takes from the dead-letter queue (default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// Only letters dead-lettered at least this many seconds ago (a letter that does not
    /// say when counts as old).
    #[schema(minimum = 0, maximum = 31536000)]
    older_than_seconds: Option<f64>,
}

/// `POST /ops/dead-letters/redrive`: take up to `limit` letters from the dead-letter queue
/// (never more than it held when the call began) and move those the filter selects back to
/// the job queue; drop those whose run has ended; put the others back.
#[utoipa::path(
    post,
    path = "/ops/dead-letters/redrive",
    tag = "ops",
    summary = "Move dead-lettered jobs back to the job queue (admin key)",
    request_body(content = RedriveBody, example = json!({"orgId": "org_acme_123", "limit": 100, "olderThanSeconds": 60})),
    responses(
        (status = 200, description = "What the call did, and what is left in the dead-letter queue", body = Envelope<RedriveReport>),
    ),
)]
pub async fn redrive_dead_letters(
    state: web::Data<AppState>,
    _admin: Admin,
    body: OptionalJsonObject,
) -> Result<HttpResponse, RuntimeError> {
    let filter = domain::redrive_request(&body.0)?;
    let report = redrive::redrive(&state.pool, state.publisher.as_ref(), &filter).await?;
    Ok(envelope::ok(report))
}
