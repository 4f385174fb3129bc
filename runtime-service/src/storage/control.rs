//! Run control: cancel, retry, and decisions on `approval` steps.
//!
//! Each is ONE transaction that locks the run row (`FOR NO KEY UPDATE`) before it reads or writes
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
use shared_models::models::NewRunEvent;
use shared_models::queue::RunJob;
use shared_models::runs::{
    cancel_descendants, cancel_locked_run, enqueue_job, insert_events, is_ended, lock_run,
    run_definition,
};
use shared_models::schema::{runs, step_runs};
use shared_models::status::{RunStatus, StepStatus};

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

/// `POST /workflows/runs/{id}/cancel`: the run and every step not yet ended become
/// CANCELLED, and so do the child runs of its `subworkflow` steps (up to
/// [`shared_models::runs::MAX_CHILD_DEPTH`] levels). Clearing the lease owner is how a worker that holds the run
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
        let children = cancel_locked_run(conn, &run, "run cancelled".into(), now)?;
        cancel_descendants(conn, &run, children, now)?;
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
        let outline = step_outline(&run_definition(conn, &run)?);
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
