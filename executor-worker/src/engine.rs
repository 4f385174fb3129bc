//! Executing one job: claim the run, resume after its last completed step, execute each
//! ready step (recording RUNNING, then the output or error), and finish the run.
//!
//! Completed steps are checkpoints: a redelivered job or a takeover never runs them again.
//! A step found RUNNING was cut off by a crash and runs again as the next attempt (agents see
//! the same `Idempotency-Key`).

use crate::agents::AgentRegistry;
use crate::steps::{self, StepEnv};
use crate::storage::{self, Claim, ClaimedRun, Fenced, LeaseHolder, RunEnd, StepRecord};
use serde_json::{json, Map, Value};
use shared_models::db::{blocking, PgPool, StorageError};
use shared_models::graph::WorkflowGraph;
use shared_models::queue::RunJob;
use shared_models::status::{RunStatus, StepStatus};
use std::time::Duration;

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
    pub pool: PgPool,
    pub agents: AgentRegistry,
    pub http: reqwest::Client,
    pub me: LeaseHolder,
    /// Per-attempt timeout of agent calls whose registry entry sets none.
    pub agent_timeout: Duration,
}

enum Stop {
    /// Another worker holds the run now; leave it alone.
    LeaseLost,
    Storage(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::Storage(e)
    }
}

/// A step's state as the engine tracks it during one job.
#[derive(Clone)]
struct StepState {
    status: StepStatus,
    output: Option<Value>,
    error: Option<String>,
}

impl Engine {
    pub async fn process(&self, job: &RunJob) -> JobOutcome {
        let (run_id, org_id, me) = (job.run_id.clone(), job.org_id.clone(), self.me.clone());
        let now = shared_models::time::now();
        let claim = blocking(&self.pool, move |conn| {
            storage::claim_run(conn, &run_id, &org_id, &me, now)
        })
        .await;
        match claim {
            Err(e) => JobOutcome::Retry(e.to_string()),
            Ok(Claim::Missing) => JobOutcome::Poison(format!(
                "run '{}' does not exist in org '{}'",
                job.run_id, job.org_id
            )),
            Ok(Claim::Ended) | Ok(Claim::HeldElsewhere) => {
                log::info!("run {}: duplicate delivery, nothing to do", job.run_id);
                JobOutcome::Done
            }
            Ok(Claim::Claimed(claimed)) => {
                let heartbeat = self.spawn_heartbeat(&job.run_id);
                let result = self
                    .drive(&claimed, job.request_id.as_deref().unwrap_or("-"))
                    .await;
                heartbeat.abort();
                match result {
                    Ok(()) => JobOutcome::Done,
                    Err(Stop::LeaseLost) => {
                        log::warn!(
                            "run {}: lease lost to another worker; stopping here",
                            job.run_id
                        );
                        JobOutcome::Done
                    }
                    Err(Stop::Storage(e)) => JobOutcome::Retry(e.to_string()),
                }
            }
        }
    }

