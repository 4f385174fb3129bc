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
        AgentEndpoint::Model(config) if config.provider == ModelProvider::OpenAi => {
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
        AgentEndpoint::Model(ModelAgentConfig {
            provider: ModelProvider::OpenAi,
            ..
        })
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
    let err = AgentRegistry::load(Some(Path::new("/no/such/dir/agents.toml")), None).unwrap_err();
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
        ("[agents.a]\nprovider = \"gemini\"\nurl = \"http://x.test\"\n", "unknown provider"),
        ("[agents.a]\nprovider = \"anthropic\"\nurl = \"http://x.test\"\n", "`url`"),
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

const MODEL_TOML: &str = r#"
[agents.gpt]
provider = "openai"
baseUrl = "https://api.example.com/v1"
model = "gpt-x"
apiKeyEnv = "OPENAI_API_KEY"
temperature = 1.5
maxTokens = 2000
topP = 0.9
pricing = { inputPerMTok = 2.5, outputPerMTok = 10, cachedInputPerMTok = 1.25 }

[agents.claude]
provider = "anthropic"
baseUrl = "https://api.anthropic.example"
model = "claude-x"
apiKeyEnv = "ANTHROPIC_API_KEY"
timeoutSeconds = 120
headers = { "anthropic-beta" = "beta-secret" }
maxTokens = 1024
pricing = { inputPerMTok = 3, outputPerMTok = 15 }

[agents.bare]
provider = "anthropic"
baseUrl = "https://api.anthropic.example/v1"
model = "claude-y"
apiKeyEnv = "K"
"#;

fn openai(endpoint: AgentEndpoint) -> ModelAgentConfig {
    match endpoint {
        AgentEndpoint::Model(config) if config.provider == ModelProvider::OpenAi => config,
        other => panic!("expected an OpenAI agent, got {other:?}"),
    }
}

fn anthropic(endpoint: AgentEndpoint) -> ModelAgentConfig {
    match endpoint {
        AgentEndpoint::Model(config) if config.provider == ModelProvider::Anthropic => config,
        other => panic!("expected an Anthropic agent, got {other:?}"),
    }
}

fn check_model_entries(registry: &AgentRegistry) {
    let gpt = openai(registry.resolve("gpt").unwrap());
    assert_eq!(
        gpt.params,
        ModelParams {
            temperature: Some(1.5),
            max_tokens: Some(2000),
            top_p: Some(0.9),
        }
    );
    assert_eq!(
        gpt.pricing,
        Some(Pricing::from_usd_per_mtok(2.5, 10.0, Some(1.25)).unwrap())
    );

    let claude = anthropic(registry.resolve("claude").unwrap());
    assert_eq!(claude.base_url.as_str(), "https://api.anthropic.example/");
    assert_eq!(claude.model, "claude-x");
    assert_eq!(claude.api_key_env, "ANTHROPIC_API_KEY");
    assert_eq!(claude.timeout, Some(Duration::from_secs(120)));
    assert_eq!(claude.headers[0].0.as_str(), "anthropic-beta");
    assert!(claude.headers[0].1.is_sensitive());
    assert_eq!(
        claude.params,
        ModelParams {
            temperature: None,
            max_tokens: Some(1024),
            top_p: None,
        }
    );
    let pricing = claude.pricing.unwrap();
    assert_eq!(pricing.input_picos, 3_000_000);
    assert_eq!(pricing.output_picos, 15_000_000);
    assert_eq!(pricing.cached_picos, 3_000_000);

    let bare = anthropic(registry.resolve("bare").unwrap());
    assert_eq!(bare.params, ModelParams::default());
    assert_eq!(bare.pricing, None);
}

#[test]
fn model_entries_read_params_and_pricing_from_toml() {
    check_model_entries(&AgentRegistry::from_toml_str(MODEL_TOML, None).unwrap());
}

#[test]
fn model_entries_read_params_and_pricing_from_json() {
    let json = r#"{"agents": {
        "gpt": {"provider": "openai", "baseUrl": "https://api.example.com/v1", "model": "gpt-x",
                "apiKeyEnv": "OPENAI_API_KEY", "temperature": 1.5, "maxTokens": 2000, "topP": 0.9,
                "pricing": {"inputPerMTok": 2.5, "outputPerMTok": 10, "cachedInputPerMTok": 1.25}},
        "claude": {"provider": "anthropic", "baseUrl": "https://api.anthropic.example",
                   "model": "claude-x", "apiKeyEnv": "ANTHROPIC_API_KEY", "timeoutSeconds": 120,
                   "headers": {"anthropic-beta": "beta-secret"}, "maxTokens": 1024,
                   "pricing": {"inputPerMTok": 3, "outputPerMTok": 15}},
        "bare": {"provider": "anthropic", "baseUrl": "https://api.anthropic.example/v1",
                 "model": "claude-y", "apiKeyEnv": "K"}
    }}"#;
    check_model_entries(&AgentRegistry::from_json_str(json, None).unwrap());
}

