//! OpenAI-compatible chat-completions models as agents. The step's instructions are the
//! user message; the variables and inputs go, as JSON, in a system message. The output is
//! `{ "content": <assistant text> }`, plus `json` when that text is JSON.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Url;
use serde_json::{json, Map, Value};

use super::http::{post_json, snippet};
use super::{AgentCall, AgentError, OpenAiAgentConfig};

const SYSTEM_LEAD: &str = "You are carrying out one step of an automated workflow. \
The workflow run's variables and this step's inputs, as JSON:";

pub(super) async fn call(
    client: &reqwest::Client,
    agent: &OpenAiAgentConfig,
    call: &AgentCall,
    timeout: Duration,
) -> Result<Value, AgentError> {
    // Read per call, so that a rotated key is picked up without a restart.
    let api_key = std::env::var(&agent.api_key_env)
        .ok()
        .filter(|key| !key.trim().is_empty())
        .ok_or_else(|| AgentError::MissingApiKey {
            env: agent.api_key_env.clone(),
        })?;
    chat(client, agent, call, timeout, &api_key).await
}

/// The call itself, with the key already read (tests pass one without touching the
/// process environment).
async fn chat(
    client: &reqwest::Client,
    agent: &OpenAiAgentConfig,
    call: &AgentCall,
    timeout: Duration,
    api_key: &str,
) -> Result<Value, AgentError> {
    let mut authorization =
        HeaderValue::from_str(&format!("Bearer {}", api_key.trim())).map_err(|_| {
            AgentError::Provider(format!(
                "the value of {} cannot be sent as an API key (not a valid header value)",
                agent.api_key_env
            ))
        })?;
    authorization.set_sensitive(true);
    let mut headers: Vec<(HeaderName, HeaderValue)> = agent.headers.clone();
    headers.push((AUTHORIZATION, authorization));

    let context = json!({ "variables": call.variables, "inputs": call.inputs });
    let body = json!({
        "model": agent.model,
        "messages": [
            { "role": "system", "content": format!("{SYSTEM_LEAD}\n{context}") },
            { "role": "user", "content": call.instructions },
        ],
    });
    let answer = post_json(
        client,
        &completions_url(&agent.base_url)?,
        &headers,
        &body,
        timeout,
    )
    .await?;
    answer.check_status()?;
    let completion: Value = serde_json::from_slice(&answer.body).map_err(|_| {
        AgentError::InvalidResponse(format!(
            "the model answered with a body that is not JSON: {}",
            snippet(&answer.body)
        ))
    })?;
    let content = assistant_text(&completion).map_err(|problem| match problem {
        Problem::Malformed(what) => AgentError::InvalidResponse(format!(
            "the model's answer is not a chat completion ({what}): {}",
            snippet(&answer.body)
        )),
        Problem::Refused(what) => AgentError::Provider(what),
    })?;

    let mut output = Map::new();
    if let Some(parsed) = parse_json_text(&content) {
        output.insert("json".into(), parsed);
    }
    output.insert("content".into(), Value::String(content));
    Ok(Value::Object(output))
}

fn completions_url(base: &Url) -> Result<Url, AgentError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| AgentError::Provider(format!("baseUrl {base} cannot take a path")))?
        .pop_if_empty()
        .extend(["chat", "completions"]);
    Ok(url)
}

enum Problem {
    /// Not the shape of a chat completion.
    Malformed(&'static str),
    /// A well-formed answer that carries no text: an error object, a refusal, a tool call.
    Refused(String),
}

/// `choices[0].message.content`; content given as a list of parts is joined.
fn assistant_text(completion: &Value) -> Result<String, Problem> {
    // Some providers answer 200 with an error object.
    if let Some(error) = completion.get("error").filter(|e| !e.is_null()) {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(Problem::Refused(format!(
            "the provider answered with an error: {message}"
        )));
    }
    let choice = completion
        .get("choices")
        .and_then(Value::as_array)
        .ok_or(Problem::Malformed("no \"choices\" list"))?
        .first()
        .ok_or(Problem::Malformed("\"choices\" is empty"))?;
    let message = choice
        .get("message")
        .ok_or(Problem::Malformed("no choices[0].message"))?;
    match message.get("content") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        _ => {
            let reason = match message.get("refusal").and_then(Value::as_str) {
                Some(refusal) => format!("the model refused: {refusal}"),
                None => {
                    let finish = choice
                        .get("finish_reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    format!("the model answered without text (finish_reason: {finish})")
                }
            };
            Err(Problem::Refused(reason))
        }
    }
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
mod tests {
    use serde_json::json;
    use wiremock::matchers::{bearer_token, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::{invoke, AgentEndpoint, AgentRegistry};
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const KEY: &str = "sk-test-do-not-print";

    fn summarize_call() -> AgentCall {
        AgentCall {
            run_id: "run_9".into(),
            workflow_id: "wf_1".into(),
            step: "summarize".into(),
            agent_id: "summarizer".into(),
            instructions: "Summarize the ticket".into(),
            variables: json!({"ticketId": "T-9"}),
            inputs: json!({"text": "My invoice is wrong"}),
            attempt: 1,
        }
    }

    fn registry(base_url: &str, api_key_env: &str) -> AgentRegistry {
        let toml = format!(
            "[agents.summarizer]\nprovider = \"openai\"\nbaseUrl = \"{base_url}\"\n\
             model = \"test-model\"\napiKeyEnv = \"{api_key_env}\"\n"
        );
        AgentRegistry::from_toml_str(&toml, None).unwrap()
    }

    fn config(server: &MockServer) -> OpenAiAgentConfig {
        match registry(&format!("{}/v1/", server.uri()), "UNUSED")
            .resolve("summarizer")
            .unwrap()
        {
            AgentEndpoint::OpenAi(config) => config,
            other => panic!("expected an OpenAI agent, got {other:?}"),
        }
    }

    fn completion(content: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "c1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]
        }))
    }

