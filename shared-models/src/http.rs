//! The HTTP edge both services share, so both behave the same: JSON bodies with limits,
//! query strings with unknown-parameter checks, request ids, and envelopes for every error
//! (unknown routes and wrong methods included, a 405 with its `Allow`).

use crate::auth::{authenticate, Authenticator};
use crate::body::parse_object;
use crate::envelope::{ApiError, ErrorCode, FieldError};
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, ErrorHandlerResponse, ErrorHandlers, Logger, Next};
use actix_web::{App, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::{ready, Ready};

/// The default request body limit (docs/API.md "Envelope": 1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request body that is a JSON object (`application/json`, at most [`MAX_BODY_BYTES`]).
pub struct JsonObject(pub Map<String, Value>);

/// Like [`JsonObject`], but an empty body is `{}` (for bodies whose every field is optional).
pub struct OptionalJsonObject(pub Map<String, Value>);

fn content_type_error(req: &HttpRequest) -> Option<ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)?
        .to_str()
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim().to_string();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    (!is_json).then(|| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type '{essence}' is not supported; send application/json"),
        )
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

async fn read_body(
    req: HttpRequest,
    mut payload: Payload,
    allow_empty: bool,
) -> Result<Map<String, Value>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("could not read the request body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if allow_empty && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if let Some(e) = content_type_error(&req) {
        return Err(e);
    }
    parse_object(&body)
}

impl FromRequest for JsonObject {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move { read_body(req, payload, false).await.map(JsonObject) })
    }
}

impl FromRequest for OptionalJsonObject {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move { read_body(req, payload, true).await.map(OptionalJsonObject) })
    }
}

/// A query string read parameter by parameter; unknown or repeated parameters are a 400,
/// so a misspelt filter is never silently ignored.
pub struct Query {
    pairs: Vec<(String, String)>,
    known: Vec<&'static str>,
}

impl Query {
    /// `limit` under the list rules (1-200, default 50); a bad one is added to `errors`.
    pub fn limit(&mut self, errors: &mut Vec<FieldError>) -> i64 {
        crate::pagination::parse_limit(self.get("limit")).unwrap_or_else(|e| {
            errors.push(FieldError::new("limit", e));
            crate::pagination::DEFAULT_LIMIT
        })
    }

    pub fn get(&mut self, key: &'static str) -> Option<&str> {
        self.known.push(key);
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn finish(self, mut errors: Vec<FieldError>) -> Result<(), ApiError> {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if k.contains('\0') || v.contains('\0') {
                errors.push(FieldError::new(
                    k,
                    "must not contain the NUL character (U+0000)",
                ));
                continue;
            }
            if !self.known.contains(&k.as_str()) {
                let mut expected = self.known.clone();
                expected.sort_unstable();
                errors.push(FieldError::new(
                    k,
                    format!(
                        "is not a known query parameter (expected one of: {})",
                        expected.join(", ")
                    ),
                ));
            } else if self.pairs[..i].iter().any(|(earlier, _)| earlier == k) {
                errors.push(FieldError::new(k, "may be given only once"));
            }
        }
        crate::body::finish(errors, || ())
    }
}

impl FromRequest for Query {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            actix_web::web::Query::<Vec<(String, String)>>::from_query(req.query_string())
                .map(|q| Query {
                    pairs: q.into_inner(),
                    known: Vec::new(),
                })
                .map_err(|e| {
                    ApiError::validation(vec![FieldError::new(
                        "query",
                        format!("is not a valid query string: {e}"),
                    )])
                }),
        )
    }
}

/// The id of the request being served: the caller's `X-Request-Id` when it is sane,
/// else a new one. It is echoed in the response and carried into the job message.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl FromRequest for RequestId {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(new_request_id()))))
    }
}

