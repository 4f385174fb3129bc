//! Runs as clients see them (docs/API.md "Runs").

use crate::storage::{RunDetail, TurnRow, UsageRow};
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
    /// What its agent steps' model calls used and cost, every turn and attempt.
    usage: UsageView,
}

/// Tokens and cost (docs/AGENTS.md "Usage and cost").
#[derive(Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// Input tokens billed at the input price.
    input_tokens: i64,
    output_tokens: i64,
    /// Input tokens read from the provider's prompt cache.
    cached_tokens: i64,
    /// USD, from the agents' prices (`pricing` in the agents file); 0 without prices.
    cost_usd: f64,
}

/// One USD in pico-USD, the unit costs are stored in.
const PICOS_PER_USD: f64 = 1e12;

/// A cost stored in pico-USD, in USD (only views convert: sums stay exact in pico-USD).
pub(crate) fn usd(cost_picos: i64) -> f64 {
    cost_picos as f64 / PICOS_PER_USD
}

impl UsageView {
    fn new(input_tokens: i64, output_tokens: i64, cached_tokens: i64, cost_picos: i64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            cached_tokens,
            cost_usd: usd(cost_picos),
        }
    }
}

impl From<Option<UsageRow>> for UsageView {
    fn from(row: Option<UsageRow>) -> Self {
        row.map(|(i, o, c, cost)| UsageView::new(i, o, c, cost))
            .unwrap_or_default()
    }
}

impl RunView {
    /// The run with its usage.
    pub fn with_usage(mut self, usage: Option<UsageRow>) -> Self {
        self.usage = usage.into();
        self
    }
}

/// One model turn of an agent step, as run detail shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct TurnView {
    turn: i32,
    attempt: i32,
    agent_id: String,
    model: String,
    /// The messages this turn added before asking the model (the first turn: the system and
    /// user messages; a repair turn: the problems found).
    #[schema(value_type = Vec<Object>)]
    messages: Value,
    /// The model's answer: `{role, content, toolCalls}`.
    #[schema(value_type = Object)]
    reply: Value,
    /// The results of the reply's tool calls, in their order (those finished).
    #[schema(value_type = Vec<Object>)]
    tool_results: Vec<Value>,
    usage: UsageView,
    #[serde(with = "rfc3339")]
    at: DateTime<Utc>,
    /// The cost as stored, so that a step's sum is exact.
    #[serde(skip)]
    cost_picos: i64,
}

impl From<TurnRow> for TurnView {
    fn from(t: TurnRow) -> Self {
        // In the order of the reply's calls.
        let tool_results = t
            .reply
            .get("toolCalls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|call| call.get("id").and_then(Value::as_str))
            .filter_map(|id| t.tool_results.get(id).cloned())
            .collect();
        TurnView {
            turn: t.turn,
            attempt: t.attempt,
            agent_id: t.agent_id,
            model: t.model,
            messages: t.messages,
            reply: t.reply,
            tool_results,
            usage: UsageView::new(
                t.input_tokens,
                t.output_tokens,
                t.cached_tokens,
                t.cost_picos,
            ),
            at: t.created_at,
            cost_picos: t.cost_picos,
        }
    }
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
            usage: UsageView::default(),
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
    /// An agent step's usage: every turn of every attempt (agent steps with a model only).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageView>,
    /// An agent step's model turns, oldest first (agent steps with a model only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    turns: Vec<TurnView>,
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
        let mut turns_of: std::collections::HashMap<String, Vec<TurnView>> = Default::default();
        for turn in d.turns {
            let step = turn.step.clone();
            turns_of.entry(step).or_default().push(TurnView::from(turn));
        }
        let mut started = d.steps.into_iter().peekable();
        let mut steps = Vec::new();
        let mut deps = dependencies(&d.definition).into_iter();
        for (name, step_type) in shared_models::graph::step_outline(&d.definition) {
            let depends_on = deps.next().unwrap_or_default();
            let turns = turns_of.remove(&name).unwrap_or_default();
            let usage = (!turns.is_empty()).then(|| {
                UsageView::new(
                    turns.iter().map(|t| t.usage.input_tokens).sum(),
                    turns.iter().map(|t| t.usage.output_tokens).sum(),
                    turns.iter().map(|t| t.usage.cached_tokens).sum(),
                    turns.iter().map(|t| t.cost_picos).sum(),
                )
            });
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
                    usage,
                    turns,
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
                    usage,
                    turns,
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
            run: RunView::from(d.run).with_usage(d.usage),
            steps,
            transitions,
            logs,
        }
    }
}
