use serde_json::json;
use wiremock::matchers::{bearer_token, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::super::model::{ModelParams, ToolSpec};
use super::super::test_support::{event_stream, plain, sent_body, user, TestAgent};
use super::super::{ModelAgent, ModelProvider};
use super::*;

const KEY: &str = "sk-test-do-not-print";
const AGENT: TestAgent = TestAgent {
    id: "gpt",
    provider: ModelProvider::OpenAi,
    base_path: "/v1",
    model: "test-model",
    key: KEY,
};

#[tokio::test]
async fn a_text_reply_comes_back_with_its_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(bearer_token(KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20,
                      "prompt_tokens_details": {"cached_tokens": 30}}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let messages = user("Say hello");
    let reply = AGENT
        .run(&AGENT.config(&server, ""), plain(&messages), None)
        .await
        .unwrap();
    assert_eq!(
        reply,
        ModelReply {
            content: "Hello".into(),
            tool_calls: vec![],
            usage: Usage {
                input_tokens: 70,
                output_tokens: 20,
                cached_tokens: 30
            },
            stop_reason: Some("stop".into()),
        }
    );
    let sent = sent_body(&server).await;
    assert_eq!(
        sent,
        json!({"model": "test-model", "messages": [{"role": "user", "content": "Say hello"}]})
    );
}

#[tokio::test]
async fn parallel_tool_calls_are_parsed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"ticketId\": \"T-1\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}
                ]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
        })))
        .mount(&server)
        .await;
    let messages = user("go");
    let reply = AGENT
        .run(&AGENT.config(&server, ""), plain(&messages), None)
        .await
        .unwrap();
    assert_eq!(reply.content, "");
    assert_eq!(
        reply.tool_calls,
        vec![
            ToolCall {
                id: "call_1".into(),
                name: "lookup".into(),
                arguments: json!({"ticketId": "T-1"})
            },
            ToolCall {
                id: "call_2".into(),
                name: "weather".into(),
                arguments: json!({"city": "Oslo"})
            },
        ]
    );
    assert_eq!(reply.stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 0
        }
    );
}

fn history() -> Vec<Message> {
    vec![
        Message::System {
            content: "Be brief.".into(),
        },
        Message::User {
            content: "Check T-1 and the weather".into(),
        },
        Message::Assistant {
            content: String::new(),
            tool_calls: vec![
                ToolCall {
                    id: "call_1".into(),
                    name: "lookup".into(),
                    arguments: json!({"ticketId": "T-1"}),
                },
                ToolCall {
                    id: "call_2".into(),
                    name: "weather".into(),
                    arguments: json!({}),
                },
            ],
        },
        Message::Tool {
            tool_call_id: "call_1".into(),
            name: "lookup".into(),
            content: "{\"status\":\"open\"}".into(),
            is_error: false,
        },
        Message::Tool {
            tool_call_id: "call_2".into(),
            name: "weather".into(),
            content: "weather service unavailable".into(),
            is_error: true,
        },
    ]
}

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "lookup".into(),
        description: "Look a ticket up".into(),
        parameters: json!({"type": "object", "properties": {"ticketId": {"type": "string"}}}),
    }]
}

#[tokio::test]
async fn history_tools_schema_and_params_are_sent_as_openai_expects() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"ok\": true}"},
                         "finish_reason": "stop"}]
        })))
        .mount(&server)
        .await;
    let config = AGENT.config(&server, "temperature = 0.2\nmaxTokens = 300\ntopP = 0.5\n");
    assert_eq!(
        config.params,
        ModelParams {
            temperature: Some(0.2),
            max_tokens: Some(300),
            top_p: Some(0.5)
        }
    );
    let messages = history();
    let tools = tools();
    let schema = json!({"type": "object", "required": ["ok"]});
    let request = ModelRequest {
        messages: &messages,
        tools: &tools,
        output_schema: Some(&schema),
    };
    let reply = AGENT.run(&config, request, None).await.unwrap();
    assert_eq!(reply.content, "{\"ok\": true}");
    assert_eq!(
        reply.usage,
        Usage::default(),
        "no usage reported counts as zero"
    );

    let sent = sent_body(&server).await;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Check T-1 and the weather"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"ticketId\":\"T-1\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"open\"}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "weather service unavailable"}
        ])
    );
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {
            "name": "lookup", "description": "Look a ticket up",
            "parameters": {"type": "object", "properties": {"ticketId": {"type": "string"}}}
        }}])
    );
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": false}})
    );
    assert_eq!(sent["temperature"], json!(0.2));
    assert_eq!(sent["max_tokens"], json!(300));
    assert_eq!(sent["top_p"], json!(0.5));
    assert!(sent.get("stream").is_none(), "{sent}");
}

const STREAM: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    ": keep-alive\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \"}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check.\"}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"lookup\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ticket\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"Id\\\": \\\"T-1\\\"}\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"city\\\"\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\": \\\"Oslo\\\"}\"}}]}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":10}}}\n\n",
    "data: [DONE]\n\n",
);

