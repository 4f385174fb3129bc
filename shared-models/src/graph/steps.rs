//! Parsing one step as written: its type, its type's fields, and its settings.

use super::types::{AgentStep, AgentTool, HttpRequestSpec, RetryPolicy, StepKind, ToolAction};
use super::{
    DEFAULT_AGENT_TURNS, DEFAULT_REPAIR_TURNS, HTTP_METHODS, MAX_AGENT_TOOLS, MAX_AGENT_TURNS,
    MAX_ATTEMPTS, MAX_BACKOFF_SECONDS, MAX_CALL_TIMEOUT_SECONDS, MAX_DELAY_SECONDS,
    MAX_REPAIR_TURNS, MAX_TIMEOUT_SECONDS, STEP_TYPES,
};
use crate::body::{Errors, Obj};
use crate::envelope::FieldError;
use crate::ids::StepName;
use crate::json_schema;
use crate::template;
use serde_json::{Map, Value};
use std::time::Duration;

/// One step as written, before names are resolved.
pub(super) struct RawStep {
    pub(super) name: StepName,
    pub(super) depends_on: Option<Vec<String>>,
    pub(super) kind: StepKind,
    pub(super) when: Option<String>,
    pub(super) retry: RetryPolicy,
    pub(super) timeout: Option<Duration>,
}

impl RawStep {
    pub(super) fn parse(raw: &Value, path: &str, errors: &mut Errors) -> Option<Self> {
        let Some(map) = raw.as_object() else {
            errors.push(FieldError::new(
                path,
                format!("must be an object, not {}", crate::body::type_name(raw)),
            ));
            return None;
        };
        let before = errors.len();
        let mut obj = Obj::new(map, path);
        let name = obj
            .req_str("name", errors)
            .and_then(|n| match StepName::parse(n) {
                Ok(n) => Some(n),
                Err(problem) => {
                    errors.push(FieldError::new(obj.path("name"), problem));
                    None
                }
            });
        let depends_on = obj.opt_array("dependsOn", errors).map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(j, v)| match v.as_str() {
                    Some(s) => Some(s.to_string()),
                    None => {
                        errors.push(FieldError::new(
                            format!("{path}.dependsOn[{j}]"),
                            "must be a step name (a string)",
                        ));
                        None
                    }
                })
                .collect()
        });
        let when = obj.opt_str("when", errors).map(|w| {
            if let Err(e) = template::check_condition(w) {
                errors.push(FieldError::new(
                    obj.path("when"),
                    format!("condition is not valid: {e}"),
                ));
            }
            w.to_string()
        });
        let retry = parse_retry(&mut obj, errors);
        let timeout = number_in(
            &mut obj,
            "timeoutSeconds",
            0.001,
            MAX_TIMEOUT_SECONDS,
            errors,
        )
        .map(Duration::from_secs_f64);
        let kind = match obj.req_str("type", errors) {
            Some("agent") => parse_agent(&mut obj, errors),
            Some("http") => parse_http(&mut obj, errors),
            Some("transform") => parse_transform(&mut obj, errors),
            Some("delay") => number_in(&mut obj, "seconds", 0.0, MAX_DELAY_SECONDS, errors)
                .or_else(|| {
                    if !errors.iter().any(|e| e.field == obj.path("seconds")) {
                        errors.push(FieldError::new(obj.path("seconds"), "is required"));
                    }
                    None
                })
                .map(|seconds| StepKind::Delay { seconds }),
            Some("approval") => Some(StepKind::Approval),
            Some("subworkflow") => parse_subworkflow(&mut obj, errors),
            Some(other) => {
                errors.push(FieldError::new(
                    obj.path("type"),
                    format!(
                        "'{other}' is not a step type (expected one of: {})",
                        STEP_TYPES.join(", ")
                    ),
                ));
                None
            }
            None => None,
        };
        if let (Some(StepKind::Http { .. } | StepKind::Agent(_)), Some(t)) = (&kind, timeout) {
            if t.as_secs_f64() > MAX_CALL_TIMEOUT_SECONDS {
                errors.push(FieldError::new(
                    obj.path("timeoutSeconds"),
                    format!(
                        "must be at most {MAX_CALL_TIMEOUT_SECONDS} for an http or agent step (a call holds a worker slot while it waits)"
                    ),
                ));
            }
        }
        // Unknown fields are only meaningful once the type (and so its fields) is known.
        if kind.is_some() {
            obj.finish(errors);
        }
        if errors.len() > before {
            return None;
        }
        Some(RawStep {
            name: name?,
            depends_on,
            kind: kind?,
            when,
            retry,
            timeout,
        })
    }
}

