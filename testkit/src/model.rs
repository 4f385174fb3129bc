//! Pieces of a stand-in of the OpenAI Chat Completions API, for the tests of model agents
//! (the worker's, on a wiremock server; the real stack's, `thygon-e2e`'s `model`): the answers
//! it gives, and how a request tells its turn.

use serde_json::{json, Value};
use wiremock::ResponseTemplate;

/// Which turn a request asks for: the number of assistant messages already in it (0: the
/// first), so that an attempt resuming a conversation gets the next turn's answer.
pub fn turn_of(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
}

/// A chat completion: `content` (or null) and tool calls `(id, name, arguments)`, with usage
/// `(prompt, completion, cached)` (OpenAI counts the cached tokens inside the prompt's).
pub fn completion(
    content: Option<&str>,
    calls: &[(&str, &str, Value)],
    usage: (i64, i64, i64),
) -> ResponseTemplate {
    let (prompt, completion, cached) = usage;
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-test", "object": "chat.completion",
        "choices": [{"index": 0, "message": message,
                     "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    }))
}
