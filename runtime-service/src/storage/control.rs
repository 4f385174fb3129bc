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
use shared_models::queue::RunJob;
use shared_models::runs as lifecycle;

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
                lifecycle::Cancel::Ended(status) => CancelOutcome::Ended(status.to_string()),
                lifecycle::Cancel::Cancelled { wake_parent } => CancelOutcome::Cancelled {
                    detail: now_reads(conn, org_id, run_id)?,
                    wake_parent,
                },
            },
        )
    })
}

/// `POST /workflows/runs/{id}/retry`: [`lifecycle::retry`], and the run as it now reads.
pub(crate) fn retry_run(
    conn: &mut PgConnection,
    org_id: &str,
    run_id: &str,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<RetryOutcome, Error> {
    conn.transaction(|conn| {
        Ok(
            match lifecycle::retry(conn, org_id, run_id, request_id, now)? {
                lifecycle::Retry::NotFound => RetryOutcome::NotFound,
                lifecycle::Retry::NotRetryable(status) => {
                    RetryOutcome::NotRetryable(status.to_string())
                }
                lifecycle::Retry::Retried { job } => RetryOutcome::Retried {
                    detail: now_reads(conn, org_id, run_id)?,
                    job,
                },
            },
        )
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
                    detail: now_reads(conn, org_id, run_id)?,
                    job,
                },
            },
        )
    })
}

/// The run as it reads after a control action, in the same transaction.
fn now_reads(conn: &mut PgConnection, org_id: &str, run_id: &str) -> Result<Box<RunDetail>, Error> {
    Ok(Box::new(
        get_run_detail(conn, org_id, run_id)?.ok_or(Error::NotFound)?,
    ))
}
