//! Plain diesel functions over `&mut PgConnection`. This service creates `runs` and owns
//! `outbox`; it reads workflows (owned by workflow-service) and progress (written by the
//! worker), and writes progress only for run control ([`control`]: cancel, retry, approval),
//! under the same run row lock the worker takes.
//!
//! - [`control`]: cancel, retry and approval decisions, each one transaction.
//! - [`events`]: a run's events after a given id, for its event stream.
//! - [`wakeups`]: jobs for WAITING runs, and PENDING runs held back by their org's running
//!   cap, whose `wake_at` has come.
//! - [`reaper`]: jobs for RUNNING runs whose lease expired (their worker is gone).
//! - [`sweeper`]: jobs for PENDING runs that have none in flight (the broker lost it).
//! - [`redrive`]: what the redrive of dead letters needs to know of their runs.
//! - [`counters`]: the deployment-wide counts of the operators' view (`ops_counters`).
//! - [`workers`]: the workers' presence rows and the runs each holds (read only).
//! - [`create`]: creating runs (one, or a batch) under the org's `maxQueuedRuns`.
//! - [`outbox`]: the outbox rows of the relay: claiming, marking sent, pruning.
//! - [`reads`]: a run, its detail, a page of runs, the oldest due PENDING run.
//! - [`usage`]: an org's model usage over a time window (`GET /usage`).

pub mod control;
pub mod counters;
pub mod create;
pub mod events;
pub mod outbox;
pub mod reads;
pub mod redrive;
pub mod sweeper;
pub mod usage;
pub mod workers;

pub use create::{create_run, create_runs, CreateOutcome, PlainTrigger, QueuedCounts};
pub use outbox::{
    claim_unsent, mark_outbox_sent, mark_relayed, prune_sent_outbox, release_claims, PendingJob,
};
pub(crate) use reads::{
    get_run, get_run_detail, list_runs, oldest_due_pending, RunDetail, TurnRow, UsageRow,
};
