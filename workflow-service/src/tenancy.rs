//! Orgs and their API keys (the `/admin` routes): request bodies parsed into known-good
//! values, and the diesel functions over `orgs` and `api_keys`, which this service owns
//! (runtime-service only reads `api_keys`, to authenticate).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use serde_json::{Map, Value};
use shared_models::auth;
use shared_models::body::{Errors, Obj};
use shared_models::envelope::{ApiError, FieldError};
use shared_models::http::Query;
use shared_models::limits::{self, OrgLimitOverrides};
use shared_models::models::{ApiKeyRow, OrgRow};
use shared_models::pagination;
use shared_models::schema::{api_keys, orgs};

/// Longest org id and org/key name.
pub(crate) const MAX_ID_LEN: usize = 64;
pub(crate) const MAX_NAME_LEN: usize = 200;

/// What is wrong with an org id, if anything: 3 to 64 of `a-z 0-9 _ -`, starting with a
/// letter (`org_acme_123`).
pub(crate) fn org_id_problem(id: &str) -> Option<String> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !(3..=MAX_ID_LEN).contains(&id.len()) {
        Some(format!("must be 3 to {MAX_ID_LEN} characters"))
    } else if !ok_chars || !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("must start with a lowercase letter and hold only a-z, 0-9, '_' and '-'".into())
    } else {
        None
    }
}

fn name(obj: &mut Obj, errors: &mut Errors) -> Option<String> {
    let field = obj.path("name");
    let name = obj.req_str("name", errors)?.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
        return None;
    }
    Some(name.to_string())
}

/// `POST /admin/orgs` body: `{ "id", "name" }`.
#[derive(Debug, Clone)]
pub(crate) struct NewOrg {
    pub id: String,
    pub name: String,
}

impl TryFrom<&Map<String, Value>> for NewOrg {
    type Error = ApiError;

