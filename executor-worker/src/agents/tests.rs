//! The public entry points for model agents: [`model_agent`] and [`complete`].

use serde_json::json;
use wiremock::MockServer;

use super::model::Message;
use super::*;

const TOML: &str = r#"
[agents.gpt]
provider = "openai"
baseUrl = "http://127.0.0.1:9/v1"
model = "gpt-x"
apiKeyEnv = "THYGON_TEST_KEY_NEVER_SET_7A2E"
timeoutSeconds = 30
pricing = { inputPerMTok = 1, outputPerMTok = 2 }

[agents.claude]
provider = "anthropic"
baseUrl = "http://127.0.0.1:9"
model = "claude-x"
apiKeyEnv = "THYGON_TEST_KEY_NEVER_SET_7A2E"
temperature = 0.5

[agents.classifier]
url = "http://127.0.0.1:9/classify"
"#;

fn registry() -> AgentRegistry {
    AgentRegistry::from_toml_str(TOML, Some("http://127.0.0.1:9/agents/".into())).unwrap()
}

#[test]
fn model_agent_tells_model_providers_from_http_agents() {
    let registry = registry();
    let gpt = model_agent(&registry, "gpt").unwrap();
    assert_eq!(gpt.provider(), "openai");
    assert_eq!(gpt.model(), "gpt-x");
    assert_eq!(gpt.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(
        gpt.pricing(),
        Some(Pricing::from_usd_per_mtok(1.0, 2.0, None).unwrap())
    );
    let claude = model_agent(&registry, "claude").unwrap();
    assert_eq!(claude.provider(), "anthropic");
    assert_eq!(claude.model(), "claude-x");
    assert_eq!(claude.timeout(), None);
    assert_eq!(claude.pricing(), None);
    assert_eq!(claude.params().temperature, Some(0.5));

    // A file entry and the AGENT_BASE_URL fallback are both HTTP agents.
    for id in ["classifier", "elsewhere"] {
        let err = model_agent(&registry, id).unwrap_err();
        assert!(
            matches!(&err, AgentError::NotAModel { agent_id } if agent_id == id),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("tools and outputSchema need a model provider"),
            "{message}"
        );
    }
    let no_fallback = AgentRegistry::from_toml_str(TOML, None).unwrap();
    assert!(matches!(
        model_agent(&no_fallback, "elsewhere"),
        Err(AgentError::UnknownAgent { .. })
    ));
}

#[tokio::test]
async fn complete_reads_the_key_at_call_time_and_names_a_missing_one() {
    let server = MockServer::start().await;
    let toml = format!(
        "[agents.gpt]\nprovider = \"openai\"\nbaseUrl = \"{}/v1\"\nmodel = \"m\"\n\
         apiKeyEnv = \"THYGON_TEST_KEY_NEVER_SET_7A2E\"\n",
        server.uri()
    );
    let registry = AgentRegistry::from_toml_str(&toml, None).unwrap();
    let messages = [Message::User {
        content: "hi".into(),
    }];
    let request = ModelRequest {
        messages: &messages,
        tools: &[],
        output_schema: None,
    };
    let client = reqwest::Client::new();
    let err = complete(
        &registry,
        &client,
        "gpt",
        request,
        Duration::from_secs(5),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, AgentError::MissingApiKey { env } if env == "THYGON_TEST_KEY_NEVER_SET_7A2E"),
        "{err:?}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());

    let err = complete(
        &registry,
        &client,
        "nobody",
        request,
        Duration::from_secs(5),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AgentError::UnknownAgent { .. }), "{err:?}");
}

#[test]
fn a_model_turn_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let registry = registry();
    let client = reqwest::Client::new();
    let messages = [Message::User {
        content: "hi".into(),
    }];
    let schema = json!({});
    let request = ModelRequest {
        messages: &messages,
        tools: &[],
        output_schema: Some(&schema),
    };
    let mut sink = |_: Delta| {};
    let future = complete(
        &registry,
        &client,
        "gpt",
        request,
        Duration::from_secs(1),
        Some(&mut sink),
    );
    assert_send(&future);
}

#[test]
fn rate_limiting_says_when_to_retry() {
    let err = AgentError::RateLimited {
        status: 429,
        retry_after: Some(Duration::from_millis(1500)),
    };
    assert_eq!(
        err.to_string(),
        "the model provider is rate limiting (HTTP 429); retry after 1.5s"
    );
    let err = AgentError::RateLimited {
        status: 503,
        retry_after: None,
    };
    assert!(err.to_string().contains("did not say"), "{err}");
}