fn templated_string(obj: &mut Obj, key: &'static str, errors: &mut Errors) -> Option<String> {
    let s = obj.req_str(key, errors)?;
    if let Err(e) = template::check(s) {
        errors.push(FieldError::new(
            obj.path(key),
            format!("template is not valid: {e}"),
        ));
    }
    Some(s.to_string())
}

fn templated_json(obj: &mut Obj, key: &'static str, v: &Value, errors: &mut Errors) {
    if let Err((path, e)) = template::check_json(v, &obj.path(key)) {
        errors.push(FieldError::new(path, format!("template is not valid: {e}")));
    }
}

fn parse_agent(obj: &mut Obj, errors: &mut Errors) -> Option<StepKind> {
    let agent_id = obj.req_str("agentId", errors).and_then(|id| {
        if id.trim().is_empty() || id.chars().count() > 128 {
            errors.push(FieldError::new(
                obj.path("agentId"),
                "must be 1 to 128 characters long",
            ));
            None
        } else {
            Some(id.to_string())
        }
    });
    let instructions = templated_string(obj, "instructions", errors);
    let inputs = obj.optional("inputs").cloned();
    if let Some(inputs) = &inputs {
        templated_json(obj, "inputs", inputs, errors);
    }
    let tools = parse_tools(obj, errors);
    let max_turns =
        whole_in(obj, "maxTurns", 1, MAX_AGENT_TURNS, errors).unwrap_or(DEFAULT_AGENT_TURNS);
    let repair_turns =
        whole_in(obj, "repairTurns", 0, MAX_REPAIR_TURNS, errors).unwrap_or(DEFAULT_REPAIR_TURNS);
    let output_schema = obj.optional("outputSchema").cloned();
    if let Some(schema) = &output_schema {
        if let Err(problem) = json_schema::compile(schema) {
            errors.push(FieldError::new(obj.path("outputSchema"), problem));
        }
    }
    Some(StepKind::Agent(Box::new(AgentStep {
        agent_id: agent_id?,
        instructions: instructions?,
        inputs,
        tools: tools?,
        max_turns,
        output_schema,
        repair_turns,
    })))
}

/// An optional whole number within [min, max].
fn whole_in(
    obj: &mut Obj,
    key: &'static str,
    min: u32,
    max: u32,
    errors: &mut Errors,
) -> Option<u32> {
    let n = obj.opt_f64(key, errors)?;
    if n.fract() != 0.0 || !(f64::from(min)..=f64::from(max)).contains(&n) {
        errors.push(FieldError::new(
            obj.path(key),
            format!("must be a whole number from {min} to {max}"),
        ));
        return None;
    }
    Some(n as u32)
}

