//! Calling agents, the services that carry out `agent` steps.
//!
//! - `registry`: which endpoint an agent id names (`AGENTS_FILE`, then `AGENT_BASE_URL`).
//! - `http`: the HTTP agent protocol, and the one POST-with-timeout both kinds share.
//! - `openai`: OpenAI-compatible chat-completions models.
//!
//! The engine calls [`invoke`] once per attempt; every failure comes back as an
//! [`AgentError`] whose message says what went wrong without quoting any secret.

mod http;
pub mod model;
mod openai;
mod registry;

use std::time::Duration;

pub use registry::{AgentEndpoint, AgentRegistry, HttpAgentConfig, OpenAiAgentConfig};

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
    /// The request could not be sent or the answer not read for another reason.
    #[error("the call to the agent failed: {0}")]
    Transport(String),
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
        AgentEndpoint::OpenAi(agent) => {
            openai::call(
                client,
                agent,
                call,
                step_timeout.or(agent.timeout).unwrap_or(timeout),
            )
            .await
        }
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
