//! Calling agents, the services that carry out `agent` steps.
//!
//! - `registry`: which endpoint an agent id names (`AGENTS_FILE`, then `AGENT_BASE_URL`).
//! - `http`: the HTTP agent protocol, and the one POST-with-timeout both kinds share.
//! - `model`: a conversation with a model in Thygon's terms; [`complete`] runs one turn of it
//!   on a model provider: `openai` (OpenAI-compatible chat completions) or `anthropic`
//!   (the Anthropic Messages API), plain or streamed (`wire`: what both share).
//!
//! An `agent` step calls an HTTP agent through [`invoke`], once per attempt, and a model
//! through [`complete`], a turn at a time (its tool loop is `crate::steps`); every failure
//! comes back as an [`AgentError`] whose message says what went wrong without quoting any
//! secret.

mod anthropic;
mod http;
pub mod model;
mod openai;
mod registry;
#[cfg(test)]
mod test_support;
mod wire;

use std::time::Duration;

use model::{Delta, ModelParams, ModelReply, ModelRequest, Pricing};
pub use registry::{
    AgentEndpoint, AgentRegistry, HttpAgentConfig, ModelAgentConfig, ModelProvider, RateLimit,
};

/// Everything an agent is told about one attempt of one step.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCall {
    pub run_id: String,
    pub workflow_id: String,
    pub step: String,
    pub agent_id: String,
    /// Already templated.
    pub instructions: String,
    /// The run's variables (an object).
    pub variables: serde_json::Value,
    /// The step's templated inputs, or null.
    pub inputs: serde_json::Value,
    pub attempt: i32,
}

/// Why an attempt to call an agent failed. The messages become the step's error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no agent '{agent_id}' is configured: it is neither in AGENTS_FILE nor reachable through AGENT_BASE_URL"
    )]
    UnknownAgent { agent_id: String },
    #[error("the agent did not answer: timed out after {secs}s")]
    Timeout { secs: f64 },
    #[error("could not reach the agent: {0}")]
    Connect(String),
    #[error("the agent answered HTTP {status}: {body_snippet}")]
    HttpStatus { status: u16, body_snippet: String },
    /// The answer arrived but is not what the protocol asks for; the text says how.
    #[error("{0}")]
    InvalidResponse(String),
    #[error("the API key for this agent is missing: the environment variable {env} is not set")]
    MissingApiKey { env: String },
    #[error("the model provider failed: {0}")]
    Provider(String),
    /// HTTP 429, or 503 with a `Retry-After`: the caller may wait `retry_after` and retry.
    #[error("the model provider is rate limiting (HTTP {status}); {}", retry_hint(.retry_after))]
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The agent speaks the HTTP agent protocol, which has no tools nor output schema.
    #[error(
        "agent '{agent_id}' is an HTTP agent: tools and outputSchema need a model provider (provider = \"openai\" or \"anthropic\" in AGENTS_FILE)"
    )]
    NotAModel { agent_id: String },
    /// The request could not be sent or the answer not read for another reason.
    #[error("the call to the agent failed: {0}")]
    Transport(String),
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("retry after {}s", wait.as_secs_f64()),
        None => "it did not say when to retry".to_string(),
    }
}

/// Call the agent the registry names for `call.agent_id`. `timeout` is the default
/// per-attempt timeout if the agent entry sets none.
pub async fn invoke(
    registry: &AgentRegistry,
    client: &reqwest::Client,
    call: &AgentCall,
    timeout: Duration,
) -> Result<serde_json::Value, AgentError> {
    invoke_within(registry, client, call, timeout, None).await
}

/// Like [`invoke`]; `step_timeout` (the step's `timeoutSeconds`), when set, wins over the
/// agent entry's `timeoutSeconds`, which wins over `timeout`.
pub async fn invoke_within(
    registry: &AgentRegistry,
    client: &reqwest::Client,
    call: &AgentCall,
    timeout: Duration,
    step_timeout: Option<Duration>,
) -> Result<serde_json::Value, AgentError> {
    let endpoint = registry.resolve(&call.agent_id)?;
    log::debug!(
        "run {} step {} attempt {}: calling agent '{}'",
        call.run_id,
        call.step,
        call.attempt,
        call.agent_id
    );
    let result = match &endpoint {
        AgentEndpoint::Http(agent) => {
            http::call(
                client,
                agent,
                call,
                step_timeout.or(agent.timeout).unwrap_or(timeout),
            )
            .await
        }
        // A model takes turns (`complete`), driven by the step's tool loop
        // (`crate::steps`), which never calls this for one.
        AgentEndpoint::Model(_) => Err(AgentError::Provider(format!(
            "agent '{}' is a model: it is called a turn at a time (agents::complete), not through the HTTP agent protocol",
            call.agent_id
        ))),
    };
    if let Err(e) = &result {
        // Debug only: the engine records and logs the failure of the attempt itself.
        log::debug!(
            "run {} step {} attempt {}: agent '{}' failed: {e}",
            call.run_id,
            call.step,
            call.attempt,
            call.agent_id
        );
    }
    result
}

