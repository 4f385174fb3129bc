//! Run control: cancel, retry, and decisions on `approval` steps.
//!
//! Each is ONE transaction that locks the run row (`FOR UPDATE`) before it reads or writes
//! any step: the worker takes the same row lock first (every write it makes is fenced by
//! an update of the run row), so the two never interleave on a run, and a run's events get
//! their ids in commit order (the event stream relies on that).

use super::{get_run_detail, RunDetail};
use crate::domain::Approval;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;
use shared_models::graph::step_outline;
use shared_models::models::{NewRunEvent, RunRow, StepRunRow};
use shared_models::queue::RunJob;
use shared_models::runs::enqueue_job;
use shared_models::schema::{run_events, runs, step_runs, workflow_versions};
use shared_models::status::{RunStatus, StepStatus};

/// How many levels of child runs (a `subworkflow` step's run, its own children, ...) a
/// cancel follows. Deeper descendants are left to their own timeouts.
pub const MAX_CHILD_DEPTH: usize = 8;

/// Steps that have not reached an end yet: a cancel ends them.
const OPEN_STEPS: [&str; 3] = ["PENDING", "RUNNING", "WAITING"];

/// Steps a retry runs again.
const RETRIED_STEPS: [&str; 2] = ["FAILED", "CANCELLED"];

/// An outbox row written in the transaction, to publish once it has committed.
pub type QueuedJob = (i64, RunJob);

pub enum CancelOutcome {
    Cancelled {
        detail: Box<RunDetail>,
        /// The job waking the run's parent, when the run was a child its parent waits for.
        wake_parent: Option<QueuedJob>,
    },
    NotFound,
    /// The run had already ended, with this status.
    Ended(String),
}

pub enum RetryOutcome {
    Retried {
        detail: Box<RunDetail>,
        job: QueuedJob,
    },
    NotFound,
    /// The run is neither FAILED nor CANCELLED, but this.
    NotRetryable(String),
}

pub enum ApproveOutcome {
    Decided {
        detail: Box<RunDetail>,
        /// Set when no worker held the run (it was WAITING): the job that resumes it.
        job: Option<QueuedJob>,
    },
    RunNotFound,
    /// The run's definition has no step of that name.
    StepNotFound,
    /// Why the step cannot take a decision now.
    NotWaiting(String),
}

fn lock_run(conn: &mut PgConnection, org_id: &str, run_id: &str) -> Result<Option<RunRow>, Error> {
    runs::table
        .find(run_id)
        .filter(runs::org_id.eq(org_id))
        .select(RunRow::as_select())
        .for_update()
        .first(conn)
        .optional()
}

fn is_ended(status: &str) -> bool {
    RunStatus::parse(status).is_some_and(RunStatus::is_terminal)
}

fn definition(conn: &mut PgConnection, run: &RunRow) -> Result<Value, Error> {
    workflow_versions::table
        .find((&run.org_id, &run.workflow_id, run.workflow_version))
        .select(workflow_versions::definition)
        .first(conn)
}

fn lock_steps(conn: &mut PgConnection, run_id: &str) -> Result<Vec<StepRunRow>, Error> {
    step_runs::table
        .filter(step_runs::run_id.eq(run_id))
        .select(StepRunRow::as_select())
        .order(step_runs::position)
        .for_update()
        .load(conn)
}

fn insert_events(conn: &mut PgConnection, events: &[NewRunEvent]) -> Result<(), Error> {
    diesel::insert_into(run_events::table)
        .values(events)
        .execute(conn)
        .map(|_| ())
}

