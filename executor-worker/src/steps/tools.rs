//! An agent step's tools: the model's calls checked against their tool and run, each result
//! a [`Message::Tool`] for the model, an error result when the call cannot be made or
//! failed (the model reads why and may try otherwise; the step does not fail for it).
//!
//! A tool's request is a tenant's: it goes through the tenant client and its egress policy,
//! exactly as an `http` step's, with its own `Idempotency-Key` (`run:step:callId`, the same on
//! every attempt). Results given back to the model are cut at [`MAX_TOOL_RESULT_BYTES`].

use super::{http, StepEnv, StepFailure};
use crate::agents::model::{Message, ToolCall, ToolSpec};
use crate::render::Ctx;
use serde_json::{json, Value};
use shared_models::graph::{AgentTool, ToolAction};
use shared_models::json_schema;
use std::sync::Arc;

/// What one tool result may hold when it goes back to the model (and into the journal).
pub const MAX_TOOL_RESULT_BYTES: usize = 32 * 1024;
/// Tool calls one model turn may ask for; the ones beyond get an error result.
pub const MAX_TOOL_CALLS_PER_TURN: usize = 16;

/// The tools as described to the model.
pub(super) fn specs(tools: &[AgentTool]) -> Vec<ToolSpec> {
    tools
        .iter()
        .map(|t| ToolSpec {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
        .collect()
}

/// Run one call; `index` is its place in its turn.
pub(super) async fn call(
    tools: &[AgentTool],
    call: &ToolCall,
    index: usize,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Message {
    let result = match tools.iter().find(|t| t.name == call.name) {
        _ if index >= MAX_TOOL_CALLS_PER_TURN => Err(format!(
            "not called: at most {MAX_TOOL_CALLS_PER_TURN} tool calls per turn"
        )),
        None => Err(format!(
            "there is no tool '{}' (the tools are: {})",
            call.name,
            tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(tool) => run(tool, call, ctx, env).await,
    };
    let (content, is_error) = match result {
        Ok(output) => (output.to_string(), false),
        Err(message) => (message, true),
    };
    Message::Tool {
        tool_call_id: call.id.clone(),
        name: call.name.clone(),
        content: cut(content),
        is_error,
    }
}

async fn run(
    tool: &AgentTool,
    call: &ToolCall,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<Value, String> {
    let schema = json_schema::compile(&tool.parameters).map_err(|e| format!("parameters {e}"))?;
    let problems = schema.problems(&call.arguments);
    if !problems.is_empty() {
        return Err(format!(
            "the arguments do not match the tool's parameters: {}",
            problems.join("; ")
        ));
    }
    match &tool.action {
        ToolAction::Request(request) => {
            // The run's context, with the model's arguments as `args`.
            let mut scope = (**ctx).clone();
            if let Value::Object(map) = &mut scope {
                map.insert("args".into(), call.arguments.clone());
            }
            let scope: Ctx = Arc::new(scope);
            let key = format!("{}:{}:{}", env.run_id, env.step, call.id);
            let answer = http::send(request, &[], &scope, env, &key)
                .await
                .map_err(|StepFailure { message, .. }| message)?;
            Ok(json!({ "status": answer["status"], "body": answer["body"] }))
        }
    }
}

/// `content` cut to [`MAX_TOOL_RESULT_BYTES`] (at a character boundary), saying so.
fn cut(content: String) -> String {
    if content.len() <= MAX_TOOL_RESULT_BYTES {
        return content;
    }
    let mut end = MAX_TOOL_RESULT_BYTES - 64;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [cut: the result was {} bytes, at most {MAX_TOOL_RESULT_BYTES} are kept]",
        &content[..end],
        content.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_results_are_cut_at_a_character_boundary_and_say_so() {
        let long = "é".repeat(MAX_TOOL_RESULT_BYTES);
        let cut = cut(long);
        assert!(cut.len() <= MAX_TOOL_RESULT_BYTES + 100);
        assert!(
            cut.ends_with("at most 32768 are kept]"),
            "{}",
            &cut[cut.len() - 80..]
        );
        assert_eq!(super::cut("short".into()), "short");
    }
}
