//! Runs as clients see them (docs/API.md "Runs").

use crate::storage::RunDetail;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use shared_models::models::{RunEventRow, RunRow};
use shared_models::time::{rfc3339, rfc3339_opt};

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    id: String,
    workflow_id: String,
    workflow_version: i32,
    org_id: String,
    #[schema(value_type = shared_models::status::RunStatus)]
    status: String,
    #[schema(value_type = Object)]
    variables: Value,
    output: Option<Value>,
    error: Option<String>,
    #[serde(with = "rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    updated_at: DateTime<Utc>,
    #[serde(with = "rfc3339_opt")]
    started_at: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339_opt")]
    completed_at: Option<DateTime<Utc>>,
}

impl From<RunRow> for RunView {
    fn from(r: RunRow) -> Self {
        RunView {
            id: r.id,
            workflow_id: r.workflow_id,
            workflow_version: r.workflow_version,
            org_id: r.org_id,
            status: r.status.to_string(),
            variables: r.variables,
            output: r.output,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StepView {
    name: String,
    #[serde(rename = "type")]
    step_type: String,
    /// The steps this one waits for, resolved (a step without `dependsOn` in its definition
    /// waits for the step before it).
    depends_on: Vec<String>,
    #[schema(value_type = shared_models::status::StepStatus)]
    status: String,
    attempt: i32,
    #[serde(with = "rfc3339_opt")]
    started_at: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339_opt")]
    completed_at: Option<DateTime<Utc>>,
    output: Option<Value>,
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TransitionView {
    #[serde(with = "rfc3339")]
    at: DateTime<Utc>,
    step: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LogView {
    #[serde(with = "rfc3339")]
    at: DateTime<Utc>,
    level: Option<String>,
    step: Option<String>,
    message: Option<String>,
}

/// One run event as the run's `transitions` or `logs` array shows it, and as its event
/// stream sends it.
#[derive(Serialize)]
#[serde(untagged)]
pub enum EventView {
    Transition(TransitionView),
    Log(LogView),
}

impl EventView {
    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            EventView::Transition(_) => "transition",
            EventView::Log(_) => "log",
        }
    }
}

impl From<RunEventRow> for EventView {
    fn from(e: RunEventRow) -> Self {
        if e.kind == "transition" {
            EventView::Transition(TransitionView {
                at: e.at,
                step: e.step,
                from: e.from_status,
                to: e.to_status,
            })
        } else {
            EventView::Log(LogView {
                at: e.at,
                level: e.level,
                step: e.step,
                message: e.message,
            })
        }
    }
}

/// The run object plus its progress: every step of its version (those not started yet as
/// `PENDING`, attempt 0), the transitions and the log lines, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunDetailView {
    #[serde(flatten)]
    run: RunView,
    steps: Vec<StepView>,
    transitions: Vec<TransitionView>,
    logs: Vec<LogView>,
}

/// Each step's resolved dependencies by name, in definition order: compiled with the graph
/// model; a stored definition that does not compile (never expected) falls back to what it
/// says, or to the step before.
fn dependencies(definition: &Value) -> Vec<Vec<String>> {
    if let Ok(graph) = shared_models::graph::WorkflowGraph::from_stored(definition) {
        return graph
            .steps
            .iter()
            .map(|s| {
                s.depends_on
                    .iter()
                    .map(|&i| graph.steps[i].name.as_str().to_string())
                    .collect()
            })
            .collect();
    }
    let outline = shared_models::graph::step_outline(definition);
    let raw = definition.get("steps").and_then(Value::as_array);
    outline
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let declared = raw
                .and_then(|steps| {
                    steps
                        .iter()
                        .find(|s| s.get("name") == Some(&Value::from(name.as_str())))
                })
                .and_then(|s| s.get("dependsOn"))
                .and_then(Value::as_array);
            match declared {
                Some(deps) => deps
                    .iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect(),
                None if i == 0 => Vec::new(),
                None => vec![outline[i - 1].0.clone()],
            }
        })
        .collect()
}

impl From<RunDetail> for RunDetailView {
    fn from(d: RunDetail) -> Self {
        let mut started = d.steps.into_iter().peekable();
        let mut steps = Vec::new();
        let mut deps = dependencies(&d.definition).into_iter();
        for (name, step_type) in shared_models::graph::step_outline(&d.definition) {
            let depends_on = deps.next().unwrap_or_default();
            match started.next_if(|s| s.name == name) {
                Some(s) => steps.push(StepView {
                    name: s.name,
                    step_type: s.step_type,
                    depends_on,
                    status: s.status.to_string(),
                    attempt: s.attempt,
                    started_at: s.started_at,
                    completed_at: s.completed_at,
                    output: s.output,
                    error: s.error,
                }),
                None => steps.push(StepView {
                    name,
                    step_type,
                    depends_on,
                    status: "PENDING".into(),
                    attempt: 0,
                    started_at: None,
                    completed_at: None,
                    output: None,
                    error: None,
                }),
            }
        }
        let (mut transitions, mut logs) = (Vec::new(), Vec::new());
        for event in d.events {
            match EventView::from(event) {
                EventView::Transition(t) => transitions.push(t),
                EventView::Log(l) => logs.push(l),
            }
        }
        RunDetailView {
            run: RunView::from(d.run),
            steps,
            transitions,
            logs,
        }
    }
}
