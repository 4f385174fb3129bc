//! `/admin`: orgs and their API keys, for the operator's `ADMIN_API_KEY` only.

use crate::error::WorkflowError;
use crate::tenancy::{self, ListPage, NewKey, NewOrg};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_models::auth::{self, Admin};
use shared_models::db::{blocking, PgPool};
use shared_models::envelope::{self, ApiError, Pagination};
use shared_models::http::{JsonObject, Query};
use shared_models::models::{ApiKeyRow, OrgRow};
use shared_models::pagination;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrgView {
    id: String,
    name: String,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
}

impl From<OrgRow> for OrgView {
    fn from(r: OrgRow) -> Self {
        OrgView {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

/// A key as listed: never the key, never its hash; the prefix tells keys apart.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyView {
    id: String,
    org_id: String,
    name: String,
    prefix: String,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "shared_models::time::rfc3339_opt")]
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for KeyView {
    fn from(r: ApiKeyRow) -> Self {
        KeyView {
            id: r.id,
            org_id: r.org_id,
            name: r.name,
            prefix: r.key_prefix,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A key as created: the one time the key itself is shown.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedKeyView {
    id: String,
    key: String,
    org_id: String,
    name: String,
    prefix: String,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
}

fn page_of<R, V: Serialize>(
    rows: Vec<R>,
    more: bool,
    limit: i64,
    id: impl Fn(&R) -> &str,
    view: impl Fn(R) -> V,
) -> HttpResponse {
    let next_cursor = more
        .then(|| rows.last().map(|r| pagination::encode_cursor(id(r))))
        .flatten();
    let views: Vec<V> = rows.into_iter().map(view).collect();
    envelope::page(views, Pagination { limit, next_cursor })
}

/// `POST /admin/orgs`
pub async fn create_org(
    pool: web::Data<PgPool>,
    _: Admin,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let new = NewOrg::try_from(&body.0)?;
    let id = new.id.clone();
    let now = shared_models::time::now();
    match blocking(&pool, move |conn| tenancy::insert_org(conn, &new, now)).await? {
        Some(org) => {
            log::info!("org {} created", org.id);
            Ok(envelope::created(OrgView::from(org)))
        }
        None => Err(ApiError::conflict(format!("org '{id}' already exists")).into()),
    }
}

/// `GET /admin/orgs`
pub async fn list_orgs(
    pool: web::Data<PgPool>,
    _: Admin,
    query: Query,
) -> Result<HttpResponse, WorkflowError> {
    let page = ListPage::try_from(query)?;
    let limit = page.limit;
    let (rows, more) = blocking(&pool, move |conn| tenancy::list_orgs(conn, &page)).await?;
    Ok(page_of(rows, more, limit, |r| &r.id, OrgView::from))
}

fn org_not_found(org_id: &str) -> WorkflowError {
    ApiError::not_found("org", org_id).into()
}

/// `POST /admin/orgs/{orgId}/keys`: the key is in this answer and nowhere else, ever.
pub async fn create_key(
    pool: web::Data<PgPool>,
    _: Admin,
    path: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let org_id = path.into_inner();
    let new = NewKey::try_from(&body.0)?;
    let key = auth::generate_key().map_err(|e| {
        log::error!("no randomness for a new key: {e}");
        ApiError::internal()
    })?;
    let (org, stored_key) = (org_id.clone(), key.clone());
    let now = shared_models::time::now();
    let row = blocking(&pool, move |conn| {
        tenancy::create_key(conn, &org, &new, &stored_key, now)
    })
    .await?
    .ok_or_else(|| org_not_found(&org_id))?;
    log::info!(
        "API key {} ({}) created for org {}",
        row.id,
        row.key_prefix,
        row.org_id
    );
    Ok(envelope::created(CreatedKeyView {
        id: row.id,
        key,
        org_id: row.org_id,
        name: row.name,
        prefix: row.key_prefix,
        created_at: row.created_at,
    }))
}

/// `GET /admin/orgs/{orgId}/keys`
pub async fn list_keys(
    pool: web::Data<PgPool>,
    _: Admin,
    path: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, WorkflowError> {
    let org_id = path.into_inner();
    let page = ListPage::try_from(query)?;
    let limit = page.limit;
    let org = org_id.clone();
    let (rows, more) = blocking(&pool, move |conn| tenancy::list_keys(conn, &org, &page))
        .await?
        .ok_or_else(|| org_not_found(&org_id))?;
    Ok(page_of(rows, more, limit, |r| &r.id, KeyView::from))
}

/// `DELETE /admin/keys/{id}`: revoked at once (every replica within a second).
pub async fn revoke_key(
    pool: web::Data<PgPool>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, WorkflowError> {
    let key_id = path.into_inner();
    let id = key_id.clone();
    let now = shared_models::time::now();
    let row = blocking(&pool, move |conn| tenancy::revoke_key(conn, &id, now))
        .await?
        .ok_or_else(|| WorkflowError::from(ApiError::not_found("API key", &key_id)))?;
    log::info!("API key {} of org {} revoked", row.id, row.org_id);
    Ok(envelope::ok(serde_json::json!({
        "id": row.id,
        "orgId": row.org_id,
        "revoked": true,
        "revokedAt": row.revoked_at.map(|t| shared_models::time::format(&t)),
    })))
}