const OPENAI_HEAD: &str = "[agents.a]\nprovider = \"openai\"\nbaseUrl = \"https://x.test/v1\"\nmodel = \"m\"\napiKeyEnv = \"K\"\n";
const ANTHROPIC_HEAD: &str = "[agents.a]\nprovider = \"anthropic\"\nbaseUrl = \"https://x.test\"\nmodel = \"m\"\napiKeyEnv = \"K\"\n";

#[test]
fn model_fields_out_of_range_are_errors_naming_the_agent_and_field() {
    let cases = [
        (OPENAI_HEAD, "temperature = 2.5\n", "`temperature`"),
        (OPENAI_HEAD, "temperature = -0.1\n", "`temperature`"),
        (
            ANTHROPIC_HEAD,
            "temperature = 1.5\n",
            "`temperature` must be from 0 to 1",
        ),
        (OPENAI_HEAD, "maxTokens = 0\n", "`maxTokens`"),
        (ANTHROPIC_HEAD, "maxTokens = 1000001\n", "`maxTokens`"),
        (OPENAI_HEAD, "topP = 1.1\n", "`topP`"),
        (
            ANTHROPIC_HEAD,
            "pricing = { inputPerMTok = 1 }\n",
            "`pricing.outputPerMTok`",
        ),
        (
            OPENAI_HEAD,
            "pricing = { outputPerMTok = 1 }\n",
            "`pricing.inputPerMTok`",
        ),
        (
            OPENAI_HEAD,
            "pricing = { inputPerMTok = -1, outputPerMTok = 1 }\n",
            "`pricing.inputPerMTok`",
        ),
        (
            ANTHROPIC_HEAD,
            "pricing = { inputPerMTok = 1, outputPerMTok = 1, cachedInputPerMTok = 0.0000001 }\n",
            "`pricing.cachedInputPerMTok`",
        ),
    ];
    for (head, extra, expected) in cases {
        let toml = format!("{head}{extra}");
        let err = AgentRegistry::from_toml_str(&toml, None).unwrap_err();
        assert!(
            err.contains("agent 'a'") && err.contains(expected),
            "{toml:?} -> {err}"
        );
    }
    let err = AgentRegistry::from_json_str(
        r#"{"agents": {"a": {"provider": "openai", "baseUrl": "https://x.test/v1", "model": "m",
            "apiKeyEnv": "K", "topP": -1}}}"#,
        None,
    )
    .unwrap_err();
    assert!(err.contains("agent 'a'") && err.contains("`topP`"), "{err}");
}

#[test]
fn a_misspelt_pricing_key_is_an_error() {
    let toml = format!("{OPENAI_HEAD}pricing = {{ inputPerMtok = 1, outputPerMTok = 1 }}\n");
    let err = AgentRegistry::from_toml_str(&toml, None).unwrap_err();
    assert!(err.contains("inputPerMtok"), "{err}");
    let err = AgentRegistry::from_json_str(
        r#"{"agents": {"a": {"provider": "openai", "baseUrl": "https://x.test/v1", "model": "m",
            "apiKeyEnv": "K", "pricing": {"inputPerMTok": 1, "outputPerMTok": 1, "cached": 1}}}}"#,
        None,
    )
    .unwrap_err();
    assert!(err.contains("cached"), "{err}");
}

