//! Everything this service can fail with, and how each failure looks on the wire.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use shared_models::db::StorageError;
use shared_models::envelope::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A body, header or query that did not parse; the envelope names each field.
    #[error("{0}")]
    Request(#[from] ApiError),
    #[error("workflow '{0}' was not found")]
    WorkflowNotFound(String),
    #[error("workflow '{0}' is inactive; activate it before triggering runs")]
    WorkflowInactive(String),
    #[error("run '{0}' was not found")]
    RunNotFound(String),
    #[error("step '{step}' was not found in run '{run}'")]
    StepNotFound { run: String, step: String },
    /// Cancel of a run that already ended.
    #[error("run '{id}' has already ended ({status})")]
    RunEnded { id: String, status: String },
    /// Retry of a run that has not failed or been cancelled.
    #[error("run '{id}' is {status}; only FAILED or CANCELLED runs can be retried")]
    RunNotRetryable { id: String, status: String },
    /// An approval for a step that is not an `approval` step waiting for one.
    #[error("step '{step}' is not waiting for approval: {reason}")]
    StepNotWaiting { step: String, reason: String },
    #[error("orgId '{0}' is not the caller's org")]
    OtherOrg(String),
    #[error("Idempotency-Key '{0}' was already used with a different request body")]
    IdempotencyKeyReused(String),
    /// One of the org's quotas (`maxQueuedRuns`, `maxEventStreams`) is reached.
    #[error(transparent)]
    Quota(#[from] shared_models::limits::QuotaExceeded),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A redrive of dead letters that could not go on (the broker or the database).
    #[error(transparent)]
    Redrive(#[from] crate::redrive::RedriveError),
}

impl RuntimeError {
    fn to_api(&self) -> ApiError {
        match self {
            RuntimeError::Request(e) => e.clone(),
            RuntimeError::WorkflowNotFound(id) => ApiError::not_found("workflow", id),
            RuntimeError::RunNotFound(id) => ApiError::not_found("run", id),
            RuntimeError::StepNotFound { step, .. } => ApiError::not_found("step", step),
            RuntimeError::WorkflowInactive(_)
            | RuntimeError::IdempotencyKeyReused(_)
            | RuntimeError::RunEnded { .. }
            | RuntimeError::RunNotRetryable { .. }
            | RuntimeError::StepNotWaiting { .. } => ApiError::conflict(self.to_string()),
            RuntimeError::OtherOrg(_) => ApiError::new(ErrorCode::Forbidden, self.to_string()),
            RuntimeError::Quota(e) => e.clone().into(),
            RuntimeError::Storage(e) => e.to_api(),
            RuntimeError::Redrive(crate::redrive::RedriveError::Storage(e)) => e.to_api(),
            RuntimeError::Redrive(e) => {
                log::warn!("redrive of dead letters stopped: {e}");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the broker cannot be reached: letters not yet moved stay in the dead-letter queue",
                )
            }
        }
    }
}

impl ResponseError for RuntimeError {
    fn status_code(&self) -> StatusCode {
        self.to_api().code.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.to_api().error_response()
    }
}
