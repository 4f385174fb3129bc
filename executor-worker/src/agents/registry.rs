//! Where each agent id leads: the agents file (`AGENTS_FILE`) first, then the
//! `AGENT_BASE_URL` fallback. Everything is checked when the registry is loaded, so
//! a typo in the file stops the worker at start-up instead of failing steps later.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use serde::Deserialize;

use super::model::{ModelParams, Pricing};
use super::AgentError;

/// The agents the worker can call, by id.
#[derive(Debug, Clone, Default)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentEndpoint>,
    /// Fallback for ids not in the file: agent `X` is `POST {base_url}/X`.
    base_url: Option<Url>,
}

/// How to reach one agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEndpoint {
    /// An agent speaking the HTTP agent protocol of the contract.
    Http(HttpAgentConfig),
    /// A model, called through its provider's API.
    Model(ModelAgentConfig),
}

/// An HTTP agent: `POST url` with the call as JSON.
#[derive(Clone, PartialEq)]
pub struct HttpAgentConfig {
    pub url: Url,
    /// Sent with every call, typically an API key; the values are marked sensitive and
    /// never printed (see the `Debug` impl).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per attempt; `None` takes the caller's default.
    pub timeout: Option<Duration>,
}

/// The API a model agent is called through (`provider` of its entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelProvider {
    /// OpenAI-compatible chat completions: `POST {base_url}/chat/completions`.
    OpenAi,
    /// The Anthropic Messages API: `POST {base_url}/v1/messages`, or
    /// `POST {base_url}/messages` when the path of `base_url` already ends in `/v1` (so both
    /// `https://api.anthropic.com` and `https://api.anthropic.com/v1` work). Sent with
    /// `x-api-key` and `anthropic-version: 2023-06-01` (unless `headers` sets its own
    /// `anthropic-version`).
    Anthropic,
}

impl ModelProvider {
    /// `"openai"` or `"anthropic"`, as in the entry.
    pub fn name(self) -> &'static str {
        match self {
            ModelProvider::OpenAi => "openai",
            ModelProvider::Anthropic => "anthropic",
        }
    }

    /// The highest `temperature` the provider takes.
    fn max_temperature(self) -> f64 {
        match self {
            ModelProvider::OpenAi => 2.0,
            ModelProvider::Anthropic => 1.0,
        }
    }
}

/// A model agent, whichever its provider.
#[derive(Clone, PartialEq)]
pub struct ModelAgentConfig {
    pub provider: ModelProvider,
    pub base_url: Url,
    pub model: String,
    /// The environment variable holding the API key. The key itself is read at call time
    /// so that it is never stored in the file nor kept in memory longer than a call.
    pub api_key_env: String,
    /// Extra headers for providers that want them (e.g. `anthropic-beta`); values are
    /// never printed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per attempt; `None` takes the caller's default.
    pub timeout: Option<Duration>,
    /// `temperature` (0 to 2 for openai, 0 to 1 for anthropic), `maxTokens` (anthropic
    /// sends 4096 when unset: its API requires one), `topP` of the entry.
    pub params: ModelParams,
    /// The entry's `pricing`, if any.
    pub pricing: Option<Pricing>,
    /// The entry's `rateLimit`, if any: shared by every worker.
    pub rate_limit: Option<RateLimit>,
    /// `stream = true`: answers are streamed, their pieces sent live on the run's events.
    pub stream: bool,
}

// Hand-written so that header values (which usually are secrets) never reach a log.
impl fmt::Debug for HttpAgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAgentConfig")
            .field("url", &self.url.as_str())
            .field("headers", &RedactedHeaders(&self.headers))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for ModelAgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelAgentConfig")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("timeout", &self.timeout)
            .field("params", &self.params)
            .field("pricing", &self.pricing)
            .field("rate_limit", &self.rate_limit)
            .field("stream", &self.stream)
            .finish()
    }
}

struct RedactedHeaders<'a>(&'a [(HeaderName, HeaderValue)]);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, _)| (name.as_str(), "<redacted>")))
            .finish()
    }
}

/// The file as written; `deny_unknown_fields` so that a misspelt key is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default)]
    agents: BTreeMap<String, RawEntry>,
}

/// One entry as written. Both kinds share one flat shape (serde cannot combine an
/// internally tagged enum with `deny_unknown_fields`); `into_endpoint` sorts them out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    provider: Option<String>,
    url: Option<String>,
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    timeout_seconds: Option<f64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    temperature: Option<f64>,
    max_tokens: Option<i64>,
    top_p: Option<f64>,
    pricing: Option<RawPricing>,
    rate_limit: Option<RawRateLimit>,
    stream: Option<bool>,
}

/// `rateLimit = { requestsPerMinute, tokensPerMinute }`: either or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimit {
    requests_per_minute: Option<i64>,
    tokens_per_minute: Option<i64>,
}

/// What the whole fleet may send one agent per minute (`rateLimit` of its entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
}

