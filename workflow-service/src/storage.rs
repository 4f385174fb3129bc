//! Plain diesel functions over `&mut PgConnection`. This service owns `workflows` and
//! `workflow_versions`; nothing else writes them.

use crate::domain::versions::ListVersions;
use crate::domain::{ListWorkflows, NewWorkflow, WorkflowUpdate};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Text};
use serde_json::Value;
use shared_models::limits::{OrgLimits, QuotaExceeded};
use shared_models::models::{WorkflowRow, WorkflowVersionRow};
use shared_models::prepared::prepared;
use shared_models::schema::{workflow_versions, workflows};

/// A workflow with the definition of its current version.
#[derive(Debug, Clone)]
pub(crate) struct StoredWorkflow {
    pub row: WorkflowRow,
    pub definition: Option<Value>,
}

pub(crate) enum CreateOutcome {
    Created(StoredWorkflow),
    NameTaken,
    /// The org already has `maxWorkflows` live workflows: nothing was written.
    QuotaExceeded(QuotaExceeded),
}

/// An org's live workflows, counted up to `$2`.
const COUNT_WORKFLOWS: &str = "SELECT count(*) AS n FROM (
         SELECT 1 FROM workflows WHERE org_id = $1 AND deleted_at IS NULL LIMIT $2
     ) q";

/// In the create's transaction: `maxWorkflows` would be exceeded by one more live workflow.
/// Creates of one org are serialised by a transaction-scoped advisory lock (creating
/// workflows is rare; two at once must not both take the last place).
fn workflow_quota(
    conn: &mut PgConnection,
    org_id: &str,
    max: u32,
) -> Result<Option<QuotaExceeded>, Error> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    if max == 0 {
        return Ok(None);
    }
    prepared("SELECT pg_advisory_xact_lock(hashtextextended('thygon-workflows:' || $1, 0))")
        .bind::<Text, _>(org_id)
        .execute(conn)?;
    let live = prepared(COUNT_WORKFLOWS)
        .bind::<Text, _>(org_id)
        .bind::<BigInt, _>(i64::from(max))
        .get_result::<Count>(conn)?
        .n;
    Ok((live >= i64::from(max)).then(|| {
        QuotaExceeded::new(
            "maxWorkflows",
            max,
            format!("the org has {live} workflows (deleted ones do not count)"),
        )
    }))
}

/// Delete the workflow's versions older than its newest `keep` (0 = keep all), except those
/// a run uses (runs keep pointing at their version, by a foreign key). The current version
/// is the newest, so it always stays. Returns how many were deleted.
pub(crate) fn prune_versions(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    keep: u32,
) -> Result<usize, Error> {
    if keep == 0 {
        return Ok(0);
    }
    prepared(
        "DELETE FROM workflow_versions v
         WHERE v.org_id = $1 AND v.workflow_id = $2
           AND v.version < (SELECT min(k.version) FROM (
                   SELECT version FROM workflow_versions
                   WHERE org_id = $1 AND workflow_id = $2
                   ORDER BY version DESC LIMIT $3) k)
           AND NOT EXISTS (SELECT 1 FROM runs r
                           WHERE r.org_id = v.org_id AND r.workflow_id = v.workflow_id
                             AND r.workflow_version = v.version)",
    )
    .bind::<Text, _>(org_id)
    .bind::<Text, _>(id)
    .bind::<BigInt, _>(i64::from(keep))
    .execute(conn)
}