/// `POST /workflows/runs/{id}/cancel`: the run and every step not yet ended become
/// CANCELLED, and so do the child runs of its `subworkflow` steps (up to
/// [`MAX_CHILD_DEPTH`] levels). Clearing the lease owner is how a worker that holds the run
/// learns of it: its next fenced write fails and it abandons the run.
pub fn cancel_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, Error> {
    conn.transaction(|conn| {
        let Some(run) = lock_run(conn, org_id, run_id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        if is_ended(&run.status) {
            return Ok(CancelOutcome::Ended(run.status));
        }
        let mut children = cancel_locked(conn, &run, "run cancelled".into(), now)?;
        for _ in 0..MAX_CHILD_DEPTH {
            if children.is_empty() {
                break;
            }
            let mut grandchildren = Vec::new();
            for child_id in children {
                match lock_run(conn, org_id, &child_id)? {
                    Some(child) if !is_ended(&child.status) => {
                        let message = format!("run cancelled with its parent run {}", run.id);
                        grandchildren.extend(cancel_locked(conn, &child, message, now)?);
                    }
                    _ => {}
                }
            }
            children = grandchildren;
        }
        // A child cancelled on its own: its parent's step fails, but only once a worker
        // looks, so wake the parent if it is parked.
        let wake_parent = match &run.parent_run_id {
            Some(parent_id) => wake_if_waiting(conn, parent_id, request_id)?,
            None => None,
        };
        let detail = Box::new(get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?);
        Ok(CancelOutcome::Cancelled {
            detail,
            wake_parent,
        })
    })
}

/// Cancel a run whose row this transaction has locked; returns the child runs of the steps
/// it cancelled.
fn cancel_locked(
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
    let outline = step_outline(&definition(conn, run)?);
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

/// Queue a job for a run if it is parked (WAITING); a run in any other state has a worker
/// or a job already, or has ended.
fn wake_if_waiting(
    conn: &mut PgConnection,
    run_id: &str,
    request_id: Option<&str>,
) -> Result<Option<QueuedJob>, Error> {
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

/// `POST /workflows/runs/{id}/retry`: a FAILED or CANCELLED run goes back to PENDING with
/// its failed and cancelled steps; completed and skipped steps keep their outputs, and
/// attempt numbers continue. Its job is queued in the same transaction.
pub fn retry_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<RetryOutcome, Error> {
    conn.transaction(|conn| {
        let Some(run) = lock_run(conn, org_id, run_id)? else {
            return Ok(RetryOutcome::NotFound);
        };
        let retryable = matches!(
            RunStatus::parse(&run.status),
            Some(RunStatus::Failed | RunStatus::Cancelled)
        );
        if !retryable {
            return Ok(RetryOutcome::NotRetryable(run.status));
        }
        let pending = RunStatus::Pending.as_str();
        diesel::update(runs::table.find(run_id))
            .set((
                runs::status.eq(pending),
                runs::error.eq(None::<String>),
                runs::output.eq(None::<Value>),
                runs::completed_at.eq(None::<DateTime<Utc>>),
                runs::wake_at.eq(None::<DateTime<Utc>>),
                runs::lease_owner.eq(None::<String>),
                runs::lease_expires_at.eq(None::<DateTime<Utc>>),
                runs::updated_at.eq(now),
            ))
            .execute(conn)?;
        let again: Vec<(String, String)> = step_runs::table
            .filter(step_runs::run_id.eq(run_id))
            .filter(step_runs::status.eq_any(RETRIED_STEPS))
            .select((step_runs::name, step_runs::status))
            .order(step_runs::position)
            .for_update()
            .load(conn)?;
        // `attempt` stays, so the next attempt of a step is numbered after its last one.
        diesel::update(
            step_runs::table
                .filter(step_runs::run_id.eq(run_id))
                .filter(step_runs::status.eq_any(RETRIED_STEPS)),
        )
        .set((
            step_runs::status.eq(StepStatus::Pending.as_str()),
            step_runs::started_at.eq(None::<DateTime<Utc>>),
            step_runs::completed_at.eq(None::<DateTime<Utc>>),
            step_runs::output.eq(None::<Value>),
            step_runs::error.eq(None::<String>),
            step_runs::wake_at.eq(None::<DateTime<Utc>>),
            step_runs::child_run_id.eq(None::<String>),
        ))
        .execute(conn)?;
        let mut events = vec![NewRunEvent::transition(
            run_id,
            now,
            None,
            &run.status,
            pending,
        )];
        events.extend(
            again.iter().map(|(name, from)| {
                NewRunEvent::transition(run_id, now, Some(name), from, pending)
            }),
        );
        events.push(NewRunEvent::log(run_id, now, None, "INFO", "run retried"));
        insert_events(conn, &events)?;
        let job = enqueue_job(conn, run_id, org_id, request_id.map(str::to_string), None)?
            .ok_or(Error::NotFound)?;
        let detail = Box::new(get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?);
        Ok(RetryOutcome::Retried { detail, job })
    })
}

/// `POST /workflows/runs/{id}/steps/{step}/approve`: record the decision on a WAITING
/// `approval` step. A parked (WAITING) run gets a job to resume it; a RUNNING run does not,
/// since its worker re-reads waiting steps (under this same row lock) before it parks.
pub fn decide_approval(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    step: &str,
    approval: &Approval,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ApproveOutcome, Error> {
    conn.transaction(|conn| {
        let Some(run) = lock_run(conn, org_id, run_id)? else {
            return Ok(ApproveOutcome::RunNotFound);
        };
        let outline = step_outline(&definition(conn, &run)?);
        let Some((_, step_type)) = outline.iter().find(|(name, _)| name == step) else {
            return Ok(ApproveOutcome::StepNotFound);
        };
        if step_type != "approval" {
            return Ok(ApproveOutcome::NotWaiting(format!(
                "it is a '{step_type}' step, not an 'approval' step"
            )));
        }
        if is_ended(&run.status) {
            return Ok(ApproveOutcome::NotWaiting(format!(
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
                return Ok(ApproveOutcome::NotWaiting(format!(
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
        let detail = Box::new(get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?);
        Ok(ApproveOutcome::Decided { detail, job })
    })
}
