//! The Anthropic Messages API: `POST {baseUrl}/v1/messages` (or `{baseUrl}/messages` when
//! the base path already ends in `/v1`) with `x-api-key` and `anthropic-version`.
//!
//! System messages are joined into the top-level `system`; tool calls are `tool_use`
//! blocks and tool results `tool_result` blocks of one user message. The API has no native
//! structured output, so a request's `output_schema` is not sent: the step validates the
//! answer against it.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{json, Map, Value};

use super::http::snippet;
use super::model::{Delta, Message, ModelReply, ModelRequest, ToolCall, Usage};
use super::wire::{self, json_body, json_event, parse_arguments, tokens, StreamAssembly};
use super::{AgentError, ModelAgentConfig};

const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this when the entry sets no `maxTokens`.
const DEFAULT_MAX_TOKENS: u32 = 4096;

pub(super) async fn complete(
    client: &reqwest::Client,
    agent: &ModelAgentConfig,
    request: ModelRequest<'_>,
    timeout: Duration,
    on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
    api_key: &str,
) -> Result<ModelReply, AgentError> {
    let mut headers: Vec<(HeaderName, HeaderValue)> = agent.headers.clone();
    let version = HeaderName::from_static("anthropic-version");
    if !headers.iter().any(|(name, _)| *name == version) {
        headers.push((version, HeaderValue::from_static(API_VERSION)));
    }
    let key = wire::key_header(api_key, &agent.api_key_env)?;
    headers.push((HeaderName::from_static("x-api-key"), key));
    let url = messages_url(&agent.base_url)?;
    let body = request_body(agent, request, on_delta.is_some());
    wire::exchange::<Assembly>(
        client,
        &url,
        &headers,
        &body,
        timeout,
        on_delta,
        parse_reply,
    )
    .await
}

/// `{base}/v1/messages`, or `{base}/messages` when the base path ends in `/v1`.
fn messages_url(base: &Url) -> Result<Url, AgentError> {
    let mut url = base.clone();
    let ends_in_v1 = base
        .path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
        == Some("v1");
    let mut segments = url
        .path_segments_mut()
        .map_err(|_| AgentError::Provider(format!("baseUrl {base} cannot take a path")))?;
    segments.pop_if_empty();
    if !ends_in_v1 {
        segments.push("v1");
    }
    segments.push("messages");
    drop(segments);
    Ok(url)
}

fn request_body(agent: &ModelAgentConfig, request: ModelRequest<'_>, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(agent.model));
    let params = &agent.params;
    let max_tokens = params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::System { content } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages(request.messages)));
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(|tool| {
            json!({"name": tool.name, "description": tool.description,
                   "input_schema": tool.parameters})
        });
        body.insert("tools".into(), tools.collect());
    }
    if let Some(temperature) = params.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = params.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

/// The conversation without its system messages; consecutive tool results become one
/// user message of `tool_result` blocks.
fn messages(conversation: &[Message]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    for message in conversation {
        if let Message::Tool {
            tool_call_id,
            content,
            is_error,
            ..
        } = message
        {
            results.push(json!({"type": "tool_result", "tool_use_id": tool_call_id,
                                "content": content, "is_error": is_error}));
            continue;
        }
        if !results.is_empty() {
            out.push(json!({"role": "user", "content": std::mem::take(&mut results)}));
        }
        match message {
            Message::System { .. } | Message::Tool { .. } => {}
            Message::User { content } => out.push(json!({"role": "user", "content": content})),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                // The API refuses empty text blocks.
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for call in tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name,
                                       "input": call.arguments}));
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
        }
    }
    if !results.is_empty() {
        out.push(json!({"role": "user", "content": results}));
    }
    out
}

/// `{"type": "error", "error": {...}}`, as a body or as a stream event.
fn provider_error(value: &Value) -> Result<(), AgentError> {
    let error = value.get("error").filter(|e| !e.is_null());
    if error.is_none() && value.get("type").and_then(Value::as_str) != Some("error") {
        return Ok(());
    }
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message");
    Err(AgentError::Provider(format!(
        "the provider answered with an error: {message}"
    )))
}

/// The token counts of a `usage` object, into `counts` (fields it lacks are kept).
fn read_usage(usage: &Value, counts: &mut BTreeMap<&'static str, i64>) {
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        if usage.get(field).and_then(Value::as_i64).is_some() {
            counts.insert(field, tokens(usage, field));
        }
    }
}

