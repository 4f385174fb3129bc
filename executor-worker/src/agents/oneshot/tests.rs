use serde_json::json;
use wiremock::matchers::{bearer_token, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::super::{invoke, AgentRegistry};
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

fn registry(provider: &str, base_url: &str, api_key_env: &str) -> AgentRegistry {
    let toml = format!(
        "[agents.summarizer]\nprovider = \"{provider}\"\nbaseUrl = \"{base_url}\"\n\
         model = \"test-model\"\napiKeyEnv = \"{api_key_env}\"\n"
    );
    AgentRegistry::from_toml_str(&toml, None).unwrap()
}

/// What `call` does, with the key given rather than read from the environment.
async fn run(registry: &AgentRegistry) -> Result<Value, AgentError> {
    let agent = super::super::model_agent(registry, "summarizer").unwrap();
    let messages = messages(&summarize_call());
    let reply = agent
        .complete_with_key(
            &reqwest::Client::new(),
            request(&messages),
            TIMEOUT,
            None,
            KEY,
        )
        .await?;
    output(reply)
}

fn openai_completion(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "c1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}]
    }))
}

async fn openai_answering(server: &MockServer, content: &str) -> Result<Value, AgentError> {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(bearer_token(KEY))
        .respond_with(openai_completion(content))
        .expect(1)
        .mount(server)
        .await;
    run(&registry(
        "openai",
        &format!("{}/v1/", server.uri()),
        "UNUSED",
    ))
    .await
}

#[tokio::test]
async fn json_content_comes_back_as_content_and_json() {
    let server = MockServer::start().await;
    let output = openai_answering(&server, r#"{"summary": "invoice wrong"}"#)
        .await
        .unwrap();
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
    let output = openai_answering(&server, "```json\n{\"priority\": \"high\"}\n```")
        .await
        .unwrap();
    assert_eq!(output["json"], json!({"priority": "high"}));
}

#[tokio::test]
async fn plain_content_has_no_json_field() {
    let server = MockServer::start().await;
    let output = openai_answering(&server, "The customer was billed twice.")
        .await
        .unwrap();
    assert_eq!(output, json!({"content": "The customer was billed twice."}));
}

#[tokio::test]
async fn an_answer_without_text_is_an_error() {
    let server = MockServer::start().await;
    let err = openai_answering(&server, "").await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("without text (stop reason: stop)")),
        "{err:?}"
    );
}

#[tokio::test]
async fn anthropic_agents_answer_through_invoke_too() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "type": "message", "role": "assistant", "stop_reason": "end_turn",
            "content": [{"type": "text", "text": "{\"priority\": \"low\"}"}],
            "usage": {"input_tokens": 5, "output_tokens": 3}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let output = run(&registry("anthropic", &server.uri(), "UNUSED"))
        .await
        .unwrap();
    assert_eq!(output["json"], json!({"priority": "low"}));
    let requests = server.received_requests().await.unwrap();
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(
        sent["system"].as_str().unwrap().starts_with(SYSTEM_LEAD),
        "{sent}"
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Summarize the ticket"}])
    );
}

#[tokio::test]
async fn a_missing_api_key_variable_is_named_in_the_error() {
    // Unique and never set: the test needs no change to the process environment.
    let env = "THYGON_TEST_OPENAI_KEY_NEVER_SET_5D1C";
    let server = MockServer::start().await;
    for provider in ["openai", "anthropic"] {
        let registry = registry(provider, &server.uri(), env);
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
    }
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
    let err = run(&registry("openai", &server.uri(), "UNUSED"))
        .await
        .unwrap_err();
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