/// `pricing = { inputPerMTok, outputPerMTok, cachedInputPerMTok }`, USD per million tokens.
/// The first two are required; checked in `into_endpoint` so that the error names the agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPricing {
    input_per_m_tok: Option<f64>,
    output_per_m_tok: Option<f64>,
    cached_input_per_m_tok: Option<f64>,
}

impl RawEntry {
    fn into_endpoint(self) -> Result<AgentEndpoint, String> {
        let timeout = self.timeout_seconds.map(parse_timeout).transpose()?;
        let headers = parse_headers(&self.headers)?;
        match self.provider.as_deref() {
            None | Some("http") => {
                reject_field("baseUrl", self.base_url.is_some(), "HTTP agents (use url)")?;
                for (name, present) in [
                    ("temperature", self.temperature.is_some()),
                    ("maxTokens", self.max_tokens.is_some()),
                    ("topP", self.top_p.is_some()),
                    ("pricing", self.pricing.is_some()),
                    ("rateLimit", self.rate_limit.is_some()),
                    ("stream", self.stream.is_some()),
                ] {
                    reject_field(name, present, "HTTP agents")?;
                }
                reject_field("model", self.model.is_some(), "HTTP agents")?;
                reject_field(
                    "apiKeyEnv",
                    self.api_key_env.is_some(),
                    "HTTP agents (use headers)",
                )?;
                let url = self
                    .url
                    .ok_or("missing field `url` (or set provider = \"openai\")")?;
                Ok(AgentEndpoint::Http(HttpAgentConfig {
                    url: parse_url("url", &url)?,
                    headers,
                    timeout,
                }))
            }
            Some("openai") => self.model_config(ModelProvider::OpenAi, headers, timeout),
            Some("anthropic") => self.model_config(ModelProvider::Anthropic, headers, timeout),
            Some(other) => Err(format!(
                "unknown provider \"{other}\" (expected \"http\", \"openai\" or \"anthropic\")"
            )),
        }
    }
}

impl RawEntry {
    /// A model provider's entry; `headers` and `timeout` are already checked.
    fn model_config(
        self,
        provider: ModelProvider,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Option<Duration>,
    ) -> Result<AgentEndpoint, String> {
        let max_temperature = provider.max_temperature();
        let provider_name = provider.name();
        reject_field(
            "url",
            self.url.is_some(),
            &format!("provider \"{provider_name}\" (use baseUrl)"),
        )?;
        let base_url = self.base_url.ok_or("missing field `baseUrl`")?;
        let model = self.model.ok_or("missing field `model`")?;
        let api_key_env = self.api_key_env.ok_or("missing field `apiKeyEnv`")?;
        if model.trim().is_empty() {
            return Err("`model` is empty".into());
        }
        if api_key_env.trim().is_empty() {
            return Err("`apiKeyEnv` is empty".into());
        }
        let in_range = |field: &str, value: Option<f64>, max: f64| match value {
            Some(v) if !(0.0..=max).contains(&v) => Err(format!(
                "`{field}` must be from 0 to {max} for provider \"{provider_name}\", got {v}"
            )),
            _ => Ok(value),
        };
        let max_tokens = match self.max_tokens {
            None => None,
            Some(n @ 1..=1_000_000) => Some(n as u32),
            Some(n) => return Err(format!("`maxTokens` must be from 1 to 1000000, got {n}")),
        };
        let params = ModelParams {
            temperature: in_range("temperature", self.temperature, max_temperature)?,
            max_tokens,
            top_p: in_range("topP", self.top_p, 1.0)?,
        };
        let pricing = self
            .pricing
            .map(|p| {
                let input = p
                    .input_per_m_tok
                    .ok_or("missing field `pricing.inputPerMTok`")?;
                let output = p
                    .output_per_m_tok
                    .ok_or("missing field `pricing.outputPerMTok`")?;
                Pricing::from_usd_per_mtok(input, output, p.cached_input_per_m_tok)
            })
            .transpose()?;
        let rate_limit = self
            .rate_limit
            .map(|r| {
                let per_minute = |field: &str, n: Option<i64>| match n {
                    Some(n) if !(1..=100_000_000).contains(&n) => Err(format!(
                        "`rateLimit.{field}` must be from 1 to 100000000, got {n}"
                    )),
                    _ => Ok(n),
                };
                let limit = RateLimit {
                    requests_per_minute: per_minute("requestsPerMinute", r.requests_per_minute)?,
                    tokens_per_minute: per_minute("tokensPerMinute", r.tokens_per_minute)?,
                };
                if limit.requests_per_minute.is_none() && limit.tokens_per_minute.is_none() {
                    return Err(
                        "`rateLimit` must set requestsPerMinute, tokensPerMinute or both".into(),
                    );
                }
                Ok::<_, String>(limit)
            })
            .transpose()?;
        Ok(AgentEndpoint::Model(ModelAgentConfig {
            provider,
            base_url: parse_url("baseUrl", &base_url)?,
            model,
            api_key_env,
            headers,
            timeout,
            params,
            pricing,
            rate_limit,
            stream: self.stream.unwrap_or(false),
        }))
    }
}

