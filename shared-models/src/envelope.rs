//! The envelope every JSON response wears, success or failure (docs/API.md "Envelope").
//!
//! Services keep their own error enums listing exactly what each can fail with; each
//! converts into [`ApiError`], which is the only thing that reaches the wire.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The stable, documented error codes. Clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidJson,
    ValidationError,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    /// One of the org's quotas (`shared_models::limits`) is reached; the message names it.
    QuotaExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson | ErrorCode::ValidationError => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One problem with one field of a request, e.g. `definition.steps[1].type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"field": "definition.steps[1].type", "message": "is required"}))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error as the client sees it. Build it from a service error; never put a
/// database or broker message in `message` (log those instead).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", details.len()),
        };
        Self {
            code: ErrorCode::ValidationError,
            message,
            details,
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} '{id}' was not found"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "a backing service is unavailable; try again shortly",
        )
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "an internal error occurred")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::RateLimited {
            res.insert_header(("Retry-After", "1"));
        }
        res.json(ErrorEnvelope {
            success: false,
            error: self,
        })
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    success: bool,
    error: &'a ApiError,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub limit: i64,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize)]
struct SuccessEnvelope<T: Serialize> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pagination: Option<Pagination>,
}

fn respond<T: Serialize>(
    status: StatusCode,
    message: Option<&'static str>,
    data: T,
    pagination: Option<Pagination>,
) -> HttpResponse {
    HttpResponse::build(status).json(SuccessEnvelope {
        success: true,
        message,
        data,
        pagination,
    })
}

/// 200 `{ "success": true, "data": ... }`
pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    respond(StatusCode::OK, None, data, None)
}

/// 201 `{ "success": true, "data": ... }`
pub fn created<T: Serialize>(data: T) -> HttpResponse {
    respond(StatusCode::CREATED, None, data, None)
}

/// `{ "success": true, "message": ..., "data": ... }` with the given status.
pub fn with_message<T: Serialize>(
    status: StatusCode,
    message: &'static str,
    data: T,
) -> HttpResponse {
    respond(status, Some(message), data, None)
}

/// 200 `{ "success": true, "data": [...], "pagination": {...} }`
pub fn page<T: Serialize>(data: Vec<T>, pagination: Pagination) -> HttpResponse {
    respond(StatusCode::OK, None, data, Some(pagination))
}
