use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::super::model::{ModelParams, ToolSpec};
use super::super::test_support::{event_stream, plain, sent_body, user, TestAgent};
use super::super::ModelProvider;
use super::*;

const KEY: &str = "sk-ant-test-do-not-print";
const AGENT: TestAgent = TestAgent {
    id: "claude",
    provider: ModelProvider::Anthropic,
    base_path: "",
    model: "claude-test",
    key: KEY,
};

fn call(id: &str, name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments,
    }
}

#[tokio::test]
async fn a_text_reply_comes_back_with_its_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 100, "output_tokens": 20,
                      "cache_creation_input_tokens": 5, "cache_read_input_tokens": 30}
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
                input_tokens: 105,
                output_tokens: 20,
                cached_tokens: 30
            },
            stop_reason: Some("end_turn".into()),
        }
    );
    assert_eq!(
        sent_body(&server).await,
        json!({"model": "claude-test", "max_tokens": 4096,
               "messages": [{"role": "user", "content": "Say hello"}]})
    );
}

#[tokio::test]
async fn parallel_tool_calls_are_parsed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"ticketId": "T-1"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Oslo"}}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 5}
        })))
        .mount(&server)
        .await;
    let messages = user("go");
    let reply = AGENT
        .run(&AGENT.config(&server, ""), plain(&messages), None)
        .await
        .unwrap();
    assert_eq!(reply.content, "Checking both.");
    assert_eq!(
        reply.tool_calls,
        vec![
            call("toolu_1", "lookup", json!({"ticketId": "T-1"})),
            call("toolu_2", "weather", json!({"city": "Oslo"})),
        ]
    );
    assert_eq!(reply.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 0
        }
    );
}

#[tokio::test]
async fn history_tools_and_params_are_sent_as_anthropic_expects() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "type": "message", "content": [{"type": "text", "text": "Done"}], "stop_reason": "end_turn"
        })))
        .mount(&server)
        .await;
    let config = AGENT.config(&server, "temperature = 0.3\nmaxTokens = 500\ntopP = 0.8\n");
    assert_eq!(
        config.params,
        ModelParams {
            temperature: Some(0.3),
            max_tokens: Some(500),
            top_p: Some(0.8)
        }
    );
    let messages = vec![
        Message::System {
            content: "Be brief.".into(),
        },
        Message::User {
            content: "Check T-1 and the weather".into(),
        },
        Message::System {
            content: "Answer in English.".into(),
        },
        Message::Assistant {
            content: "Looking.".into(),
            tool_calls: vec![
                call("toolu_1", "lookup", json!({"ticketId": "T-1"})),
                call("toolu_2", "weather", json!({})),
            ],
        },
        Message::Tool {
            tool_call_id: "toolu_1".into(),
            name: "lookup".into(),
            content: "{\"status\":\"open\"}".into(),
            is_error: false,
        },
        Message::Tool {
            tool_call_id: "toolu_2".into(),
            name: "weather".into(),
            content: "weather service unavailable".into(),
            is_error: true,
        },
        Message::User {
            content: "And?".into(),
        },
    ];
    let tools = vec![ToolSpec {
        name: "lookup".into(),
        description: "Look a ticket up".into(),
        parameters: json!({"type": "object", "properties": {"ticketId": {"type": "string"}}}),
    }];
    let schema = json!({"type": "object"});
    let request = ModelRequest {
        messages: &messages,
        tools: &tools,
        output_schema: Some(&schema),
    };
    AGENT.run(&config, request, None).await.unwrap();

    let sent = sent_body(&server).await;
    assert_eq!(
        sent,
        json!({
            "model": "claude-test",
            "max_tokens": 500,
            "temperature": 0.3,
            "top_p": 0.8,
            "system": "Be brief.\n\nAnswer in English.",
            "messages": [
                {"role": "user", "content": "Check T-1 and the weather"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"ticketId": "T-1"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": "{\"status\":\"open\"}", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                     "content": "weather service unavailable", "is_error": true}
                ]},
                {"role": "user", "content": "And?"}
            ],
            "tools": [{"name": "lookup", "description": "Look a ticket up",
                       "input_schema": {"type": "object", "properties": {"ticketId": {"type": "string"}}}}]
        }),
        "no output schema field: the API has none"
    );
}

const STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,",
    "\"usage\":{\"input_tokens\":40,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":8,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking \"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"now.\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"lookup\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"ticket\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"Id\\\": \\\"T-1\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":33}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[tokio::test]
