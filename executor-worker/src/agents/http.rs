//! The HTTP agent protocol: `POST <url>` with the [`AgentCall`] as JSON and an
//! `Idempotency-Key` of `<runId>:<step>`; a 2xx answer `{ "output": <any JSON> }` completes
//! the attempt. Also the POST-with-timeout (plain or streamed) that model calls use too.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

use super::{AgentCall, AgentError, HttpAgentConfig};

/// An answer bigger than this is refused rather than held in memory.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How much of an unexpected body an error message quotes.
const SNIPPET_CHARS: usize = 200;

pub(super) async fn call(
    client: &reqwest::Client,
    agent: &HttpAgentConfig,
    call: &AgentCall,
    timeout: Duration,
) -> Result<Value, AgentError> {
    // The same key on every attempt of a step, so the agent can recognise a retry.
    let key = format!("{}:{}", call.run_id, call.step);
    let key = HeaderValue::from_bytes(key.as_bytes()).map_err(|_| {
        AgentError::Transport(format!(
            "cannot send the Idempotency-Key {key:?}: not a valid header value"
        ))
    })?;
    let mut headers = agent.headers.clone();
    headers.push((HeaderName::from_static("idempotency-key"), key));

    let answer = post_json(client, &agent.url, &headers, call, timeout).await?;
    answer.check_status()?;
    let body: Value = serde_json::from_slice(&answer.body).map_err(|_| {
        AgentError::InvalidResponse(format!(
            "the agent answered with a body that is not JSON: {}",
            snippet(&answer.body)
        ))
    })?;
    match body {
        Value::Object(mut fields) => fields.remove("output").ok_or_else(|| {
            AgentError::InvalidResponse(format!(
                "the agent answered JSON without an \"output\" field: {}",
                snippet(&answer.body)
            ))
        }),
        _ => Err(AgentError::InvalidResponse(format!(
            "the agent answered JSON that is not an object with an \"output\" field: {}",
            snippet(&answer.body)
        ))),
    }
}