/// Insert a workflow at version 1, or bring a deleted one back: it keeps its id and its
/// versions continue the old numbering, so old runs still point at the version they ran.
///
/// `limits`: the org's `maxWorkflows` (a new live workflow over it is refused) and
/// `maxVersionsKept` (a re-created workflow's oldest versions are pruned, [`prune_versions`]).
pub(crate) fn insert_workflow(
    conn: &mut PgConnection,
    org_id: &str,
    new: &NewWorkflow,
    limits: &OrgLimits,
    now: DateTime<Utc>,
) -> Result<CreateOutcome, Error> {
    let id = new.id();
    conn.transaction(|conn| {
        if let Some(exceeded) = workflow_quota(conn, org_id, limits.max_workflows)? {
            return Ok(CreateOutcome::QuotaExceeded(exceeded));
        }
        let existing: Option<WorkflowRow> = workflows::table
            .find((org_id, id.as_str()))
            .select(WorkflowRow::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        let version = match existing {
            Some(row) if row.deleted_at.is_none() => return Ok(CreateOutcome::NameTaken),
            Some(row) => {
                let version = row.version + 1;
                diesel::update(workflows::table.find((org_id, id.as_str())))
                    .set((
                        workflows::description.eq(&new.description),
                        workflows::is_active.eq(new.is_active),
                        workflows::version.eq(version),
                        workflows::created_at.eq(now),
                        workflows::updated_at.eq(now),
                        workflows::deleted_at.eq(None::<DateTime<Utc>>),
                    ))
                    .execute(conn)?;
                version
            }
            None => {
                let row = WorkflowRow {
                    org_id: org_id.to_string(),
                    id: id.as_str().to_string(),
                    name: new.name.as_str().to_string(),
                    description: new.description.clone(),
                    is_active: new.is_active,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    deleted_at: None,
                };
                // A concurrent create of the same name loses here instead of failing.
                let inserted = diesel::insert_into(workflows::table)
                    .values(&row)
                    .on_conflict_do_nothing()
                    .execute(conn)?;
                if inserted == 0 {
                    return Ok(CreateOutcome::NameTaken);
                }
                1
            }
        };
        insert_version(
            conn,
            org_id,
            id.as_str(),
            version,
            &new.definition.json,
            now,
        )?;
        prune_versions(conn, org_id, id.as_str(), limits.max_versions_kept)?;
        let stored = get_workflow(conn, org_id, id.as_str())?.ok_or(Error::NotFound)?;
        Ok(CreateOutcome::Created(stored))
    })
}

fn insert_version(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    version: i32,
    definition: &Value,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    diesel::insert_into(workflow_versions::table)
        .values(WorkflowVersionRow {
            org_id: org_id.to_string(),
            workflow_id: id.to_string(),
            version,
            definition: definition.clone(),
            created_at: now,
        })
        .execute(conn)
        .map(|_| ())
}

/// A live (not deleted) workflow with its current definition.
pub(crate) fn get_workflow(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<StoredWorkflow>, Error> {
    workflows::table
        .inner_join(
            workflow_versions::table.on(workflow_versions::org_id
                .eq(workflows::org_id)
                .and(workflow_versions::workflow_id.eq(workflows::id))
                .and(workflow_versions::version.eq(workflows::version))),
        )
        .filter(workflows::org_id.eq(org_id))
        .filter(workflows::id.eq(id))
        .filter(workflows::deleted_at.is_null())
        .select((WorkflowRow::as_select(), workflow_versions::definition))
        .first::<(WorkflowRow, Value)>(conn)
        .optional()
        .map(|found| {
            found.map(|(row, definition)| StoredWorkflow {
                row,
                definition: Some(definition),
            })
        })
}

/// Newest first; fetches one more than the limit to tell whether another page exists.
pub(crate) fn list_workflows(
    conn: &mut PgConnection,
    org_id: &str,
    q: &ListWorkflows,
) -> Result<(Vec<WorkflowRow>, bool), Error> {
    let mut query = workflows::table
        .filter(workflows::org_id.eq(org_id))
        .filter(workflows::deleted_at.is_null())
        .select(WorkflowRow::as_select())
        .order((workflows::created_at.desc(), workflows::id.desc()))
        .limit(q.limit + 1)
        .into_boxed();
    if let Some(active) = q.is_active {
        query = query.filter(workflows::is_active.eq(active));
    }
    if let Some((at, id)) = &q.after {
        query = query.filter(
            workflows::created_at
                .lt(at)
                .or(workflows::created_at.eq(at).and(workflows::id.lt(id))),
        );
    }
    let mut rows = query.load(conn)?;
    let more = rows.len() as i64 > q.limit;
    rows.truncate(q.limit as usize);
    Ok((rows, more))
}

/// Make the update's definition the next version, and prune versions beyond the newest
/// `max_versions_kept` ([`prune_versions`]). `None` when there is no such workflow.
pub(crate) fn update_workflow(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    update: &WorkflowUpdate,
    max_versions_kept: u32,
    now: DateTime<Utc>,
) -> Result<Option<StoredWorkflow>, Error> {
    conn.transaction(|conn| {
        let current: Option<WorkflowRow> = workflows::table
            .find((org_id, id))
            .filter(workflows::deleted_at.is_null())
            .select(WorkflowRow::as_select())
            .for_update()
            .first(conn)
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        let version = current.version + 1;
        diesel::update(workflows::table.find((org_id, id)))
            .set((
                workflows::description.eq(update.description.clone().or(current.description)),
                workflows::is_active.eq(update.is_active.unwrap_or(current.is_active)),
                workflows::version.eq(version),
                workflows::updated_at.eq(now),
            ))
            .execute(conn)?;
        insert_version(conn, org_id, id, version, &update.definition.json, now)?;
        prune_versions(conn, org_id, id, max_versions_kept)?;
        get_workflow(conn, org_id, id)
    })
}

/// Soft delete: the row stays so runs keep pointing at their versions. `false` when there
/// was no live workflow to delete.
pub(crate) fn delete_workflow(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    diesel::update(
        workflows::table
            .find((org_id, id))
            .filter(workflows::deleted_at.is_null()),
    )
    .set((workflows::deleted_at.eq(now), workflows::updated_at.eq(now)))
    .execute(conn)
    .map(|n| n == 1)
}

/// Whether `id` names a workflow of the org that is not deleted.
fn is_live(conn: &mut PgConnection, org_id: &str, id: &str) -> Result<bool, Error> {
    diesel::select(diesel::dsl::exists(
        workflows::table
            .find((org_id, id))
            .filter(workflows::deleted_at.is_null()),
    ))
    .get_result(conn)
}

/// A live workflow's versions, newest first, one page (plus whether another follows); `None`
/// when there is no live workflow `id`. Versions made before a delete are included: a
/// re-created workflow continues the numbering, and its versions are one history.
pub(crate) fn list_versions(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    q: &ListVersions,
) -> Result<Option<(Vec<WorkflowVersionRow>, bool)>, Error> {
    if !is_live(conn, org_id, id)? {
        return Ok(None);
    }
    let mut query = workflow_versions::table
        .filter(workflow_versions::org_id.eq(org_id))
        .filter(workflow_versions::workflow_id.eq(id))
        .select(WorkflowVersionRow::as_select())
        .order(workflow_versions::version.desc())
        .limit(q.limit + 1)
        .into_boxed();
    if let Some(before) = q.before {
        query = query.filter(workflow_versions::version.lt(before));
    }
    let mut rows = query.load(conn)?;
    let more = rows.len() as i64 > q.limit;
    rows.truncate(q.limit as usize);
    Ok(Some((rows, more)))
}

/// What [`get_version`] found; both misses are 404s, but each says what is missing.
pub(crate) enum VersionLookup {
    NoWorkflow,
    NoVersion,
    Found(WorkflowVersionRow),
}

/// One version of a live workflow.
pub(crate) fn get_version(
    conn: &mut PgConnection,
    org_id: &str,
    id: &str,
    version: i32,
) -> Result<VersionLookup, Error> {
    if !is_live(conn, org_id, id)? {
        return Ok(VersionLookup::NoWorkflow);
    }
    let row = workflow_versions::table
        .find((org_id, id, version))
        .select(WorkflowVersionRow::as_select())
        .first(conn)
        .optional()?;
    Ok(row.map_or(VersionLookup::NoVersion, VersionLookup::Found))
}
