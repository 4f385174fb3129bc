//! This service's part of the API description, generated from the `#[utoipa::path]`
//! annotations of its handlers, served (public) at `GET /openapi/runtime-service.json`.
//! workflow-service merges it with its own part into `GET /openapi.json` (docs/API.md "OpenAPI").

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use shared_models::openapi::Common;
use std::sync::OnceLock;
use utoipa::openapi::Required;
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    paths(
        super::trigger::trigger_run,
        super::trigger::create_run,
        super::runs::list_runs,
        super::runs::get_run,
        super::control::cancel_run,
        super::control::retry_run,
        super::control::approve_step,
        super::events::stream_run_events,
        super::usage::get_usage,
        super::ops::queues,
        super::ops::workers,
        super::dead_letters::redrive_dead_letters,
    ),
    tags(
        (name = "runs", description = "Runs: trigger, follow and control them (runtime-service)"),
        (name = "usage", description = "Tokens and cost of an org's agent steps (runtime-service)"),
        (name = "ops", description = "Queues, workers and dead letters, for operators (admin key; runtime-service)"),
    ),
    modifiers(&Common, &OptionalBodies)
)]
struct ApiDoc;

/// `POST /workflows/{id}/trigger` and `POST /ops/dead-letters/redrive` may have no body at
/// all (it is then `{}`).
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for path in ["/workflows/{id}/trigger", "/ops/dead-letters/redrive"] {
            let body = doc
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|op| op.request_body.as_mut());
            if let Some(body) = body {
                body.required = Some(Required::False);
            }
        }
    }
}

/// This service's part of the API description.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi/runtime-service.json`
pub async fn own_part() -> HttpResponse {
    static PART: OnceLock<Bytes> = OnceLock::new();
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(
            PART.get_or_init(|| Bytes::from(openapi().to_json().unwrap_or_default()))
                .clone(),
        )
}
