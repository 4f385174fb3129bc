//! One run being driven: the state of its steps in memory, mirrored by every write.

use super::handle::RunHandle;
use crate::render::Ctx;
use crate::storage::{Fenced, StepChange, StepRecord};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use shared_models::db::StorageError;
use shared_models::graph::{StepKind, WorkflowGraph};
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

/// What a run's last step needs to end the run with its own checkpoint
/// ([`RunState::closing`]).
pub(super) struct Closing {
    /// The run's output without the last step's.
    pub(super) output: Map<String, Value>,
    /// The last step's name when it is a leaf: its output joins the run's.
    pub(super) leaf: Option<String>,
}

impl Closing {
    /// The run's output once the last step gave `output`.
    pub(super) fn with(mut self, output: &Value) -> Value {
        if let Some(name) = self.leaf {
            self.output.insert(name, output.clone());
        }
        Value::Object(self.output)
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

    /// The run's output as it stands: every leaf step's output, for the leaves COMPLETED.
    pub(super) fn output(&self) -> Map<String, Value> {
        self.graph
            .leaves()
            .into_iter()
            .filter(|&i| self.steps[i].status == StepStatus::Completed)
            .map(|i| {
                (
                    self.graph.steps[i].name.to_string(),
                    self.steps[i].output.clone().unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    /// When step `i`, about to execute, is a pure step and the last one the run waits for
    /// (nothing else in flight, every other step settled, no parent to wake), the run
    /// completes with it: what its checkpoint needs to end the run in the same commit.
    pub(super) fn closing(&self, i: usize, in_flight: &HashSet<usize>) -> Option<Closing> {
        let step = &self.graph.steps[i];
        let last = in_flight.is_empty()
            && self.run.parent_run_id.is_none()
            && matches!(step.kind, StepKind::Transform { .. })
            && (0..self.steps.len()).all(|j| j == i || self.steps[j].status.is_settled());
        last.then(|| Closing {
            output: self.output(),
            leaf: self
                .graph
                .leaves()
                .contains(&i)
                .then(|| step.name.to_string()),
        })
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