fn reject_field(name: &str, present: bool, kind: &str) -> Result<(), String> {
    if present {
        Err(format!("field `{name}` does not apply to {kind}"))
    } else {
        Ok(())
    }
}

fn parse_timeout(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!(
            "`timeoutSeconds` must be greater than 0, got {secs}"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`timeoutSeconds` {secs} is too large"))
}

fn parse_url(field: &str, value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("`{field}` is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("`{field}` must be an http:// or https:// URL"));
    }
    Ok(url)
}

fn parse_headers(raw: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    raw.iter()
        .map(|(name, value)| {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name \"{name}\" is not a valid HTTP header name"))?;
            // The value is not quoted in the error: it is probably a secret.
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                format!("the value of header \"{name}\" is not a valid HTTP header value")
            })?;
            value.set_sensitive(true);
            Ok((header, value))
        })
        .collect()
}

impl AgentRegistry {
    /// Builds the registry from `AGENTS_FILE` and `AGENT_BASE_URL` (empty counts as unset).
    pub fn from_env() -> Result<AgentRegistry, String> {
        let file = non_empty_env("AGENTS_FILE");
        let base_url = non_empty_env("AGENT_BASE_URL");
        let registry = Self::load(file.as_deref().map(Path::new), base_url)?;
        match &file {
            Some(file) => log::info!("loaded {} agent(s) from {file}", registry.agents.len()),
            None => log::info!("AGENTS_FILE is not set: no agents from a file"),
        }
        match &registry.base_url {
            Some(url) => log::info!("agents not in the file are called at {url}<agentId>"),
            None => log::info!("AGENT_BASE_URL is not set: agents not in the file are unknown"),
        }
        Ok(registry)
    }

    /// Reads `file` (`.toml` or `.json`, the same structure) if given.
    pub fn load(file: Option<&Path>, base_url: Option<String>) -> Result<Self, String> {
        let Some(file) = file else {
            return Self::from_parts(BTreeMap::new(), base_url);
        };
        let shown = file.display();
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the agents file {shown}: {e}"))?;
        let extension = file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parsed = match extension.as_deref() {
            Some("toml") => Self::from_toml_str(&text, base_url),
            Some("json") => Self::from_json_str(&text, base_url),
            _ => Err("the name must end in .toml or .json".to_string()),
        };
        parsed.map_err(|e| format!("invalid agents file {shown}: {e}"))
    }

    pub fn from_toml_str(s: &str, base_url: Option<String>) -> Result<Self, String> {
        let file: AgentsFile =
            toml::from_str(s).map_err(|e| e.to_string().trim_end().to_string())?;
        Self::from_parts(file.agents, base_url)
    }

    pub fn from_json_str(s: &str, base_url: Option<String>) -> Result<Self, String> {
        let file: AgentsFile = serde_json::from_str(s).map_err(|e| e.to_string())?;
        Self::from_parts(file.agents, base_url)
    }

    fn from_parts(
        raw: BTreeMap<String, RawEntry>,
        base_url: Option<String>,
    ) -> Result<Self, String> {
        let agents = raw
            .into_iter()
            .map(|(id, entry)| {
                let endpoint = entry
                    .into_endpoint()
                    .map_err(|e| format!("agent '{id}': {e}"))?;
                Ok((id, endpoint))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let base_url = base_url
            .map(|url| parse_url("AGENT_BASE_URL", &url))
            .transpose()?;
        Ok(AgentRegistry { agents, base_url })
    }

    /// The file entry for `agent_id`, if any (model agents are only ever file entries).
    pub(super) fn entry(&self, agent_id: &str) -> Option<&AgentEndpoint> {
        self.agents.get(agent_id)
    }

    /// The endpoint for `agent_id`: its file entry, else `POST {AGENT_BASE_URL}/{agent_id}`.
    pub fn resolve(&self, agent_id: &str) -> Result<AgentEndpoint, AgentError> {
        if let Some(endpoint) = self.agents.get(agent_id) {
            return Ok(endpoint.clone());
        }
        let unknown = || AgentError::UnknownAgent {
            agent_id: agent_id.to_string(),
        };
        // The URL path cannot name these ids (`.` and `..` would be dropped from it).
        if matches!(agent_id, "" | "." | "..") {
            return Err(unknown());
        }
        let mut url = self.base_url.clone().ok_or_else(unknown)?;
        url.path_segments_mut()
            .map_err(|_| unknown())?
            .pop_if_empty()
            .push(agent_id); // percent-encodes, `/` included
        Ok(AgentEndpoint::Http(HttpAgentConfig {
            url,
            headers: Vec::new(),
            timeout: None,
        }))
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests;
