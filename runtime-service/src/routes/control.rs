//! Run control: `POST /workflows/runs/{id}/cancel`, `.../retry` and
//! `.../steps/{step}/approve`. Each answers 200 with the run as `GET /workflows/runs/{id}`
//! shows it, read in the transaction that changed it.

use crate::domain;
use crate::error::RuntimeError;
use crate::routes::publish::publish_committed;
use crate::routes::views::RunDetailView;
use crate::startup::AppState;
use crate::storage::control::{self, ApproveOutcome, CancelOutcome, RetryOutcome};
use actix_web::{web, HttpResponse};
use shared_models::auth::Caller;
use shared_models::db::blocking;
use shared_models::envelope;
use shared_models::http::{JsonObject, RequestId};
use shared_models::ids::RunId;
use shared_models::openapi::{self as doc, Envelope};

/// `POST /workflows/runs/{id}/steps/{step}/approve` body.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct ApproveBody {
    /// `true` approves; `false` rejects (and fails the step).
    approved: bool,
    #[schema(max_length = 2000)]
    comment: Option<String>,
}

fn run_id(raw: &str) -> Result<RunId, RuntimeError> {
    RunId::parse(raw).ok_or_else(|| RuntimeError::RunNotFound(raw.to_string()))
}

/// `POST /workflows/runs/{id}/cancel`: 409 once the run has ended.
#[utoipa::path(
    post,
    path = "/workflows/runs/{id}/cancel",
    tag = "runs",
    summary = "Cancel a run",
    params(("id" = String, Path, description = "The run id (`run_` + a lowercase ULID)", example = "run_01j9z3c4x5v6b7n8m9q0r1s2t3")),
    responses(
        (status = 200, description = "The run, now CANCELLED", body = Envelope<RunDetailView>),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn cancel_run(
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, RuntimeError> {
    let raw = path.into_inner();
    let id = run_id(&raw)?;
    let now = shared_models::time::now();
    let outcome = blocking(&state.pool, move |conn| {
        control::cancel_run(conn, &caller.org_id, id.as_str(), Some(&request_id.0), now)
    })
    .await?;
    match outcome {
        CancelOutcome::Cancelled {
            detail,
            wake_parent,
        } => {
            if let Some((outbox_id, job)) = wake_parent {
                publish_committed(&state, outbox_id, &job).await;
            }
            Ok(envelope::ok(RunDetailView::from(*detail)))
        }
        CancelOutcome::NotFound => Err(RuntimeError::RunNotFound(raw)),
        CancelOutcome::Ended(status) => Err(RuntimeError::RunEnded { id: raw, status }),
    }
}

/// `POST /workflows/runs/{id}/retry`: 409 unless the run is FAILED or CANCELLED.
#[utoipa::path(
    post,
    path = "/workflows/runs/{id}/retry",
    tag = "runs",
    summary = "Retry a FAILED or CANCELLED run (completed steps are kept)",
    params(("id" = String, Path, description = "The run id (`run_` + a lowercase ULID)", example = "run_01j9z3c4x5v6b7n8m9q0r1s2t3")),
    responses(
        (status = 200, description = "The run, back at PENDING", body = Envelope<RunDetailView>),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn retry_run(
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
) -> Result<HttpResponse, RuntimeError> {
    let raw = path.into_inner();
    let id = run_id(&raw)?;
    let now = shared_models::time::now();
    let outcome = blocking(&state.pool, move |conn| {
        control::retry_run(conn, &caller.org_id, id.as_str(), Some(&request_id.0), now)
    })
    .await?;
    match outcome {
        RetryOutcome::Retried {
            detail,
            job: (outbox_id, job),
        } => {
            publish_committed(&state, outbox_id, &job).await;
            Ok(envelope::ok(RunDetailView::from(*detail)))
        }
        RetryOutcome::NotFound => Err(RuntimeError::RunNotFound(raw)),
        RetryOutcome::NotRetryable(status) => {
            Err(RuntimeError::RunNotRetryable { id: raw, status })
        }
    }
}

/// `POST /workflows/runs/{id}/steps/{step}/approve` with `{ "approved", "comment" }`:
/// 409 unless the step is an `approval` step that is WAITING.
#[utoipa::path(
    post,
    path = "/workflows/runs/{id}/steps/{step}/approve",
    tag = "runs",
    summary = "Approve or reject a waiting approval step",
    params(
        ("id" = String, Path, description = "The run id (`run_` + a lowercase ULID)", example = "run_01j9z3c4x5v6b7n8m9q0r1s2t3"),
        ("step" = String, Path, description = "The approval step's name"),
    ),
    request_body(content = ApproveBody, example = json!({"approved": true, "comment": "looks right"})),
    responses(
        (status = 200, description = "The run after the decision", body = Envelope<RunDetailView>),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn approve_step(
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<(String, String)>,
    body: JsonObject,
) -> Result<HttpResponse, RuntimeError> {
    let (raw, step) = path.into_inner();
    let approval = domain::approval_request(&body.0)?;
    let id = run_id(&raw)?;
    let now = shared_models::time::now();
    let name = step.clone();
    let outcome = blocking(&state.pool, move |conn| {
        control::decide_approval(
            conn,
            &caller.org_id,
            id.as_str(),
            &name,
            &approval,
            Some(&request_id.0),
            now,
        )
    })
    .await?;
    match outcome {
        ApproveOutcome::Decided { detail, job } => {
            if let Some((outbox_id, job)) = job {
                publish_committed(&state, outbox_id, &job).await;
            }
            Ok(envelope::ok(RunDetailView::from(*detail)))
        }
        ApproveOutcome::RunNotFound => Err(RuntimeError::RunNotFound(raw)),
        ApproveOutcome::StepNotFound => Err(RuntimeError::StepNotFound { run: raw, step }),
        ApproveOutcome::NotWaiting(reason) => Err(RuntimeError::StepNotWaiting { step, reason }),
    }
}
