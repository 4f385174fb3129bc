//! Step executors: one function per step type, each turning a step's config and the run's
//! context into an output or an error message (which fails the attempt).

mod agent;
mod conversation;
pub mod deltas;
mod http;
mod journal;
mod rate;
pub mod tools;
mod transform;

use crate::agents::AgentRegistry;
use crate::render::Ctx;
use crate::storage::LeaseHolder;
use serde_json::Value;
use shared_models::db::PgPool;
use shared_models::graph::StepKind;
use std::time::Duration;

/// What executors may use besides the step itself.
pub struct StepEnv<'a> {
    pub agents: &'a AgentRegistry,
    /// The tenant client (`http` steps), the operator client (agents) and their bounds.
    pub http: &'a crate::outbound::Outbound,
    /// Per-call timeout when neither the step nor the agent entry sets one.
    pub agent_timeout: Duration,
    /// The step's own `timeoutSeconds` (cut to `MAX_STEP_TIMEOUT_SECONDS`), which wins over
    /// every other.
    pub step_timeout: Option<Duration>,
    /// The run (its row, as claimed).
    pub run: &'a shared_models::models::RunRow,
    pub run_id: &'a str,
    pub org_id: &'a str,
    pub workflow_id: &'a str,
    pub step: &'a str,
    pub attempt: i32,
    /// How long one render may take (`TEMPLATE_DEADLINE_SECONDS`, [`crate::render`]).
    pub template_deadline: Duration,
    /// Where an agent step journals its turns, under the run's lease.
    pub pool: &'a PgPool,
    pub me: &'a LeaseHolder,
    /// What the run's model calls may use, checked before each.
    pub budget: shared_models::budget::Budget,
    /// Waits this short are waited in the slot; longer ones park the run
    /// (`AGENT_WAIT_IN_SLOT_SECONDS`).
    pub wait_in_slot: Duration,
    /// The window of agents' `rateLimit` (`AGENT_RATE_WINDOW_SECONDS`).
    pub rate_window: Duration,
    /// An agent step's final model turn, left here to be journaled with the step's end in
    /// one commit (the engine takes it into the step's change).
    pub final_turn: &'a std::sync::Mutex<Option<crate::storage::NewTurn>>,
}

/// Why an attempt of a step failed, and whether another attempt could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub message: String,
    /// False when the same attempt would fail the same way (a refused egress, a limit went
    /// over, an invalid template result): the step fails at once, whatever its retry policy.
    pub retryable: bool,
    /// Not a failure: the step must wait this long before trying again (a provider's
    /// `Retry-After`, an agent's rate limit), which does not count against its attempts.
    pub defer: Option<Duration>,
}

impl StepFailure {
    /// A failure another attempt may not repeat (a timeout, a 5xx, a connection reset).
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            defer: None,
        }
    }

    /// Try again after `wait`, without counting a failed attempt.
    pub fn defer(message: impl Into<String>, wait: Duration) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            defer: Some(wait),
        }
    }

    /// A failure every attempt would repeat: never retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            defer: None,
        }
    }
}

impl From<String> for StepFailure {
    fn from(message: String) -> Self {
        Self::retry(message)
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `ctx` is the template context: `variables`, `steps.<name>.output|status`, `run`.
pub async fn execute(kind: &StepKind, ctx: &Ctx, env: &StepEnv<'_>) -> Result<Value, StepFailure> {
    match kind {
        StepKind::Agent(step) => agent::execute(step, ctx, env).await,
        StepKind::Http {
            request,
            allow_status,
        } => http::execute(request, allow_status, ctx, env).await,
        StepKind::Transform { value } => transform::execute(value, ctx, env).await,
        // The engine waits for these itself; they have nothing to execute.
        StepKind::Delay { .. } | StepKind::Approval | StepKind::Subworkflow { .. } => {
            Err(StepFailure::fatal(format!(
                "a {} step is waited for, not executed",
                kind.type_name()
            )))
        }
    }
}