fn usage(counts: &BTreeMap<&'static str, i64>) -> Usage {
    let count = |field| counts.get(field).copied().unwrap_or(0);
    Usage {
        input_tokens: count("input_tokens") + count("cache_creation_input_tokens"),
        output_tokens: count("output_tokens"),
        cached_tokens: count("cache_read_input_tokens"),
    }
}

fn parse_reply(body: &[u8]) -> Result<ModelReply, AgentError> {
    let message = json_body(body)?;
    provider_error(&message)?;
    let malformed = |what: &str| {
        AgentError::InvalidResponse(format!(
            "the model's answer is not a message ({what}): {}",
            snippet(body)
        ))
    };
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no \"content\" list"))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        let text = |field: &str| block.get(field).and_then(Value::as_str);
        match text("type") {
            Some("text") => content.push_str(text("text").unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                id: text("id")
                    .ok_or_else(|| malformed("a tool_use block without an id"))?
                    .to_string(),
                name: text("name")
                    .ok_or_else(|| malformed("a tool_use block without a name"))?
                    .to_string(),
                arguments: block.get("input").cloned().unwrap_or(json!({})),
            }),
            // Thinking and other blocks carry nothing for the reply.
            _ => {}
        }
    }
    let mut counts = BTreeMap::new();
    if let Some(u) = message.get("usage") {
        read_usage(u, &mut counts);
    }
    Ok(ModelReply {
        content,
        tool_calls,
        usage: usage(&counts),
        stop_reason: message
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A streamed answer, put together event by event.
#[derive(Default)]
struct Assembly {
    content: String,
    /// Tool calls by block index: id, name, the input's JSON text so far.
    calls: BTreeMap<u64, (String, String, String)>,
    counts: BTreeMap<&'static str, i64>,
    stop_reason: Option<String>,
    stopped: bool,
}

impl Assembly {
    fn push_text(&mut self, text: &str, sink: &mut (dyn FnMut(Delta) + Send)) {
        if !text.is_empty() {
            self.content.push_str(text);
            sink(Delta::Text(text.to_string()));
        }
    }
}

impl StreamAssembly for Assembly {
    fn take(&mut self, data: &str, sink: &mut (dyn FnMut(Delta) + Send)) -> Result<(), AgentError> {
        let event = json_event(data)?;
        provider_error(&event)?;
        let field = |value: &Value, name: &str| value.get(name).cloned().unwrap_or(Value::Null);
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let usage = field(&field(&event, "message"), "usage");
                read_usage(&usage, &mut self.counts);
            }
            Some("content_block_start") => {
                let block = field(&event, "content_block");
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            self.push_text(text, sink);
                        }
                    }
                    Some("tool_use") => {
                        let text = |name| block.get(name).and_then(Value::as_str);
                        let (Some(id), Some(name)) = (text("id"), text("name")) else {
                            return Err(AgentError::InvalidResponse(format!(
                                "the model's event stream has a tool_use block without an id or a name: {}",
                                snippet(data.as_bytes())
                            )));
                        };
                        sink(Delta::ToolCallStart {
                            id: id.to_string(),
                            name: name.to_string(),
                        });
                        self.calls
                            .insert(index, (id.to_string(), name.to_string(), String::new()));
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = field(&event, "delta");
                let text = |name| delta.get(name).and_then(Value::as_str);
                match text("type") {
                    Some("text_delta") => self.push_text(text("text").unwrap_or_default(), sink),
                    Some("input_json_delta") => {
                        if let Some(call) = self.calls.get_mut(&index) {
                            call.2.push_str(text("partial_json").unwrap_or_default());
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                let reason = field(&event, "delta").get("stop_reason").cloned();
                if let Some(Value::String(reason)) = reason {
                    self.stop_reason = Some(reason);
                }
                read_usage(&field(&event, "usage"), &mut self.counts);
            }
            Some("message_stop") => self.stopped = true,
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<ModelReply, AgentError> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(AgentError::InvalidResponse(
                "the model's event stream ended before the answer was complete".into(),
            ));
        }
        let mut tool_calls = Vec::new();
        for (id, name, input) in self.calls.into_values() {
            tool_calls.push(ToolCall {
                arguments: parse_arguments(&name, &input)?,
                id,
                name,
            });
        }
        Ok(ModelReply {
            content: self.content,
            tool_calls,
            usage: usage(&self.counts),
            stop_reason: self.stop_reason,
        })
    }
}

#[cfg(test)]
mod tests;
