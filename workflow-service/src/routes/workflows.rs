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
use shared_models::openapi::{self as doc, Envelope, PageEnvelope, PageParams, WorkflowDefinition};
use utoipa::ToSchema;

/// The workflow as clients see it (`definition` in create, get and update answers, not in
/// lists).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct WorkflowView {
    #[schema(example = "wf_support_triage")]
    id: String,
    #[schema(example = "support_triage")]
    name: String,
    #[schema(required = true)]
    description: Option<String>,
    is_active: bool,
    /// The current version: 1 at create, + 1 with every update.
    #[schema(minimum = 1)]
    version: i32,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "shared_models::time::rfc3339")]
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = WorkflowDefinition)]
    definition: Option<Value>,
}

/// `POST /workflows` body (read field by field by `domain::NewWorkflow`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct CreateWorkflowBody {
    /// 1-64 letters, digits, `_` and `-`, starting with a letter; unique in the org; the id
    /// is `wf_` + the name.
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    name: String,
    #[schema(max_length = 2000)]
    description: Option<String>,
    definition: WorkflowDefinition,
    #[schema(default = true)]
    is_active: Option<bool>,
}

/// `PUT /workflows/{id}` body: a new definition makes a new version; `description` and
/// `isActive` keep their values when left out.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct UpdateWorkflowBody {
    /// The name cannot change: only the current one is accepted.
    name: Option<String>,
    #[schema(max_length = 2000)]
    description: Option<String>,
    definition: WorkflowDefinition,
    is_active: Option<bool>,
}

/// `DELETE /workflows/{id}` answer.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
struct Deleted {
    #[schema(example = "wf_support_triage")]
    id: String,
    #[schema(inline)]
    deleted: doc::True,
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
#[utoipa::path(
    post,
    path = "/workflows",
    tag = "workflows",
    summary = "Create a workflow",
    request_body(content = CreateWorkflowBody, example = json!({
        "name": "support_triage",
        "description": "Categorize and route incoming support tickets",
        "definition": {"steps": [{"name": "classify", "type": "agent",
            "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]}
    })),
    responses(
        (status = 201, description = "The workflow, version 1", body = Envelope<WorkflowView>),
        (status = 409, response = doc::Conflict),
        (status = 429, response = doc::RateLimitedOrQuota),
    ),
)]
pub async fn create_workflow(
    pool: web::Data<PgPool>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let new = NewWorkflow::try_from(&body.0)?;
    let name = new.name.to_string();
    let now = shared_models::time::now();
    match blocking(&pool, move |conn| {
        storage::insert_workflow(conn, &caller.org_id, &new, &caller.limits, now)
    })
    .await?
    {
        CreateOutcome::Created(w) => Ok(envelope::created(WorkflowView::from(w))),
        CreateOutcome::NameTaken => Err(WorkflowError::NameTaken(name)),
        CreateOutcome::QuotaExceeded(e) => Err(WorkflowError::Request(e.into())),
    }
}

/// `GET /workflows`
#[utoipa::path(
    get,
    path = "/workflows",
    tag = "workflows",
    summary = "List workflows, newest first",
    params(
        PageParams,
        ("isActive" = Option<bool>, Query, description = "Only active (`true`) or inactive (`false`) workflows"),
    ),
    responses(
        (status = 200, description = "A page of workflows (without definitions)", body = PageEnvelope<WorkflowView>),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/workflows/{id}",
    tag = "workflows",
    summary = "Get a workflow with its current definition",
    params(("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage")),
    responses(
        (status = 200, description = "The workflow", body = Envelope<WorkflowView>),
    ),
)]
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
#[utoipa::path(
    put,
    path = "/workflows/{id}",
    tag = "workflows",
    summary = "Update a workflow (a new version)",
    params(("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage")),
    request_body(content = UpdateWorkflowBody, example = json!({
        "description": "Categorize and route incoming support tickets",
        "definition": {"steps": [{"name": "classify", "type": "agent",
            "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]}
    })),
    responses(
        (status = 200, description = "The workflow at its new version", body = Envelope<WorkflowView>),
    ),
)]
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
        let keep = caller.limits.max_versions_kept;
        storage::update_workflow(conn, &caller.org_id, id.as_str(), &update, keep, now)
    })
    .await?
    .map(|w| envelope::ok(WorkflowView::from(w)))
    .ok_or_else(|| not_found(&raw))
}

/// `DELETE /workflows/{id}`: runs already made stay readable.
#[utoipa::path(
    delete,
    path = "/workflows/{id}",
    tag = "workflows",
    summary = "Delete a workflow (its runs stay readable)",
    params(("id" = String, Path, description = "The workflow id (`wf_` + name)", example = "wf_support_triage")),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Deleted>),
    ),
)]
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
