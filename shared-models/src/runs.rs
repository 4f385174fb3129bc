//! Creating runs and queueing their jobs: one implementation for runtime-service (runs
//! from HTTP requests, wake-ups) and the worker (child runs of `subworkflow` steps, waking a
//! parent when its child ends). Jobs go through the outbox: written in the caller's
//! transaction, published after commit (by the caller or by the relay).

use crate::graph::step_outline;
use crate::ids::RunId;
use crate::models::{NewOutbox, NewRunEvent, RunRow, StepRunRow};
use crate::prepared::{column, prepared, Bound, Id, Prepared};
use crate::queue::RunJob;
use crate::schema::{outbox, runs, step_runs, workflow_versions};
use crate::status::{RunStatus, StepStatus};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, Nullable, Text, Timestamptz};
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
        parent_run_id: new.parent.map(|(run, _, _)| run.to_string()),
        parent_step: new.parent.map(|(_, step, _)| step.to_string()),
        wake_at: None,
        root_run_id: new.parent.map(|(_, _, root)| root.to_string()),
    }
}

/// Insert a run; `false` when an idempotency key made it a duplicate.
pub fn insert_run(conn: &mut PgConnection, run: &RunRow) -> Result<bool, Error> {
    insert_pending_runs(conn, std::slice::from_ref(run)).map(|ids| ids.len() == 1)
}

