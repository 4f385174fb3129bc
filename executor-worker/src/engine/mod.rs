//! Executing one job: claim the run, resume after its completed steps, execute every ready
//! step (independent branches at once), and finish the run, or park it as WAITING when
//! nothing executes and something waits (a delay, an approval, a child run).
//!
//! - Completed and skipped steps are checkpoints: a redelivered job, a takeover or a retry
//!   never runs them again. A step found RUNNING was cut off by a crash and runs again as the
//!   next attempt (agents and HTTP endpoints see the same `Idempotency-Key`).
//! - A step runs once all its dependencies are COMPLETED or SKIPPED; one whose dependencies
//!   were all SKIPPED is SKIPPED too; a false `when` skips it.
//! - When a step fails after its last attempt, nothing new starts, attempts in flight finish
//!   and are recorded, the steps not started are CANCELLED, and the run is FAILED.
//! - Everything logged while a job is processed carries its run and request ids (the job is
//!   processed in a [`logctx`] scope, and the lease heartbeat inherits it).
//!
//! Here the engine and its entry point; `drive` has the loop that starts the ready steps
//! until the run ends or parks, `waits` the waiting kinds (delays, approvals, child runs),
//! `attempts` a step's attempts and retries, `state` the run's state in memory, `handle` the
//! claimed run's writes, and `cache` the compiled workflow versions.

use crate::agents::AgentRegistry;
use crate::checkpoints::Checkpointer;
use crate::claims::Claimer;
use crate::limits::WorkLimits;
use crate::outbound::Outbound;
use crate::storage::{self, Claim, ClaimedRun, LeaseHolder};
use shared_models::db::PgPool;
use shared_models::logctx::{self, LogContext};
use shared_models::queue::RunJob;
use std::sync::Arc;
use std::time::Duration;

mod attempts;
mod cache;
mod drive;
mod handle;
mod state;
mod waits;

pub use cache::GraphCache;
use handle::RunHandle;
use state::Stop;

/// What to do with the message once a job was processed.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Its effects are committed, or there was nothing to do (a duplicate): ack.
    Done,
    /// It can never be processed (unknown run, undecodable): dead-letter it.
    Poison(String),
    /// A transient failure (database unreachable): requeue it and try again later.
    Retry(String),
}

pub struct Engine {
    pub(crate) pool: PgPool,
    agents: AgentRegistry,
    /// The clients of `http` steps (egress policy on) and of agents, and their bounds.
    http: Outbound,
    pub(crate) me: LeaseHolder,
    /// Per-attempt timeout of agent and HTTP calls whose step or agent entry sets none.
    agent_timeout: Duration,
    /// At most this many runs of one org RUNNING at once (`MAX_RUNNING_PER_ORG`; 0 = no cap):
    /// a job that would start one more is held back (see [`Claim::Held`]).
    max_running_per_org: u32,
    /// Where pure steps are checkpointed (group commit across runs).
    checkpoints: Checkpointer,
    /// Where jobs' runs are claimed (group commit across the jobs that arrive together).
    claims: Claimer,
    /// Workflow versions already compiled by this worker.
    pub graphs: Arc<GraphCache>,
    /// What one step or run may spend ([`crate::limits`]); the defaults unless set.
    pub limits: WorkLimits,
}

impl Engine {
    /// An engine, with its claimer and checkpoint writer started on the current tokio runtime.
    pub fn new(
        pool: PgPool,
        agents: AgentRegistry,
        http: Outbound,
        me: LeaseHolder,
        agent_timeout: Duration,
        max_running_per_org: u32,
    ) -> Self {
        let graphs: Arc<GraphCache> = Arc::default();
        Self {
            checkpoints: Checkpointer::start(pool.clone(), me.clone()),
            claims: Claimer::start(
                pool.clone(),
                me.clone(),
                max_running_per_org,
                graphs.clone(),
            ),
            graphs,
            pool,
            agents,
            http,
            me,
            agent_timeout,
            max_running_per_org,
            limits: WorkLimits::default(),
        }
    }
}

impl Engine {
    pub async fn process(&self, job: &RunJob) -> JobOutcome {
        self.process_detailed(job).await.0
    }

    /// [`Engine::process`], with how the job ended in more detail: the `outcome` label of
    /// `thygon_jobs_total` (see [`crate::metrics`]). Runs in the log context of the job.
    pub(crate) async fn process_detailed(&self, job: &RunJob) -> (JobOutcome, &'static str) {
        let ctx = LogContext::run(&job.run_id, job.request_id.as_deref());
        logctx::scope(ctx, self.process_in_context(job)).await
    }

    async fn process_in_context(&self, job: &RunJob) -> (JobOutcome, &'static str) {
        let claim = self
            .claims
            .claim(storage::ClaimJob {
                run_id: job.run_id.clone(),
                org_id: job.org_id.clone(),
            })
            .await;
        match claim {
            Err(e) => (JobOutcome::Retry(e.to_string()), "retry"),
            Ok((Claim::Missing, _)) => (
                JobOutcome::Poison(format!(
                    "run '{}' does not exist in org '{}'",
                    job.run_id, job.org_id
                )),
                "poison",
            ),
            Ok((Claim::Ended | Claim::HeldElsewhere, _)) => {
                log::info!("run {}: duplicate delivery, nothing to do", job.run_id);
                (JobOutcome::Done, "duplicate")
            }
            Ok((Claim::Held, _)) => {
                // The scheduler queues it again once its wake_at has come.
                log::info!(
                    "run {}: org {} is at its running cap (maxRunningRuns: the org's override, else MAX_RUNNING_PER_ORG = {}); held back for {:?}",
                    job.run_id,
                    job.org_id,
                    self.max_running_per_org,
                    storage::RUNNING_SLOT_HOLD
                );
                (JobOutcome::Done, "held")
            }
            Ok((Claim::Claimed(claimed), cached)) => {
                let ClaimedRun {
                    run,
                    definition,
                    steps,
                    lease_takeovers,
                    first_claim,
                } = *claimed;
                let run = RunHandle::new(self.pool.clone(), self.me.clone(), run, first_claim);
                let heartbeat = run.spawn_heartbeat();
                let result = self
                    .drive(&run, definition.as_ref(), &steps, lease_takeovers, cached)
                    .await;
                heartbeat.abort();
                match result {
                    Ok(()) => (JobOutcome::Done, "done"),
                    Err(Stop::LeaseLost) => {
                        log::warn!("run {}: no longer held by this worker (cancelled or taken over); stopping", job.run_id);
                        (JobOutcome::Done, "lease_lost")
                    }
                    Err(Stop::Storage(e)) => (JobOutcome::Retry(e.to_string()), "retry"),
                }
            }
        }
    }
}
