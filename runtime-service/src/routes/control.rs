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

fn run_id(raw: &str) -> Result<RunId, RuntimeError> {
    RunId::parse(raw).ok_or_else(|| RuntimeError::RunNotFound(raw.to_string()))
}

/// `POST /workflows/runs/{id}/cancel`: 409 once the run has ended.
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
