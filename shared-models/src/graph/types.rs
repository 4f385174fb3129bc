//! The graph model: steps, their kinds and settings, and the graph they form.

use super::MAX_BACKOFF_SECONDS;
use crate::ids::StepName;
use serde_json::{Map, Value};
use std::time::Duration;

/// `retry`: how many attempts a step gets and how long to wait between them.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_seconds: f64,
    pub backoff_multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_seconds: 1.0,
            backoff_multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (2 and up): backoff * multiplier^(attempt - 2).
    pub fn delay_before(&self, attempt: i32) -> Duration {
        let exp = (attempt - 2).max(0);
        let secs = self.backoff_seconds * self.backoff_multiplier.powi(exp);
        // Attempt numbers keep growing across `/retry`, so the power can overflow to
        // infinity; with a zero backoff that is 0 * inf = NaN, which from_secs_f64 panics on.
        let secs = if secs.is_nan() { 0.0 } else { secs };
        Duration::from_secs_f64(secs.clamp(0.0, MAX_BACKOFF_SECONDS))
    }
}

/// The request of an `http` step; every string in it is a template.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequestSpec {
    pub method: String,
    pub url: String,
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
}

/// An `agent` step (docs/AGENTS.md).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStep {
    pub agent_id: String,
    pub instructions: String,
    pub inputs: Option<Value>,
    /// Tools the model may call (model providers only).
    pub tools: Vec<AgentTool>,
    /// Model turns at most, repair turns included; then the step fails saying so.
    pub max_turns: u32,
    /// A JSON Schema the final answer must match (model providers only).
    pub output_schema: Option<Value>,
    /// Turns that send a mismatch's problems back to the model before the step fails.
    pub repair_turns: u32,
}

/// A tool of an `agent` step: described to the model, run by Thygon when it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTool {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments; the model's arguments are checked against it.
    pub parameters: Value,
    pub action: ToolAction,
}

/// What calling a tool does.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolAction {
    /// An HTTP request, templated with `args` (the model's arguments) besides the run's
    /// context, sent through the tenant egress policy like an `http` step's.
    Request(HttpRequestSpec),
    /// A run of the workflow `workflow_id` (the same org's), with the model's arguments as its
    /// variables: a child run of the agent's run, under the org's quotas; its output is the
    /// result.
    Workflow { workflow_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Ask the agent `agent_id` to carry out `instructions` (templated), with optional
    /// templated `inputs`; with a model provider, a loop of model turns and tool calls.
    Agent(Box<AgentStep>),
    /// Call an HTTP endpoint; a non-2xx status fails the attempt unless `allow_status` lists it.
    Http {
        request: HttpRequestSpec,
        allow_status: Vec<u16>,
    },
    /// Output the templated `value`.
    Transform { value: Value },
    /// Wait `seconds`; the run is WAITING meanwhile and holds no worker.
    Delay { seconds: f64 },
    /// Wait for `POST /workflows/runs/{id}/steps/{step}/approve`.
    Approval,
    /// Start a run of `workflow_id` with templated `variables`, and wait for it.
    Subworkflow {
        workflow_id: String,
        variables: Option<Value>,
    },
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent(_) => "agent",
            StepKind::Http { .. } => "http",
            StepKind::Transform { .. } => "transform",
            StepKind::Delay { .. } => "delay",
            StepKind::Approval => "approval",
            StepKind::Subworkflow { .. } => "subworkflow",
        }
    }

    /// Steps that wait outside any worker (the run goes WAITING instead of holding a slot).
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Delay { .. } | StepKind::Approval | StepKind::Subworkflow { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: StepName,
    /// Indexes into [`WorkflowGraph::steps`] of the steps this one waits for.
    pub depends_on: Vec<usize>,
    pub kind: StepKind,
    /// A condition; false skips the step.
    pub when: Option<String>,
    pub retry: RetryPolicy,
    /// Per attempt; for `approval` and `subworkflow`, how long to wait in all.
    pub timeout: Option<Duration>,
}

/// A definition that is known good: unique names, known types, no cycle, templates compile.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowGraph {
    pub steps: Vec<Step>,
    /// `budget`: what a run's model calls may use (a trigger may override it).
    pub budget: Option<crate::budget::Budget>,
}

impl WorkflowGraph {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name.as_str() == name)
    }

    /// Steps that no other step depends on; the run's output is theirs.
    pub fn leaves(&self) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| !self.steps.iter().any(|s| s.depends_on.contains(&i)))
            .collect()
    }

    /// Kahn's algorithm; returns a step that can never become ready, if any.
    pub(super) fn step_on_a_cycle(&self) -> Option<usize> {
        let mut remaining: Vec<usize> = self.steps.iter().map(|s| s.depends_on.len()).collect();
        let mut ready: Vec<usize> = (0..self.steps.len())
            .filter(|&i| remaining[i] == 0)
            .collect();
        let mut done = 0;
        while let Some(i) = ready.pop() {
            done += 1;
            for (j, step) in self.steps.iter().enumerate() {
                if step.depends_on.contains(&i) {
                    remaining[j] -= 1;
                    if remaining[j] == 0 {
                        ready.push(j);
                    }
                }
            }
        }
        (done < self.steps.len())
            .then(|| remaining.iter().position(|&r| r > 0))
            .flatten()
    }
}
