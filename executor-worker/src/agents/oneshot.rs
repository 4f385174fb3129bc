//! A model agent called through [`super::invoke`]: one turn, no tools. The step's
//! instructions are the user message; the variables and inputs go, as JSON, in a system
//! message. The output is `{ "content": <assistant text> }`, plus `json` when that text is
//! JSON.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::model::{Message, ModelReply, ModelRequest};
use super::{AgentCall, AgentError, ModelAgent};

const SYSTEM_LEAD: &str = "You are carrying out one step of an automated workflow. \
The workflow run's variables and this step's inputs, as JSON:";

pub(super) async fn call(
    client: &reqwest::Client,
    agent: ModelAgent<'_>,
    call: &AgentCall,
    timeout: Duration,
) -> Result<Value, AgentError> {
    let messages = messages(call);
    let reply = agent
        .complete(client, request(&messages), timeout, None)
        .await?;
    output(reply)
}

fn messages(call: &AgentCall) -> [Message; 2] {
    let context = json!({ "variables": call.variables, "inputs": call.inputs });
    [
        Message::System {
            content: format!("{SYSTEM_LEAD}\n{context}"),
        },
        Message::User {
            content: call.instructions.clone(),
        },
    ]
}

fn request(messages: &[Message]) -> ModelRequest<'_> {
    ModelRequest {
        messages,
        tools: &[],
        output_schema: None,
    }
}

/// The reply's text, and its JSON when it is JSON; a reply without text is an error.
fn output(reply: ModelReply) -> Result<Value, AgentError> {
    if reply.content.is_empty() {
        return Err(AgentError::Provider(format!(
            "the model answered without text (stop reason: {})",
            reply.stop_reason.as_deref().unwrap_or("unknown")
        )));
    }
    let mut output = Map::new();
    if let Some(parsed) = parse_json_text(&reply.content) {
        output.insert("json".into(), parsed);
    }
    output.insert("content".into(), Value::String(reply.content));
    Ok(Value::Object(output))
}

/// The text as JSON, also when wrapped in a ```json fenced block.
fn parse_json_text(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(value) = serde_json::from_str(text) {
        return Some(value);
    }
    let fenced = text.strip_prefix("```")?.strip_suffix("```")?;
    let inner = match fenced.split_once('\n') {
        Some((tag, rest)) if tag.trim().is_empty() || tag.trim().eq_ignore_ascii_case("json") => {
            rest
        }
        Some(_) => return None,
        None => fenced.trim_start().strip_prefix("json").unwrap_or(fenced),
    };
    serde_json::from_str(inner.trim()).ok()
}

#[cfg(test)]
mod tests;
