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
use shared_models::pagination;

/// `GET /workflows/runs`: newest first, filters `workflowId`, `status`, `orgId`.
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
        .then(|| rows.last().map(|r| pagination::encode_cursor(&r.id)))
        .flatten();
    let views: Vec<RunView> = rows.into_iter().map(RunView::from).collect();
    Ok(envelope::page(views, Pagination { limit, next_cursor }))
}

/// `GET /workflows/runs/{id}`: the run with its steps, transitions and logs.
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