#[tokio::test]
async fn a_streamed_answer_is_assembled_and_its_deltas_seen_in_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(event_stream(STREAM))
        .mount(&server)
        .await;
    let mut deltas = Vec::new();
    let mut sink = |delta: Delta| deltas.push(delta);
    let messages = user("go");
    let reply = AGENT
        .run(
            &AGENT.config(&server, ""),
            plain(&messages),
            Some(&mut sink),
        )
        .await
        .unwrap();
    assert_eq!(
        deltas,
        vec![
            Delta::Text("Let me ".into()),
            Delta::Text("check.".into()),
            Delta::ToolCallStart {
                id: "call_1".into(),
                name: "lookup".into()
            },
            Delta::ToolCallStart {
                id: "call_2".into(),
                name: "weather".into()
            },
        ]
    );
    assert_eq!(
        reply,
        ModelReply {
            content: "Let me check.".into(),
            tool_calls: vec![
                ToolCall {
                    id: "call_1".into(),
                    name: "lookup".into(),
                    arguments: json!({"ticketId": "T-1"})
                },
                ToolCall {
                    id: "call_2".into(),
                    name: "weather".into(),
                    arguments: json!({"city": "Oslo"})
                },
            ],
            usage: Usage {
                input_tokens: 40,
                output_tokens: 12,
                cached_tokens: 10
            },
            stop_reason: Some("tool_calls".into()),
        }
    );
    let sent = sent_body(&server).await;
    assert_eq!(sent["stream"], json!(true));
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn a_stream_request_answered_with_plain_json_gives_the_same_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                         "finish_reason": "stop"}]
        })))
        .mount(&server)
        .await;
    let mut deltas = Vec::new();
    let mut sink = |delta: Delta| deltas.push(delta);
    let messages = user("go");
    let reply = AGENT
        .run(
            &AGENT.config(&server, ""),
            plain(&messages),
            Some(&mut sink),
        )
        .await
        .unwrap();
    assert_eq!(reply.content, "Hi");
    assert_eq!(deltas, vec![Delta::Text("Hi".into())]);
}

#[tokio::test]
async fn http_429_with_retry_after_is_rate_limiting() {
    let response = ResponseTemplate::new(429)
        .insert_header("Retry-After", "2")
        .set_body_json(json!({"error": {"message": "Rate limit reached"}}));
    let err = AGENT.fail_with(response, false).await;
    assert!(
        matches!(err, AgentError::RateLimited { status: 429, retry_after: Some(wait) } if wait == Duration::from_secs(2)),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("rate limiting (HTTP 429)") && message.contains("retry after 2s"),
        "{message}"
    );
    let err = AGENT.fail_with(ResponseTemplate::new(429), true).await;
    assert!(
        matches!(
            err,
            AgentError::RateLimited {
                status: 429,
                retry_after: None
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_503_is_rate_limiting_only_with_retry_after() {
    let response = ResponseTemplate::new(503).insert_header("Retry-After", "0.5");
    let err = AGENT.fail_with(response, true).await;
    assert!(
        matches!(err, AgentError::RateLimited { status: 503, retry_after: Some(wait) } if wait == Duration::from_millis(500)),
        "{err:?}"
    );
    let err = AGENT
        .fail_with(
            ResponseTemplate::new(503).set_body_string("overloaded"),
            false,
        )
        .await;
    assert!(
        matches!(&err, AgentError::HttpStatus { status: 503, body_snippet } if body_snippet == "overloaded"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_key_quoted_back_by_the_server_is_redacted() {
    let body = format!("invalid key {KEY} for this project");
    let err = AGENT
        .fail_with(ResponseTemplate::new(401).set_body_string(body), false)
        .await;
    assert!(
        matches!(&err, AgentError::HttpStatus { status: 401, body_snippet } if body_snippet.contains("<redacted>")),
        "{err:?}"
    );
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let not_a_completion = json!({"object": "list"});
    let bad_arguments = json!({"choices": [{"index": 0, "message": {"tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{oops"}}
    ]}}]});
    let cases = [
        (ResponseTemplate::new(200).set_body_string("upstream proxy error"), false, "not JSON"),
        (ResponseTemplate::new(200).set_body_json(not_a_completion), false, "choices"),
        (ResponseTemplate::new(200).set_body_json(bad_arguments), false, "'lookup'"),
        (event_stream("data: {oops\n\n"), true, "not JSON"),
        (
            event_stream("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"),
            true,
            "ended before",
        ),
        (
            event_stream(concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"lookup\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
                "data: [DONE]\n\n"
            )),
            true,
            "'lookup'",
        ),
    ];
    for (response, stream, expected) in cases {
        let err = AGENT.fail_with(response, stream).await;
        assert!(
            matches!(&err, AgentError::InvalidResponse(m) if m.contains(expected)),
            "{expected}: {err:?}"
        );
    }
}

#[tokio::test]
async fn error_objects_are_provider_errors() {
    let error = json!({"error": {"message": "model overloaded"}});
    let err = AGENT
        .fail_with(ResponseTemplate::new(200).set_body_json(error), false)
        .await;
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("model overloaded")),
        "{err:?}"
    );
    let stream = "data: {\"error\": {\"message\": \"stream broke\"}}\n\n";
    let err = AGENT.fail_with(event_stream(stream), true).await;
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("stream broke")),
        "{err:?}"
    );
    let refusal =
        json!({"choices": [{"index": 0, "message": {"content": null, "refusal": "I can't"}}]});
    let err = AGENT
        .fail_with(ResponseTemplate::new(200).set_body_json(refusal), false)
        .await;
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("refused: I can't")),
        "{err:?}"
    );
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

#[tokio::test]
async fn a_streamed_call_keeps_to_the_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(event_stream(STREAM).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let messages = user("go");
    let mut sink = |_: Delta| {};
    let started = std::time::Instant::now();
    let err = ModelAgent(&AGENT.config(&server, ""))
        .complete_with_key(
            &reqwest::Client::new(),
            plain(&messages),
            Duration::from_millis(300),
            Some(&mut sink),
            KEY,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
