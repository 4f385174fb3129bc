//! The drive loop: steps started as they become ready, until the run ends or parks.

use super::attempts::StepEnd;
use super::handle::RunHandle;
use super::state::{fenced, RunState, StepState, Stop};
use super::Engine;
use crate::checkpoints::is_refused;
use crate::storage::{Park, RunEnd, RunFinish, StepChange, StepRecord};
use crate::{limits, render};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use shared_models::graph::WorkflowGraph;
use shared_models::models::StepRunRow;
use shared_models::status::{RunStatus, StepStatus};
use std::collections::HashSet;
use std::sync::Arc;

impl Engine {
    /// Drive the claimed run `run` from its step rows `rows`: `cached` is its graph when
    /// this worker has compiled its version already, else the claim read its `definition`.
    pub(super) async fn drive(
        &self,
        run: &RunHandle,
        definition: Option<&Value>,
        rows: &[StepRunRow],
        lease_takeovers: i32,
        cached: Option<Arc<WorkflowGraph>>,
    ) -> Result<(), Stop> {
        // The claim read the definition exactly when the cache had no graph for it.
        let compiled = match (cached, definition) {
            (Some(graph), _) => Ok(graph),
            (None, Some(definition)) => WorkflowGraph::from_stored(definition).map(|graph| {
                let graph = Arc::new(graph);
                self.graphs.insert(run, graph.clone());
                graph
            }),
            (None, None) => Err("the claim read no workflow definition".to_string()),
        };
        let graph = match compiled {
            Ok(g) => g,
            Err(e) => {
                log::error!("run {}: {e}", run.id);
                return self
                    .finish(run, RunStatus::Failed, None, Some(e), Vec::new())
                    .await;
            }
        };
        let steps = graph
            .steps
            .iter()
            .map(|s| StepState::from_row(rows.iter().find(|r| r.name == s.name.as_str())))
            .collect();
        run.set_budget(graph.budget);
        let mut rs = RunState { run, graph, steps };
        if lease_takeovers > self.limits.max_lease_takeovers {
            return self.end_poison_run(&rs, lease_takeovers).await;
        }
        loop {
            self.resolve_waits(&mut rs).await?;
            let failed = self.execute_ready(&mut rs).await?;
            if run.has_ended() {
                // Its last step's checkpoint ended it, in the same commit.
                log::info!("run {}: {}", run.id, RunStatus::Completed.as_str());
                crate::metrics::RUNS_FINISHED
                    .with_label_values(&[RunStatus::Completed.as_str()])
                    .inc();
                return Ok(());
            }
            if let Some(i) = failed {
                let cancelled = rs.unsettled();
                let step = &rs.graph.steps[i].name;
                let reason = format!(
                    "step '{step}' failed: {}",
                    rs.steps[i].error.as_deref().unwrap_or("unknown error")
                );
                return self
                    .finish(rs.run, RunStatus::Failed, None, Some(reason), cancelled)
                    .await;
            }
            let waiting: Vec<usize> = (0..rs.steps.len())
                .filter(|&i| rs.steps[i].status == StepStatus::Waiting)
                .collect();
            if waiting.is_empty() {
                if let Some(stuck) = rs.steps.iter().position(|s| !s.status.is_settled()) {
                    // Cannot happen for a validated graph; never leave a run RUNNING forever.
                    let reason = format!(
                        "step '{}' can never become ready",
                        rs.graph.steps[stuck].name
                    );
                    return self
                        .finish(rs.run, RunStatus::Failed, None, Some(reason), Vec::new())
                        .await;
                }
                let output = Value::Object(rs.output());
                if let Err(reason) = self.limits.check_run_output(&output) {
                    return self
                        .finish(rs.run, RunStatus::Failed, None, Some(reason), Vec::new())
                        .await;
                }
                return self
                    .finish(rs.run, RunStatus::Completed, Some(output), None, Vec::new())
                    .await;
            }
            let names: Vec<String> = waiting
                .iter()
                .map(|&i| rs.graph.steps[i].name.to_string())
                .collect();
            let wake_at = waiting.iter().filter_map(|&i| rs.steps[i].wake_at).min();
            match run.park(names, wake_at).await? {
                Park::Parked => {
                    log::info!("run {}: waiting; released", rs.run.id);
                    return Ok(());
                }
                Park::LeaseLost => return Err(Stop::LeaseLost),
                Park::Changed => {
                    rs.reload(&run.load_steps().await?);
                }
            }
        }
    }

