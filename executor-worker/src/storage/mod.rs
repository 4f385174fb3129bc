//! Plain diesel functions over `&mut PgConnection`. The worker owns `step_runs` and
//! `run_events`, and a run's status once the run exists (the runtime's run-control endpoints
//! aside: cancel, retry, approve).
//!
//! Every write is fenced by the lease: it happens only while `runs.lease_owner` is this
//! worker. A worker that lost its run (lease expired and taken over, or the run cancelled)
//! finds out at its next write ([`Fenced::LeaseLost`]) and stops touching it.
//!
//! By concern: [`claim`] takes runs, [`lease`] fences and renews, [`steps`] writes one
//! step, [`batch`] writes the pure steps and simple ends of many runs together (group
//! commit), [`park`] puts a waiting run aside, [`finish`] ends a run, [`children`] starts
//! and reads the child runs of `subworkflow` steps.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The columns of [`RunRow`], for the `RETURNING` of prepared statements: a list, not `*`, so
/// that a column added by a later release's migration does not change the result type of a
/// statement prepared before it on a live connection (PostgreSQL refuses those: "cached plan
/// must not change result type").
macro_rules! run_columns {
    () => {
        "id, org_id, workflow_id, workflow_version, status, variables, output, error, \
         created_at, updated_at, started_at, completed_at, lease_owner, lease_expires_at, \
         idempotency_key, request_hash, request_id, parent_run_id, parent_step, wake_at, root_run_id"
    };
}

/// Who is writing, and for how long a claim or heartbeat holds the run.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub worker_id: String,
    pub lease: Duration,
}

impl LeaseHolder {
    fn expires(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30))
    }
}

/// Outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Written,
    LeaseLost,
}

mod batch;
mod children;
mod claim;
mod finish;
mod lease;
mod park;
mod steps;

pub(crate) use batch::write_batch;
pub use batch::{checkpoint_pure_steps, finish_runs, PureStep, RunFinish, END_RUNS, FENCE_STEPS};
pub(crate) use children::{child_state, start_child_run, ChildStart};
pub use claim::{
    claim_run, claim_runs, Claim, ClaimJob, ClaimedRun, CLAIM_PENDING, RUNNING_SLOT_HOLD,
};
pub(crate) use finish::{finish_run, RunEnd};
pub(crate) use lease::{release_lease, renew_lease};
pub(crate) use park::{park_run, Park};
pub(crate) use steps::{load_steps, record_step, start_step, StepChange};
pub use steps::{StepRecord, STEPS_OF};

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use shared_models::models::RunRow;
    use shared_models::schema::runs as runs_table;

    #[test]
    fn the_returned_run_columns_are_those_of_run_row() {
        let select = diesel::debug_query::<diesel::pg::Pg, _>(
            &runs_table::table.select(RunRow::as_select()),
        )
        .to_string();
        let from_diesel: Vec<String> = select
            .trim_start_matches("SELECT ")
            .split(" FROM")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|c| {
                c.trim_start_matches("\"runs\".")
                    .trim_matches('"')
                    .to_string()
            })
            .collect();
        let listed: Vec<String> = run_columns!()
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(listed, from_diesel);
    }
}
