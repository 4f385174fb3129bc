//! `http`: call an endpoint with a templated request. The output is
//! `{ "status", "headers", "body" }` (body as JSON when it parses, else text); a non-2xx
//! status fails the attempt unless `allowStatus` lists it.
//!
//! The URL is a tenant's: the call goes through the tenant client, whose egress policy
//! refuses inside addresses ([`shared_models::egress`]); a refusal fails the step at once.
//! The answer is read in chunks under `HTTP_MAX_RESPONSE_BYTES`. No error text carries the
//! URL's query or userinfo, where secrets travel.

use super::{StepEnv, StepFailure};
use crate::render::{self, Ctx};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use shared_models::egress;
use shared_models::graph::HttpRequestSpec;
use std::error::Error as _;

pub async fn execute(
    request: &HttpRequestSpec,
    allow_status: &[u16],
    ctx: &Ctx,
    env: &StepEnv<'_>,
) -> Result<Value, StepFailure> {
    // The same key on every attempt of this step, so the endpoint can deduplicate retries.
    let key = format!("{}:{}", env.run_id, env.step);
    send(request, allow_status, ctx, env, &key).await
}

/// Send `request` (templated with `ctx`) with `idempotency_key`: an `http` step's call, or an
/// agent tool's.
pub(super) async fn send(
    request: &HttpRequestSpec,
    allow_status: &[u16],
    ctx: &Ctx,
    env: &StepEnv<'_>,
    idempotency_key: &str,
) -> Result<Value, StepFailure> {
    let url = render::text(&request.url, ctx, env.template_deadline)
        .await
        .map_err(|e| StepFailure::fatal(format!("request.url: {e}")))?;
    let url = reqwest::Url::parse(&url)
        .map_err(|e| StepFailure::fatal(format!("request.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepFailure::fatal(format!(
            "request.url must be http or https, not {}",
            url.scheme()
        )));
    }
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", header_value(idempotency_key)?);
    for (name, value) in &request.headers {
        let rendered = render::text(
            value.as_str().unwrap_or_default(),
            ctx,
            env.template_deadline,
        )
        .await
        .map_err(|e| StepFailure::fatal(format!("request.headers.{name}: {e}")))?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            StepFailure::fatal(format!("request.headers: '{name}' is not a header name"))
        })?;
        headers.insert(name, header_value(&rendered)?);
    }
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| StepFailure::fatal(format!("'{}' is not an HTTP method", request.method)))?;
    // The step's own timeoutSeconds wins over the worker's default.
    let timeout = env.step_timeout.unwrap_or(env.agent_timeout);
    let mut builder = env
        .http
        .tenant
        .request(method, url.clone())
        .headers(headers)
        .timeout(timeout);
    if let Some(body) = &request.body {
        match render::json(body, ctx, env.template_deadline)
            .await
            .map_err(|e| StepFailure::fatal(format!("request.body: {e}")))?
        {
            Value::String(text) => builder = builder.body(text),
            json => builder = builder.json(&json),
        }
    }
    // Scheme, host, port and path: never the query or the userinfo, which may carry secrets.
    let shown = format!("{}{}", url.origin().ascii_serialization(), url.path());
    // An address literal never reaches the client's resolver: decide it here.
    env.http
        .policy()
        .check_url(&url)
        .map_err(|refused| StepFailure::fatal(refused.to_string()))?;
    let response = builder
        .send()
        .await
        .map_err(|e| send_failure(e, &shown, &env.http.timed_out(timeout)))?;
    let status = response.status().as_u16();
    let mut out_headers = Map::new();
    for (name, value) in response.headers() {
        if let Ok(v) = value.to_str() {
            out_headers.insert(name.as_str().to_string(), Value::String(v.to_string()));
        }
    }
    let bytes = read_body(response, env.http.settings.max_response_bytes, &shown).await?;
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

/// The whole answer, read chunk by chunk: one larger than `max` (by its `Content-Length`,
/// before reading, or as it arrives) fails the step, naming the setting.
async fn read_body(
    mut response: reqwest::Response,
    max: usize,
    shown: &str,
) -> Result<Vec<u8>, StepFailure> {
    let too_large = || {
        StepFailure::fatal(format!(
            "the answer of {shown} is larger than HTTP_MAX_RESPONSE_BYTES ({max} bytes)"
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        StepFailure::retry(format!(
            "could not read the answer of {shown}: {}",
            describe(e)
        ))
    })? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why sending failed: a refusal (at a redirect hop or by the resolver) or a redirect chain
/// too long is final; anything else may pass on another attempt.
fn send_failure(e: reqwest::Error, shown: &str, timed_out: &str) -> StepFailure {
    if let Some(refusal) = egress::refusal_in(&e) {
        return StepFailure::fatal(refusal);
    }
    if e.is_timeout() {
        return StepFailure::retry(format!("{timed_out} calling {shown}"));
    }
    StepFailure::retry(format!("could not call {shown}: {}", describe(e)))
}

/// The error and its causes, without the URL reqwest attaches (it has the query and the
/// userinfo).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn header_value(v: &str) -> Result<HeaderValue, StepFailure> {
    HeaderValue::from_str(v)
        .map_err(|_| StepFailure::fatal("a header value has characters headers cannot carry"))
}
