//! `/workflows/{id}/versions` and `/workflows/{id}/versions/{version}`: a workflow's history.

use crate::domain::{self, versions::ListVersions};
use crate::error::WorkflowError;
use crate::storage::{self, VersionLookup};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use shared_models::auth::Caller;
use shared_models::db::{blocking, PgPool};
use shared_models::envelope::{self, Pagination};
use shared_models::http::Query;
use shared_models::models::WorkflowVersionRow;
use shared_models::openapi::{Envelope, PageEnvelope, PageParams, WorkflowDefinition};
use utoipa::ToSchema;

/// A version as clients see it: the definition exactly as it was written.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct VersionView {
    #[schema(minimum = 1)]
    version: i32,
    #[schema(value_type = WorkflowDefinition)]
    definition: Value,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
}

impl From<WorkflowVersionRow> for VersionView {
    fn from(r: WorkflowVersionRow) -> Self {
        VersionView {
            version: r.version,
            definition: r.definition,
            created_at: r.created_at,
        }
    }
}

/// `GET /workflows/{id}/versions`: newest first, every version the id has had in the
/// caller's org (those from before a delete included).
#[utoipa::path(
    get,
    path = "/workflows/{id}/versions",
    tag = "workflows",
    summary = "List a workflow's versions, newest first",
    params(
        ("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of versions", body = PageEnvelope<VersionView>),
    ),
)]
pub async fn list_versions(
    pool: web::Data<PgPool>,
    caller: Caller,
    path: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, WorkflowError> {
    let raw = path.into_inner();
    let not_found = || WorkflowError::NotFound(raw.clone());
    let id = domain::parse_id(&raw).ok_or_else(not_found)?;
    let q = ListVersions::try_from(query)?;
    let limit = q.limit;
    let (rows, more) = blocking(&pool, move |conn| {
        storage::list_versions(conn, &caller.org_id, id.as_str(), &q)
    })
    .await?
    .ok_or_else(not_found)?;
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| domain::versions::encode_cursor(r.version))
        })
        .flatten();
    let views: Vec<VersionView> = rows.into_iter().map(VersionView::from).collect();
    Ok(envelope::page(views, Pagination { limit, next_cursor }))
}

/// `GET /workflows/{id}/versions/{version}`
#[utoipa::path(
    get,
    path = "/workflows/{id}/versions/{version}",
    tag = "workflows",
    summary = "Get one version of a workflow",
    params(
        ("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage"),
        ("version" = i32, Path, minimum = 1, description = "The version number", example = 1),
    ),
    responses(
        (status = 200, description = "The version", body = Envelope<VersionView>),
    ),
)]
pub async fn get_version(
    pool: web::Data<PgPool>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, WorkflowError> {
    let (raw, raw_version) = path.into_inner();
    let id = domain::parse_id(&raw).ok_or_else(|| WorkflowError::NotFound(raw.clone()))?;
    let no_version = || WorkflowError::VersionNotFound(raw.clone(), raw_version.clone());
    let version = domain::versions::parse_version(&raw_version).ok_or_else(no_version)?;
    match blocking(&pool, move |conn| {
        storage::get_version(conn, &caller.org_id, id.as_str(), version)
    })
    .await?
    {
        VersionLookup::Found(row) => Ok(envelope::ok(VersionView::from(row))),
        VersionLookup::NoVersion => Err(no_version()),
        VersionLookup::NoWorkflow => Err(WorkflowError::NotFound(raw.clone())),
    }
}
