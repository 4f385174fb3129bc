//! An agent step's tools: the model's calls checked against their tool and run, each result
//! a [`Message::Tool`] for the model, an error result when the call cannot be made or
//! failed (the model reads why and may try otherwise; the step does not fail for it).
//!
//! A workflow tool's call starts a child run of the agent's run (the org's quotas apply, as
//! to a `subworkflow` step's), noted in the journal in the same transaction; its result is
//! the child's output once it ended.
//!
//! A tool's request is a tenant's: it goes through the tenant client and its egress policy,
//! exactly as an `http` step's, with its own `Idempotency-Key` (`run:step:callId`, the same on
//! every attempt). Results given back to the model are cut at [`MAX_TOOL_RESULT_BYTES`].

use super::{http, StepEnv, StepFailure};
use crate::agents::model::{Message, ToolCall, ToolSpec};
use crate::render::Ctx;
use crate::storage::{self, Fenced};
use serde_json::{json, Value};
use shared_models::db::blocking;
use shared_models::graph::{AgentTool, ToolAction};
use shared_models::json_schema;
use shared_models::status::RunStatus;
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

/// What calling a tool gave.
pub(super) enum ToolOutcome {
    /// Its result, for the model (an error result when the call could not be made).
    Done(Message),
    /// A workflow tool's child run started (noted in the journal): its end is the result.
    Started(String),
}

/// Run one call of turn `turn`; `index` is its place in the turn.
pub(super) async fn call(
    tools: &[AgentTool],
    call: &ToolCall,
    index: usize,
    turn: i32,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<ToolOutcome, StepFailure> {
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
        Some(tool) => match checked(tool, call) {
            Err(problem) => Err(problem),
            Ok(()) => match &tool.action {
                ToolAction::Request(request) => request_tool(request, call, ctx, env).await,
                ToolAction::Workflow { workflow_id } => {
                    match start_workflow(workflow_id, call, turn, env).await? {
                        Ok(child) => return Ok(ToolOutcome::Started(child)),
                        Err(refused) => Err(refused),
                    }
                }
            },
        },
    };
    Ok(ToolOutcome::Done(result_message(call, result)))
}

/// The result of `call` as the model reads it.
pub(super) fn result_message(call: &ToolCall, result: Result<Value, String>) -> Message {
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

/// The arguments against the tool's `parameters`.
fn checked(tool: &AgentTool, call: &ToolCall) -> Result<(), String> {
    let schema = json_schema::compile(&tool.parameters).map_err(|e| format!("parameters {e}"))?;
    let problems = schema.problems(&call.arguments);
    if !problems.is_empty() {
        return Err(format!(
            "the arguments do not match the tool's parameters: {}",
            problems.join("; ")
        ));
    }
    Ok(())
}

async fn request_tool(
    request: &shared_models::graph::HttpRequestSpec,
    call: &ToolCall,
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<Value, String> {
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

/// A workflow tool's run being started by another worker's transaction on the same run tree
/// is tried again after these pauses, then given up (an error result).
const TREE_BUSY_PAUSES: [u64; 6] = [2, 5, 10, 25, 50, 100];

/// Start the child run of a workflow tool's call: its id, or why it cannot start (an error
/// result for the model: an unknown workflow, a quota).
async fn start_workflow(
    workflow_id: &str,
    call: &ToolCall,
    turn: i32,
    env: &StepEnv<'_>,
) -> Result<Result<String, String>, StepFailure> {
    if !call.arguments.is_object() {
        return Ok(Err(
            "the arguments must be an object (the run's variables)".into()
        ));
    }
    for pause in TREE_BUSY_PAUSES.iter().map(|ms| Some(*ms)).chain([None]) {
        let (parent, me) = (env.run.clone(), env.me.clone());
        let (step, call_id, workflow, variables) = (
            env.step.to_string(),
            call.id.clone(),
            workflow_id.to_string(),
            call.arguments.clone(),
        );
        let started = blocking(env.pool, move |conn| {
            let at = storage::ToolCallAt {
                step: &step,
                turn,
                call_id: &call_id,
            };
            storage::start_tool_run(
                conn,
                &parent,
                at,
                &workflow,
                variables,
                &me,
                shared_models::time::now(),
            )
        })
        .await
        .map_err(|e| StepFailure::retry(format!("the tool's run could not be started: {e}")))?;
        match started {
            Err(Fenced::LeaseLost) => return Err(StepFailure::retry(LEASE_LOST)),
            Ok(storage::ChildStart::Started(child)) => return Ok(Ok(child)),
            Ok(storage::ChildStart::Refused(reason)) => return Ok(Err(reason)),
            Ok(storage::ChildStart::TreeBusy) => match pause {
                Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
                None => break,
            },
            Err(Fenced::Written) => unreachable!("a fence answers Written only with a start"),
        }
    }
    Ok(Err(
        "not called: the run tree was busy starting other runs; try again".into(),
    ))
}

const LEASE_LOST: &str = "the run's lease was lost (cancelled, or taken over by another worker)";

/// A workflow tool's child run once it ended: its output, or its error. `None` while it
/// runs.
pub(super) async fn child_result(
    call: &ToolCall,
    child: &str,
    env: &StepEnv<'_>,
) -> Result<Option<Message>, StepFailure> {
    let id = child.to_string();
    let state = blocking(env.pool, move |conn| storage::child_state(conn, &id))
        .await
        .map_err(|e| StepFailure::retry(format!("the tool's run could not be read: {e}")))?;
    Ok(match state {
        None => Some(result_message(
            call,
            Err(format!("the tool's run {child} does not exist")),
        )),
        Some((RunStatus::Completed, output, _)) => {
            Some(result_message(call, Ok(output.unwrap_or(Value::Null))))
        }
        Some((status, _, error)) if status.is_terminal() => Some(result_message(
            call,
            Err(format!(
                "the tool's run {child} {}: {}",
                status.as_str().to_lowercase(),
                error.unwrap_or_else(|| "no error recorded".into())
            )),
        )),
        Some(_) => None,
    })
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
