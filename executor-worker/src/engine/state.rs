//! One run being driven: the state of its steps in memory, mirrored by every write.

use super::handle::RunHandle;
use crate::render::Ctx;
use crate::storage::{Fenced, StepChange, StepRecord};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use shared_models::db::StorageError;
use shared_models::graph::WorkflowGraph;
use shared_models::models::StepRunRow;
use shared_models::status::StepStatus;
use std::collections::HashSet;
use std::sync::Arc;

/// Why the engine stopped working on a run before its end.
pub(super) enum Stop {
    /// Another worker holds the run now, or it was cancelled: leave it alone.
    LeaseLost,
    Storage(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::Storage(e)
    }
}

pub(super) fn fenced(f: Fenced) -> Result<(), Stop> {
    match f {
        Fenced::Written => Ok(()),
        Fenced::LeaseLost => Err(Stop::LeaseLost),
    }
}

/// A step's state as the engine tracks it during one job.
#[derive(Clone, Debug)]
pub(super) struct StepState {
    pub(super) status: StepStatus,
    pub(super) output: Option<Value>,
    pub(super) error: Option<String>,
    pub(super) wake_at: Option<DateTime<Utc>>,
    pub(super) child_run_id: Option<String>,
    /// When it started (a waiting step's wait is timed from then).
    pub(super) started_at: Option<DateTime<Utc>>,
}

impl StepState {
    pub(super) fn from_row(row: Option<&StepRunRow>) -> Self {
        match row {
            Some(r) => StepState {
                // RUNNING means an attempt was cut off by a crash: it runs again.
                status: match r.status {
                    StepStatus::Running => StepStatus::Pending,
                    s => s,
                },
                output: r.output.clone(),
                error: r.error.clone(),
                wake_at: r.wake_at,
                child_run_id: r.child_run_id.clone(),
                started_at: r.started_at,
            },
            None => StepState {
                status: StepStatus::Pending,
                output: None,
                error: None,
                wake_at: None,
                child_run_id: None,
                started_at: None,
            },
        }
    }
}

/// One run being driven: its graph and the state of each step.
pub(super) struct RunState<'a> {
    pub(super) run: &'a RunHandle,
    pub(super) graph: Arc<WorkflowGraph>,
    pub(super) steps: Vec<StepState>,
}

impl RunState<'_> {
    pub(super) fn record(&self, i: usize) -> StepRecord {
        let step = &self.graph.steps[i];
        StepRecord {
            run_id: self.run.id.clone(),
            name: step.name.to_string(),
            position: i as i32,
            step_type: step.kind.type_name(),
        }
    }

    /// The template context now: `variables`, `steps.<name>.output|status`, `run`.
    pub(super) fn context(&self) -> Ctx {
        let steps: Map<String, Value> = self
            .graph
            .steps
            .iter()
            .zip(&self.steps)
            .map(|(s, st)| {
                (
                    s.name.to_string(),
                    json!({ "output": st.output, "status": st.status.as_str() }),
                )
            })
            .collect();
        Arc::new(json!({
            "variables": self.run.variables,
            "steps": steps,
            "run": { "id": self.run.id, "workflowId": self.run.workflow_id },
        }))
    }

    /// The steps not settled yet (not started, or waiting): CANCELLED when the run fails.
    pub(super) fn unsettled(&self) -> Vec<StepRecord> {
        (0..self.steps.len())
            .filter(|&j| {
                matches!(
                    self.steps[j].status,
                    StepStatus::Pending | StepStatus::Waiting
                )
            })
            .map(|j| self.record(j))
            .collect()
    }

    pub(super) fn reload(&mut self, rows: &[StepRunRow]) {
        for (i, step) in self.graph.steps.iter().enumerate() {
            self.steps[i] = StepState::from_row(rows.iter().find(|r| r.name == step.name.as_str()));
        }
    }

    /// Steps whose dependencies are all settled and that have not started.
    pub(super) fn ready(&self, in_flight: &HashSet<usize>) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| self.steps[i].status == StepStatus::Pending && !in_flight.contains(&i))
            .filter(|&i| {
                self.graph.steps[i]
                    .depends_on
                    .iter()
                    .all(|&d| self.steps[d].status.is_settled())
            })
            .collect()
    }

    /// Record a step change and mirror it in memory.
    pub(super) async fn apply(&mut self, i: usize, change: StepChange) -> Result<(), Stop> {
        let (record, now) = (self.record(i), shared_models::time::now());
        let step_type = record.step_type;
        self.run.record(&record, &change, now).await?;
        let st = &mut self.steps[i];
        if self.graph.steps[i].kind.waits()
            && st.status == StepStatus::Waiting
            && matches!(change.to, StepStatus::Completed | StepStatus::Failed)
        {
            let waited = st
                .started_at
                .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            crate::metrics::STEP_DURATION
                .with_label_values(&[step_type, change.to.as_str()])
                .observe(waited);
        }
        if change.to == StepStatus::Waiting {
            st.started_at = Some(now);
        }
        st.status = change.to;
        st.output = change.output;
        st.error = change.error;
        st.wake_at = change.wake_at;
        if change.child_run_id.is_some() {
            st.child_run_id = change.child_run_id;
        }
        Ok(())
    }
}