/// `tools`: each `{name, description, parameters}` with a `request` or a `workflowId`, names
/// unique.
fn parse_tools(obj: &mut Obj, errors: &mut Errors) -> Option<Vec<AgentTool>> {
    let Some(items) = obj.opt_array("tools", errors) else {
        return Some(Vec::new());
    };
    let before = errors.len();
    if items.len() > MAX_AGENT_TOOLS {
        errors.push(FieldError::new(
            obj.path("tools"),
            format!("at most {MAX_AGENT_TOOLS} tools per step"),
        ));
        return None;
    }
    let mut tools: Vec<AgentTool> = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let path = format!("{}[{j}]", obj.path("tools"));
        let Some(map) = item.as_object() else {
            errors.push(FieldError::new(path, "must be an object"));
            continue;
        };
        let mut tool = Obj::new(map, path);
        let name = tool.req_str("name", errors).and_then(|name| {
            let valid = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                errors.push(FieldError::new(
                    tool.path("name"),
                    "must be 1 to 64 letters, digits, '_' or '-'",
                ));
                None
            } else if tools.iter().any(|t| t.name == name) {
                errors.push(FieldError::new(
                    tool.path("name"),
                    format!("'{name}' names another tool of this step"),
                ));
                None
            } else {
                Some(name.to_string())
            }
        });
        let description = tool.opt_str("description", errors).unwrap_or_default();
        if description.chars().count() > 1024 {
            errors.push(FieldError::new(
                tool.path("description"),
                "must be at most 1024 characters",
            ));
        }
        let parameters = tool
            .optional("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        if parameters.get("type").and_then(Value::as_str) != Some("object") {
            errors.push(FieldError::new(
                tool.path("parameters"),
                "must be a JSON Schema of an object ({\"type\": \"object\", ...})",
            ));
        } else if let Err(problem) = json_schema::compile(&parameters) {
            errors.push(FieldError::new(tool.path("parameters"), problem));
        }
        let action = match (tool.optional("request"), tool.optional("workflowId")) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    tool.path("workflowId"),
                    "a tool is either a request or a workflow, not both",
                ));
                None
            }
            (None, Some(_)) => tool.req_str("workflowId", errors).and_then(|id| {
                if crate::ids::WorkflowId::parse(id).is_none() {
                    errors.push(FieldError::new(
                        tool.path("workflowId"),
                        "is not a workflow id (wf_<name>)",
                    ));
                    return None;
                }
                Some(ToolAction::Workflow {
                    workflow_id: id.to_string(),
                })
            }),
            (_, None) => parse_request(&mut tool, errors).map(ToolAction::Request),
        };
        tool.finish(errors);
        if let (Some(name), Some(action)) = (name, action) {
            tools.push(AgentTool {
                name,
                description: description.to_string(),
                parameters,
                action,
            });
        }
    }
    (errors.len() == before).then_some(tools)
}

/// An optional number within [min, max].
fn number_in(
    obj: &mut Obj,
    key: &'static str,
    min: f64,
    max: f64,
    errors: &mut Errors,
) -> Option<f64> {
    let n = obj.opt_f64(key, errors)?;
    if !(min..=max).contains(&n) {
        errors.push(FieldError::new(
            obj.path(key),
            format!("must be from {min} to {max}"),
        ));
        return None;
    }
    Some(n)
}

fn parse_retry(obj: &mut Obj, errors: &mut Errors) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let Some(map) = obj.opt_object("retry", errors) else {
        return policy;
    };
    let mut retry = Obj::new(map, obj.path("retry"));
    if let Some(n) = retry.opt_f64("maxAttempts", errors) {
        if n.fract() != 0.0 || !(1.0..=MAX_ATTEMPTS as f64).contains(&n) {
            errors.push(FieldError::new(
                retry.path("maxAttempts"),
                format!("must be a whole number from 1 to {MAX_ATTEMPTS}"),
            ));
        } else {
            policy.max_attempts = n as u32;
        }
    }
    if let Some(b) = number_in(
        &mut retry,
        "backoffSeconds",
        0.0,
        MAX_BACKOFF_SECONDS,
        errors,
    ) {
        policy.backoff_seconds = b;
    }
    if let Some(m) = number_in(&mut retry, "backoffMultiplier", 1.0, 10.0, errors) {
        policy.backoff_multiplier = m;
    }
    retry.finish(errors);
    policy
}