#[test]
fn model_fields_are_refused_on_http_agents() {
    let head = "[agents.a]\nurl = \"http://x.test/a\"\n";
    for (extra, field) in [
        ("temperature = 0.5\n", "`temperature`"),
        ("maxTokens = 10\n", "`maxTokens`"),
        ("topP = 0.5\n", "`topP`"),
        (
            "pricing = { inputPerMTok = 1, outputPerMTok = 1 }\n",
            "`pricing`",
        ),
    ] {
        let toml = format!("{head}{extra}");
        let err = AgentRegistry::from_toml_str(&toml, None).unwrap_err();
        assert!(
            err.contains("agent 'a'") && err.contains(field) && err.contains("HTTP agents"),
            "{toml:?} -> {err}"
        );
    }
    for extra in [
        r#""temperature": 0.5"#,
        r#""maxTokens": 10"#,
        r#""topP": 0.5"#,
        r#""pricing": {"inputPerMTok": 1, "outputPerMTok": 1}"#,
    ] {
        let json = format!(r#"{{"agents": {{"a": {{"url": "http://x.test/a", {extra}}}}}}}"#);
        let err = AgentRegistry::from_json_str(&json, None).unwrap_err();
        assert!(
            err.contains("does not apply to HTTP agents"),
            "{json} -> {err}"
        );
    }
}

#[test]
fn anthropic_entries_need_the_model_fields() {
    for (toml, expected) in [
        ("[agents.a]\nprovider = \"anthropic\"\nmodel = \"m\"\napiKeyEnv = \"K\"\n", "`baseUrl`"),
        ("[agents.a]\nprovider = \"anthropic\"\nbaseUrl = \"https://x.test\"\napiKeyEnv = \"K\"\n", "`model`"),
        ("[agents.a]\nprovider = \"anthropic\"\nbaseUrl = \"https://x.test\"\nmodel = \"m\"\n", "`apiKeyEnv`"),
    ] {
        let err = AgentRegistry::from_toml_str(toml, None).unwrap_err();
        assert!(err.contains("agent 'a'") && err.contains(expected), "{toml:?} -> {err}");
    }
}

#[test]
fn debug_output_of_model_agents_hides_header_values() {
    let registry = AgentRegistry::from_toml_str(MODEL_TOML, None).unwrap();
    let shown = format!("{registry:?}");
    assert!(
        shown.contains("ModelAgentConfig { provider: Anthropic")
            && shown.contains("anthropic-beta"),
        "{shown}"
    );
    assert!(!shown.contains("beta-secret"), "{shown}");
}

#[test]
fn a_model_agent_takes_a_rate_limit_and_a_bad_one_is_named() {
    let toml = |limit: &str| {
        format!(
            "[agents.m]\nprovider = \"openai\"\nbaseUrl = \"https://api.example.com/v1\"\nmodel = \"x\"\napiKeyEnv = \"K\"\nrateLimit = {limit}\n"
        )
    };
    let registry = AgentRegistry::from_toml_str(
        &toml("{ requestsPerMinute = 60, tokensPerMinute = 90000 }"),
        None,
    )
    .unwrap();
    let Some(AgentEndpoint::Model(m)) = registry.entry("m") else {
        panic!("an openai agent")
    };
    assert_eq!(
        m.rate_limit,
        Some(RateLimit {
            requests_per_minute: Some(60),
            tokens_per_minute: Some(90000)
        })
    );
    for (limit, problem) in [
        (
            "{ requestsPerMinute = 0 }",
            "`rateLimit.requestsPerMinute` must be from 1 to 100000000",
        ),
        (
            "{}",
            "`rateLimit` must set requestsPerMinute, tokensPerMinute or both",
        ),
        ("{ rpm = 5 }", "unknown field `rpm`"),
    ] {
        let err = AgentRegistry::from_toml_str(&toml(limit), None).unwrap_err();
        assert!(err.contains(problem), "{limit}: {err}");
    }
    let http =
        "[agents.h]\nurl = \"http://127.0.0.1:9/x\"\nrateLimit = { requestsPerMinute = 5 }\n";
    let err = AgentRegistry::from_toml_str(http, None).unwrap_err();
    assert!(
        err.contains("field `rateLimit` does not apply to HTTP agents"),
        "{err}"
    );
}
