//! A step's attempts: executed within their timeout, recorded, and retried by its policy.

use super::handle::RunHandle;
use super::state::{fenced, Closing, Stop};
use super::Engine;
use crate::checkpoints::is_refused;
use crate::render::Ctx;
use crate::steps::{self, StepEnv, StepFailure};
use crate::storage::{Fenced, PureStep, RunFinish, StepChange, StepRecord};
use serde_json::Value;
use shared_models::graph::{Step, StepKind};
use shared_models::status::{RunStatus, StepStatus};
use std::time::Instant;

impl Engine {
    /// Every attempt of one executing step, with its timeout and the retry policy's pauses.
    pub(super) async fn run_attempts(
        &self,
        run: &RunHandle,
        step: Step,
        record: StepRecord,
        ctx: Ctx,
        i: usize,
        closing: Option<Closing>,
    ) -> (usize, Result<Value, StepEnd>) {
        (i, self.attempts(run, &step, record, ctx, closing).await)
    }

    async fn attempts(
        &self,
        run: &RunHandle,
        step: &Step,
        record: StepRecord,
        ctx: Ctx,
        closing: Option<Closing>,
    ) -> Result<Value, StepEnd> {
        // A pure step's failure is its first attempt's result: it is not computed again.
        let mut computed = match self.pure_step(run, step, &record, &ctx, closing).await? {
            Some(Ok(output)) => return Ok(output),
            Some(Err(failure)) => Some(failure),
            None => None,
        };
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            let attempt = run.start_step(&record).await.map_err(StepEnd::Stop)?;
            log::info!(
                "run {}: step {} started (attempt {attempt})",
                run.id,
                step.name
            );
            let started = Instant::now();
            let final_turn = std::sync::Mutex::new(None);
            let result = match computed.take() {
                Some(failure) => Err(failure),
                None => self.execute(run, step, attempt, &ctx, &final_turn).await,
            };
            let final_turn = final_turn.into_inner().unwrap_or_else(|e| e.into_inner());
            let elapsed = started.elapsed();
            if let Err(StepFailure {
                defer: Some(pause),
                message,
                ..
            }) = &result
            {
                if attempt < MAX_DEFERRED_ATTEMPTS {
                    let now = shared_models::time::now();
                    // Not a failed attempt: it does not count against `retry.maxAttempts`.
                    tries -= 1;
                    if *pause <= self.limits.wait_in_slot {
                        let change = StepChange::deferred(attempt, message, *pause);
                        run.record(&record, &change, now)
                            .await
                            .map_err(StepEnd::Stop)?;
                        tokio::time::sleep(*pause).await;
                        continue;
                    }
                    let wake = now
                        + chrono::Duration::from_std(*pause)
                            .unwrap_or_else(|_| chrono::Duration::hours(1));
                    let change = StepChange::waiting(
                        Some(wake),
                        None,
                        format!("attempt {attempt}: {message}; waiting until {wake}"),
                    );
                    run.record(&record, &change, now)
                        .await
                        .map_err(StepEnd::Stop)?;
                    log::info!(
                        "run {}: step {} waits until {wake}: {message}",
                        run.id,
                        step.name
                    );
                    return Err(StepEnd::Deferred(wake));
                }
            }
            let change = match &result {
                Ok(output) => StepChange::completed(output.clone()),
                Err(e) if e.retryable && tries < step.retry.max_attempts => StepChange::retrying(
                    attempt,
                    e.message.clone(),
                    step.retry.delay_before(attempt + 1),
                ),
                Err(e) => StepChange::failed(e.message.clone()),
            };
            let change = StepChange {
                turn: final_turn,
                ..change
            };
            match &result {
                Ok(_) => log::info!("run {}: step {} completed", run.id, step.name),
                Err(e) => log::warn!(
                    "run {}: step {} attempt {attempt} failed: {e}",
                    run.id,
                    step.name
                ),
            }
            let (change, result) = self.write_step(run, &record, change, result).await?;
            let outcome = if result.is_ok() {
                StepStatus::Completed
            } else {
                StepStatus::Failed
            };
            crate::metrics::STEP_DURATION
                .with_label_values(&[step.kind.type_name(), outcome.as_str()])
                .observe(elapsed.as_secs_f64());
            match (result, change.to) {
                (Ok(output), _) => return Ok(output),
                (Err(_), StepStatus::Pending) => {
                    tokio::time::sleep(step.retry.delay_before(attempt + 1)).await
                }
                (Err(e), _) => return Err(StepEnd::Failed(e.message)),
            }
        }
    }

    /// One attempt of a step: executed within its timeout, its output checked before it is
    /// written ([`crate::limits::WorkLimits::check_step_output`]).
    async fn execute(
        &self,
        run: &RunHandle,
        step: &Step,
        attempt: i32,
        ctx: &Ctx,
        final_turn: &std::sync::Mutex<Option<crate::storage::NewTurn>>,
    ) -> Result<Value, StepFailure> {
        let env = self.step_env(run, step, attempt, final_turn);
        let output = match self.http.step_timeout(step.timeout) {
            Some(limit) => tokio::time::timeout(limit, steps::execute(&step.kind, ctx, &env))
                .await
                .unwrap_or_else(|_| Err(StepFailure::retry(self.http.timed_out(limit)))),
            None => steps::execute(&step.kind, ctx, &env).await,
        }?;
        self.limits
            .check_step_output(&output)
            .map_err(StepFailure::fatal)?;
        Ok(output)
    }

    /// Record an attempt's change. A write PostgreSQL refuses (not an outage: the same write
    /// would be refused again) fails the step with that reason instead of retrying the job
    /// forever; returns the change and the result as recorded.
    async fn write_step(
        &self,
        run: &RunHandle,
        record: &StepRecord,
        change: StepChange,
        result: Result<Value, StepFailure>,
    ) -> Result<(StepChange, Result<Value, StepFailure>), StepEnd> {
        let now = shared_models::time::now;
        match run.record(record, &change, now()).await {
            Ok(()) => Ok((change, result)),
            Err(Stop::Storage(e)) if is_refused(&e) && change.to != StepStatus::Failed => {
                let failure = StepFailure::fatal(format!("the step could not be written: {e}"));
                log::warn!("run {}: {failure}", record.run_id);
                let failed = StepChange::failed(failure.message.clone());
                run.record(record, &failed, now())
                    .await
                    .map_err(StepEnd::Stop)?;
                Ok((failed, Err(failure)))
            }
            Err(stop) => Err(StepEnd::Stop(stop)),
        }
    }

    /// What a step's execution may use, for attempt `attempt` of `step` of `run`.
    fn step_env<'a>(
        &'a self,
        run: &'a RunHandle,
        step: &'a Step,
        attempt: i32,
        final_turn: &'a std::sync::Mutex<Option<crate::storage::NewTurn>>,
    ) -> StepEnv<'a> {
        StepEnv {
            agents: &self.agents,
            http: &self.http,
            agent_timeout: self.agent_timeout,
            step_timeout: self.http.step_timeout(step.timeout),
            run,
            run_id: &run.id,
            org_id: &run.org_id,
            workflow_id: &run.workflow_id,
            step: step.name.as_str(),
            attempt,
            template_deadline: self.limits.template_deadline,
            pool: &self.pool,
            me: &self.me,
            budget: run.budget(),
            wait_in_slot: self.limits.wait_in_slot,
            rate_window: self.limits.rate_window,
            final_turn,
        }
    }

    /// A `transform` step computes its value from the run's context alone: nothing outside
    /// the database sees it, and computing it again gives the same value. So it is computed
    /// first, and its start and its completion are checkpointed together, in one transaction
    /// shared with the pure steps of the other runs in flight ([`crate::checkpoints::Checkpointer`]); a worker
    /// that dies before the commit leaves no trace, and the step simply runs again.
    ///
    /// When it is the run's last step (`closing`, [`super::state::RunState::closing`]), the
    /// run's end goes in the same commit ([`crate::checkpoints::Checkpointer::checkpoint_and_finish`])
    /// and the run is marked ended ([`RunHandle::mark_ended`]); an output over the run's
    /// limits, or an end PostgreSQL refuses, is left to the engine's usual end instead.
    ///
    /// `None`: not a transform. `Some(Err)`: it failed (its template, its output's limits, or
    /// a checkpoint PostgreSQL refused), which the general path records as its first attempt.
    async fn pure_step(
        &self,
        run: &RunHandle,
        step: &Step,
        record: &StepRecord,
        ctx: &Ctx,
        closing: Option<Closing>,
    ) -> Result<Option<Result<Value, StepFailure>>, StepEnd> {
        if !matches!(step.kind, StepKind::Transform { .. }) {
            return Ok(None);
        }
        let started = Instant::now();
        let unused = std::sync::Mutex::new(None);
        let output = match self.execute(run, step, 1, ctx, &unused).await {
            Ok(output) => output,
            Err(failure) => return Ok(Some(Err(failure))),
        };
        let elapsed = started.elapsed();
        let checkpoint = PureStep {
            record: record.clone(),
            output: output.clone(),
            first: run.first_claim,
        };
        let end = closing
            .map(|closing| closing.with(&output))
            .filter(|run_output| self.limits.check_run_output(run_output).is_ok())
            .map(|run_output| RunFinish {
                run_id: run.id.clone(),
                status: RunStatus::Completed,
                output: Some(run_output),
                error: None,
            });
        let written = match end {
            Some(end) => match self
                .checkpoints
                .checkpoint_and_finish(checkpoint.clone(), end)
                .await
            {
                Ok(Fenced::Written) => {
                    run.mark_ended();
                    Ok(Fenced::Written)
                }
                // Refused: the step alone may not be (the engine's end says why the run fails).
                Err(e) if is_refused(&e) => self.checkpoints.checkpoint(checkpoint).await,
                other => other,
            },
            None => self.checkpoints.checkpoint(checkpoint).await,
        };
        let written = match written {
            Ok(written) => written,
            // Refused on its own (the writer splits a failed batch): it would be again.
            Err(e) if is_refused(&e) => {
                let failure = StepFailure::fatal(format!("the step could not be written: {e}"));
                return Ok(Some(Err(failure)));
            }
            Err(e) => return Err(StepEnd::Stop(e.into())),
        };
        fenced(written).map_err(StepEnd::Stop)?;
        log::info!("run {}: step {} completed", run.id, step.name);
        crate::metrics::STEP_DURATION
            .with_label_values(&[step.kind.type_name(), StepStatus::Completed.as_str()])
            .observe(elapsed.as_secs_f64());
        Ok(Some(Ok(output)))
    }
}

pub(super) enum StepEnd {
    Failed(String),
    /// Told to wait longer than the worker waits in a slot: recorded WAITING until then.
    Deferred(chrono::DateTime<chrono::Utc>),
    Stop(Stop),
}

/// A step deferred again and again (a provider answering 429 forever) fails once its attempt
/// number reaches this.
pub(super) const MAX_DEFERRED_ATTEMPTS: i32 = 100;