fn parse_http(obj: &mut Obj, errors: &mut Errors) -> Option<StepKind> {
    let request = parse_request(obj, errors);
    let allow_status = obj
        .opt_array("allowStatus", errors)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(j, v)| match crate::body::whole_number(v) {
                    Some(code) if (100..=599).contains(&code) => Some(code as u16),
                    _ => {
                        errors.push(FieldError::new(
                            format!("{}[{j}]", obj.path("allowStatus")),
                            "must be an HTTP status code (100-599)",
                        ));
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(StepKind::Http {
        request: request?,
        allow_status,
    })
}

/// `request`: `{method, url, headers, body}`, every string a template (an `http` step's, a
/// tool's).
fn parse_request(obj: &mut Obj, errors: &mut Errors) -> Option<HttpRequestSpec> {
    let request = obj.req_object("request", errors)?;
    let mut req = Obj::new(request, obj.path("request"));
    let method = match req.opt_str("method", errors) {
        None => Some("GET".to_string()),
        Some(m) if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) => {
            Some(m.to_ascii_uppercase())
        }
        Some(m) => {
            errors.push(FieldError::new(
                req.path("method"),
                format!("'{m}' is not one of: {}", HTTP_METHODS.join(", ")),
            ));
            None
        }
    };
    let url = templated_string(&mut req, "url", errors);
    let headers = req
        .opt_object("headers", errors)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &headers {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if k.is_empty() || !k.chars().all(token) {
            errors.push(FieldError::new(
                format!("{}.{k}", req.path("headers")),
                "is not a valid header name",
            ));
            continue;
        }
        match v.as_str() {
            Some(h) => {
                if let Err(e) = template::check(h) {
                    errors.push(FieldError::new(
                        format!("{}.{k}", req.path("headers")),
                        format!("template is not valid: {e}"),
                    ));
                }
            }
            None => errors.push(FieldError::new(
                format!("{}.{k}", req.path("headers")),
                "must be a string",
            )),
        }
    }
    let body = req.optional("body").cloned();
    if let Some(body) = &body {
        templated_json(&mut req, "body", body, errors);
    }
    req.finish(errors);
    Some(HttpRequestSpec {
        method: method?,
        url: url?,
        headers,
        body,
    })
}

fn parse_subworkflow(obj: &mut Obj, errors: &mut Errors) -> Option<StepKind> {
    let workflow_id = obj.req_str("workflowId", errors).map(str::to_string);
    if let Some(id) = &workflow_id {
        if crate::ids::WorkflowId::parse(id).is_none() {
            errors.push(FieldError::new(
                obj.path("workflowId"),
                "is not a workflow id (wf_<name>)",
            ));
        }
    }
    let variables = obj.optional("variables").cloned();
    if let Some(v) = &variables {
        if !v.is_object() && !v.as_str().is_some_and(|s| s.contains("{{")) {
            errors.push(FieldError::new(
                obj.path("variables"),
                "must be an object (or a template that renders one)",
            ));
        }
        templated_json(obj, "variables", v, errors);
    }
    Some(StepKind::Subworkflow {
        workflow_id: workflow_id?,
        variables,
    })
}

fn parse_transform(obj: &mut Obj, errors: &mut Errors) -> Option<StepKind> {
    let value = obj.required("value", errors)?.clone();
    templated_json(obj, "value", &value, errors);
    Some(StepKind::Transform { value })
}

/// The names of a definition's steps with their types, in array order, for views of runs
/// whose steps have not started. Tolerates any JSON; unknown shapes give no steps.
pub fn step_outline(definition: &Value) -> Vec<(String, String)> {
    definition
        .get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| {
                    let s: &Map<String, Value> = s.as_object()?;
                    Some((
                        s.get("name")?.as_str()?.to_string(),
                        s.get("type")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}
