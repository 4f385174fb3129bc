//! `http`: call an endpoint with a templated request. The output is
//! `{ "status", "headers", "body" }` (body as JSON when it parses, else text); a non-2xx
//! status fails the attempt unless `allowStatus` lists it.

use super::{StepEnv, StepFailure};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use shared_models::graph::HttpRequestSpec;
use shared_models::template;

/// Bodies larger than this are refused rather than stored as a step output.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

pub async fn execute(
    request: &HttpRequestSpec,
    allow_status: &[u16],
    ctx: &Value,
    env: &StepEnv<'_>,
) -> Result<Value, StepFailure> {
    let url = template::render_text(&request.url, ctx).map_err(|e| StepFailure::fatal(format!("request.url: {e}")))?;
    let url =
        reqwest::Url::parse(&url).map_err(|e| StepFailure::fatal(format!("request.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepFailure::fatal(format!(
            "request.url must be http or https, not {}",
            url.scheme()
        )));
    }
    let mut headers = HeaderMap::new();
    // The same key on every attempt of this step, so the endpoint can deduplicate retries.
    headers.insert(
        "idempotency-key",
        header_value(&format!("{}:{}", env.run_id, env.step))?,
    );
    for (name, value) in &request.headers {
        let rendered = template::render_text(value.as_str().unwrap_or_default(), ctx)
            .map_err(|e| StepFailure::fatal(format!("request.headers.{name}: {e}")))?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| StepFailure::fatal(format!("request.headers: '{name}' is not a header name")))?;
        headers.insert(name, header_value(&rendered)?);
    }
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| StepFailure::fatal(format!("'{}' is not an HTTP method", request.method)))?;
    // The step's own timeoutSeconds wins over the worker's default.
    let timeout = env.step_timeout.unwrap_or(env.agent_timeout);
    let mut builder = env
        .http
        .request(method, url.clone())
        .headers(headers)
        .timeout(timeout);
    if let Some(body) = &request.body {
        match template::render_json(body, ctx).map_err(|e| StepFailure::fatal(format!("request.body: {e}")))? {
            Value::String(text) => builder = builder.body(text),
            json => builder = builder.json(&json),
        }
    }
    // Scheme, host, port and path: never the query, which may carry secrets.
    let shown = format!("{}{}", url.origin().ascii_serialization(), url.path());
    let response = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("timed out after {}s calling {shown}", timeout.as_secs_f64())
        } else {
            format!("could not call {shown}: {e}")
        }
    })?;
    let status = response.status().as_u16();
    let mut out_headers = Map::new();
    for (name, value) in response.headers() {
        if let Ok(v) = value.to_str() {
            out_headers.insert(name.as_str().to_string(), Value::String(v.to_string()));
        }
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("could not read the answer of {shown}: {e}"))?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(StepFailure::fatal(format!(
            "the answer of {shown} is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if !(200..300).contains(&status) && !allow_status.contains(&status) {
        let text = String::from_utf8_lossy(&bytes);
        let snippet: String = text.chars().take(200).collect();
        return Err(StepFailure::retry(format!(
            "{shown} answered HTTP {status}: {snippet}"
        )));
    }
    Ok(serde_json::json!({ "status": status, "headers": out_headers, "body": body }))
}

fn header_value(v: &str) -> Result<HeaderValue, StepFailure> {
    HeaderValue::from_str(v)
        .map_err(|_| StepFailure::fatal("a header value has characters headers cannot carry"))
}
