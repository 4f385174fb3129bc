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
    /// An OpenAI-compatible chat-completions model.
    OpenAi(OpenAiAgentConfig),
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

/// An OpenAI-compatible model: `POST {base_url}/chat/completions`.
#[derive(Clone, PartialEq)]
pub struct OpenAiAgentConfig {
    pub base_url: Url,
    pub model: String,
    /// The environment variable holding the API key. The key itself is read at call time
    /// so that it is never stored in the file nor kept in memory longer than a call.
    pub api_key_env: String,
    /// Extra headers for providers that want them; values are never printed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per attempt; `None` takes the caller's default.
    pub timeout: Option<Duration>,
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

impl fmt::Debug for OpenAiAgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiAgentConfig")
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("timeout", &self.timeout)
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
}

impl RawEntry {
    fn into_endpoint(self) -> Result<AgentEndpoint, String> {
        let timeout = self.timeout_seconds.map(parse_timeout).transpose()?;
        let headers = parse_headers(&self.headers)?;
        match self.provider.as_deref() {
            None | Some("http") => {
                reject_field("baseUrl", self.base_url.is_some(), "HTTP agents (use url)")?;
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
            Some("openai") => {
                reject_field(
                    "url",
                    self.url.is_some(),
                    "provider \"openai\" (use baseUrl)",
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
                Ok(AgentEndpoint::OpenAi(OpenAiAgentConfig {
                    base_url: parse_url("baseUrl", &base_url)?,
                    model,
                    api_key_env,
                    headers,
                    timeout,
                }))
            }
            Some(other) => Err(format!(
                "unknown provider \"{other}\" (expected \"http\" or \"openai\")"
            )),
        }
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
mod tests {
    use super::*;

    const TOML: &str = r#"
[agents.support-classifier]
url = "http://127.0.0.1:9000/classify"
timeoutSeconds = 30
headers = { "X-Api-Key" = "s3cret-value" }

[agents.plain]
provider = "http"
url = "https://agents.example.com/plain"

[agents.summarizer]
provider = "openai"
baseUrl = "https://api.example.com/v1"
model = "some-model"
apiKeyEnv = "OPENAI_API_KEY"
timeoutSeconds = 1.5
"#;

    fn http(endpoint: AgentEndpoint) -> HttpAgentConfig {
        match endpoint {
            AgentEndpoint::Http(config) => config,
            other => panic!("expected an HTTP agent, got {other:?}"),
        }
    }

    #[test]
    fn toml_file_yields_http_and_openai_agents() {
        let registry = AgentRegistry::from_toml_str(TOML, None).unwrap();

        let classifier = http(registry.resolve("support-classifier").unwrap());
        assert_eq!(classifier.url.as_str(), "http://127.0.0.1:9000/classify");
        assert_eq!(classifier.timeout, Some(Duration::from_secs(30)));
        assert_eq!(classifier.headers.len(), 1);
        assert_eq!(classifier.headers[0].0.as_str(), "x-api-key");
        assert_eq!(classifier.headers[0].1.to_str().unwrap(), "s3cret-value");

        let plain = http(registry.resolve("plain").unwrap());
        assert_eq!(plain.timeout, None);
        assert!(plain.headers.is_empty());

        match registry.resolve("summarizer").unwrap() {
            AgentEndpoint::OpenAi(config) => {
                assert_eq!(config.base_url.as_str(), "https://api.example.com/v1");
                assert_eq!(config.model, "some-model");
                assert_eq!(config.api_key_env, "OPENAI_API_KEY");
                assert_eq!(config.timeout, Some(Duration::from_millis(1500)));
            }
            other => panic!("expected an OpenAI agent, got {other:?}"),
        }
    }

    #[test]
    fn json_file_has_the_same_structure() {
        let json = r#"{"agents": {
            "support-classifier": {"url": "http://127.0.0.1:9000/classify", "timeoutSeconds": 5},
            "summarizer": {"provider": "openai", "baseUrl": "https://api.example.com/v1",
                           "model": "m", "apiKeyEnv": "KEY_VAR"}
        }}"#;
        let registry = AgentRegistry::from_json_str(json, None).unwrap();
        let classifier = http(registry.resolve("support-classifier").unwrap());
        assert_eq!(classifier.timeout, Some(Duration::from_secs(5)));
        assert!(matches!(
            registry.resolve("summarizer").unwrap(),
            AgentEndpoint::OpenAi(_)
        ));
    }

    #[test]
    fn load_picks_the_format_from_the_extension() {
        let dir = std::env::temp_dir().join(format!("thygon-agents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("agents.toml");
        let json_path = dir.join("agents.json");
        std::fs::write(&toml_path, TOML).unwrap();
        std::fs::write(
            &json_path,
            r#"{"agents": {"a": {"url": "http://127.0.0.1:1/a"}}}"#,
        )
        .unwrap();

        let from_toml = AgentRegistry::load(Some(&toml_path), None).unwrap();
        let from_json = AgentRegistry::load(Some(&json_path), None).unwrap();
        assert!(from_toml.resolve("summarizer").is_ok());
        assert!(from_json.resolve("a").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_demo_agents_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents.toml");
        let registry = AgentRegistry::load(Some(&path), None).unwrap();
        for (id, route) in [
            ("support-classifier", "/classify"),
            ("reply-drafter", "/draft-reply"),
            ("ticket-router", "/route"),
        ] {
            assert_eq!(http(registry.resolve(id).unwrap()).url.path(), route);
        }
    }

    #[test]
    fn ids_not_in_the_file_fall_back_to_the_base_url() {
        let base = Some("http://127.0.0.1:9000/agents/".to_string());
        let registry = AgentRegistry::from_toml_str(TOML, base).unwrap();

        let fallback = http(registry.resolve("ticket-router").unwrap());
        assert_eq!(
            fallback.url.as_str(),
            "http://127.0.0.1:9000/agents/ticket-router"
        );
        assert_eq!(fallback.timeout, None);
        // File entries win over the fallback.
        let classifier = http(registry.resolve("support-classifier").unwrap());
        assert_eq!(classifier.url.as_str(), "http://127.0.0.1:9000/classify");
        // An id cannot escape the base path.
        let odd = http(registry.resolve("a/b c").unwrap());
        assert_eq!(odd.url.as_str(), "http://127.0.0.1:9000/agents/a%2Fb%20c");
    }

    #[test]
    fn base_url_without_a_path_gets_the_id_as_its_path() {
        let registry = AgentRegistry::load(None, Some("http://localhost:9000".into())).unwrap();
        let agent = http(registry.resolve("route").unwrap());
        assert_eq!(agent.url.as_str(), "http://localhost:9000/route");
    }

    #[test]
    fn unknown_agent_error_names_the_id() {
        let registry = AgentRegistry::from_toml_str(TOML, None).unwrap();
        let err = registry.resolve("nobody-home").unwrap_err();
        assert!(matches!(&err, AgentError::UnknownAgent { agent_id } if agent_id == "nobody-home"));
        let message = err.to_string();
        assert!(message.contains("'nobody-home'"), "{message}");
        assert!(
            message.contains("AGENTS_FILE") && message.contains("AGENT_BASE_URL"),
            "{message}"
        );
    }

    #[test]
    fn nothing_configured_means_every_agent_is_unknown() {
        let registry = AgentRegistry::load(None, None).unwrap();
        assert!(matches!(
            registry.resolve("x"),
            Err(AgentError::UnknownAgent { .. })
        ));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err =
            AgentRegistry::load(Some(Path::new("/no/such/dir/agents.toml")), None).unwrap_err();
        assert!(err.contains("/no/such/dir/agents.toml"), "{err}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("thygon-bad-agents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agents.toml");
        std::fs::write(&path, "[agents.x\nurl = ").unwrap();
        let err = AgentRegistry::load(Some(&path), None).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let yaml = dir.join("agents.yaml");
        std::fs::write(&yaml, "agents: {}").unwrap();
        let err = AgentRegistry::load(Some(&yaml), None).unwrap_err();
        assert!(err.contains(".toml or .json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_misspelt_key_is_an_error() {
        let err = AgentRegistry::from_toml_str(
            "[agents.a]\nurl = \"http://127.0.0.1:1/a\"\ntimeoutSecond = 3\n",
            None,
        )
        .unwrap_err();
        assert!(err.contains("timeoutSecond"), "{err}");
    }

    #[test]
    fn incomplete_or_mixed_entries_are_errors_naming_the_agent() {
        let cases = [
            ("[agents.a]\ntimeoutSeconds = 3\n", "`url`"),
            ("[agents.a]\nprovider = \"openai\"\nbaseUrl = \"https://x.test/v1\"\napiKeyEnv = \"K\"\n", "`model`"),
            ("[agents.a]\nprovider = \"anthropic\"\nurl = \"http://x.test\"\n", "unknown provider"),
            ("[agents.a]\nurl = \"http://x.test\"\nmodel = \"m\"\n", "`model`"),
            ("[agents.a]\nurl = \"not a url\"\n", "not a valid URL"),
            ("[agents.a]\nurl = \"ftp://x.test/a\"\n", "http://"),
            ("[agents.a]\nurl = \"http://x.test\"\ntimeoutSeconds = 0\n", "greater than 0"),
            ("[agents.a]\nurl = \"http://x.test\"\nheaders = { \"X-Key\" = \"line\\nbreak\" }\n", "X-Key"),
        ];
        for (toml, expected) in cases {
            let err = AgentRegistry::from_toml_str(toml, None).unwrap_err();
            assert!(
                err.contains("agent 'a'") && err.contains(expected),
                "{toml:?} -> {err}"
            );
        }
    }

    #[test]
    fn an_invalid_base_url_is_an_error() {
        let err = AgentRegistry::load(None, Some("127.0.0.1:9000".into())).unwrap_err();
        assert!(err.contains("AGENT_BASE_URL"), "{err}");
    }

    #[test]
    fn debug_output_hides_header_values() {
        let registry = AgentRegistry::from_toml_str(TOML, None).unwrap();
        let shown = format!("{registry:?}");
        assert!(shown.contains("x-api-key"), "{shown}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
    }
}
