//! The run lifecycle: every transition of `runs`, `step_runs`, `run_events` and `outbox`
//! rows has its home here or in the worker's storage (which claims, runs and finishes runs
//! under a lease), and no other code writes a status.
//!
//! Runs (`runs.status`):
//!
//! | from | to | when | where |
//! |---|---|---|---|
//! | (none) | PENDING | a trigger, a child run of a `subworkflow` step | [`create`] (runtime triggers; worker children) |
//! | PENDING | PENDING | held back at its org's running cap (`wake_at` set) | worker `storage::claim` |
//! | PENDING | RUNNING | a worker claims it | worker `storage::claim` |
//! | WAITING | RUNNING | its wake-up job is claimed (a delay ended, a decision, a child ended) | worker `storage::claim` |
//! | RUNNING | RUNNING | its lease expired and another worker took it over | worker `storage::claim`; [`requeue`] queues the job |
//! | RUNNING | WAITING | parked: a delay, an approval, a child run, a retry backoff | worker `storage::park` |
//! | RUNNING | COMPLETED, FAILED | its last step ended; a step failed for good; a poison run | worker `storage::finish` |
//! | PENDING, RUNNING, WAITING | CANCELLED | `POST .../cancel`, or its parent was cancelled | [`control::cancel`] |
//! | FAILED, CANCELLED | PENDING | `POST .../retry` | [`control::retry`] |
//!
//! Steps (`step_runs.status`; a step with no row is PENDING):
//!
//! | from | to | when | where |
//! |---|---|---|---|
//! | PENDING | RUNNING, WAITING | its dependencies completed, its condition held (a delay or an approval waits at once) | worker `storage::steps` |
//! | PENDING | SKIPPED | its condition was false, or a dependency did not complete | worker `storage::steps` |
//! | RUNNING | RUNNING | a failed attempt is retried at once | worker `storage::steps` |
//! | RUNNING | COMPLETED, FAILED | an attempt ended | worker `storage::steps` |
//! | RUNNING | WAITING | a delay, an approval, a child run, a retry backoff | worker `storage::steps` |
//! | WAITING | RUNNING | the backoff ended: the next attempt | worker `storage::steps` |
//! | WAITING | COMPLETED, FAILED | the delay ended; the decision; the child run ended | worker `storage::steps`; [`control::decide_approval`] |
//! | PENDING, RUNNING, WAITING | CANCELLED | the run was cancelled | [`control::cancel`] |
//! | FAILED, CANCELLED | PENDING | the run was retried | [`control::retry`] |
//!
//! Every transition appends a `transition` event to the run's stream ([`events`]) in the
//! same transaction; jobs go through the outbox, written in the caller's transaction and
//! published after commit (by the caller or by the relay). The tables are [`RUN_TRANSITIONS`]
//! and [`STEP_TRANSITIONS`] in code; a test keeps the two the same.

pub mod control;
pub mod create;
pub mod events;
pub mod keys;
pub mod requeue;

pub use control::*;
pub use create::*;
pub use events::*;

use crate::models::{RunRow, StepRunRow};
use crate::schema::{runs, step_runs, workflow_versions};
use crate::status::{RunStatus, StepStatus};
use diesel::prelude::*;
use diesel::result::Error;
use serde_json::Value;

/// Every change of a run's status the lifecycle makes: (from, to); `None` is a new run.
pub const RUN_TRANSITIONS: &[(Option<RunStatus>, RunStatus)] = {
    use RunStatus::*;
    &[
        (None, Pending),
        (Some(Pending), Pending),
        (Some(Pending), Running),
        (Some(Waiting), Running),
        (Some(Running), Running),
        (Some(Running), Waiting),
        (Some(Running), Completed),
        (Some(Running), Failed),
        (Some(Pending), Cancelled),
        (Some(Running), Cancelled),
        (Some(Waiting), Cancelled),
        (Some(Failed), Pending),
        (Some(Cancelled), Pending),
    ]
};

/// Every change of a step's status the lifecycle makes: (from, to).
pub const STEP_TRANSITIONS: &[(StepStatus, StepStatus)] = {
    use StepStatus::*;
    &[
        (Pending, Running),
        (Pending, Waiting),
        (Pending, Skipped),
        (Running, Running),
        (Running, Completed),
        (Running, Failed),
        (Running, Waiting),
        (Waiting, Running),
        (Waiting, Completed),
        (Waiting, Failed),
        (Pending, Cancelled),
        (Running, Cancelled),
        (Waiting, Cancelled),
        (Failed, Pending),
        (Cancelled, Pending),
    ]
};

/// Whether a run may go from `from` to `to` ([`RUN_TRANSITIONS`]).
pub fn run_may_become(from: Option<RunStatus>, to: RunStatus) -> bool {
    RUN_TRANSITIONS.contains(&(from, to))
}

/// Whether a step may go from `from` to `to` ([`STEP_TRANSITIONS`]).
pub fn step_may_become(from: StepStatus, to: StepStatus) -> bool {
    STEP_TRANSITIONS.contains(&(from, to))
}

/// How many runs deep subworkflows may nest (a run, its child, the child's child, ...): the
/// worker refuses to start a child deeper, and a cancellation follows as many levels.
pub const MAX_CHILD_DEPTH: usize = 8;

/// Step states that have not ended.
const OPEN_STEPS: [StepStatus; 3] = [
    StepStatus::Pending,
    StepStatus::Running,
    StepStatus::Waiting,
];

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

pub fn is_ended(status: RunStatus) -> bool {
    status.is_terminal()
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

#[cfg(test)]
mod tests;