/// Insert new PENDING runs (made by [`pending_run`]) in one statement of fixed text; returns
/// the ids of those inserted (an id or idempotency key already taken inserts nothing).
pub fn insert_pending_runs(conn: &mut PgConnection, rows: &[RunRow]) -> Result<Vec<String>, Error> {
    use diesel::sql_types::{Array, Int4, Jsonb, Nullable, Text, Timestamptz};
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // What a new run has not got yet (output, error, start, end, lease, wake-up) is left to
    // the columns' defaults, NULL.
    debug_assert!(rows.iter().all(|r| r.output.is_none()
        && r.error.is_none()
        && r.started_at.is_none()
        && r.completed_at.is_none()
        && r.lease_owner.is_none()
        && r.lease_expires_at.is_none()
        && r.wake_at.is_none()));
    let inserted: Vec<Id> = prepared(
        "INSERT INTO runs (id, org_id, workflow_id, workflow_version, status, variables,
                           created_at, updated_at, idempotency_key, request_hash, request_id,
                           parent_run_id, parent_step, root_run_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[],
                              $6::jsonb[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                              $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
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
    .load(conn)?;
    Ok(inserted.into_iter().map(|r| r.id).collect())
}

/// Write many jobs to the outbox (no dedupe keys) in one statement of fixed text; returns
/// each row's (run id, outbox id).
pub fn enqueue_jobs(
    conn: &mut PgConnection,
    jobs: &[(&str, &Value)],
) -> Result<Vec<(String, i64)>, Error> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Text};
    #[derive(QueryableByName)]
    struct Queued {
        #[diesel(sql_type = Text)]
        run_id: String,
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let queued: Vec<Queued> = prepared(
        "INSERT INTO outbox (run_id, payload)
         SELECT * FROM unnest($1::text[], $2::jsonb[])
         RETURNING run_id, id",
    )
    .bind::<Array<Text>, _>(column(jobs, |(run, _)| *run))
    .bind::<Array<Jsonb>, _>(column(jobs, |(_, payload)| *payload))
    .load(conn)?;
    Ok(queued.into_iter().map(|q| (q.run_id, q.id)).collect())
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

/// How many runs deep subworkflows may nest (a run, its child, the child's child, ...): the
/// worker refuses to start a child deeper, and a cancellation follows as many levels.
pub const MAX_CHILD_DEPTH: usize = 8;

/// Step states that have not ended.
const OPEN_STEPS: [&str; 3] = ["PENDING", "RUNNING", "WAITING"];

/// Lock a run's row for the rest of the transaction. Every lock on a run row (here, the
/// worker's claim and park, the sweeper's) is `FOR NO KEY UPDATE`, not `FOR UPDATE`: they
/// exclude each other all the same, but not the foreign-key checks of rows that reference
/// the run (a child's end queues its parent's job in the outbox; a child run names its
/// parent), which would otherwise wait, holding their pooled connection and the group
/// commit they are part of, for whoever holds the parent (docs/PERFORMANCE.md).
pub fn lock_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
) -> Result<Option<RunRow>, Error> {
    runs::table
        .find(run_id)
        .filter(runs::org_id.eq(org_id))
        .select(RunRow::as_select())
        .for_no_key_update()
        .first(conn)
        .optional()
}

pub fn is_ended(status: &str) -> bool {
    RunStatus::parse(status).is_some_and(RunStatus::is_terminal)
}

/// The definition of the version a run executes.
pub fn run_definition(conn: &mut PgConnection, run: &RunRow) -> Result<Value, Error> {
    workflow_versions::table
        .find((&run.org_id, &run.workflow_id, run.workflow_version))
        .select(workflow_versions::definition)
        .first(conn)
}

pub fn lock_steps(conn: &mut PgConnection, run_id: &str) -> Result<Vec<StepRunRow>, Error> {
    step_runs::table
        .filter(step_runs::run_id.eq(run_id))
        .select(StepRunRow::as_select())
        .order(step_runs::position)
        .for_update()
        .load(conn)
}

/// The `INSERT` of events whose columns are the arrays `$1` to `$8` (see [`with_events`]), in
/// their order: for statements that write something else first in a CTE.
#[macro_export]
macro_rules! insert_events_sql {
    () => {
        "INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                              $5::text[], $6::text[], $7::text[], $8::text[])"
    };
}

/// The statement `sql` with `events` bound as its `$1` to `$8`, one array per column of
/// `run_events` (run, at, kind, step, from and to status, level, message); bind the
/// statement's other values after them (`$9`, ...).
pub fn with_events<'a>(sql: &'static str, events: &'a [NewRunEvent]) -> EventsBound<'a> {
    prepared(sql)
        .bind::<Array<Text>, _>(column(events, |e| e.run_id.as_str()))
        .bind::<Array<Timestamptz>, _>(column(events, |e| e.at))
        .bind::<Array<Text>, _>(column(events, |e| e.kind.as_str()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.step.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.from_status.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.to_status.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.level.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(events, |e| e.message.as_deref()))
}

type Texts<'a> = Vec<&'a str>;
type MaybeTexts<'a> = Vec<Option<&'a str>>;
type MaybeText = Array<Nullable<Text>>;

/// What [`with_events`] gives: a statement with the eight event arrays bound.
pub type EventsBound<'a> = Bound<
    Bound<
        Bound<
            Bound<
                Bound<
                    Bound<
                        Bound<
                            Bound<Prepared, Texts<'a>, Array<Text>>,
                            Vec<DateTime<Utc>>,
                            Array<Timestamptz>,
                        >,
                        Texts<'a>,
                        Array<Text>,
                    >,
                    MaybeTexts<'a>,
                    MaybeText,
                >,
                MaybeTexts<'a>,
                MaybeText,
            >,
            MaybeTexts<'a>,
            MaybeText,
        >,
        MaybeTexts<'a>,
        MaybeText,
    >,
    MaybeTexts<'a>,
    MaybeText,
>;

/// Append events to their runs' streams, in the order given, in one statement of fixed text
/// (prepared once per connection, whatever the number of events).
pub fn insert_events(conn: &mut PgConnection, events: &[NewRunEvent]) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    // `unnest` of several arrays yields their rows in order, so ids (the stream's order)
    // are given in the order of `events`.
    with_events(insert_events_sql!(), events)
        .execute(conn)
        .map(|_| ())
}

/// Cancel a run whose row this transaction has locked; returns the child runs of the steps
/// it cancelled.
pub fn cancel_locked_run(
    conn: &mut PgConnection,
    run: &RunRow,
    message: String,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let cancelled = StepStatus::Cancelled.as_str();
    diesel::update(runs::table.find(&run.id))
        .set((
            runs::status.eq(RunStatus::Cancelled.as_str()),
            runs::completed_at.eq(now),
            runs::updated_at.eq(now),
            runs::wake_at.eq(None::<DateTime<Utc>>),
            runs::lease_owner.eq(None::<String>),
            runs::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
    let outline = step_outline(&run_definition(conn, run)?);
    let rows = lock_steps(conn, &run.id)?;
    let mut events = vec![NewRunEvent::transition(
        &run.id,
        now,
        None,
        &run.status,
        RunStatus::Cancelled.as_str(),
    )];
    let mut new_rows = Vec::new();
    let mut children = Vec::new();
    for (position, (name, step_type)) in outline.iter().enumerate() {
        match rows.iter().find(|r| &r.name == name) {
            Some(row) if OPEN_STEPS.contains(&row.status.as_str()) => {
                children.extend(row.child_run_id.clone());
                events.push(NewRunEvent::transition(
                    &run.id,
                    now,
                    Some(name),
                    &row.status,
                    cancelled,
                ));
            }
            Some(_) => {}
            None => {
                let position = i32::try_from(position).unwrap_or(i32::MAX);
                let mut row = StepRunRow::new(&run.id, name, position, step_type, cancelled);
                row.completed_at = Some(now);
                new_rows.push(row);
                events.push(NewRunEvent::transition(
                    &run.id,
                    now,
                    Some(name),
                    StepStatus::Pending.as_str(),
                    cancelled,
                ));
            }
        }
    }
    diesel::update(
        step_runs::table
            .filter(step_runs::run_id.eq(&run.id))
            .filter(step_runs::status.eq_any(OPEN_STEPS)),
    )
    .set((
        step_runs::status.eq(cancelled),
        step_runs::completed_at.eq(now),
        step_runs::wake_at.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)?;
    if !new_rows.is_empty() {
        diesel::insert_into(step_runs::table)
            .values(&new_rows)
            .execute(conn)?;
    }
    events.push(NewRunEvent::log(&run.id, now, None, "INFO", message));
    insert_events(conn, &events)?;
    Ok(children)
}

/// Cancel the child runs (and their children, up to [`MAX_CHILD_DEPTH`] levels) of steps
/// that `run` just cancelled, so no orphan keeps running.
pub fn cancel_descendants(
    conn: &mut PgConnection,
    run: &RunRow,
    mut children: Vec<String>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    for _ in 0..MAX_CHILD_DEPTH {
        if children.is_empty() {
            break;
        }
        let mut grandchildren = Vec::new();
        for child_id in children {
            match lock_run(conn, &run.org_id, &child_id)? {
                Some(child) if !is_ended(&child.status) => {
                    let message = format!("run cancelled with its parent run {}", run.id);
                    grandchildren.extend(cancel_locked_run(conn, &child, message, now)?);
                }
                _ => {}
            }
        }
        children = grandchildren;
    }
    Ok(())
}

// ---- run control: the transitions the runtime's control routes make ----------------------
//
// Each runs inside the caller's transaction, which it starts by locking the run row (as the
// worker's writes do), so a control action and a worker never interleave on a run.

/// A decision on an `approval` step: `{ "approved": true|false, "comment": "..." }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approved: bool,
    pub comment: Option<String>,
}

impl Approval {
    /// The step's status once decided: a rejection fails the step.
    pub fn step_status(&self) -> StepStatus {
        if self.approved {
            StepStatus::Completed
        } else {
            StepStatus::Failed
        }
    }

    /// The step's output (docs/API.md "Workflow graphs": `{ "approved", "comment" }`).
    pub fn output(&self) -> Value {
        serde_json::json!({ "approved": self.approved, "comment": self.comment })
    }

    /// The step's error: only a rejection has one.
    pub fn error(&self) -> Option<String> {
        (!self.approved).then(|| match &self.comment {
            Some(c) => format!("rejected: {c}"),
            None => "rejected".to_string(),
        })
    }

    /// The log line recording the decision: its level and message.
    pub fn log_line(&self) -> (&'static str, String) {
        let (level, verb) = if self.approved {
            ("INFO", "approved")
        } else {
            ("WARN", "rejected")
        };
        match &self.comment {
            Some(c) => (level, format!("{verb}: {c}")),
            None => (level, verb.to_string()),
        }
    }
}

/// What [`cancel`] did.
pub enum Cancel {
    /// The run, its open steps and its children's trees are CANCELLED; the job waking its
    /// parent, when the run was a child its parked parent waits for.
    Cancelled {
        wake_parent: Option<(i64, RunJob)>,
    },
    NotFound,
    /// The run had already ended, with this status.
    Ended(String),
}

/// Cancel a run (in the caller's transaction): the run and every step not yet ended become
/// CANCELLED, and so do the child runs of its `subworkflow` steps (up to
/// [`MAX_CHILD_DEPTH`] levels). Clearing the lease owner is how a worker that holds the run
/// learns of it: its next fenced write fails and it abandons the run.
pub fn cancel(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Cancel, Error> {
    let Some(run) = lock_run(conn, org_id, run_id)? else {
        return Ok(Cancel::NotFound);
    };
    if is_ended(&run.status) {
        return Ok(Cancel::Ended(run.status));
    }
    let children = cancel_locked_run(conn, &run, "run cancelled".into(), now)?;
    cancel_descendants(conn, &run, children, now)?;
    // A child cancelled on its own: its parent's step fails, but only once a worker looks,
    // so wake the parent if it is parked.
    let wake_parent = match &run.parent_run_id {
        Some(parent_id) => wake_if_waiting(conn, parent_id, request_id)?,
        None => None,
    };
    Ok(Cancel::Cancelled { wake_parent })
}

/// Queue a job for a run if it is parked (WAITING); a run in any other state has a worker
/// or a job already, or has ended.
fn wake_if_waiting(
    conn: &mut PgConnection,
    run_id: &str,
    request_id: Option<&str>,
) -> Result<Option<(i64, RunJob)>, Error> {
    let parent: Option<(String, String)> = runs::table
        .find(run_id)
        .select((runs::org_id, runs::status))
        .first(conn)
        .optional()?;
    match parent {
        Some((org_id, status)) if status == RunStatus::Waiting.as_str() => {
            enqueue_job(conn, run_id, &org_id, request_id.map(str::to_string), None)
        }
        _ => Ok(None),
    }
}

/// What [`decide_approval`] did.
pub enum Decide {
    /// Recorded; the job that resumes the run when no worker held it (it was WAITING).
    Decided {
        job: Option<(i64, RunJob)>,
    },
    RunNotFound,
    /// The run's definition has no step of that name.
    StepNotFound,
    /// Why the step cannot take a decision now.
    NotWaiting(String),
}

/// Record a decision on a WAITING `approval` step (in the caller's transaction). A parked
/// (WAITING) run gets a job to resume it; a RUNNING run does not, since its worker re-reads
/// waiting steps (under this same row lock) before it parks.
pub fn decide_approval(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    step: &str,
    approval: &Approval,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Decide, Error> {
    let Some(run) = lock_run(conn, org_id, run_id)? else {
        return Ok(Decide::RunNotFound);
    };
    let outline = step_outline(&run_definition(conn, &run)?);
    let Some((_, step_type)) = outline.iter().find(|(name, _)| name == step) else {
        return Ok(Decide::StepNotFound);
    };
    if step_type != "approval" {
        return Ok(Decide::NotWaiting(format!(
            "it is a '{step_type}' step, not an 'approval' step"
        )));
    }
    if is_ended(&run.status) {
        return Ok(Decide::NotWaiting(format!(
            "the run has ended ({})",
            run.status
        )));
    }
    let status: Option<String> = step_runs::table
        .find((run_id, step))
        .select(step_runs::status)
        .for_update()
        .first(conn)
        .optional()?;
    let waiting = StepStatus::Waiting.as_str();
    match status.as_deref() {
        Some(s) if s == waiting => {}
        other => {
            return Ok(Decide::NotWaiting(format!(
                "its status is {}",
                other.unwrap_or(StepStatus::Pending.as_str())
            )))
        }
    }
    let to = approval.step_status().as_str();
    diesel::update(step_runs::table.find((run_id, step)))
        .set((
            step_runs::status.eq(to),
            step_runs::output.eq(approval.output()),
            step_runs::error.eq(approval.error()),
            step_runs::completed_at.eq(now),
            step_runs::wake_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
    diesel::update(runs::table.find(run_id))
        .set(runs::updated_at.eq(now))
        .execute(conn)?;
    let (level, message) = approval.log_line();
    insert_events(
        conn,
        &[
            NewRunEvent::transition(run_id, now, Some(step), waiting, to),
            NewRunEvent::log(run_id, now, Some(step), level, message),
        ],
    )?;
    let job = if run.status == RunStatus::Waiting.as_str() {
        enqueue_job(conn, run_id, org_id, request_id.map(str::to_string), None)?
    } else {
        None
    };
    Ok(Decide::Decided { job })
}