async fn a_streamed_answer_is_assembled_and_its_deltas_seen_in_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
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
            Delta::Text("Checking ".into()),
            Delta::Text("now.".into()),
            Delta::ToolCallStart {
                id: "toolu_1".into(),
                name: "lookup".into()
            },
            Delta::ToolCallStart {
                id: "toolu_2".into(),
                name: "weather".into()
            },
        ]
    );
    assert_eq!(
        reply,
        ModelReply {
            content: "Checking now.".into(),
            tool_calls: vec![
                call("toolu_1", "lookup", json!({"ticketId": "T-1"})),
                call("toolu_2", "weather", json!({})),
            ],
            usage: Usage {
                input_tokens: 42,
                output_tokens: 33,
                cached_tokens: 8
            },
            stop_reason: Some("tool_use".into()),
        }
    );
    assert_eq!(sent_body(&server).await["stream"], json!(true));
}

#[tokio::test]
async fn an_error_event_in_the_stream_is_a_provider_error() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n",
        "event: error\n",
        "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let err = AGENT.fail_with(event_stream(stream), true).await;
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("Overloaded")),
        "{err:?}"
    );
    let body =
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}});
    let err = AGENT
        .fail_with(ResponseTemplate::new(200).set_body_json(body), false)
        .await;
    assert!(
        matches!(&err, AgentError::Provider(m) if m.contains("bad")),
        "{err:?}"
    );
}

#[tokio::test]
async fn rate_limiting_is_told_apart_from_other_failures() {
    let response = ResponseTemplate::new(429).insert_header("retry-after", "2");
    let err = AGENT.fail_with(response, false).await;
    assert!(
        matches!(err, AgentError::RateLimited { status: 429, retry_after: Some(wait) } if wait == Duration::from_secs(2)),
        "{err:?}"
    );
    assert!(err.to_string().contains("retry after 2s"), "{err}");
    let response = ResponseTemplate::new(503).insert_header("retry-after", "30");
    let err = AGENT.fail_with(response, true).await;
    assert!(
        matches!(err, AgentError::RateLimited { status: 503, retry_after: Some(wait) } if wait == Duration::from_secs(30)),
        "{err:?}"
    );
    let err = AGENT
        .fail_with(ResponseTemplate::new(503).set_body_string("down"), true)
        .await;
    assert!(
        matches!(err, AgentError::HttpStatus { status: 503, .. }),
        "{err:?}"
    );
    let body = format!("{{\"error\": \"bad key {KEY}\"}}");
    let err = AGENT
        .fail_with(ResponseTemplate::new(401).set_body_string(body), false)
        .await;
    assert!(err.to_string().contains("<redacted>"), "{err}");
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let cases = [
        (ResponseTemplate::new(200).set_body_string("<html>"), false, "not JSON"),
        (
            ResponseTemplate::new(200).set_body_json(json!({"type": "message"})),
            false,
            "\"content\"",
        ),
        (event_stream("data: not json\n\n"), true, "not JSON"),
        (
            event_stream("data: {\"type\":\"message_start\",\"message\":{}}\n\n"),
            true,
            "ended before",
        ),
        (
            event_stream(concat!(
                "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"lookup\",\"input\":{}}}\n\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\"}}\n\n",
                "data: {\"type\":\"message_stop\"}\n\n",
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

#[test]
fn the_messages_url_adds_v1_unless_the_base_ends_in_it() {
    let url = |base: &str| {
        messages_url(&Url::parse(base).unwrap())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        url("https://api.anthropic.com"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        url("https://api.anthropic.com/v1"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        url("https://api.anthropic.com/v1/"),
        "https://api.anthropic.com/v1/messages"
    );
    assert_eq!(
        url("https://proxy.example/anthropic"),
        "https://proxy.example/anthropic/v1/messages"
    );
    assert_eq!(
        url("https://proxy.example/v1beta"),
        "https://proxy.example/v1beta/v1/messages"
    );
}

#[tokio::test]
async fn an_entry_can_pin_its_own_api_version() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("anthropic-version", "2099-01-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"content": []})))
        .expect(1)
        .mount(&server)
        .await;
    let config = AGENT.config(
        &server,
        "headers = { \"anthropic-version\" = \"2099-01-01\" }\n",
    );
    let messages = user("hi");
    AGENT.run(&config, plain(&messages), None).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests[0]
            .headers
            .get_all("anthropic-version")
            .iter()
            .count(),
        1
    );
}
