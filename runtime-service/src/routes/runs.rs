//! `GET /workflows/runs` and `GET /workflows/runs/{id}`.

use crate::domain::ListRuns;
use crate::error::RuntimeError;
use crate::routes::views::{RunDetailView, RunView};
use crate::startup::AppState;
use crate::storage;
use actix_web::{web, HttpResponse};
use shared_models::auth::Caller;
use shared_models::db::blocking;
use shared_models::envelope::{self, Pagination};
use shared_models::http::Query;
use shared_models::ids::RunId;
use shared_models::openapi::{Envelope, PageEnvelope, PageParams};
use shared_models::pagination;

/// `GET /workflows/runs`: newest first, filters `workflowId`, `status`, `orgId`.
#[utoipa::path(
    get,
    path = "/workflows/runs",
    tag = "runs",
    summary = "List runs, newest first",
    params(
        PageParams,
        ("workflowId" = Option<String>, Query, description = "Only runs of this workflow", example = "wf_support_triage"),
        ("status" = Option<shared_models::status::RunStatus>, Query, description = "Only runs in this status"),
        ("orgId" = Option<String>, Query, description = "The caller's org (another org is a 403)"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = PageEnvelope<RunView>),
    ),
)]
pub async fn list_runs(
    state: web::Data<AppState>,
    caller: Caller,
    query: Query,
) -> Result<HttpResponse, RuntimeError> {
    let q = ListRuns::try_from(query)?;
    if let Some(org) = &q.org_id {
        if *org != caller.org_id {
            return Err(RuntimeError::OtherOrg(org.clone()));
        }
    }
    let limit = q.limit;
    let (rows, more) = blocking(&state.pool, move |conn| {
        storage::list_runs(conn, &caller.org_id, &q)
    })
    .await?;
    let next_cursor = more
        .then(|| rows.last().map(|(r, _)| pagination::encode_cursor(&r.id)))
        .flatten();
    let views: Vec<RunView> = rows
        .into_iter()
        .map(|(run, usage)| RunView::from(run).with_usage(usage))
        .collect();
    Ok(envelope::page(views, Pagination { limit, next_cursor }))
}

/// `GET /workflows/runs/{id}`: the run with its steps, transitions and logs.
#[utoipa::path(
    get,
    path = "/workflows/runs/{id}",
    tag = "runs",
    summary = "Get a run with its steps, transitions and logs",
    params(("id" = String, Path, description = "The run id (`run_` + a lowercase ULID)", example = "run_01j9z3c4x5v6b7n8m9q0r1s2t3")),
    responses(
        (status = 200, description = "The run and its progress", body = Envelope<RunDetailView>),
    ),
)]
pub async fn get_run(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, RuntimeError> {
    let raw = path.into_inner();
    let id = RunId::parse(&raw).ok_or_else(|| RuntimeError::RunNotFound(raw.clone()))?;
    blocking(&state.pool, move |conn| {
        storage::get_run_detail(conn, &caller.org_id, id.as_str())
    })
    .await?
    .map(|detail| envelope::ok(RunDetailView::from(detail)))
    .ok_or(RuntimeError::RunNotFound(raw))
}
