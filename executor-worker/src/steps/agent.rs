//! `agent`: ask the agent named by `agentId` to carry out the (templated) instructions.
//!
//! An agent whose entry names a model provider (`openai`, `anthropic`) is driven by the
//! tool-calling loop of [`super::conversation`] (its turns journaled, its usage and cost
//! counted); any other speaks the HTTP agent protocol, one call per attempt, and can take
//! neither `tools` nor `outputSchema`.

use super::{conversation, StepEnv, StepFailure};
use crate::agents::{self, AgentCall};
use crate::render::{self, Ctx};
use serde_json::Value;
use shared_models::graph::AgentStep;

pub async fn execute(step: &AgentStep, ctx: &Ctx, env: &StepEnv<'_>) -> Result<Value, StepFailure> {
    let instructions = render::text(&step.instructions, ctx, env.template_deadline)
        .await
        .map_err(|e| StepFailure::fatal(format!("instructions: {e}")))?;
    let inputs = match &step.inputs {
        Some(inputs) => render::json(inputs, ctx, env.template_deadline)
            .await
            .map_err(|e| StepFailure::fatal(format!("inputs: {e}")))?,
        None => Value::Null,
    };
    if let Ok(agent) = agents::model_agent(env.agents, &step.agent_id) {
        return conversation::converse(step, agent, instructions, inputs, ctx, env).await;
    }
    if !step.tools.is_empty() || step.output_schema.is_some() {
        return Err(StepFailure::fatal(format!(
            "tools and outputSchema need an agent whose entry names a model provider (openai or anthropic); '{}' is not one",
            step.agent_id
        )));
    }
    let call = AgentCall {
        run_id: env.run_id.to_string(),
        workflow_id: env.workflow_id.to_string(),
        step: env.step.to_string(),
        agent_id: step.agent_id.clone(),
        instructions,
        variables: ctx.get("variables").cloned().unwrap_or(Value::Null),
        inputs,
        attempt: env.attempt,
    };
    agents::invoke_within(
        env.agents,
        // The agent's URL is the operator's (AGENTS_FILE): the unfiltered client.
        &env.http.operator,
        &call,
        env.agent_timeout,
        env.step_timeout,
    )
    .await
    .map_err(|e| StepFailure::retry(e.to_string()))
}
