//! What the unit tests of the model providers share: an agent entry pointed at a mock
//! server, running a turn with a known key, and reading what the server was sent.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::model::{Delta, Message, ModelReply, ModelRequest};
use super::{
    AgentEndpoint, AgentError, AgentRegistry, ModelAgent, ModelAgentConfig, ModelProvider,
};

pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

/// A provider's test agent: the entry is `[agents.{id}]` with `baseUrl` the mock server's
/// URI followed by `base_path`; turns are run with `key` (the entry's `apiKeyEnv` is unused).
pub(super) struct TestAgent {
    pub id: &'static str,
    pub provider: ModelProvider,
    pub base_path: &'static str,
    pub model: &'static str,
    pub key: &'static str,
}

impl TestAgent {
    /// The entry for `server`, with the TOML lines `extra` added.
    pub fn config(&self, server: &MockServer, extra: &str) -> ModelAgentConfig {
        let toml = format!(
            "[agents.{}]\nprovider = \"{}\"\nbaseUrl = \"{}{}\"\nmodel = \"{}\"\n\
             apiKeyEnv = \"UNUSED\"\n{extra}",
            self.id,
            self.provider.name(),
            server.uri(),
            self.base_path,
            self.model,
        );
        match AgentRegistry::from_toml_str(&toml, None)
            .unwrap()
            .resolve(self.id)
            .unwrap()
        {
            AgentEndpoint::Model(config) if config.provider == self.provider => config,
            other => panic!("expected a {:?} agent, got {other:?}", self.provider),
        }
    }

    /// One turn with the test key and [`TIMEOUT`].
    pub async fn run(
        &self,
        config: &ModelAgentConfig,
        request: ModelRequest<'_>,
        on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
    ) -> Result<ModelReply, AgentError> {
        ModelAgent(config)
            .complete_with_key(
                &reqwest::Client::new(),
                request,
                TIMEOUT,
                on_delta,
                self.key,
            )
            .await
    }

    /// Runs a request against a server answering `response`; the error, checked to hide the key.
    pub async fn fail_with(&self, response: ResponseTemplate, stream: bool) -> AgentError {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(response)
            .mount(&server)
            .await;
        let messages = user("hi");
        let mut sink = |_: Delta| {};
        let sink: Option<&mut (dyn FnMut(Delta) + Send)> =
            if stream { Some(&mut sink) } else { None };
        let err = self
            .run(&self.config(&server, ""), plain(&messages), sink)
            .await
            .unwrap_err();
        let key = self.key;
        assert!(
            !err.to_string().contains(key) && !format!("{err:?}").contains(key),
            "{err:?}"
        );
        err
    }
}

pub(super) fn user(text: &str) -> Vec<Message> {
    vec![Message::User {
        content: text.into(),
    }]
}

pub(super) fn plain(messages: &[Message]) -> ModelRequest<'_> {
    ModelRequest {
        messages,
        tools: &[],
        output_schema: None,
    }
}

pub(super) async fn sent_body(server: &MockServer) -> Value {
    let requests = server.received_requests().await.unwrap();
    serde_json::from_slice(&requests.last().unwrap().body).unwrap()
}

pub(super) fn event_stream(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "text/event-stream")
}