    /// Start everything ready, run it to quiescence, and return the first failed step, if any.
    async fn execute_ready(&self, rs: &mut RunState<'_>) -> Result<Option<usize>, Stop> {
        let mut in_flight = FuturesUnordered::new();
        let mut running: HashSet<usize> = HashSet::new();
        let mut failed = rs.steps.iter().position(|s| s.status == StepStatus::Failed);
        loop {
            // Starting steps can settle others at once (skips, failed conditions), which can
            // make more steps ready: repeat until nothing changes.
            let mut changed = true;
            while changed && failed.is_none() {
                changed = false;
                for i in rs.ready(&running) {
                    // The others wait for a step of this run to end (and a turn).
                    if running.len() >= self.limits.max_steps_in_flight_per_run {
                        break;
                    }
                    match self.begin(rs, i).await? {
                        Begin::Settled => changed = true,
                        Begin::Failed => {
                            failed = Some(i);
                            break;
                        }
                        Begin::Waiting => {}
                        Begin::Execute => {
                            let closing = rs.closing(i, &running);
                            running.insert(i);
                            let ctx = rs.context();
                            let (run, step) = (rs.run, rs.graph.steps[i].clone());
                            let record = rs.record(i);
                            in_flight.push(self.run_attempts(run, step, record, ctx, i, closing));
                        }
                    }
                }
            }
            let Some((i, result)) = in_flight.next().await else {
                return Ok(failed);
            };
            running.remove(&i);
            match result {
                Ok(output) => {
                    rs.steps[i].status = StepStatus::Completed;
                    rs.steps[i].output = Some(output);
                }
                Err(StepEnd::Failed(error)) => {
                    rs.steps[i].status = StepStatus::Failed;
                    rs.steps[i].error = Some(error);
                    failed = failed.or(Some(i));
                }
                Err(StepEnd::Deferred(wake)) => {
                    rs.steps[i].status = StepStatus::Waiting;
                    rs.steps[i].wake_at = Some(wake);
                }
                Err(StepEnd::Stop(stop)) => return Err(stop),
            }
        }
    }

    /// Decide what a ready step does: skip, fail its condition, start waiting, or execute.
    async fn begin(&self, rs: &mut RunState<'_>, i: usize) -> Result<Begin, Stop> {
        let step = &rs.graph.steps[i];
        if !step.depends_on.is_empty()
            && step
                .depends_on
                .iter()
                .all(|&d| rs.steps[d].status == StepStatus::Skipped)
        {
            rs.apply(
                i,
                StepChange::skipped("every step it depends on was skipped".into()),
            )
            .await?;
            return Ok(Begin::Settled);
        }
        if let Some(condition) = &step.when {
            match render::condition(condition, &rs.context(), self.limits.template_deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    rs.apply(
                        i,
                        StepChange::skipped(format!("condition is false: {condition}")),
                    )
                    .await?;
                    return Ok(Begin::Settled);
                }
                Err(e) => {
                    rs.apply(i, StepChange::failed(format!("when: {e}")))
                        .await?;
                    return Ok(Begin::Failed);
                }
            }
        }
        if !step.kind.waits() {
            return Ok(Begin::Execute);
        }
        self.start_waiting(rs, i).await
    }

    /// End a run taken over more than `MAX_LEASE_TAKEOVERS` times without running it: each
    /// worker that held it stopped renewing its lease (killed, out of memory, wedged), so the
    /// next would likely go the same way.
    async fn end_poison_run(&self, rs: &RunState<'_>, takeovers: i32) -> Result<(), Stop> {
        let reason = format!(
            "poison run: taken over {takeovers} times (MAX_LEASE_TAKEOVERS); it keeps killing or wedging workers"
        );
        log::error!("run {}: {reason}", rs.run.id);
        self.finish(
            rs.run,
            RunStatus::Failed,
            None,
            Some(reason),
            rs.unsettled(),
        )
        .await
    }

    async fn finish(
        &self,
        run: &RunHandle,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        cancelled: Vec<StepRecord>,
    ) -> Result<(), Stop> {
        log::info!("run {}: {}", run.id, status.as_str());
        let end = RunEnd {
            status,
            output,
            error: error.map(limits::text_column),
            cancelled,
        };
        // The common end (nothing to cancel, no parent to wake) is batched with the other
        // runs' writes; the rest is its own transaction.
        let written = match RunFinish::simple(run, &end) {
            Some(simple) => (self.checkpoints.finish(simple).await)
                .map_err(Stop::from)
                .and_then(fenced),
            None => run.finish(&end).await,
        };
        let (written, status) = match written {
            // PostgreSQL refused this end (the writer splits a failed batch, so it is this
            // run's own): it would refuse it again, so the run FAILS with that reason.
            Err(Stop::Storage(e))
                if is_refused(&e) && (status != RunStatus::Failed || end.output.is_some()) =>
            {
                let failed = RunEnd {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(limits::text_column(format!(
                        "the run's end could not be written: {e}"
                    ))),
                    cancelled: end.cancelled,
                };
                log::warn!("run {}: {}", run.id, failed.error.as_deref().unwrap_or(""));
                (run.finish(&failed).await, RunStatus::Failed)
            }
            other => (other, status),
        };
        written?;
        crate::metrics::RUNS_FINISHED
            .with_label_values(&[status.as_str()])
            .inc();
        Ok(())
    }
}

/// What starting a ready step led to.
pub(super) enum Begin {
    /// Skipped: settled without executing.
    Settled,
    /// Failed before executing (its condition or its child run could not start).
    Failed,
    /// Now WAITING (delay, approval, subworkflow).
    Waiting,
    /// To be executed (agent, http, transform).
    Execute,
}
