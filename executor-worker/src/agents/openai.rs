//! OpenAI-compatible Chat Completions: `POST {baseUrl}/chat/completions` with
//! `Authorization: Bearer <key>`. Tools are `function` tools; an output schema is sent as
//! `response_format` (`json_schema`, not strict: the step checks the answer either way).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Url;
use serde_json::{json, Map, Value};

use super::http::snippet;
use super::model::{Delta, Message, ModelReply, ModelRequest, ToolCall, Usage};
use super::wire::{self, json_body, json_event, parse_arguments, tokens, StreamAssembly};
use super::{AgentError, ModelAgentConfig};

pub(super) async fn complete(
    client: &reqwest::Client,
    agent: &ModelAgentConfig,
    request: ModelRequest<'_>,
    timeout: Duration,
    on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
    api_key: &str,
) -> Result<ModelReply, AgentError> {
    let authorization = wire::key_header(&format!("Bearer {api_key}"), &agent.api_key_env)?;
    let mut headers: Vec<(HeaderName, HeaderValue)> = agent.headers.clone();
    headers.push((AUTHORIZATION, authorization));
    let url = completions_url(&agent.base_url)?;
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

fn completions_url(base: &Url) -> Result<Url, AgentError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| AgentError::Provider(format!("baseUrl {base} cannot take a path")))?
        .pop_if_empty()
        .extend(["chat", "completions"]);
    Ok(url)
}

fn request_body(agent: &ModelAgentConfig, request: ModelRequest<'_>, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(agent.model));
    let messages: Vec<Value> = request.messages.iter().map(message).collect();
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(|tool| {
            json!({"type": "function", "function": {
                "name": tool.name, "description": tool.description, "parameters": tool.parameters,
            }})
        });
        body.insert("tools".into(), tools.collect());
    }
    if let Some(schema) = request.output_schema {
        body.insert(
            "response_format".into(),
            json!({"type": "json_schema",
                   "json_schema": {"name": "output", "schema": schema, "strict": false}}),
        );
    }
    let params = &agent.params;
    if let Some(temperature) = params.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(max_tokens) = params.max_tokens {
        body.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(top_p) = params.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant {
            content,
            tool_calls,
        } if tool_calls.is_empty() => {
            json!({"role": "assistant", "content": content})
        }
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|call| {
                    json!({"id": call.id, "type": "function", "function": {
                        "name": call.name, "arguments": call.arguments.to_string(),
                    }})
                })
                .collect();
            let content = if content.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        Message::Tool {
            tool_call_id,
            content,
            ..
        } => json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
    }
}

/// `{"error": ...}` (some providers send it with a 200, or inside a stream).
fn provider_error(value: &Value) -> Result<(), AgentError> {
    match value.get("error").filter(|e| !e.is_null()) {
        None => Ok(()),
        Some(error) => {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            Err(AgentError::Provider(format!(
                "the provider answered with an error: {message}"
            )))
        }
    }
}

fn usage(usage: &Value) -> Usage {
    let prompt = tokens(usage, "prompt_tokens");
    let cached = usage
        .get("prompt_tokens_details")
        .map_or(0, |details| tokens(details, "cached_tokens"));
    Usage {
        input_tokens: (prompt - cached).max(0),
        output_tokens: tokens(usage, "completion_tokens"),
        cached_tokens: cached,
    }
}

fn parse_reply(body: &[u8]) -> Result<ModelReply, AgentError> {
    let completion = json_body(body)?;
    provider_error(&completion)?;
    let malformed = |what: &str| {
        AgentError::InvalidResponse(format!(
            "the model's answer is not a chat completion ({what}): {}",
            snippet(body)
        ))
    };
    let choice = completion
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no \"choices\" list"))?
        .first()
        .ok_or_else(|| malformed("\"choices\" is empty"))?;
    let message = choice
        .get("message")
        .ok_or_else(|| malformed("no choices[0].message"))?;
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let mut tool_calls = Vec::new();
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |field: &str| call.get(field).and_then(Value::as_str);
        let function = call.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("a tool call without a function name"))?;
        let id = text("id").ok_or_else(|| malformed("a tool call without an id"))?;
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(text)) => parse_arguments(name, text)?,
            None | Some(Value::Null) => Value::Object(Map::new()),
            // Some compatible servers send the object itself.
            Some(other) => other.clone(),
        };
        tool_calls.push(ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments,
        });
    }
    if content.is_empty() && tool_calls.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            return Err(AgentError::Provider(format!(
                "the model refused: {refusal}"
            )));
        }
    }
    Ok(ModelReply {
        content,
        tool_calls,
        usage: completion.get("usage").map(usage).unwrap_or_default(),
        stop_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A streamed answer, put together chunk by chunk.
#[derive(Default)]
struct Assembly {
    content: String,
    refusal: String,
    /// By the index the chunks give them.
    calls: BTreeMap<u64, PartialCall>,
    usage: Usage,
    stop_reason: Option<String>,
    done: bool,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
    started: bool,
}

impl StreamAssembly for Assembly {
    fn take(&mut self, data: &str, sink: &mut (dyn FnMut(Delta) + Send)) -> Result<(), AgentError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk = json_event(data)?;
        provider_error(&chunk)?;
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage(u);
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        // Only the first choice: a request never asks for more.
        let first = choices
            .into_iter()
            .flatten()
            .filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        for choice in first {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                if !text.is_empty() {
                    self.content.push_str(text);
                    sink(Delta::Text(text.to_string()));
                }
            }
            if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
                self.refusal.push_str(text);
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array);
            for (position, piece) in calls.into_iter().flatten().enumerate() {
                let index = piece
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(position as u64);
                let call = self.calls.entry(index).or_default();
                let function = piece.get("function").unwrap_or(&Value::Null);
                if let Some(id) = piece.get("id").and_then(Value::as_str) {
                    if call.id.is_empty() {
                        call.id = id.to_string();
                    }
                }
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    if call.name.is_empty() {
                        call.name = name.to_string();
                    }
                }
                if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                    call.arguments.push_str(arguments);
                }
                if !call.started && !call.id.is_empty() && !call.name.is_empty() {
                    call.started = true;
                    sink(Delta::ToolCallStart {
                        id: call.id.clone(),
                        name: call.name.clone(),
                    });
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop_reason = Some(reason.to_string());
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<ModelReply, AgentError> {
        if !self.done && self.stop_reason.is_none() {
            return Err(AgentError::InvalidResponse(
                "the model's event stream ended before the answer was complete".into(),
            ));
        }
        let mut tool_calls = Vec::new();
        for call in self.calls.into_values() {
            if call.id.is_empty() || call.name.is_empty() {
                return Err(AgentError::InvalidResponse(
                    "the model's event stream has a tool call without an id or a name".into(),
                ));
            }
            tool_calls.push(ToolCall {
                arguments: parse_arguments(&call.name, &call.arguments)?,
                id: call.id,
                name: call.name,
            });
        }
        if self.content.is_empty() && tool_calls.is_empty() && !self.refusal.is_empty() {
            return Err(AgentError::Provider(format!(
                "the model refused: {}",
                self.refusal
            )));
        }
        Ok(ModelReply {
            content: self.content,
            tool_calls,
            usage: self.usage,
            stop_reason: self.stop_reason,
        })
    }
}

#[cfg(test)]
mod tests;
