//! The one graph model: parsing, validating and compiling a workflow definition.
//! workflow-service uses it to reject bad definitions; the worker to execute good ones.
//!
//! A definition is `{ "steps": [ ... ] }`. Array order is the default order: a step without
//! `dependsOn` depends on the step before it, the first step is a root, and `dependsOn: []`
//! makes any step a root (docs/API.md "Workflow graphs").

mod parse;
mod steps;
#[cfg(test)]
mod tests;
mod types;

pub use steps::step_outline;
pub use types::{
    AgentStep, AgentTool, HttpRequestSpec, RetryPolicy, Step, StepKind, ToolAction, WorkflowGraph,
};

/// More steps than this is a definition no one should run; it is refused at create/update.
pub(crate) const MAX_STEPS: usize = 200;

/// The step types this build executes.
pub(crate) const STEP_TYPES: &[&str] = &[
    "agent",
    "http",
    "transform",
    "delay",
    "approval",
    "subworkflow",
];

/// Bounds on step settings, so a typo cannot make a run wait for a year or retry forever.
pub(crate) const MAX_ATTEMPTS: u32 = 20;
pub(crate) const MAX_BACKOFF_SECONDS: f64 = 3600.0;
pub(crate) const MAX_TIMEOUT_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
/// `timeoutSeconds` of an `http` or `agent` step: a call holds a worker slot while it waits
/// (approvals and subworkflows hold none, so they keep [`MAX_TIMEOUT_SECONDS`]). Workers
/// also clamp it to their `MAX_STEP_TIMEOUT_SECONDS` at run time.
pub(crate) const MAX_CALL_TIMEOUT_SECONDS: f64 = 3600.0;
pub(crate) const MAX_DELAY_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
pub(crate) const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
/// An agent step's model turns: the default and the most a definition may ask for.
pub const DEFAULT_AGENT_TURNS: u32 = 8;
pub const MAX_AGENT_TURNS: u32 = 32;
/// Tools one agent step may offer its model.
pub const MAX_AGENT_TOOLS: usize = 32;
/// Repair turns after an answer that does not match `outputSchema`: the default and the most.
pub const DEFAULT_REPAIR_TURNS: u32 = 1;
pub const MAX_REPAIR_TURNS: u32 = 3;
