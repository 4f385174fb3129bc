//! Everything this service can fail with, and how each failure looks on the wire.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use shared_models::db::StorageError;
use shared_models::envelope::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkflowError {
    /// A body or query that did not parse; the envelope names each field.
    #[error("{0}")]
    Request(#[from] ApiError),
    #[error("workflow '{0}' was not found")]
    NotFound(String),
    /// No such version of the workflow (the second part is the path segment as given).
    #[error("version '{1}' of workflow '{0}' was not found")]
    VersionNotFound(String, String),
    #[error("a workflow named '{0}' already exists")]
    NameTaken(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl WorkflowError {
    fn to_api(&self) -> ApiError {
        match self {
            WorkflowError::Request(e) => e.clone(),
            WorkflowError::NotFound(id) => ApiError::not_found("workflow", id),
            WorkflowError::VersionNotFound(..) => {
                ApiError::new(ErrorCode::NotFound, self.to_string())
            }
            WorkflowError::NameTaken(_) => ApiError::conflict(self.to_string()),
            WorkflowError::Storage(e) => e.to_api(),
        }
    }
}

impl ResponseError for WorkflowError {
    fn status_code(&self) -> StatusCode {
        self.to_api().code.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.to_api().error_response()
    }
}
