//! `agent`: ask the agent named by `agentId` to carry out the (templated) instructions.

use super::{StepEnv, StepFailure};
use crate::agents::{self, AgentCall};
use serde_json::Value;
use shared_models::template;

pub async fn execute(
    agent_id: &str,
    instructions: &str,
    inputs: Option<&Value>,
    ctx: &Value,
    env: &StepEnv<'_>,
) -> Result<Value, StepFailure> {
    let instructions =
        template::render_text(instructions, ctx).map_err(|e| StepFailure::fatal(format!("instructions: {e}")))?;
    let inputs = match inputs {
        Some(inputs) => template::render_json(inputs, ctx).map_err(|e| StepFailure::fatal(format!("inputs: {e}")))?,
        None => Value::Null,
    };
    let call = AgentCall {
        run_id: env.run_id.to_string(),
        workflow_id: env.workflow_id.to_string(),
        step: env.step.to_string(),
        agent_id: agent_id.to_string(),
        instructions,
        variables: ctx.get("variables").cloned().unwrap_or(Value::Null),
        inputs,
        attempt: env.attempt,
    };
    agents::invoke_within(
        env.agents,
        env.http,
        &call,
        env.agent_timeout,
        env.step_timeout,
    )
    .await
    .map_err(|e| StepFailure::retry(e.to_string()))
}
