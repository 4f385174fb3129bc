//! The example triage model: a deterministic stand-in for a model behind an OpenAI-compatible
//! `POST /v1/chat/completions`, so that an agent step with tools runs without a real model or
//! a key (any bearer key is accepted). It plays one script:
//!
//! 1. offered a tool `lookup_customer` and given no tool result yet, it calls that tool with
//!    `{"email": <the first email address in the messages>}`;
//! 2. otherwise it answers the JSON text `{"category", "priority", "plan"}`: category and
//!    priority from the keyword rules of [`crate::tickets`] on the first user message, `plan`
//!    the first `"plan"` found in the tool results (`null` without one).
//!
//! `usage` is plausible, not exact: a token per 0.75 word of the messages, and of the answer.

use crate::tickets;
use serde_json::{json, Value};

/// The only tool the script calls.
pub const TOOL: &str = "lookup_customer";

/// The chat completion answering `request` (a Chat Completions request body), or why the
/// request is not one (a 400).
pub fn complete(request: &Value) -> Result<Value, String> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("\"messages\" must be a non-empty list")?;
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("the example model does not stream: send \"stream\": false".into());
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("example-triage");
    let texts: Vec<&str> = messages.iter().flat_map(contents).collect();
    let offered = request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|t| t["function"]["name"] == TOOL));
    let results: Vec<&Value> = messages.iter().filter(|m| m["role"] == "tool").collect();
    let email = texts.iter().find_map(|t| first_email(t));

    let (message, finish, answer_text) = match email {
        Some(email) if offered && results.is_empty() => {
            let arguments = json!({ "email": email }).to_string();
            let call = json!({"id": "call_lookup_customer_1", "type": "function",
                              "function": {"name": TOOL, "arguments": arguments}});
            let message = json!({"role": "assistant", "content": null, "tool_calls": [call]});
            (message, "tool_calls", format!("{TOOL} {arguments}"))
        }
        _ => {
            let user = messages
                .iter()
                .find(|m| m["role"] == "user")
                .map(|m| contents(m).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            let labels = tickets::classify(&user, None);
            let plan = results
                .iter()
                .flat_map(|m| contents(m))
                .filter_map(|t| serde_json::from_str::<Value>(t).ok())
                .find_map(|v| find_plan(&v))
                .unwrap_or(Value::Null);
            let answer = json!({
                "category": labels["category"],
                "priority": labels["priority"],
                "plan": plan,
            })
            .to_string();
            let message = json!({"role": "assistant", "content": answer});
            (message, "stop", answer)
        }
    };
    let prompt = tokens(&texts.join(" "));
    let completion = tokens(&answer_text);
    Ok(json!({
        "id": format!("chatcmpl-example-{}", messages.len()),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }))
}

/// An OpenAI-style error body.
pub fn error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error"}})
}

/// The text of a message: its `content` string, or the text parts of a list.
fn contents(message: &Value) -> impl Iterator<Item = &str> {
    let content = &message["content"];
    let whole = content.as_str().into_iter();
    let parts = content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str));
    whole.chain(parts)
}

/// The first `name@domain.tld` in `text`.
fn first_email(text: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._%+-@".contains(c);
    text.split(|c: char| !allowed(c))
        .map(|w| w.trim_matches('.'))
        .find(|w| match w.split_once('@') {
            Some((user, domain)) => {
                !user.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
            }
            None => false,
        })
        .map(str::to_string)
}

/// The first value of a key `plan` in `value`, depth first (a workflow tool's result is its
/// run's output, keyed by step; an HTTP tool's is `{"status", "body"}`).
fn find_plan(value: &Value) -> Option<Value> {
    match value {
        Value::Object(map) => map
            .get("plan")
            .filter(|p| !p.is_null())
            .cloned()
            .or_else(|| map.values().find_map(find_plan)),
        Value::Array(items) => items.iter().find_map(find_plan),
        _ => None,
    }
}

/// About a token per 0.75 word (words: runs of letters and digits), at least 1.
fn tokens(text: &str) -> u64 {
    let words = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count() as u64;
    (words * 4).div_ceil(3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Value, with_tool: bool) -> Value {
        let mut body = json!({"model": "example-triage", "messages": messages});
        if with_tool {
            body["tools"] = json!([{"type": "function", "function": {"name": TOOL,
                "parameters": {"type": "object"}}}]);
        }
        body
    }

    fn first_turn() -> Value {
        json!([
            {"role": "system", "content": "variables: {\"email\":\"ann.lee@example.com\"}"},
            {"role": "user", "content": "Triage: I was charged twice, refund asap (ann@other.org)"}
        ])
    }

    #[test]
    fn calls_lookup_customer_with_the_first_email_then_answers_with_its_plan() {
        let reply = complete(&request(first_turn(), true)).unwrap();
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], TOOL);
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
            .expect("arguments are JSON text");
        assert_eq!(args, json!({"email": "ann.lee@example.com"}));

        let mut messages = first_turn();
        let list = messages.as_array_mut().unwrap();
        list.push(choice["message"].clone());
        let result = json!({"lookup": {"email": "ann.lee@example.com", "plan": "pro"}});
        list.push(
            json!({"role": "tool", "tool_call_id": call["id"], "content": result.to_string()}),
        );
        let reply = complete(&request(messages, true)).unwrap();
        assert_eq!(reply["choices"][0]["finish_reason"], "stop");
        let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
        let answer: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            answer,
            json!({"category": "billing", "priority": "high", "plan": "pro"})
        );
    }

    #[test]
    fn without_the_tool_or_an_email_it_answers_at_once() {
        let reply = complete(&request(first_turn(), false)).unwrap();
        let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"category": "billing", "priority": "high", "plan": null})
        );
        let no_email = json!([{"role": "user", "content": "The app crashes"}]);
        let reply = complete(&request(no_email, true)).unwrap();
        assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn usage_counts_words_of_the_messages_and_of_the_answer() {
        let messages =
            json!([{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]);
        let reply = complete(&request(messages, false)).unwrap();
        let usage = &reply["usage"];
        assert_eq!(usage["prompt_tokens"], 4); // 3 words / 0.75
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!(completion >= 6, "{usage}");
        assert_eq!(usage["total_tokens"], 4 + completion);
    }

    #[test]
    fn emails_are_found_in_json_and_text_and_bad_requests_are_refused() {
        assert_eq!(
            first_email("{\"email\":\"a.b+c@x.example.com\",\"n\":1}").as_deref(),
            Some("a.b+c@x.example.com")
        );
        assert_eq!(
            first_email("write to bob@example.org."),
            Some("bob@example.org".into())
        );
        assert_eq!(first_email("no @ here, nor x@y"), None);
        assert!(complete(&json!({"model": "m"})).is_err());
        assert!(complete(&json!({"messages": [], "model": "m"})).is_err());
        let streamed = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
        assert!(complete(&streamed).unwrap_err().contains("stream"));
    }
}
