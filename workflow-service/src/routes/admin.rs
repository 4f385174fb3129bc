//! `/admin`: orgs, their API keys and their quotas, for the operator's `ADMIN_API_KEY` only.

use crate::error::WorkflowError;
use crate::tenancy::{self, LimitsUpdate, ListPage, NewKey, NewOrg};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared_models::auth::{self, Admin};
use shared_models::db::{blocking, PgPool};
use shared_models::envelope::{self, ApiError, Pagination};
use shared_models::http::{JsonObject, Query};
use shared_models::limits::{self, OrgLimitOverrides, OrgLimits};
use shared_models::models::{ApiKeyRow, OrgRow};
use shared_models::openapi::{self as doc, Envelope, PageEnvelope, PageParams};
use shared_models::pagination;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OrgView {
    #[schema(example = "org_acme_123")]
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
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct KeyView {
    id: String,
    org_id: String,
    name: String,
    prefix: String,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "shared_models::time::rfc3339_opt")]
    #[schema(required = true)]
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
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatedKeyView {
    #[schema(example = "key_01j9z3c4x5v6b7n8m9q0r1s2t3")]
    id: String,
    /// The key itself: shown here and never again.
    #[schema(example = "thy_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg")]
    key: String,
    org_id: String,
    name: String,
    prefix: String,
    #[serde(with = "shared_models::time::rfc3339")]
    created_at: DateTime<Utc>,
}

/// `POST /admin/orgs` body.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct NewOrgBody {
    /// 3-64 of `a-z 0-9 _ -`, starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9_-]{2,63}$", example = "org_acme_123")]
    id: String,
    /// 1-200 characters (surrounding spaces are trimmed).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S", example = "Acme")]
    name: String,
}

/// `POST /admin/orgs/{orgId}/keys` body.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct NewKeyBody {
    /// 1-200 characters (surrounding spaces are trimmed).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S", example = "ci")]
    name: String,
}

/// `DELETE /admin/keys/{id}` answer.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // documentation only
struct Revoked {
    id: String,
    org_id: String,
    #[schema(inline)]
    revoked: doc::True,
    revoked_at: Option<DateTime<Utc>>,
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
#[utoipa::path(
    post,
    path = "/admin/orgs",
    tag = "admin",
    summary = "Create an org (admin key)",
    request_body(content = NewOrgBody, example = json!({"id": "org_acme_123", "name": "Acme"})),
    responses(
        (status = 201, description = "The org", body = Envelope<OrgView>),
        (status = 409, response = doc::Conflict),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/admin/orgs",
    tag = "admin",
    summary = "List orgs by id (admin key)",
    params(PageParams),
    responses(
        (status = 200, description = "A page of orgs", body = PageEnvelope<OrgView>),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/admin/orgs/{orgId}/keys",
    tag = "admin",
    summary = "Make an API key for an org (admin key); the key is shown once",
    params(("orgId" = String, Path, description = "The org's id", example = "org_acme_123")),
    request_body(content = NewKeyBody, example = json!({"name": "ci"})),
    responses(
        (status = 201, description = "The key, shown this once", body = Envelope<CreatedKeyView>),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/admin/orgs/{orgId}/keys",
    tag = "admin",
    summary = "List an org's keys (admin key): prefixes only, never the keys",
    params(
        ("orgId" = String, Path, description = "The org's id", example = "org_acme_123"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of keys", body = PageEnvelope<KeyView>),
    ),
)]
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
#[utoipa::path(
    delete,
    path = "/admin/keys/{id}",
    tag = "admin",
    summary = "Revoke an API key (admin key)",
    params(("id" = String, Path, description = "The key's id (`key_...`)")),
    responses(
        (status = 200, description = "Revoked", body = Envelope<Revoked>),
    ),
)]
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

/// An org's quotas: those in effect, and the overrides that differ from the defaults.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LimitsView {
    #[schema(example = "org_acme_123")]
    org_id: String,
    /// Every quota in effect: the override where set, else the deployment's default.
    limits: OrgLimits,
    /// Only the quotas overridden for this org.
    #[schema(value_type = Object, example = json!({"maxQueuedRuns": 500}))]
    overrides: serde_json::Map<String, serde_json::Value>,
}

