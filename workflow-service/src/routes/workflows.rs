//! `/workflows` and `/workflows/{id}`.

use crate::domain::{self, ListWorkflows, NewWorkflow, WorkflowUpdate};
use crate::error::WorkflowError;
use crate::storage::{self, CreateOutcome, StoredWorkflow};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use shared_models::auth::Caller;
use shared_models::db::{blocking, PgPool};
use shared_models::envelope::{self, Pagination};
use shared_models::http::{JsonObject, Query};
use shared_models::models::WorkflowRow;

/// The workflow as clients see it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkflowView {
    id: String,
    name: String,
    description: Option<String>,
    is_active: bool,
    version: i32,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "shared_models::time::rfc3339")]
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<Value>,
}

impl From<StoredWorkflow> for WorkflowView {
    fn from(w: StoredWorkflow) -> Self {
        let mut view = WorkflowView::from(w.row);
        view.definition = w.definition;
        view
    }
}

impl From<WorkflowRow> for WorkflowView {
    fn from(r: WorkflowRow) -> Self {
        WorkflowView {
            id: r.id,
            name: r.name,
            description: r.description,
            is_active: r.is_active,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            definition: None,
        }
    }
}

fn not_found(raw_id: &str) -> WorkflowError {
    WorkflowError::NotFound(raw_id.to_string())
}

/// `POST /workflows`
pub async fn create_workflow(
    pool: web::Data<PgPool>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let new = NewWorkflow::try_from(&body.0)?;
    let name = new.name.to_string();
    let now = shared_models::time::now();
    match blocking(&pool, move |conn| {
        storage::insert_workflow(conn, &caller.org_id, &new, now)
    })
    .await?
    {
        CreateOutcome::Created(w) => Ok(envelope::created(WorkflowView::from(w))),
        CreateOutcome::NameTaken => Err(WorkflowError::NameTaken(name)),
    }
}

/// `GET /workflows`
pub async fn list_workflows(
    pool: web::Data<PgPool>,
    caller: Caller,
    query: Query,
) -> Result<HttpResponse, WorkflowError> {
    let q = ListWorkflows::try_from(query)?;
    let limit = q.limit;
    let (rows, more) = blocking(&pool, move |conn| {
        storage::list_workflows(conn, &caller.org_id, &q)
    })
    .await?;
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| domain::encode_cursor(&r.created_at, &r.id))
        })
        .flatten();
    let views: Vec<WorkflowView> = rows.into_iter().map(WorkflowView::from).collect();
    Ok(envelope::page(views, Pagination { limit, next_cursor }))
}

/// `GET /workflows/{id}`
pub async fn get_workflow(
    pool: web::Data<PgPool>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, WorkflowError> {
    let raw = path.into_inner();
    let id = domain::parse_id(&raw).ok_or_else(|| not_found(&raw))?;
    blocking(&pool, move |conn| {
        storage::get_workflow(conn, &caller.org_id, id.as_str())
    })
    .await?
    .map(|w| envelope::ok(WorkflowView::from(w)))
    .ok_or_else(|| not_found(&raw))
}

/// `PUT /workflows/{id}`: a new version of the definition.
pub async fn update_workflow(
    pool: web::Data<PgPool>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let raw = path.into_inner();
    let id = domain::parse_id(&raw).ok_or_else(|| not_found(&raw))?;
    let update = WorkflowUpdate::parse(&body.0, &id)?;
    let now = shared_models::time::now();
    blocking(&pool, move |conn| {
        storage::update_workflow(conn, &caller.org_id, id.as_str(), &update, now)
    })
    .await?
    .map(|w| envelope::ok(WorkflowView::from(w)))
    .ok_or_else(|| not_found(&raw))
}

/// `DELETE /workflows/{id}`: runs already made stay readable.
pub async fn delete_workflow(
    pool: web::Data<PgPool>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, WorkflowError> {
    let raw = path.into_inner();
    let id = domain::parse_id(&raw).ok_or_else(|| not_found(&raw))?;
    let now = shared_models::time::now();
    let key = id.to_string();
    if blocking(&pool, move |conn| {
        storage::delete_workflow(conn, &caller.org_id, &key, now)
    })
    .await?
    {
        Ok(envelope::ok(
            serde_json::json!({ "id": id.as_str(), "deleted": true }),
        ))
    } else {
        Err(not_found(&raw))
    }
}
