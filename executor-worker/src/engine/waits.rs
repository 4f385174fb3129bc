//! The waiting kinds: delays, approvals and child runs, settled once their wait is over;
//! and calls told to wait (deferred), ready again once it is over.

use super::drive::Begin;
use super::state::{RunState, Stop};
use super::Engine;
use crate::storage::{self, StepChange};
use crate::{limits, render};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use shared_models::graph::{Step, StepKind};
use shared_models::status::{RunStatus, StepStatus};
use std::time::{Duration, Instant};

/// A `subworkflow` step whose run tree is busy (another worker is starting a child of the
/// same tree) tries again after this pause, doubled at each try up to
/// [`TREE_BUSY_MAX_PAUSE`], and fails after [`TREE_BUSY_MAX_WAIT`] of trying.
const TREE_BUSY_FIRST_PAUSE: Duration = Duration::from_millis(2);
const TREE_BUSY_MAX_PAUSE: Duration = Duration::from_millis(100);
const TREE_BUSY_MAX_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    /// Start a waiting step: a delay until its end, an approval until it is decided or its
    /// timeout, a subworkflow until its child run ends or its timeout.
    pub(super) async fn start_waiting(
        &self,
        rs: &mut RunState<'_>,
        i: usize,
    ) -> Result<Begin, Stop> {
        let graph = rs.graph.clone();
        let step = &graph.steps[i];
        let now = shared_models::time::now();
        let wait_deadline = step
            .timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| now + t);
        let change = match &step.kind {
            StepKind::Delay { seconds } => {
                let wake = now + chrono::Duration::milliseconds((seconds * 1000.0).round() as i64);
                StepChange::waiting(Some(wake), None, format!("waiting {seconds}s"))
            }
            StepKind::Approval => {
                StepChange::waiting(wait_deadline, None, "waiting for approval".into())
            }
            StepKind::Subworkflow {
                workflow_id,
                variables,
            } => {
                let vars = match self.child_variables(rs, variables.as_ref()).await {
                    Ok(vars) => vars,
                    Err(reason) => {
                        rs.apply(i, StepChange::failed(reason)).await?;
                        return Ok(Begin::Failed);
                    }
                };
                return self
                    .start_child(rs, i, workflow_id, vars, wait_deadline)
                    .await;
            }
            _ => return Ok(Begin::Execute),
        };
        rs.apply(i, change).await?;
        Ok(Begin::Waiting)
    }

    /// A child run's variables, rendered from the run's context; or why they cannot be.
    async fn child_variables(
        &self,
        rs: &RunState<'_>,
        variables: Option<&Value>,
    ) -> Result<Value, String> {
        let rendered = match variables {
            Some(v) => render::json(v, &rs.context(), self.limits.template_deadline)
                .await
                .map(Some),
            None => Ok(None),
        };
        match rendered {
            Ok(None) => Ok(Value::Object(Map::new())),
            Ok(Some(v)) if limits::has_nul(&v) => {
                Err("variables contain U+0000, which PostgreSQL cannot store".into())
            }
            Ok(Some(v @ Value::Object(_))) => Ok(v),
            Ok(Some(other)) => Err(format!("variables must render to an object, not {other}")),
            Err(e) => Err(format!("variables: {e}")),
        }
    }

    /// Start the child run of a `subworkflow` step and record the step WAITING for it.
    async fn start_child(
        &self,
        rs: &mut RunState<'_>,
        i: usize,
        workflow_id: &str,
        vars: Value,
        wait_deadline: Option<DateTime<Utc>>,
    ) -> Result<Begin, Stop> {
        // Another worker may be starting a child of the same tree: its lock is
        // tried, not waited for, so try again after a pause that grows, holding no
        // connection meanwhile; the lease is renewed at each try.
        let mut pause = TREE_BUSY_FIRST_PAUSE;
        let deadline = Instant::now() + TREE_BUSY_MAX_WAIT;
        let started = loop {
            let now = shared_models::time::now();
            let started = rs
                .run
                .start_child(&rs.record(i), workflow_id, vars.clone(), wait_deadline, now)
                .await?;
            match started {
                storage::ChildStart::TreeBusy if Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(TREE_BUSY_MAX_PAUSE);
                }
                other => break (other, now),
            }
        };
        match started {
            (storage::ChildStart::Started(child), now) => {
                let st = &mut rs.steps[i];
                st.status = StepStatus::Waiting;
                st.wake_at = wait_deadline;
                st.child_run_id = Some(child);
                st.started_at = Some(now);
                Ok(Begin::Waiting)
            }
            (storage::ChildStart::Refused(reason), _) => {
                rs.apply(i, StepChange::failed(reason)).await?;
                Ok(Begin::Failed)
            }
            (storage::ChildStart::TreeBusy, _) => {
                let reason = format!(
                    "could not start the child run: its run tree was busy starting \
                     others for {}s",
                    TREE_BUSY_MAX_WAIT.as_secs()
                );
                rs.apply(i, StepChange::failed(reason)).await?;
                Ok(Begin::Failed)
            }
        }
    }

    /// Settle the waiting steps whose wait is over: a due delay, a child run that ended, a
    /// wait past its timeout. (Approvals are settled by the approve endpoint itself.)
    pub(super) async fn resolve_waits(&self, rs: &mut RunState<'_>) -> Result<(), Stop> {
        let now = shared_models::time::now();
        for i in 0..rs.steps.len() {
            if rs.steps[i].status != StepStatus::Waiting {
                continue;
            }
            let due = rs.steps[i].wake_at.is_some_and(|t| t <= now);
            let change = match &rs.graph.steps[i].kind {
                StepKind::Delay { seconds } if due => {
                    Some(StepChange::completed(json!({ "seconds": seconds })))
                }
                StepKind::Subworkflow { .. } => self.child_outcome(rs, i, due).await?,
                StepKind::Approval if due => Some(StepChange::failed(timeout_message(
                    &rs.graph.steps[i],
                    "approval",
                ))),
                // An agent step deferred (a rate limit, a `Retry-After`, its tools' child
                // runs): ready again whenever its run is woken (at its wake-up time, or by a
                // child's end); if its wait is not over, it defers again.
                StepKind::Agent(_) => Some(StepChange::resumed()),
                _ => None,
            };
            if let Some(change) = change {
                rs.apply(i, change).await?;
            }
        }
        Ok(())
    }

    async fn child_outcome(
        &self,
        rs: &RunState<'_>,
        i: usize,
        due: bool,
    ) -> Result<Option<StepChange>, Stop> {
        let Some(child) = rs.steps[i].child_run_id.clone() else {
            return Ok(Some(StepChange::failed(
                "the child run was never recorded".into(),
            )));
        };
        Ok(match rs.run.child_state(&child).await? {
            None => Some(StepChange::failed(format!(
                "child run {child} does not exist"
            ))),
            Some((status, output, error)) => match Some(status) {
                Some(RunStatus::Completed) => {
                    let output = output.unwrap_or(Value::Null);
                    Some(match self.limits.check_step_output(&output) {
                        Ok(()) => StepChange::completed(output),
                        Err(e) => StepChange::failed(format!("child run {child}: {e}")),
                    })
                }
                Some(s) if s.is_terminal() => Some(StepChange::failed(format!(
                    "child run {child} {}: {}",
                    s.as_str().to_lowercase(),
                    error.unwrap_or_else(|| "no error recorded".into())
                ))),
                _ if due => Some(StepChange::failed(timeout_message(
                    &rs.graph.steps[i],
                    &format!("child run {child}"),
                ))),
                _ => None,
            },
        })
    }
}

pub(super) fn timeout_message(step: &Step, what: &str) -> String {
    let secs = step.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
    format!("timed out after {secs}s waiting for {what}")
}
