//! Creating runs and queueing their jobs: one implementation for runtime-service (runs
//! from HTTP requests, wake-ups) and the worker (child runs of `subworkflow` steps, waking a
//! parent when its child ends). Jobs go through the outbox: written in the caller's
//! transaction, published after commit (by the caller or by the relay).

use crate::ids::RunId;
use crate::models::{NewOutbox, RunRow};
use crate::queue::RunJob;
use crate::schema::{outbox, runs};
use crate::status::RunStatus;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;

/// Everything a new run is made of.
pub struct NewRun<'a> {
    pub org_id: &'a str,
    pub workflow_id: &'a str,
    pub version: i32,
    pub variables: Value,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub request_id: Option<String>,
    /// For a child run: the parent run and its step that waits for it.
    pub parent: Option<(&'a str, &'a str)>,
}

/// A PENDING run row (not yet inserted).
pub fn pending_run(new: NewRun, now: DateTime<Utc>) -> RunRow {
    RunRow {
        id: RunId::generate().to_string(),
        org_id: new.org_id.to_string(),
        workflow_id: new.workflow_id.to_string(),
        workflow_version: new.version,
        status: RunStatus::Pending.as_str().to_string(),
        variables: new.variables,
        output: None,
        error: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        completed_at: None,
        lease_owner: None,
        lease_expires_at: None,
        idempotency_key: new.idempotency_key,
        request_hash: new.request_hash,
        request_id: new.request_id,
        parent_run_id: new.parent.map(|(run, _)| run.to_string()),
        parent_step: new.parent.map(|(_, step)| step.to_string()),
        wake_at: None,
    }
}

/// Insert a run; `false` when an idempotency key made it a duplicate.
pub fn insert_run(conn: &mut PgConnection, run: &RunRow) -> Result<bool, Error> {
    diesel::insert_into(runs::table)
        .values(run)
        .on_conflict_do_nothing()
        .execute(conn)
        .map(|n| n == 1)
}

/// Write the job of a run to the outbox; returns the row id and the job, or `None` when a
/// job with the same `dedupe_key` was already queued.
pub fn enqueue_job(
    conn: &mut PgConnection,
    run_id: &str,
    org_id: &str,
    request_id: Option<String>,
    dedupe_key: Option<&str>,
) -> Result<Option<(i64, RunJob)>, Error> {
    let job = RunJob::new(run_id, org_id, request_id);
    let payload = serde_json::to_value(&job).map_err(|e| Error::SerializationError(Box::new(e)))?;
    let id: Option<i64> = diesel::insert_into(outbox::table)
        .values(NewOutbox {
            run_id,
            payload: &payload,
            dedupe_key,
        })
        .on_conflict_do_nothing()
        .returning(outbox::id)
        .get_result(conn)
        .optional()?;
    Ok(id.map(|id| (id, job)))
}
