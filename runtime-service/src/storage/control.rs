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
use shared_models::models::NewRunEvent;
use shared_models::queue::RunJob;
use shared_models::runs as lifecycle;
use shared_models::runs::{enqueue_job, insert_events, lock_run};
use shared_models::schema::{runs, step_runs};
use shared_models::status::{RunStatus, StepStatus};

/// Steps a retry runs again.
const RETRIED_STEPS: [&str; 2] = ["FAILED", "CANCELLED"];

/// An outbox row written in the transaction, to publish once it has committed.
pub(crate) type QueuedJob = (i64, RunJob);

pub(crate) enum CancelOutcome {
    Cancelled {
        detail: Box<RunDetail>,
        /// The job waking the run's parent, when the run was a child its parent waits for.
        wake_parent: Option<QueuedJob>,
    },
    NotFound,
    /// The run had already ended, with this status.
    Ended(String),
}

pub(crate) enum RetryOutcome {
    Retried {
        detail: Box<RunDetail>,
        job: QueuedJob,
    },
    NotFound,
    /// The run is neither FAILED nor CANCELLED, but this.
    NotRetryable(String),
}

pub(crate) enum ApproveOutcome {
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

/// `POST /workflows/runs/{id}/cancel`: [`lifecycle::cancel`], and the run as it
/// now reads.
pub(crate) fn cancel_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, Error> {
    conn.transaction(|conn| {
        Ok(
            match lifecycle::cancel(conn, org_id, run_id, request_id, now)? {
                lifecycle::Cancel::NotFound => CancelOutcome::NotFound,
                lifecycle::Cancel::Ended(status) => CancelOutcome::Ended(status),
                lifecycle::Cancel::Cancelled { wake_parent } => CancelOutcome::Cancelled {
                    detail: Box::new(get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?),
                    wake_parent,
                },
            },
        )
    })
}

/// `POST /workflows/runs/{id}/retry`: a FAILED or CANCELLED run goes back to PENDING with
/// its failed and cancelled steps; completed and skipped steps keep their outputs, and
/// attempt numbers continue. Its job is queued in the same transaction.
pub(crate) fn retry_run(
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

/// `POST /workflows/runs/{id}/steps/{step}/approve`:
/// [`lifecycle::decide_approval`], and the run as it now reads.
pub(crate) fn decide_approval(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    step: &str,
    approval: &Approval,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ApproveOutcome, Error> {
    conn.transaction(|conn| {
        Ok(
            match lifecycle::decide_approval(conn, org_id, run_id, step, approval, request_id, now)?
            {
                lifecycle::Decide::RunNotFound => ApproveOutcome::RunNotFound,
                lifecycle::Decide::StepNotFound => ApproveOutcome::StepNotFound,
                lifecycle::Decide::NotWaiting(why) => ApproveOutcome::NotWaiting(why),
                lifecycle::Decide::Decided { job } => ApproveOutcome::Decided {
                    detail: Box::new(get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?),
                    job,
                },
            },
        )
    })
}