/// An agent whose entry names a model provider, as [`model_agent`] finds it.
#[derive(Debug, Clone, Copy)]
pub struct ModelAgent<'a>(&'a ModelAgentConfig);

impl<'a> ModelAgent<'a> {
    /// `"openai"` or `"anthropic"`, as in the entry.
    pub fn provider(&self) -> &'static str {
        self.0.provider.name()
    }

    /// The model's name as the entry gives it.
    pub fn model(&self) -> &'a str {
        &self.0.model
    }

    /// The entry's prices, if it sets `pricing`.
    pub fn pricing(&self) -> Option<Pricing> {
        self.0.pricing
    }

    /// Whether the entry asks for streamed answers (`stream = true`).
    pub fn streams(&self) -> bool {
        self.0.stream
    }

    /// The entry's `rateLimit`, if set.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.0.rate_limit
    }

    /// The entry's `timeoutSeconds`, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.0.timeout
    }

    /// The entry's sampling parameters (sent with every call).
    pub fn params(&self) -> &'a ModelParams {
        &self.0.params
    }

    /// One turn with the API key already read.
    async fn complete_with_key(
        self,
        client: &reqwest::Client,
        request: ModelRequest<'_>,
        timeout: Duration,
        on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
        api_key: &str,
    ) -> Result<ModelReply, AgentError> {
        let agent = self.0;
        let reply = match agent.provider {
            ModelProvider::OpenAi => {
                openai::complete(client, agent, request, timeout, on_delta, api_key).await
            }
            ModelProvider::Anthropic => {
                anthropic::complete(client, agent, request, timeout, on_delta, api_key).await
            }
        };
        reply.map_err(|e| wire::redact(e, api_key))
    }

    /// One turn; the API key is read from the entry's `apiKeyEnv` now.
    async fn complete(
        self,
        client: &reqwest::Client,
        request: ModelRequest<'_>,
        timeout: Duration,
        on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
    ) -> Result<ModelReply, AgentError> {
        let env = &self.0.api_key_env;
        // Read per call, so that a rotated key is picked up without a restart.
        let api_key = std::env::var(env)
            .ok()
            .filter(|key| !key.trim().is_empty())
            .ok_or_else(|| AgentError::MissingApiKey {
                env: env.to_string(),
            })?;
        self.complete_with_key(client, request, timeout, on_delta, api_key.trim())
            .await
    }
}

/// The model agent `agent_id` names: [`AgentError::NotAModel`] for an HTTP agent (a file
/// entry or the `AGENT_BASE_URL` fallback), [`AgentError::UnknownAgent`] for no agent.
pub fn model_agent<'r>(
    registry: &'r AgentRegistry,
    agent_id: &str,
) -> Result<ModelAgent<'r>, AgentError> {
    match registry.entry(agent_id) {
        Some(AgentEndpoint::Model(agent)) => Ok(ModelAgent(agent)),
        Some(AgentEndpoint::Http(_)) => Err(AgentError::NotAModel {
            agent_id: agent_id.to_string(),
        }),
        None => {
            registry.resolve(agent_id)?;
            Err(AgentError::NotAModel {
                agent_id: agent_id.to_string(),
            })
        }
    }
}

/// One model turn for an agent whose entry names a model provider (openai, anthropic).
///
/// `timeout` bounds the whole exchange, streamed or not, as given: the caller picks it
/// (the step's, else [`ModelAgent::timeout`], else its default). With `on_delta` the answer
/// is streamed and the sink sees its text and the start of each tool call as they arrive;
/// the reply is the same as without. The API key is read from the entry's `apiKeyEnv` at
/// every call.
pub async fn complete(
    registry: &AgentRegistry,
    client: &reqwest::Client,
    agent_id: &str,
    request: ModelRequest<'_>,
    timeout: Duration,
    on_delta: Option<&mut (dyn FnMut(Delta) + Send)>,
) -> Result<ModelReply, AgentError> {
    model_agent(registry, agent_id)?
        .complete(client, request, timeout, on_delta)
        .await
}

#[cfg(test)]
mod tests;