impl LimitsView {
    fn new(org_id: String, overrides: &OrgLimitOverrides) -> Self {
        let set = limits::FIELDS
            .iter()
            .filter_map(|f| (f.get_override)(overrides).map(|v| (f.json.to_string(), v.into())))
            .collect();
        LimitsView {
            org_id,
            limits: limits::effective(&limits::defaults(), overrides),
            overrides: set,
        }
    }
}

/// `PUT /admin/orgs/{orgId}/limits` body: any of the quota fields.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // documentation only
struct LimitsBody {
    /// PENDING + WAITING runs at once (default `ORG_MAX_QUEUED_RUNS`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_queued_runs: Option<u32>,
    /// RUNNING runs at once (default `MAX_RUNNING_PER_ORG`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_running_runs: Option<u32>,
    /// Runs in one run's tree of subworkflows, the root not counted (default `ORG_MAX_DESCENDANTS_PER_RUN`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_descendants_per_run: Option<u32>,
    /// Workflows not deleted (default `ORG_MAX_WORKFLOWS`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_workflows: Option<u32>,
    /// Versions kept per workflow (default `ORG_MAX_VERSIONS_KEPT`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_versions_kept: Option<u32>,
    /// Open event streams per key and replica (default `ORG_MAX_EVENT_STREAMS`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_event_streams: Option<u32>,
    /// Requests per second per key and replica (default `RATE_LIMIT_PER_SECOND`).
    #[schema(minimum = 1, maximum = 1_000_000)]
    requests_per_second: Option<u32>,
}

/// `GET /admin/orgs/{orgId}/limits`
#[utoipa::path(
    get,
    path = "/admin/orgs/{orgId}/limits",
    tag = "admin",
    summary = "An org's quotas in effect and its overrides (admin key)",
    params(("orgId" = String, Path, description = "The org's id", example = "org_acme_123")),
    responses(
        (status = 200, description = "The org's quotas", body = Envelope<LimitsView>),
    ),
)]
pub async fn get_limits(
    pool: web::Data<PgPool>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, WorkflowError> {
    let org_id = path.into_inner();
    let org = org_id.clone();
    let overrides = blocking(&pool, move |conn| tenancy::get_limits(conn, &org))
        .await?
        .ok_or_else(|| org_not_found(&org_id))?;
    Ok(envelope::ok(LimitsView::new(org_id, &overrides)))
}

/// `PUT /admin/orgs/{orgId}/limits`: in effect on every replica within a second.
#[utoipa::path(
    put,
    path = "/admin/orgs/{orgId}/limits",
    tag = "admin",
    summary = "Override an org's quotas (admin key): a field left out keeps its value, null returns it to the default",
    params(("orgId" = String, Path, description = "The org's id", example = "org_acme_123")),
    request_body(content = LimitsBody, example = json!({"maxQueuedRuns": 500, "requestsPerSecond": null})),
    responses(
        (status = 200, description = "The org's quotas", body = Envelope<LimitsView>),
    ),
)]
pub async fn put_limits(
    pool: web::Data<PgPool>,
    _: Admin,
    path: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, WorkflowError> {
    let org_id = path.into_inner();
    let update = LimitsUpdate::try_from(&body.0)?;
    let org = org_id.clone();
    let overrides = blocking(&pool, move |conn| tenancy::set_limits(conn, &org, &update))
        .await?
        .ok_or_else(|| org_not_found(&org_id))?;
    log::info!("quotas of org {org_id} set: {overrides:?}");
    Ok(envelope::ok(LimitsView::new(org_id, &overrides)))
}
