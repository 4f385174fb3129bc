//! `POST /workflows/{id}/trigger` and `POST /workflows/runs`: create a run, queue it, answer
//! at once. Execution is asynchronous.

use crate::domain::{self, RunRequest};
use crate::error::RuntimeError;
use crate::routes::publish::publish_committed;
use crate::routes::views::RunView;
use crate::startup::AppState;
use crate::storage::{self, CreateOutcome, PlainTrigger};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use shared_models::auth::Caller;
use shared_models::db::blocking;
use shared_models::envelope;
use shared_models::http::{JsonObject, OptionalJsonObject, RequestId};
use shared_models::openapi::{self as doc, MessageEnvelope};

/// `POST /workflows/{id}/trigger` body (read field by field by `domain::trigger_request`);
/// the body may also be empty.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct TriggerBody {
    /// The run's variables (at most 64 KiB of JSON); `null` is `{}`.
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Value>,
}

/// `POST /workflows/runs` body (read field by field by `domain::create_run_request`).
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct CreateRunBody {
    #[schema(example = "wf_support_triage")]
    workflow_id: String,
    /// The run's variables (at most 64 KiB of JSON); `null` is `{}`.
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Value>,
    /// Must be the caller's org (another is a 403).
    #[schema(example = "org_acme_123")]
    org_id: Option<String>,
}

pub const QUEUED_MESSAGE: &str = "Run queued — execution is asynchronous";

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, RuntimeError> {
    Ok(domain::idempotency_key(
        req.headers().get("idempotency-key").map(|v| v.as_bytes()),
    )?)
}

/// `POST /workflows/{id}/trigger`
#[utoipa::path(
    post,
    path = "/workflows/{id}/trigger",
    tag = "runs",
    summary = "Trigger a run of a workflow (queued; execution is asynchronous)",
    params(
        ("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Scoped to the org: the same key with the same body returns the first run (200); with another body it is a 409. 1-255 visible ASCII characters."),
    ),
    request_body(content = TriggerBody, description = "Optional: an empty body is `{}`", example = json!({"variables": {"priorityOverride": "high"}})),
    responses(
        (status = 201, description = "The run, PENDING and queued", body = MessageEnvelope<RunView>),
        (status = 200, description = "The run first made with this Idempotency-Key and body", body = MessageEnvelope<RunView>),
        (status = 409, response = doc::Conflict),
        (status = 429, response = doc::RateLimitedOrQuota),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/workflows/runs",
    tag = "runs",
    summary = "Create and queue a run",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Scoped to the org: the same key with the same body returns the first run (200); with another body it is a 409. 1-255 visible ASCII characters."),),
    request_body(content = CreateRunBody, example = json!({
        "workflowId": "wf_support_triage",
        "variables": {"ticketId": "TCK-101"},
        "orgId": "org_acme_123"
    })),
    responses(
        (status = 201, description = "The run, PENDING and queued", body = MessageEnvelope<RunView>),
        (status = 200, description = "The run first made with this Idempotency-Key and body", body = MessageEnvelope<RunView>),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 429, response = doc::RateLimitedOrQuota),
    ),
)]
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
    let outcome = if request.idempotency_key.is_none() {
        // Written with the other triggers waiting, published, and marked sent (batcher.rs).
        let trigger = PlainTrigger {
            org_id: caller.org_id,
            workflow_id,
            budget: request.budget_json(),
            variables: request.variables,
            request_id: Some(request_id.0),
            now,
            max_queued: caller.limits.max_queued_runs,
        };
        state.batcher.submit(trigger).await?
    } else {
        let (org_id, max_queued) = (caller.org_id, caller.limits.max_queued_runs);
        let req = request.clone();
        let outcome = blocking(&state.pool, move |conn| {
            let request_id = Some(request_id.0.as_str());
            storage::create_run(
                conn,
                &org_id,
                &req,
                &workflow_id,
                request_id,
                max_queued,
                now,
            )
        })
        .await?;
        if let CreateOutcome::Created { job, outbox_id, .. } = &outcome {
            // Committed: from here the run cannot be lost.
            publish_committed(state, *outbox_id, job).await;
        }
        outcome
    };
    match outcome {
        CreateOutcome::Created { run, .. } => Ok(envelope::with_message(
            StatusCode::CREATED,
            QUEUED_MESSAGE,
            RunView::from(run),
        )),
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
        CreateOutcome::QuotaExceeded(e) => Err(RuntimeError::Quota(e)),
    }
}
