//! An EXAMPLE agent for the Thygon demo, not part of the platform: a deterministic keyword
//! stand-in for a real AI agent, speaking the HTTP agent protocol (see docs/API.md "Agents").
//!
//! - `POST /classify`: ticket text -> `{ category, priority, confidence, reason }`
//! - `POST /draft-reply`: category/priority (+ name, ticket id) -> `{ reply }`
//! - `POST /route`: category/priority -> `{ team, queue }`
//! - `POST /webhook`: not an agent: the endpoint the branching example of docs/WORKFLOWS.md posts its
//!   result to (`make run` lets `http` steps reach this address through `EGRESS_ALLOW`);
//!   answers `{ "received": <the JSON body> }`
//! - `POST /v1/chat/completions`: not an agent of the HTTP protocol but an OpenAI-compatible
//!   model, the example triage model of [`model`] (the agent `triage-model`)
//! - `GET /healthz`: 200
//!
//! Listens on `SUPPORT_AGENT_ADDR` (default `127.0.0.1:9000`); `examples/agents.toml` maps
//! the agent ids `support-classifier`, `reply-drafter` and `ticket-router` to these routes.
//! `support-agent healthcheck` asks its `/healthz` on the loopback and exits 0 iff it answered
//! 200 (the compose healthcheck: the image has no curl).

mod model;
mod tickets;

use actix_web::{error, web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The request every agent gets. Every field is required so that anything else is a 400,
/// though these keyword rules read only some of them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct AgentCall {
    run_id: String,
    workflow_id: String,
    step: String,
    agent_id: String,
    instructions: String,
    variables: Map<String, Value>,
    inputs: Value,
    attempt: i32,
}

impl AgentCall {
    /// A field from `inputs` (step-specific, so it wins) or else `variables`, as text.
    fn text(&self, name: &str) -> Option<String> {
        let input = self.inputs.get(name).filter(|v| !v.is_null());
        match input.or_else(|| self.variables.get(name))? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// All the ticket text there is, from both places.
    fn ticket_text(&self) -> String {
        let fields = ["subject", "body", "text", "message", "description"];
        let variables = fields
            .iter()
            .filter_map(|f| self.variables.get(*f)?.as_str());
        let inputs = fields.iter().filter_map(|f| self.inputs.get(*f)?.as_str());
        variables.chain(inputs).collect::<Vec<_>>().join("\n")
    }
}

fn log_call(route: &str, call: &AgentCall) {
    let (run_id, step, attempt) = (&call.run_id, &call.step, call.attempt);
    log::info!("{route}: run {run_id} step {step} attempt {attempt}");
}

fn output(value: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "output": value }))
}

async fn classify(call: web::Json<AgentCall>) -> HttpResponse {
    log_call("classify", &call);
    let (text, priority_override) = (call.ticket_text(), call.text("priorityOverride"));
    output(tickets::classify(&text, priority_override.as_deref()))
}

async fn draft_reply(call: web::Json<AgentCall>) -> HttpResponse {
    log_call("draft-reply", &call);
    let name = call.text("customerName").or_else(|| call.text("name"));
    let category = call.text("category").unwrap_or_else(|| "general".into());
    let priority = call.text("priority").unwrap_or_else(|| "normal".into());
    let ticket_id = call.text("ticketId");
    let reply = tickets::draft_reply(name.as_deref(), ticket_id.as_deref(), &category, &priority);
    output(json!({ "reply": reply }))
}

async fn route(call: web::Json<AgentCall>) -> HttpResponse {
    log_call("route", &call);
    let category = call.text("category").unwrap_or_else(|| "general".into());
    let priority = call.text("priority").unwrap_or_else(|| "normal".into());
    let (team, queue) = tickets::route(&category, &priority);
    output(json!({ "team": team, "queue": queue }))
}

/// The webhook of the example of docs/WORKFLOWS.md: logs the ticket id and echoes the body.
async fn webhook(body: web::Json<Value>) -> HttpResponse {
    let ticket = body.get("ticketId").and_then(Value::as_str).unwrap_or("?");
    log::info!("webhook: ticket {ticket}");
    HttpResponse::Ok().json(json!({ "received": body.into_inner() }))
}

/// The example triage model: any bearer key (or none) is accepted.
async fn chat_completions(body: web::Bytes) -> HttpResponse {
    let answer = serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("not a JSON body: {e}"))
        .and_then(|request| model::complete(&request));
    match answer {
        Ok(completion) => {
            log::info!(
                "chat/completions: {}",
                completion["choices"][0]["finish_reason"]
            );
            HttpResponse::Ok().json(completion)
        }
        Err(message) => HttpResponse::BadRequest().json(model::error(&message)),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Anything that is not the protocol's JSON is a 400 with a JSON error, whatever the cause.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|err, _req: &HttpRequest| {
        let body = json!({ "error": "not an agent call", "details": err.to_string() });
        error::InternalError::from_response(err, HttpResponse::BadRequest().json(body)).into()
    })
}

/// `GET /healthz` on the loopback at the port of `addr`: `Ok` iff it answered 200 in time.
fn healthcheck(addr: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let port = addr.rsplit(':').next().unwrap_or_default();
    let target = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|_| std::io::Error::other(format!("no port in {addr:?}")))?;
    let mut conn = std::net::TcpStream::connect_timeout(&target, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut status_line = [0u8; 12];
    conn.read_exact(&mut status_line)?;
    match &status_line {
        b"HTTP/1.1 200" => Ok(()),
        other => Err(std::io::Error::other(format!(
            "/healthz answered {}",
            String::from_utf8_lossy(other)
        ))),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = std::env::var("SUPPORT_AGENT_ADDR").unwrap_or_else(|_| "127.0.0.1:9000".into());
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck(&addr);
    }
    let server = HttpServer::new(|| {
        App::new()
            .app_data(json_config())
            .route("/classify", web::post().to(classify))
            .route("/draft-reply", web::post().to(draft_reply))
            .route("/route", web::post().to(route))
            .route("/webhook", web::post().to(webhook))
            .route("/v1/chat/completions", web::post().to(chat_completions))
            .route("/healthz", web::get().to(healthz))
    })
    .bind(&addr)
    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    log::info!("example support agent listening on http://{addr}");
    server.run().await
}