    fn try_from(map: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        let id = obj
            .req_str("id", &mut errors)
            .and_then(|id| match org_id_problem(id) {
                Some(problem) => {
                    errors.push(FieldError::new("id", problem));
                    None
                }
                None => Some(id.to_string()),
            });
        let name = name(&mut obj, &mut errors);
        obj.finish(&mut errors);
        match (id, name) {
            (Some(id), Some(name)) if errors.is_empty() => Ok(NewOrg { id, name }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// `POST /admin/orgs/{orgId}/keys` body: `{ "name" }`.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub name: String,
}

impl TryFrom<&Map<String, Value>> for NewKey {
    type Error = ApiError;

    fn try_from(map: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        let name = name(&mut obj, &mut errors);
        obj.finish(&mut errors);
        match name {
            Some(name) if errors.is_empty() => Ok(NewKey { name }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// `limit` and `cursor` of the admin lists (ordered by id).
#[derive(Debug, Clone)]
pub(crate) struct ListPage {
    pub limit: i64,
    pub after: Option<String>,
}

impl TryFrom<Query> for ListPage {
    type Error = ApiError;

    fn try_from(mut q: Query) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let limit = q.limit(&mut errors);
        let after = q
            .get("cursor")
            .and_then(|c| match pagination::decode_cursor(c) {
                Ok(id) => Some(id),
                Err(problem) => {
                    errors.push(FieldError::new("cursor", problem));
                    None
                }
            });
        q.finish(errors)?;
        Ok(ListPage { limit, after })
    }
}

fn is_unique_violation(e: &Error) -> bool {
    matches!(
        e,
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Insert an org; `None` when the id is taken.
pub(crate) fn insert_org(
    conn: &mut PgConnection,
    new: &NewOrg,
    now: DateTime<Utc>,
) -> Result<Option<OrgRow>, Error> {
    let row = OrgRow {
        id: new.id.clone(),
        name: new.name.clone(),
        created_at: now,
    };
    match diesel::insert_into(orgs::table).values(&row).execute(conn) {
        Ok(_) => Ok(Some(row)),
        Err(e) if is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Orgs by id, `limit` of them after `after`, and whether more follow.
pub(crate) fn list_orgs(
    conn: &mut PgConnection,
    page: &ListPage,
) -> Result<(Vec<OrgRow>, bool), Error> {
    let mut q = orgs::table
        .select(OrgRow::as_select())
        .order(orgs::id.asc())
        .limit(page.limit + 1)
        .into_boxed();
    if let Some(after) = &page.after {
        q = q.filter(orgs::id.gt(after));
    }
    let mut rows = q.load(conn)?;
    let more = rows.len() as i64 > page.limit;
    rows.truncate(page.limit as usize);
    Ok((rows, more))
}

/// A new key of the org, or `None` when there is no such org. The key itself is returned
/// to show once; only its hash is stored.
pub(crate) fn create_key(
    conn: &mut PgConnection,
    org_id: &str,
    new: &NewKey,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<ApiKeyRow>, Error> {
    conn.transaction(|conn| {
        let org: Option<String> = orgs::table
            .find(org_id)
            .select(orgs::id)
            .for_share()
            .first(conn)
            .optional()?;
        if org.is_none() {
            return Ok(None);
        }
        let row = ApiKeyRow {
            id: auth::new_key_id(),
            org_id: org_id.to_string(),
            name: new.name.clone(),
            key_hash: auth::hash_key(key),
            key_prefix: auth::display_prefix(key),
            created_at: now,
            revoked_at: None,
        };
        diesel::insert_into(api_keys::table)
            .values(&row)
            .execute(conn)?;
        Ok(Some(row))
    })
}

/// The org's keys, newest first (ids sort by creation), or `None` when there is no such org.
pub(crate) fn list_keys(
    conn: &mut PgConnection,
    org_id: &str,
    page: &ListPage,
) -> Result<Option<(Vec<ApiKeyRow>, bool)>, Error> {
    let org: Option<String> = orgs::table
        .find(org_id)
        .select(orgs::id)
        .first(conn)
        .optional()?;
    if org.is_none() {
        return Ok(None);
    }
    let mut q = api_keys::table
        .filter(api_keys::org_id.eq(org_id))
        .select(ApiKeyRow::as_select())
        .order(api_keys::id.desc())
        .limit(page.limit + 1)
        .into_boxed();
    if let Some(after) = &page.after {
        q = q.filter(api_keys::id.lt(after));
    }
    let mut rows = q.load(conn)?;
    let more = rows.len() as i64 > page.limit;
    rows.truncate(page.limit as usize);
    Ok(Some((rows, more)))
}

/// Revoke a key (at once: lookups are cached for at most a second). Revoking a revoked key
/// changes nothing and answers the same. `None` when there is no such key.
pub(crate) fn revoke_key(
    conn: &mut PgConnection,
    key_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<ApiKeyRow>, Error> {
    conn.transaction(|conn| {
        diesel::update(api_keys::table.find(key_id))
            .filter(api_keys::revoked_at.is_null())
            .set(api_keys::revoked_at.eq(now))
            .execute(conn)?;
        api_keys::table
            .find(key_id)
            .select(ApiKeyRow::as_select())
            .first(conn)
            .optional()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn org_ids_are_checked() {
        assert_eq!(org_id_problem("org_acme_123"), None);
        assert_eq!(org_id_problem("acme-eu"), None);
        for bad in [
            "",
            "ab",
            "Org_x",
            "1org",
            "org acme",
            "org/x",
            &"o".repeat(65),
        ] {
            assert!(org_id_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_name_every_bad_field() {
        let e = NewOrg::try_from(&obj(json!({"id": "X", "name": "", "plan": 1}))).unwrap_err();
        let fields: Vec<_> = e.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["id", "name", "plan"]);
        let ok = NewOrg::try_from(&obj(json!({"id": "org_acme_123", "name": " Acme "}))).unwrap();
        assert_eq!((ok.id.as_str(), ok.name.as_str()), ("org_acme_123", "Acme"));
        assert!(NewKey::try_from(&obj(json!({}))).is_err());
        assert_eq!(
            NewKey::try_from(&obj(json!({"name": "ci"}))).unwrap().name,
            "ci"
        );
    }
}

/// `PUT /admin/orgs/{orgId}/limits` body: for each quota field given (camelCase, as in
/// `shared_models::limits::FIELDS`), a positive integer up to [`limits::MAX_OVERRIDE`], or
/// `null` to return it to the default. A field left out keeps its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LimitsUpdate(pub Vec<(&'static str, Option<i32>)>);

impl TryFrom<&Map<String, Value>> for LimitsUpdate {
    type Error = ApiError;

    fn try_from(map: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        let mut changes = Vec::new();
        for field in &limits::FIELDS {
            // Marks the field known; `null` must stay distinct from absent, so the map decides.
            obj.optional(field.json);
            match map.get(field.json) {
                None => {}
                Some(Value::Null) => changes.push((field.json, None)),
                Some(v) => match shared_models::body::whole_number(v)
                    .filter(|n| (1..=u64::from(limits::MAX_OVERRIDE)).contains(n))
                {
                    Some(n) => changes.push((field.json, i32::try_from(n).ok())),
                    None => errors.push(FieldError::new(
                        field.json,
                        format!(
                            "must be an integer from 1 to {}, or null for the default",
                            limits::MAX_OVERRIDE
                        ),
                    )),
                },
            }
        }
        obj.finish(&mut errors);
        shared_models::body::finish(errors, || LimitsUpdate(changes))
    }
}

/// The org's quota overrides; `None` when there is no such org.
pub(crate) fn get_limits(
    conn: &mut PgConnection,
    org_id: &str,
) -> Result<Option<OrgLimitOverrides>, Error> {
    limits::load_overrides(conn, org_id)
}

/// Apply `update` to the org's overrides (a field left out keeps its value) and return them;
/// `None` when there is no such org.
pub(crate) fn set_limits(
    conn: &mut PgConnection,
    org_id: &str,
    update: &LimitsUpdate,
) -> Result<Option<OrgLimitOverrides>, Error> {
    conn.transaction(|conn| {
        let current: Option<OrgLimitOverrides> = orgs::table
            .find(org_id)
            .select(OrgLimitOverrides::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        let Some(mut overrides) = current else {
            return Ok(None);
        };
        for (json, value) in &update.0 {
            if let Some(field) = limits::FIELDS.iter().find(|f| f.json == *json) {
                (field.set_override)(&mut overrides, *value);
            }
        }
        diesel::update(orgs::table.find(org_id))
            .set(&overrides)
            .execute(conn)?;
        Ok(Some(overrides))
    })
}
