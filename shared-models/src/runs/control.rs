//! Cancelling runs (with their children) and deciding approvals: the transitions the
//! runtime's control routes make, each in the caller's transaction, which it starts by
//! locking the run row (as the worker's writes do), so a control action and a worker never
//! interleave on a run.

use super::{enqueue_job, insert_events, is_ended, lock_run, lock_steps, run_definition};
use super::{MAX_CHILD_DEPTH, OPEN_STEPS};
use crate::graph::step_outline;
use crate::models::{NewRunEvent, RunRow, StepRunRow};
use crate::queue::RunJob;
use crate::schema::{runs, step_runs};
use crate::status::{RunStatus, StepStatus};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;

/// Cancel a run whose row this transaction has locked; returns the child runs of the steps
/// it cancelled.
pub fn cancel_locked_run(
    conn: &mut PgConnection,
    run: &RunRow,
    message: String,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let cancelled = StepStatus::Cancelled;
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
        run.status,
        RunStatus::Cancelled.as_str(),
    )];
    let mut new_rows = Vec::new();
    let mut children = Vec::new();
    for (position, (name, step_type)) in outline.iter().enumerate() {
        match rows.iter().find(|r| &r.name == name) {
            Some(row) if OPEN_STEPS.contains(&row.status) => {
                children.extend(row.child_run_id.clone());
                if row.step_type == "agent" {
                    children.extend(tool_runs(conn, run, name)?);
                }
                events.push(NewRunEvent::transition(
                    &run.id,
                    now,
                    Some(name),
                    row.status,
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

/// The child runs an agent step's workflow tools started that have not ended: found by the
/// run tree's index (`runs_by_root`), at most `maxDescendantsPerRun` rows.
pub fn tool_runs(conn: &mut PgConnection, run: &RunRow, step: &str) -> Result<Vec<String>, Error> {
    let root = run.root_run_id.as_deref().unwrap_or(&run.id);
    runs::table
        .filter(runs::root_run_id.eq(root))
        .filter(runs::parent_run_id.eq(&run.id))
        .filter(runs::parent_step.eq(step))
        .filter(runs::status.ne_all([
            RunStatus::Completed.as_str(),
            RunStatus::Failed.as_str(),
            RunStatus::Cancelled.as_str(),
        ]))
        .select(runs::id)
        .load(conn)
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
                Some(child) if !is_ended(child.status) => {
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
    Ended(RunStatus),
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
    if is_ended(run.status) {
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
    if is_ended(run.status) {
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
    let job = if run.status == RunStatus::Waiting {
        enqueue_job(conn, run_id, org_id, request_id.map(str::to_string), None)?
    } else {
        None
    };
    Ok(Decide::Decided { job })
}

/// Steps a retry runs again.
const RETRIED_STEPS: [&str; 2] = ["FAILED", "CANCELLED"];

/// What [`retry`] did.
pub enum Retry {
    /// The run is PENDING again; its job, queued in the transaction.
    Retried {
        job: (i64, RunJob),
    },
    NotFound,
    /// The run is neither FAILED nor CANCELLED, but this.
    NotRetryable(RunStatus),
}

/// Retry a run (in the caller's transaction): a FAILED or CANCELLED run goes back to PENDING
/// with its failed and cancelled steps; completed and skipped steps keep their outputs, and
/// attempt numbers continue. Its job is queued in the same transaction.
pub fn retry(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Retry, Error> {
    let Some(run) = lock_run(conn, org_id, run_id)? else {
        return Ok(Retry::NotFound);
    };
    let retryable = matches!(run.status, RunStatus::Failed | RunStatus::Cancelled);
    if !retryable {
        return Ok(Retry::NotRetryable(run.status));
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
        run_id, now, None, run.status, pending,
    )];
    events.extend(
        again
            .iter()
            .map(|(name, from)| NewRunEvent::transition(run_id, now, Some(name), from, pending)),
    );
    events.push(NewRunEvent::log(run_id, now, None, "INFO", "run retried"));
    insert_events(conn, &events)?;
    let job = enqueue_job(conn, run_id, org_id, request_id.map(str::to_string), None)?
        .ok_or(Error::NotFound)?;
    Ok(Retry::Retried { job })
}