/// An answer, read within the timeout.
pub(super) struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` header, when the server sent one.
    pub retry_after: Option<String>,
    /// The whole body, or empty when it went to the event-stream sink instead.
    pub body: Vec<u8>,
    /// Whether the body went to the sink (a 2xx `text/event-stream` answer).
    pub streamed: bool,
}

impl Answer {
    /// Non-2xx is an error quoting the start of the body.
    pub fn check_status(&self) -> Result<(), AgentError> {
        if self.status.is_success() {
            return Ok(());
        }
        Err(AgentError::HttpStatus {
            status: self.status.as_u16(),
            body_snippet: snippet(&self.body),
        })
    }
}

/// Takes the chunks of a streamed body as they arrive.
pub(super) type ChunkSink<'s> = &'s mut (dyn FnMut(&[u8]) -> Result<(), AgentError> + Send);

/// POSTs `body` as JSON and reads the whole answer; `timeout` covers connecting, sending
/// and reading, and is reported as [`AgentError::Timeout`].
pub(super) async fn post_json<B: Serialize + ?Sized>(
    client: &reqwest::Client,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
    body: &B,
    timeout: Duration,
) -> Result<Answer, AgentError> {
    exchange(client, url, headers, body, timeout, None).await
}

/// Like [`post_json`]; with `stream`, a 2xx `text/event-stream` answer goes chunk by chunk
/// to it instead of into `Answer::body` (other answers are read whole, as without it). The
/// body is capped at [`MAX_BODY_BYTES`] either way, and `timeout` covers the sink's work.
pub(super) async fn exchange<B: Serialize + ?Sized>(
    client: &reqwest::Client,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
    body: &B,
    timeout: Duration,
    stream: Option<ChunkSink<'_>>,
) -> Result<Answer, AgentError> {
    let mut request = client.post(url.clone()).json(body);
    for (name, value) in headers {
        request = request.header(name.clone(), value.clone());
    }
    let exchange = async {
        let mut response = request.send().await.map_err(|e| transport_error(url, e))?;
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header(RETRY_AFTER);
        let event_stream = header(CONTENT_TYPE).is_some_and(|content_type| {
            content_type
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        let mut sink = stream.filter(|_| status.is_success() && event_stream);
        let mut body = Vec::new();
        let mut total = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(url, e))?
        {
            total += chunk.len();
            if total > MAX_BODY_BYTES {
                return Err(AgentError::InvalidResponse(format!(
                    "the agent answered with a body larger than {} MiB",
                    MAX_BODY_BYTES / (1024 * 1024)
                )));
            }
            match sink.as_mut() {
                Some(sink) => sink(&chunk)?,
                None => body.extend_from_slice(&chunk),
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body,
            streamed: sink.is_some(),
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::Timeout {
            secs: timeout.as_secs_f64(),
        }),
    }
}

fn transport_error(url: &Url, error: reqwest::Error) -> AgentError {
    let connect = error.is_connect();
    let timeout = error.is_timeout();
    // reqwest would print the whole URL, which may carry a password or a query token.
    let error = error.without_url();
    let mut message = format!("{}: {error}", shown_url(url));
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if connect {
        AgentError::Connect(message)
    } else if timeout {
        // Only when the client was built with a timeout shorter than the step's.
        AgentError::Transport(format!("{message} (the HTTP client's own timeout)"))
    } else {
        AgentError::Transport(message)
    }
}

/// The URL without password, query or fragment, for messages.
pub(super) fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Fails only for URLs that cannot have a password, which then have none to hide.
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The start of a body, for error messages.
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut chars = text.chars();
    let start: String = chars.by_ref().take(SNIPPET_CHARS).collect();
    if chars.next().is_some() {
        format!("{start}...")
    } else {
        start
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::{invoke, AgentCall, AgentError, AgentRegistry};
    use super::*;

    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    fn classify_call() -> AgentCall {
        AgentCall {
            run_id: "run_1".into(),
            workflow_id: "wf_support".into(),
            step: "classify".into(),
            agent_id: "support-classifier".into(),
            instructions: "Classify ticket T-1".into(),
            variables: json!({"ticketId": "T-1", "subject": "Refund please"}),
            inputs: json!(null),
            attempt: 2,
        }
    }

    fn registry_for(server: &MockServer, extra: &str) -> AgentRegistry {
        let toml = format!(
            "[agents.support-classifier]\nurl = \"{}/classify\"\n{extra}",
            server.uri()
        );
        AgentRegistry::from_toml_str(&toml, None).unwrap()
    }

    async fn classify(registry: &AgentRegistry, timeout: Duration) -> Result<Value, AgentError> {
        invoke(registry, &reqwest::Client::new(), &classify_call(), timeout).await
    }

    #[tokio::test]
    async fn a_2xx_answer_with_output_completes_with_that_output() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/classify"))
            .and(header("Idempotency-Key", "run_1:classify"))
            .and(header("X-Api-Key", "k-123"))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({
                "runId": "run_1",
                "workflowId": "wf_support",
                "step": "classify",
                "agentId": "support-classifier",
                "instructions": "Classify ticket T-1",
                "variables": {"ticketId": "T-1", "subject": "Refund please"},
                "inputs": null,
                "attempt": 2
            })))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"output": {"category": "billing"}, "extra": 1})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let registry = registry_for(&server, "headers = { \"X-Api-Key\" = \"k-123\" }\n");

        let output = classify(&registry, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(output, json!({"category": "billing"}));
    }

    #[tokio::test]
    async fn a_null_output_is_still_an_output() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"output": null})))
            .mount(&server)
            .await;
        let output = classify(&registry_for(&server, ""), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(output, Value::Null);
    }

    #[tokio::test]
    async fn the_base_url_fallback_posts_to_the_agent_id() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/agents/ticket-router"))
            .and(header("Idempotency-Key", "run_1:classify"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"output": "ok"})))
            .expect(1)
            .mount(&server)
            .await;
        let registry =
            AgentRegistry::load(None, Some(format!("{}/agents/", server.uri()))).unwrap();
        let call = AgentCall {
            agent_id: "ticket-router".into(),
            ..classify_call()
        };

        let output = invoke(&registry, &reqwest::Client::new(), &call, DEFAULT_TIMEOUT).await;
        assert_eq!(output.unwrap(), json!("ok"));
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_fails_saying_so() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>hello</html>"))
            .mount(&server)
            .await;
        let err = classify(&registry_for(&server, ""), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::InvalidResponse(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("not JSON") && message.contains("<html>hello"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_non_2xx_answer_fails_with_status_and_the_start_of_the_body() {
        let server = MockServer::start().await;
        let long_body = format!("overloaded {}", "x".repeat(1000));
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).set_body_string(long_body))
            .mount(&server)
            .await;
        let err = classify(&registry_for(&server, ""), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        match &err {
            AgentError::HttpStatus {
                status,
                body_snippet,
            } => {
                assert_eq!(*status, 503);
                assert!(body_snippet.starts_with("overloaded x"), "{body_snippet}");
                assert!(body_snippet.len() < 220, "{}", body_snippet.len());
            }
            other => panic!("expected HttpStatus, got {other:?}"),
        }
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[tokio::test]
    async fn json_without_output_fails_saying_so() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": 1})))
            .mount(&server)
            .await;
        let err = classify(&registry_for(&server, ""), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::InvalidResponse(_)), "{err:?}");
        assert!(
            err.to_string().contains("without an \"output\" field"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn json_that_is_not_an_object_fails_saying_so() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([1, 2])))
            .mount(&server)
            .await;
        let err = classify(&registry_for(&server, ""), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not an object"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_agent_times_out_with_the_default_timeout() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"output": 1}))
                    .set_delay(Duration::from_secs(10)),
            )
            .mount(&server)
            .await;
        let started = Instant::now();
        let err = classify(&registry_for(&server, ""), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("timed out after 0.3s"), "{err}");
    }

    #[tokio::test]
    async fn the_entry_timeout_wins_over_the_default() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"output": 1}))
                    .set_delay(Duration::from_secs(10)),
            )
            .mount(&server)
            .await;
        let registry = registry_for(&server, "timeoutSeconds = 0.3\n");
        let err = classify(&registry, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out after 0.3s"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_fails_saying_so() {
        // A port that was just free: nothing listens there any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let toml = format!("[agents.support-classifier]\nurl = \"http://127.0.0.1:{port}/classify?token=hidden\"\n");
        let registry = AgentRegistry::from_toml_str(&toml, None).unwrap();
        let err = classify(&registry, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, AgentError::Connect(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("127.0.0.1:{port}/classify")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("hidden"), "{message}");
    }

    #[test]
    fn snippets_are_short_and_say_when_empty() {
        assert_eq!(snippet(b"  "), "(empty body)");
        assert_eq!(
            snippet("é".repeat(300).as_bytes()).chars().count(),
            SNIPPET_CHARS + 3
        );
    }
}
