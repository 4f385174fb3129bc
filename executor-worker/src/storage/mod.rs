//! Plain diesel functions over `&mut PgConnection`. The worker owns `step_runs` and
//! `run_events`, and a run's status once the run exists (the runtime's run-control endpoints
//! aside: cancel, retry, approve).
//!
//! Every write is fenced by the lease: it happens only while `runs.lease_owner` is this
//! worker. A worker that lost its run (lease expired and taken over, or the run cancelled)
//! finds out at its next write ([`Fenced::LeaseLost`]) and stops touching it.
//!
//! By concern: `claim` takes runs, `lease` fences and renews, `steps` writes one step,
//! `batch` writes the pure steps and simple ends of many runs together (group commit),
//! `park` puts a waiting run aside, `finish` ends a run, `children` starts and reads the
//! child runs of `subworkflow` steps, `turns` keeps agent steps' conversations and usage.
//!
//! The statements written out in SQL are in `sql/`, each opening with a comment that lists
//! its parameters. A statement that returns run rows lists their columns rather than `*`, so
//! that a column added by a later release's migration does not change the result type of a
//! statement prepared before it on a live connection (PostgreSQL refuses those: "cached plan
//! must not change result type"); a test checks the list against [`RunRow`](shared_models::models::RunRow).

use chrono::{DateTime, Utc};
use std::time::Duration;

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

impl Fenced {
    /// What an update of one run row fenced by the lease did, from the rows it changed.
    fn of(rows: usize) -> Self {
        if rows == 1 {
            Fenced::Written
        } else {
            Fenced::LeaseLost
        }
    }
}

mod batch;
mod children;
mod claim;
mod finish;
mod lease;
mod park;
mod ratelimit;
mod steps;
mod turns;

pub(crate) use batch::write_batch;
pub use batch::{
    checkpoint_pure_steps, finish_runs, PureStep, RunFinish, CHECKPOINT_BATCH, FENCE_STEPS,
};
pub(crate) use children::{
    child_state, start_child_run, start_tool_run, ChildStart, ChildState, ToolCallAt,
};
pub use claim::{
    claim_run, claim_runs, Claim, ClaimJob, ClaimedRun, CLAIM_PENDING, RUNNING_SLOT_HOLD,
};
pub(crate) use finish::{finish_run, RunEnd};
pub(crate) use lease::{release_lease, renew_lease};
pub(crate) use park::{park_run, Park};
pub use ratelimit::Admission;
pub(crate) use ratelimit::{admit, used};
pub(crate) use steps::{load_steps, record_step, start_step, StepChange};
pub use steps::{StepRecord, STEPS_OF};
pub(crate) use turns::{load_turns, record_tool_result, record_turn, run_spent};
pub use turns::{NewTurn, TurnKey, TurnRow};
