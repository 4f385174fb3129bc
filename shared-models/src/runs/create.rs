//! New runs and their jobs: PENDING run rows, and the outbox rows that queue their jobs
//! (written in the caller's transaction, published after commit by the caller or the relay).

use crate::ids::RunId;
use crate::models::{NewOutbox, RunRow};
use crate::prepared::{column, prepared, Id};
use crate::queue::RunJob;
use crate::schema::outbox;
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
    /// For a child run: the parent run, its step that waits for it, and the root of the
    /// parent's tree (the parent itself when it is a root run).
    pub parent: Option<(&'a str, &'a str, &'a str)>,
    /// The trigger's `budget` override, as validated JSON.
    pub budget: Option<Value>,
}

/// A PENDING run row (not yet inserted).
pub fn pending_run(new: NewRun, now: DateTime<Utc>) -> RunRow {
    RunRow {
        id: RunId::generate().to_string(),
        org_id: new.org_id.to_string(),
        workflow_id: new.workflow_id.to_string(),
        workflow_version: new.version,
        status: RunStatus::Pending,
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
        parent_run_id: new.parent.map(|(run, _, _)| run.to_string()),
        parent_step: new.parent.map(|(_, step, _)| step.to_string()),
        wake_at: None,
        root_run_id: new.parent.map(|(_, _, root)| root.to_string()),
        budget: new.budget,
    }
}

/// Insert a run; `false` when an idempotency key made it a duplicate.
pub fn insert_run(conn: &mut PgConnection, run: &RunRow) -> Result<bool, Error> {
    insert_pending_runs(conn, std::slice::from_ref(run)).map(|ids| ids.len() == 1)
}

/// The insert of new PENDING runs, `$1` to `$15` one array per column ([`bind_runs!`]); it
/// returns the ids inserted (an id or idempotency key already taken inserts nothing).
macro_rules! insert_runs_sql {
    () => {
        "INSERT INTO runs (id, org_id, workflow_id, workflow_version, status, variables,
                           created_at, updated_at, idempotency_key, request_hash, request_id,
                           parent_run_id, parent_step, root_run_id, budget)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[],
                              $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                              $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                              $15::jsonb[])
         ON CONFLICT DO NOTHING
         RETURNING id"
    };
}

/// `$query` with the columns of `$rows` (new PENDING runs) bound as its `$1` to `$15`.
macro_rules! bind_runs {
    ($query:expr, $rows:expr) => {{
        use diesel::sql_types::{Array, Int4, Jsonb, Nullable, Text, Timestamptz};
        let rows: &[RunRow] = $rows;
        // What a new run has not got yet (output, error, start, end, lease, wake-up) is left
        // to the columns' defaults, NULL.
        debug_assert!(rows.iter().all(|r| r.output.is_none()
            && r.error.is_none()
            && r.started_at.is_none()
            && r.completed_at.is_none()
            && r.lease_owner.is_none()
            && r.lease_expires_at.is_none()
            && r.wake_at.is_none()));
        $query
            .bind::<Array<Text>, _>(column(rows, |r| r.id.as_str()))
            .bind::<Array<Text>, _>(column(rows, |r| r.org_id.as_str()))
            .bind::<Array<Text>, _>(column(rows, |r| r.workflow_id.as_str()))
            .bind::<Array<Int4>, _>(column(rows, |r| r.workflow_version))
            .bind::<Array<Text>, _>(column(rows, |r| r.status.as_str()))
            .bind::<Array<Jsonb>, _>(column(rows, |r| &r.variables))
            .bind::<Array<Timestamptz>, _>(column(rows, |r| r.created_at))
            .bind::<Array<Timestamptz>, _>(column(rows, |r| r.updated_at))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.idempotency_key.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.request_hash.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.request_id.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.parent_run_id.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.parent_step.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.root_run_id.as_deref()))
            .bind::<Array<Nullable<Jsonb>>, _>(column(rows, |r| r.budget.as_ref()))
    }};
}

/// Insert new PENDING runs (made by [`pending_run`]) in one statement of fixed text; returns
/// the ids of those inserted (an id or idempotency key already taken inserts nothing).
pub fn insert_pending_runs(conn: &mut PgConnection, rows: &[RunRow]) -> Result<Vec<String>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<Id> = bind_runs!(prepared(insert_runs_sql!()), rows).load(conn)?;
    Ok(inserted.into_iter().map(|r| r.id).collect())
}

/// [`insert_pending_runs`] and the outbox rows of the runs' jobs, in ONE statement of fixed
/// text (atomic without a transaction of its own): `jobs` pairs a run id with its job's
/// payload, and a job is written only when its run was inserted. Returns each inserted run's
/// id, in the order given, with its outbox row's id (`None` for a run given no job).
pub fn insert_runs_with_jobs(
    conn: &mut PgConnection,
    rows: &[RunRow],
    jobs: &[(&str, &Value)],
) -> Result<Vec<(String, Option<i64>)>, Error> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = Text)]
        run_id: String,
        #[diesel(sql_type = Nullable<BigInt>)]
        outbox_id: Option<i64>,
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let statement = prepared(concat!(
        "WITH inserted AS (",
        insert_runs_sql!(),
        "), queued AS (
             INSERT INTO outbox (run_id, payload)
             SELECT j.run_id, j.payload
             FROM unnest($16::text[], $17::jsonb[]) WITH ORDINALITY AS j(run_id, payload, position)
             WHERE j.run_id IN (SELECT id FROM inserted)
             ORDER BY j.position
             RETURNING run_id, id
         )
         SELECT i.id AS run_id, q.id AS outbox_id
         FROM inserted i LEFT JOIN queued q ON q.run_id = i.id"
    ));
    let inserted: Vec<Inserted> = bind_runs!(statement, rows)
        .bind::<Array<Text>, _>(column(jobs, |(run, _)| *run))
        .bind::<Array<Jsonb>, _>(column(jobs, |(_, payload)| *payload))
        .load(conn)?;
    // In the order given.
    let mut by_id: std::collections::HashMap<String, Option<i64>> = inserted
        .into_iter()
        .map(|i| (i.run_id, i.outbox_id))
        .collect();
    Ok(rows
        .iter()
        .filter_map(|r| by_id.remove(&r.id).map(|outbox| (r.id.clone(), outbox)))
        .collect())
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
