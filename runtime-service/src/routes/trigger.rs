//! `POST /workflows/{id}/trigger` and `POST /workflows/runs`: create a run, queue it, answer
//! at once. Execution is asynchronous.

use crate::domain::{self, RunRequest};
use crate::error::RuntimeError;
use crate::routes::publish::publish_committed;
use crate::routes::views::RunView;
use crate::startup::AppState;
use crate::storage::{self, CreateOutcome};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use shared_models::auth::Caller;
use shared_models::db::blocking;
use shared_models::envelope;
use shared_models::http::{JsonObject, OptionalJsonObject, RequestId};

pub const QUEUED_MESSAGE: &str = "Run queued — execution is asynchronous";

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, RuntimeError> {
    Ok(domain::idempotency_key(
        req.headers().get("idempotency-key").map(|v| v.as_bytes()),
    )?)
}

/// `POST /workflows/{id}/trigger`
pub async fn trigger_run(
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    path: web::Path<String>,
    req: HttpRequest,
    body: OptionalJsonObject,
) -> Result<HttpResponse, RuntimeError> {
    let request = domain::trigger_request(path.into_inner(), &body.0, idempotency_key(&req)?)?;
    queue_run(&state, caller, request_id, request).await
}

/// `POST /workflows/runs`
pub async fn create_run(
    state: web::Data<AppState>,
    caller: Caller,
    request_id: RequestId,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, RuntimeError> {
    let request = domain::create_run_request(&body.0, idempotency_key(&req)?)?;
    queue_run(&state, caller, request_id, request).await
}

async fn queue_run(
    state: &AppState,
    caller: Caller,
    request_id: RequestId,
    request: RunRequest,
) -> Result<HttpResponse, RuntimeError> {
    if let Some(org) = &request.org_id {
        if *org != caller.org_id {
            return Err(RuntimeError::OtherOrg(org.clone()));
        }
    }
    let workflow_id = request
        .workflow_id()
        .ok_or_else(|| RuntimeError::WorkflowNotFound(request.workflow_id.clone()))?;
    let now = shared_models::time::now();
    let org_id = caller.org_id.clone();
    let req = request.clone();
    let outcome = blocking(&state.pool, move |conn| {
        storage::create_run(conn, &org_id, &req, &workflow_id, Some(&request_id.0), now)
    })
    .await?;
    match outcome {
        CreateOutcome::Created {
            run,
            job,
            outbox_id,
        } => {
            // Committed: from here the run cannot be lost.
            publish_committed(state, outbox_id, &job).await;
            Ok(envelope::with_message(
                StatusCode::CREATED,
                QUEUED_MESSAGE,
                RunView::from(run),
            ))
        }
        CreateOutcome::Replayed(run) => Ok(envelope::with_message(
            StatusCode::OK,
            QUEUED_MESSAGE,
            RunView::from(run),
        )),
        CreateOutcome::KeyReused => Err(RuntimeError::IdempotencyKeyReused(
            request.idempotency_key.unwrap_or_default(),
        )),
        CreateOutcome::WorkflowNotFound => Err(RuntimeError::WorkflowNotFound(request.workflow_id)),
        CreateOutcome::WorkflowInactive => Err(RuntimeError::WorkflowInactive(request.workflow_id)),
    }
}