    /// Renew the lease every third of its length while the run executes.
    fn spawn_heartbeat(&self, run_id: &str) -> tokio::task::JoinHandle<()> {
        let (pool, me, run_id) = (self.pool.clone(), self.me.clone(), run_id.to_string());
        tokio::spawn(async move {
            let period = me.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                let (me, run_id) = (me.clone(), run_id.clone());
                let now = shared_models::time::now();
                match blocking(&pool, move |conn| {
                    storage::renew_lease(conn, &run_id, &me, now)
                })
                .await
                {
                    Ok(Fenced::Written) => {}
                    Ok(Fenced::LeaseLost) => return,
                    Err(e) => log::warn!("lease heartbeat failed: {e}"),
                }
            }
        })
    }

    async fn drive(&self, c: &ClaimedRun, request_id: &str) -> Result<(), Stop> {
        let run = &c.run;
        let graph = match WorkflowGraph::from_stored(&c.definition) {
            Ok(g) => g,
            Err(e) => {
                log::error!("run {} req={request_id}: {e}", run.id);
                return self
                    .finish(run, RunStatus::Failed, None, Some(e), Vec::new())
                    .await;
            }
        };
        let mut states: Vec<StepState> = graph
            .steps
            .iter()
            .map(
                |s| match c.steps.iter().find(|r| r.name == s.name.as_str()) {
                    Some(r) => StepState {
                        status: StepStatus::parse(&r.status).unwrap_or(StepStatus::Pending),
                        output: r.output.clone(),
                        error: r.error.clone(),
                    },
                    None => StepState {
                        status: StepStatus::Pending,
                        output: None,
                        error: None,
                    },
                },
            )
            .collect();
        let record = |i: usize| StepRecord {
            run_id: &run.id,
            name: graph.steps[i].name.as_str(),
            position: i as i32,
            step_type: graph.steps[i].kind.type_name(),
        };

        loop {
            if let Some(failed) = states.iter().position(|s| s.status == StepStatus::Failed) {
                let cancelled = (0..states.len())
                    .filter(|&i| states[i].status == StepStatus::Pending)
                    .map(record)
                    .collect();
                let reason = format!(
                    "step '{}' failed: {}",
                    graph.steps[failed].name,
                    states[failed].error.as_deref().unwrap_or("unknown error")
                );
                return self
                    .finish(run, RunStatus::Failed, None, Some(reason), cancelled)
                    .await;
            }
            let ready = (0..states.len()).find(|&i| {
                !states[i].status.is_settled()
                    && graph.steps[i]
                        .depends_on
                        .iter()
                        .all(|&d| states[d].status.is_settled())
            });
            let Some(i) = ready else {
                let output: Map<String, Value> = graph
                    .leaves()
                    .into_iter()
                    .filter(|&i| states[i].status == StepStatus::Completed)
                    .map(|i| {
                        (
                            graph.steps[i].name.to_string(),
                            states[i].output.clone().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                return self
                    .finish(
                        run,
                        RunStatus::Completed,
                        Some(Value::Object(output)),
                        None,
                        Vec::new(),
                    )
                    .await;
            };

            let step = &graph.steps[i];
            let now = shared_models::time::now();
            let (rec_run, rec_name, rec_type, me) = (
                run.id.clone(),
                step.name.to_string(),
                step.kind.type_name(),
                self.me.clone(),
            );
            let attempt = blocking(&self.pool, move |conn| {
                storage::start_step(
                    conn,
                    &StepRecord {
                        run_id: &rec_run,
                        name: &rec_name,
                        position: i as i32,
                        step_type: rec_type,
                    },
                    &me,
                    now,
                )
            })
            .await?
            .map_err(|_| Stop::LeaseLost)?;
            log::info!(
                "run {} req={request_id}: step {} started (attempt {attempt})",
                run.id,
                step.name
            );

            let ctx = context(run, &graph, &states);
            let env = StepEnv {
                agents: &self.agents,
                http: &self.http,
                agent_timeout: self.agent_timeout,
                run_id: &run.id,
                workflow_id: &run.workflow_id,
                step: step.name.as_str(),
                attempt,
            };
            let result = steps::execute(&step.kind, &ctx, &env).await;
            match &result {
                Ok(_) => log::info!(
                    "run {} req={request_id}: step {} completed",
                    run.id,
                    step.name
                ),
                Err(e) => log::warn!(
                    "run {} req={request_id}: step {} failed: {e}",
                    run.id,
                    step.name
                ),
            }

            let now = shared_models::time::now();
            let (rec_run, rec_name, me, res) = (
                run.id.clone(),
                step.name.to_string(),
                self.me.clone(),
                result.clone(),
            );
            let fenced = blocking(&self.pool, move |conn| {
                storage::finish_step(
                    conn,
                    &StepRecord {
                        run_id: &rec_run,
                        name: &rec_name,
                        position: i as i32,
                        step_type: rec_type,
                    },
                    &res,
                    &me,
                    now,
                )
            })
            .await?;
            if fenced == Fenced::LeaseLost {
                return Err(Stop::LeaseLost);
            }
            states[i] = match result {
                Ok(output) => StepState {
                    status: StepStatus::Completed,
                    output: Some(output),
                    error: None,
                },
                Err(e) => StepState {
                    status: StepStatus::Failed,
                    output: None,
                    error: Some(e),
                },
            };
        }
    }

    async fn finish(
        &self,
        run: &shared_models::models::RunRow,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        cancelled: Vec<StepRecord<'_>>,
    ) -> Result<(), Stop> {
        let owned: Vec<(String, i32, String)> = cancelled
            .iter()
            .map(|s| (s.name.to_string(), s.position, s.step_type.to_string()))
            .collect();
        let (run_id, me, now) = (run.id.clone(), self.me.clone(), shared_models::time::now());
        log::info!("run {run_id}: {}", status.as_str());
        let fenced = blocking(&self.pool, move |conn| {
            let cancelled = owned
                .iter()
                .map(|(name, position, step_type)| StepRecord {
                    run_id: &run_id,
                    name,
                    position: *position,
                    step_type,
                })
                .collect();
            storage::finish_run(
                conn,
                &run_id,
                &RunEnd {
                    status,
                    output,
                    error,
                    cancelled,
                },
                &me,
                now,
            )
        })
        .await?;
        match fenced {
            Fenced::Written => Ok(()),
            Fenced::LeaseLost => Err(Stop::LeaseLost),
        }
    }
}

/// The template context of a run at this point: `variables`, `steps.<name>.output|status`,
/// `run.id`, `run.workflowId`.
fn context(
    run: &shared_models::models::RunRow,
    graph: &WorkflowGraph,
    states: &[StepState],
) -> Value {
    let steps: Map<String, Value> = graph
        .steps
        .iter()
        .zip(states)
        .map(|(s, st)| {
            (
                s.name.to_string(),
                json!({ "output": st.output, "status": st.status.as_str() }),
            )
        })
        .collect();
    json!({
        "variables": run.variables,
        "steps": steps,
        "run": { "id": run.id, "workflowId": run.workflow_id },
    })
}