fn new_request_id() -> String {
    format!("req_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Middleware: assign the request id and echo it in `X-Request-Id`.
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    // Lines logged while the request is handled carry its id.
    let mut res =
        crate::logctx::scope(crate::logctx::LogContext::request(&id), next.call(req)).await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}

/// The methods each route of a service serves, by its path pattern (`/workflows/{id}`): the
/// `Allow` of its 405s (RFC 9110: a 405 must list them). Read from the service's API
/// description, which each service's `tests/api/openapi.rs` holds equal to its routes; a
/// service registers it as app data next to its routes.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods(HashMap<String, String>);

impl AllowedMethods {
    /// From an API description: each path's operations, as `GET, PUT, DELETE`.
    pub fn from_description(doc: &utoipa::openapi::OpenApi) -> Self {
        let table = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods: Vec<&str> = [
                    ("GET", item.get.is_some()),
                    ("HEAD", item.head.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("OPTIONS", item.options.is_some()),
                    ("TRACE", item.trace.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, served)| served.then_some(name))
                .collect();
                (path.clone(), methods.join(", "))
            })
            .collect();
        AllowedMethods(table)
    }

    /// The `Allow` value of a route, by its pattern.
    pub fn of(&self, pattern: &str) -> Option<&str> {
        self.0.get(pattern).map(String::as_str)
    }
}

/// `Allow` for a 405 to `req`: the methods of the route it matched, if the service
/// registered its [`AllowedMethods`].
fn allow_for(req: &HttpRequest) -> Option<HeaderValue> {
    let table = req.app_data::<actix_web::web::Data<AllowedMethods>>()?;
    let methods = table.of(&req.match_pattern()?)?;
    HeaderValue::from_str(methods).ok()
}

/// Error-handler middleware body: any error response that is not already an envelope (a
/// framework 404, 405, 413, a path that did not parse) becomes one, keeping its status; a 405
/// gets its `Allow` ([`AllowedMethods`]) however it was made.
pub fn envelope_errors<B>(
    mut res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if res.status() == StatusCode::METHOD_NOT_ALLOWED && !res.headers().contains_key(header::ALLOW)
    {
        if let Some(allow) = allow_for(res.request()) {
            res.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (
            ErrorCode::NotFound,
            format!(
                "no route for {} {}",
                res.request().method(),
                res.request().path()
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            format!(
                "method {} is not allowed on {}",
                res.request().method(),
                res.request().path()
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::PayloadTooLarge,
            "the request body is too large".into(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            ErrorCode::UnsupportedMediaType,
            "unsupported media type".into(),
        ),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthorized, "authentication is required".into()),
        StatusCode::FORBIDDEN => (ErrorCode::Forbidden, "forbidden".into()),
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "service unavailable".into()),
        s if s.is_client_error() => (
            ErrorCode::ValidationError,
            "the request is not valid".into(),
        ),
        _ => (ErrorCode::Internal, "an internal error occurred".into()),
    };
    let allow = res.headers().get(header::ALLOW).cloned();
    let (req, _) = res.into_parts();
    let mut response = ApiError::new(code, message).error_response();
    *response.status_mut() = status;
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// An `App` with the edge every service shares: authentication (see [`crate::auth`]),
/// request ids (in the log context of the request, see [`crate::logctx`]), request durations
/// (see [`crate::metrics`]), an access log line carrying the request id (never a key: the line
/// has the request line, not its headers), and envelopes for every error the framework makes
/// itself.
pub fn app(
    auth: actix_web::web::Data<Authenticator>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(auth)
        // Innermost: it sees the request id, and its answers carry it.
        .wrap(from_fn(authenticate))
        .wrap(ErrorHandlers::new().default_handler(envelope_errors))
        .wrap(from_fn(request_id_middleware))
        // Times every request by its matched route, with the status the client gets.
        .wrap(from_fn(crate::metrics::http_metrics))
        // Outermost, so it sees the response with its X-Request-Id.
        .wrap(Logger::new(r#"%a "%r" %s %b %Dms req=%{x-request-id}o"#))
}

/// Default service: the envelope 404 for routes no one serves.
pub async fn route_not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// Default of a known resource: the envelope 405 (with its `Allow`, from [`envelope_errors`]).
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {} is not allowed on {}", req.method(), req.path()),
    )
    .error_response()
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    crate::envelope::ok(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz` answer from the checks a service made (name, passed): 200 when all pass,
/// else 503 naming what is unreachable.
pub fn readiness(checks: &[(&str, bool)]) -> HttpResponse {
    let body: Map<String, Value> = checks
        .iter()
        .map(|(name, ok)| (name.to_string(), Value::Bool(*ok)))
        .collect();
    if checks.iter().all(|(_, ok)| *ok) {
        return crate::envelope::ok(body);
    }
    let details = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| FieldError::new(*name, "unreachable"))
        .collect();
    ApiError {
        code: ErrorCode::Unavailable,
        message: "not ready".into(),
        details,
    }
    .error_response()
}