    async fn mount_completion(server: &MockServer, content: &str) {
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(bearer_token(KEY))
            .respond_with(completion(content))
            .expect(1)
            .mount(server)
            .await;
    }

    async fn run_chat(server: &MockServer) -> Result<Value, AgentError> {
        chat(
            &reqwest::Client::new(),
            &config(server),
            &summarize_call(),
            TIMEOUT,
            KEY,
        )
        .await
    }

    #[tokio::test]
    async fn json_content_comes_back_as_content_and_json() {
        let server = MockServer::start().await;
        mount_completion(&server, r#"{"summary": "invoice wrong"}"#).await;

        let output = run_chat(&server).await.unwrap();
        assert_eq!(
            output,
            json!({"content": r#"{"summary": "invoice wrong"}"#, "json": {"summary": "invoice wrong"}})
        );

        let requests = server.received_requests().await.unwrap();
        let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(sent["model"], "test-model");
        assert_eq!(sent["messages"][0]["role"], "system");
        assert_eq!(
            sent["messages"][1],
            json!({"role": "user", "content": "Summarize the ticket"})
        );
        let system = sent["messages"][0]["content"].as_str().unwrap();
        let (lead, context) = system.split_once('\n').unwrap();
        assert_eq!(lead, SYSTEM_LEAD);
        let context: Value = serde_json::from_str(context).unwrap();
        assert_eq!(
            context,
            json!({"variables": {"ticketId": "T-9"}, "inputs": {"text": "My invoice is wrong"}})
        );
    }

    #[tokio::test]
    async fn fenced_json_content_is_parsed_too() {
        let server = MockServer::start().await;
        mount_completion(&server, "```json\n{\"priority\": \"high\"}\n```").await;
        let output = run_chat(&server).await.unwrap();
        assert_eq!(output["json"], json!({"priority": "high"}));
    }

    #[tokio::test]
    async fn plain_content_has_no_json_field() {
        let server = MockServer::start().await;
        mount_completion(&server, "The customer was billed twice.").await;
        let output = run_chat(&server).await.unwrap();
        assert_eq!(output, json!({"content": "The customer was billed twice."}));
    }

    #[tokio::test]
    async fn a_missing_api_key_variable_is_named_in_the_error() {
        // Unique and never set: the test needs no change to the process environment.
        let env = "THYGON_TEST_OPENAI_KEY_NEVER_SET_5D1C";
        let server = MockServer::start().await;
        let registry = registry(&format!("{}/v1", server.uri()), env);

        let err = invoke(
            &registry,
            &reqwest::Client::new(),
            &summarize_call(),
            TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, AgentError::MissingApiKey { env: named } if named == env),
            "{err:?}"
        );
        assert!(err.to_string().contains(env), "{err}");
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_non_2xx_answer_fails_with_its_status_and_no_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(401).set_body_json(
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
            ))
            .mount(&server)
            .await;
        let err = run_chat(&server).await.unwrap_err();
        assert!(
            matches!(err, AgentError::HttpStatus { status: 401, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("401") && message.contains("Incorrect API key"),
            "{message}"
        );
        assert!(
            !message.contains(KEY) && !format!("{err:?}").contains(KEY),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_answer_without_choices_is_invalid() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list"})))
            .mount(&server)
            .await;
        let err = run_chat(&server).await.unwrap_err();
        assert!(matches!(err, AgentError::InvalidResponse(_)), "{err:?}");
        assert!(err.to_string().contains("choices"), "{err}");
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_invalid() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("upstream proxy error"))
            .mount(&server)
            .await;
        let err = run_chat(&server).await.unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn json_text_is_found_in_plain_and_fenced_forms() {
        assert_eq!(parse_json_text(" [1, 2] "), Some(json!([1, 2])));
        assert_eq!(
            parse_json_text("```\n{\"a\": 1}\n```"),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            parse_json_text("```JSON\n{\"a\": 1}```"),
            Some(json!({"a": 1}))
        );
        assert_eq!(parse_json_text("```python\nprint(1)\n```"), None);
        assert_eq!(parse_json_text("Sure! {\"a\": 1}"), None);
    }

    #[test]
    fn the_completions_url_is_appended_to_the_base_path() {
        let url = |base: &str| {
            completions_url(&Url::parse(base).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url("https://api.example.com/v1"),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            url("https://api.example.com/v1/"),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            url("http://localhost:11434"),
            "http://localhost:11434/chat/completions"
        );
    }
}
