//! The API description (docs/API.md "OpenAPI"), all public:
//!
//! - `GET /openapi/workflow-service.json`: this service's part, generated from the
//!   `#[utoipa::path]` annotations of its handlers ([`openapi`]).
//! - `GET /openapi.json`: the whole API, this part merged ([`merge_json`]) with runtime-service's
//!   (`GET {RUNTIME_SERVICE_URL}/openapi/runtime-service.json`, fetched with a 2 s timeout and
//!   kept for 60 s). With runtime-service unreachable the last merged document is served; with
//!   nothing merged yet the answer is 503 UNAVAILABLE, never half a description.
//! - `GET /docs/`: Swagger UI over `/openapi.json`, its assets compiled into the binary.

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use shared_models::envelope::{ApiError, ErrorCode};
use shared_models::openapi::{merge_json, Common, RUNTIME_SERVICE_PART};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use utoipa::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

/// How long a fetch of runtime-service's part may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a merged document is served before runtime-service's part is fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(OpenApi)]
#[openapi(
    paths(
        super::workflows::create_workflow,
        super::workflows::list_workflows,
        super::workflows::get_workflow,
        super::workflows::update_workflow,
        super::workflows::delete_workflow,
        super::validate::validate_definition,
        super::versions::list_versions,
        super::versions::get_version,
        super::admin::create_org,
        super::admin::list_orgs,
        super::admin::create_key,
        super::admin::list_keys,
        super::admin::revoke_key,
        super::admin::get_limits,
        super::admin::put_limits,
    ),
    tags(
        (name = "workflows", description = "Workflow definitions and their versions (workflow-service)"),
        (name = "admin", description = "Orgs and API keys, with the operator's ADMIN_API_KEY (workflow-service)"),
    ),
    modifiers(&Common)
)]
struct ApiDoc;

/// This service's part of the API description.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn json(body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /openapi/workflow-service.json`
pub async fn own_part() -> HttpResponse {
    static PART: OnceLock<Bytes> = OnceLock::new();
    json(
        PART.get_or_init(|| Bytes::from(openapi().to_json().unwrap_or_default()))
            .clone(),
    )
}

/// `GET /openapi.json`
pub async fn merged(spec: web::Data<MergedSpec>) -> Result<HttpResponse, ApiError> {
    spec.get().await.map(json)
}

/// `GET /docs`: the page lives at `/docs/` (its assets are relative to it).
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

/// Swagger UI at `/docs/`, reading `/openapi.json`. The key typed into "Authorize" lives
/// only as long as the page: it is not written to the browser's storage, where any script of
/// the origin, or the next user of the machine, could read it.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").config(
        Config::from("/openapi.json")
            .persist_authorization(false)
            .try_it_out_enabled(true),
    )
}

/// The whole API's description: this part merged with runtime-service's, cached.
pub struct MergedSpec {
    part_url: String,
    client: reqwest::Client,
    ttl: Duration,
    /// The last merged document and when it was made.
    cache: Mutex<Option<(Instant, Bytes)>>,
}

impl MergedSpec {
    /// `runtime_service_url`: where runtime-service answers (`RUNTIME_SERVICE_URL`).
    pub fn new(runtime_service_url: &str) -> Self {
        Self::with_ttl(runtime_service_url, CACHE_TTL)
    }

    pub fn with_ttl(runtime_service_url: &str, ttl: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            part_url: format!(
                "{}{RUNTIME_SERVICE_PART}",
                runtime_service_url.trim_end_matches('/')
            ),
            client,
            ttl,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self, fresh_only: bool) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(at, _)| !fresh_only || at.elapsed() < self.ttl)
            .map(|(_, doc)| doc.clone())
    }

    /// The merged document: cached while fresh; else merged anew; else (runtime-service
    /// unreachable) the last one; else 503.
    pub async fn get(&self) -> Result<Bytes, ApiError> {
        if let Some(doc) = self.cached(true) {
            return Ok(doc);
        }
        match self.merge().await {
            Ok(doc) => {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                *cache = Some((Instant::now(), doc.clone()));
                Ok(doc)
            }
            Err(problem) => {
                log::warn!(
                    "the API description could not be merged ({problem}): {}",
                    self.part_url
                );
                self.cached(false).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Unavailable,
                        "runtime-service's part of the API description is unavailable \
                         (RUNTIME_SERVICE_URL); try again shortly",
                    )
                })
            }
        }
    }

    async fn merge(&self) -> Result<Bytes, String> {
        let res = self
            .client
            .get(&self.part_url)
            .send()
            .await
            .map_err(|e| format!("runtime-service did not answer: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("runtime-service answered {}", res.status()));
        }
        let body = res
            .bytes()
            .await
            .map_err(|e| format!("runtime-service's answer was cut: {e}"))?;
        let part: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("runtime-service's part is not JSON: {e}"))?;
        let mut doc = serde_json::to_value(openapi())
            .map_err(|e| format!("this service's part did not serialize: {e}"))?;
        merge_json(&mut doc, part)
            .map_err(|e| format!("runtime-service's part cannot be merged: {e}"))?;
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .map_err(|e| format!("the merged document did not serialize: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn runtime_part() -> serde_json::Value {
        serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "Thygon API", "version": "0"},
            "paths": {"/workflows/runs": {"get": {"operationId": "list_runs",
                "responses": {"200": {"description": "runs"}}}}},
            "components": {"schemas": {"RunView": {"type": "object", "properties": {"output": {}}}}},
        })
    }

    fn paths(doc: &Bytes) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
        v["paths"].as_object().unwrap().keys().cloned().collect()
    }

    #[tokio::test]
    async fn parts_are_merged_cached_and_the_last_merge_outlives_an_outage() {
        let runtime = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(RUNTIME_SERVICE_PART))
            .respond_with(ResponseTemplate::new(200).set_body_json(runtime_part()))
            .expect(1)
            .mount(&runtime)
            .await;
        let spec = MergedSpec::new(&runtime.uri());
        let first = spec.get().await.unwrap();
        let p = paths(&first);
        assert!(p.contains(&"/workflows/runs".to_string()), "{p:?}");
        assert!(p.contains(&"/workflows/{id}".to_string()), "{p:?}");
        // Within the TTL: no second fetch (the mock expects exactly one).
        assert_eq!(spec.get().await.unwrap(), first);
        runtime.verify().await;

        // Past the TTL with runtime-service gone: the last merge is served.
        let spec = MergedSpec::with_ttl(&runtime.uri(), Duration::ZERO);
        spec.get().await.unwrap();
        runtime.reset().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&runtime)
            .await;
        assert!(paths(&spec.get().await.unwrap()).contains(&"/workflows/runs".to_string()));
    }

    #[tokio::test]
    async fn nothing_merged_and_runtime_unreachable_is_a_503_not_half_a_description() {
        let runtime = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
            .mount(&runtime)
            .await;
        let e = MergedSpec::new(&runtime.uri()).get().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        let slow = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(runtime_part())
                    .set_delay(FETCH_TIMEOUT + Duration::from_millis(500)),
            )
            .mount(&slow)
            .await;
        let started = Instant::now();
        let e = MergedSpec::new(&slow.uri()).get().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_millis(400));
    }
}
