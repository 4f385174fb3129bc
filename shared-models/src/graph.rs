//! The one graph model: parsing, validating and compiling a workflow definition.
//! workflow-service uses it to reject bad definitions; the worker to execute good ones.
//!
//! A definition is `{ "steps": [ ... ] }`. Array order is the default order: a step without
//! `dependsOn` depends on the step before it, the first step is a root, and `dependsOn: []`
//! makes any step a root (docs/API.md "Workflow graphs").

use crate::body::{Errors, Obj};
use crate::envelope::FieldError;
use crate::ids::StepName;
use crate::template;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// More steps than this is a definition no one should run; it is refused at create/update.
pub const MAX_STEPS: usize = 200;

/// The step types this build executes.
pub const STEP_TYPES: &[&str] = &[
    "agent",
    "http",
    "transform",
    "delay",
    "approval",
    "subworkflow",
];

/// Bounds on step settings, so a typo cannot make a run wait for a year or retry forever.
pub const MAX_ATTEMPTS: u32 = 20;
pub const MAX_BACKOFF_SECONDS: f64 = 3600.0;
pub const MAX_TIMEOUT_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
/// `timeoutSeconds` of an `http` or `agent` step: a call holds a worker slot while it waits
/// (approvals and subworkflows hold none, so they keep [`MAX_TIMEOUT_SECONDS`]). Workers
/// also clamp it to their `MAX_STEP_TIMEOUT_SECONDS` at run time.
pub const MAX_CALL_TIMEOUT_SECONDS: f64 = 3600.0;
pub const MAX_DELAY_SECONDS: f64 = 30.0 * 24.0 * 3600.0;
pub const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// `retry`: how many attempts a step gets and how long to wait between them.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_seconds: f64,
    pub backoff_multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_seconds: 1.0,
            backoff_multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (2 and up): backoff * multiplier^(attempt - 2).
    pub fn delay_before(&self, attempt: i32) -> Duration {
        let exp = (attempt - 2).max(0);
        let secs = self.backoff_seconds * self.backoff_multiplier.powi(exp);
        // Attempt numbers keep growing across `/retry`, so the power can overflow to
        // infinity; with a zero backoff that is 0 * inf = NaN, which from_secs_f64 panics on.
        let secs = if secs.is_nan() { 0.0 } else { secs };
        Duration::from_secs_f64(secs.clamp(0.0, MAX_BACKOFF_SECONDS))
    }
}

/// The request of an `http` step; every string in it is a template.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequestSpec {
    pub method: String,
    pub url: String,
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Ask the agent `agent_id` to carry out `instructions` (templated), with optional
    /// templated `inputs`.
    Agent {
        agent_id: String,
        instructions: String,
        inputs: Option<Value>,
    },
    /// Call an HTTP endpoint; a non-2xx status fails the attempt unless `allow_status` lists it.
    Http {
        request: HttpRequestSpec,
        allow_status: Vec<u16>,
    },
    /// Output the templated `value`.
    Transform { value: Value },
    /// Wait `seconds`; the run is WAITING meanwhile and holds no worker.
    Delay { seconds: f64 },
    /// Wait for `POST /workflows/runs/{id}/steps/{step}/approve`.
    Approval,
    /// Start a run of `workflow_id` with templated `variables`, and wait for it.
    Subworkflow {
        workflow_id: String,
        variables: Option<Value>,
    },
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent { .. } => "agent",
            StepKind::Http { .. } => "http",
            StepKind::Transform { .. } => "transform",
            StepKind::Delay { .. } => "delay",
            StepKind::Approval => "approval",
            StepKind::Subworkflow { .. } => "subworkflow",
        }
    }

    /// Steps that wait outside any worker (the run goes WAITING instead of holding a slot).
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Delay { .. } | StepKind::Approval | StepKind::Subworkflow { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: StepName,
    /// Indexes into [`WorkflowGraph::steps`] of the steps this one waits for.
    pub depends_on: Vec<usize>,
    pub kind: StepKind,
    /// A condition; false skips the step.
    pub when: Option<String>,
    pub retry: RetryPolicy,
    /// Per attempt; for `approval` and `subworkflow`, how long to wait in all.
    pub timeout: Option<Duration>,
}

/// A definition that is known good: unique names, known types, no cycle, templates compile.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowGraph {
    pub steps: Vec<Step>,
}

impl WorkflowGraph {
    /// Parse a definition from a request; every problem is reported with its path below
    /// `prefix` (e.g. `definition.steps[1].type`).
    pub fn parse(value: &Value, prefix: &str) -> Result<Self, Errors> {
        let mut errors = Errors::new();
        let Some(map) = value.as_object() else {
            errors.push(FieldError::new(
                prefix,
                format!("must be an object, not {}", crate::body::type_name(value)),
            ));
            return Err(errors);
        };
        let mut obj = Obj::new(map, prefix);
        let raw_steps = obj.req_array("steps", &mut errors);
        obj.finish(&mut errors);
        let Some(raw_steps) = raw_steps else {
            return Err(errors);
        };
        let steps_path = crate::body::join(prefix, "steps");
        if raw_steps.is_empty() {
            errors.push(FieldError::new(
                &steps_path,
                "must contain at least one step",
            ));
            return Err(errors);
        }
        if raw_steps.len() > MAX_STEPS {
            errors.push(FieldError::new(
                &steps_path,
                format!("may contain at most {MAX_STEPS} steps"),
            ));
            return Err(errors);
        }

        let parsed: Vec<Option<RawStep>> = raw_steps
            .iter()
            .enumerate()
            .map(|(i, raw)| RawStep::parse(raw, &format!("{steps_path}[{i}]"), &mut errors))
            .collect();

        // Names first, so dependsOn can be resolved against all of them.
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, step) in parsed.iter().enumerate() {
            let Some(step) = step else { continue };
            if index.insert(step.name.as_str().to_string(), i).is_some() {
                errors.push(FieldError::new(
                    format!("{steps_path}[{i}].name"),
                    format!("'{}' is already the name of another step", step.name),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut steps = Vec::with_capacity(parsed.len());
        for (i, step) in parsed.into_iter().enumerate() {
            let Some(step) = step else { continue };
            let depends_on = match &step.depends_on {
                None if i == 0 => vec![],
                None => vec![i - 1],
                Some(names) => {
                    let mut deps = Vec::new();
                    for (j, dep) in names.iter().enumerate() {
                        match index.get(dep.as_str()) {
                            Some(&d) if d == i => errors.push(FieldError::new(
                                format!("{steps_path}[{i}].dependsOn[{j}]"),
                                "a step cannot depend on itself",
                            )),
                            Some(&d) if deps.contains(&d) => errors.push(FieldError::new(
                                format!("{steps_path}[{i}].dependsOn[{j}]"),
                                format!("'{dep}' is listed twice"),
                            )),
                            Some(&d) => deps.push(d),
                            None => errors.push(FieldError::new(
                                format!("{steps_path}[{i}].dependsOn[{j}]"),
                                format!("no step is named '{dep}'"),
                            )),
                        }
                    }
                    deps
                }
            };
            steps.push(Step {
                name: step.name,
                depends_on,
                kind: step.kind,
                when: step.when,
                retry: step.retry,
                timeout: step.timeout,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let graph = WorkflowGraph { steps };
        if let Some(i) = graph.step_on_a_cycle() {
            errors.push(FieldError::new(
                format!("{steps_path}[{i}].dependsOn"),
                format!(
                    "step '{}' is part of a dependency cycle",
                    graph.steps[i].name
                ),
            ));
            return Err(errors);
        }
        Ok(graph)
    }

    /// Compile a definition read back from the database. It was validated when it was
    /// stored, so a failure here means the stored data is corrupt.
    pub fn from_stored(value: &Value) -> Result<Self, String> {
        Self::parse(value, "definition").map_err(|errors| {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            format!("stored definition is invalid: {}", parts.join("; "))
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name.as_str() == name)
    }

    /// Steps that no other step depends on; the run's output is theirs.
    pub fn leaves(&self) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| !self.steps.iter().any(|s| s.depends_on.contains(&i)))
            .collect()
    }

    /// Kahn's algorithm; returns a step that can never become ready, if any.
    fn step_on_a_cycle(&self) -> Option<usize> {
        let mut remaining: Vec<usize> = self.steps.iter().map(|s| s.depends_on.len()).collect();
        let mut ready: Vec<usize> = (0..self.steps.len())
            .filter(|&i| remaining[i] == 0)
            .collect();
        let mut done = 0;
        while let Some(i) = ready.pop() {
            done += 1;
            for (j, step) in self.steps.iter().enumerate() {
                if step.depends_on.contains(&i) {
                    remaining[j] -= 1;
                    if remaining[j] == 0 {
                        ready.push(j);
                    }
                }
            }
        }
        (done < self.steps.len())
            .then(|| remaining.iter().position(|&r| r > 0))
            .flatten()
    }
}

/// One step as written, before names are resolved.
struct RawStep {
    name: StepName,
    depends_on: Option<Vec<String>>,
    kind: StepKind,
    when: Option<String>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
}

impl RawStep {
    fn parse(raw: &Value, path: &str, errors: &mut Errors) -> Option<Self> {
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
        if let (Some(StepKind::Http { .. } | StepKind::Agent { .. }), Some(t)) = (&kind, timeout) {
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
        if id.trim().is_empty() || id.len() > 128 {
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
    Some(StepKind::Agent {
        agent_id: agent_id?,
        instructions: instructions?,
        inputs,
    })
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
    let allow_status = obj
        .opt_array("allowStatus", errors)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(j, v)| match v.as_u64() {
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
        request: HttpRequestSpec {
            method: method?,
            url: url?,
            headers,
            body,
        },
        allow_status,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: &Errors) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn the_seed_definition_parses_into_one_root_step() {
        let def = json!({"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
            "instructions": "Determine ticket category and priority."}]});
        let g = WorkflowGraph::parse(&def, "definition").unwrap();
        assert_eq!(g.steps.len(), 1);
        assert!(g.steps[0].depends_on.is_empty());
        assert_eq!(g.leaves(), vec![0]);
    }

    #[test]
    fn steps_default_to_depending_on_the_one_before() {
        let def = json!({"steps": [
            {"name": "a", "type": "transform", "value": 1},
            {"name": "b", "type": "transform", "value": 2},
            {"name": "c", "type": "transform", "value": 3, "dependsOn": []}]});
        let g = WorkflowGraph::parse(&def, "definition").unwrap();
        assert_eq!(g.steps[1].depends_on, vec![0]);
        assert!(g.steps[2].depends_on.is_empty());
        assert_eq!(g.leaves(), vec![1, 2]);
    }

    #[test]
    fn bad_steps_are_named_by_path() {
        let def = json!({"steps": [
            {"name": "a", "type": "agnet"},
            {"name": "a", "type": "transform", "value": 1},
            {"name": "c", "type": "agent", "agentId": "x", "instructions": "{{ oops", "dependson": []},
            {"type": "transform", "value": 1}]});
        let errors = WorkflowGraph::parse(&def, "definition").unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "definition.steps[0].type",
                "definition.steps[2].instructions",
                "definition.steps[2].dependson",
                "definition.steps[3].name"
            ]
        );
    }

    #[test]
    fn duplicate_names_missing_dependencies_and_cycles_are_refused() {
        let dup = json!({"steps": [{"name": "a", "type": "transform", "value": 1}, {"name": "a", "type": "transform", "value": 1}]});
        assert_eq!(
            fields(&WorkflowGraph::parse(&dup, "d").unwrap_err()),
            ["d.steps[1].name"]
        );
        let missing =
            json!({"steps": [{"name": "a", "type": "transform", "value": 1, "dependsOn": ["zz"]}]});
        assert_eq!(
            fields(&WorkflowGraph::parse(&missing, "d").unwrap_err()),
            ["d.steps[0].dependsOn[0]"]
        );
        let cycle = json!({"steps": [
            {"name": "a", "type": "transform", "value": 1, "dependsOn": ["b"]},
            {"name": "b", "type": "transform", "value": 1, "dependsOn": ["a"]}]});
        let errors = WorkflowGraph::parse(&cycle, "d").unwrap_err();
        assert!(errors[0].message.contains("cycle"), "{errors:?}");
    }

    #[test]
    fn empty_and_oversized_step_lists_are_refused() {
        assert_eq!(
            fields(&WorkflowGraph::parse(&json!({"steps": []}), "d").unwrap_err()),
            ["d.steps"]
        );
        let many: Vec<Value> = (0..=MAX_STEPS)
            .map(|i| json!({"name": format!("s{i}"), "type": "transform", "value": i}))
            .collect();
        assert_eq!(
            fields(&WorkflowGraph::parse(&json!({"steps": many}), "d").unwrap_err()),
            ["d.steps"]
        );
        assert_eq!(
            fields(&WorkflowGraph::parse(&json!([]), "d").unwrap_err()),
            ["d"]
        );
    }

    #[test]
    fn outline_lists_names_and_types() {
        let def = json!({"steps": [{"name": "a", "type": "transform", "value": 1}]});
        assert_eq!(
            step_outline(&def),
            vec![("a".to_string(), "transform".to_string())]
        );
    }

    fn parse(steps: Value) -> Result<WorkflowGraph, Errors> {
        WorkflowGraph::parse(&json!({ "steps": steps }), "definition")
    }

    /// The fields of the errors of a one-step definition.
    fn step_errors(step: Value) -> Vec<String> {
        parse(json!([step]))
            .unwrap_err()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    }

    fn only_step(step: Value) -> Step {
        let mut g = parse(json!([step])).unwrap();
        g.steps.remove(0)
    }

    #[test]
    fn every_step_type_has_a_valid_example() {
        let g = parse(json!([
            {"name": "classify", "type": "agent", "agentId": "support-classifier",
             "instructions": "Classify {{ variables.ticketId }}.", "inputs": {"id": "{{ variables.ticketId }}"}},
            {"name": "notify", "type": "http",
             "request": {"method": "POST", "url": "{{ variables.webhookUrl }}",
                         "headers": {"X-Ticket": "{{ variables.ticketId }}"},
                         "body": {"priority": "{{ steps.classify.output.priority }}"}},
             "allowStatus": [404, 409]},
            {"name": "shape", "type": "transform", "value": {"p": "{{ steps.classify.output.priority }}"}},
            {"name": "pause", "type": "delay", "seconds": 1.5},
            {"name": "signoff", "type": "approval", "timeoutSeconds": 86400},
            {"name": "child", "type": "subworkflow", "workflowId": "wf_support_triage",
             "variables": {"ticketId": "{{ variables.ticketId }}"}}
        ]))
        .unwrap();
        let types: Vec<_> = g.steps.iter().map(|s| s.kind.type_name()).collect();
        assert_eq!(types, STEP_TYPES);
        assert_eq!(
            g.steps[1].kind,
            StepKind::Http {
                request: HttpRequestSpec {
                    method: "POST".into(),
                    url: "{{ variables.webhookUrl }}".into(),
                    headers: json!({"X-Ticket": "{{ variables.ticketId }}"})
                        .as_object()
                        .unwrap()
                        .clone(),
                    body: Some(json!({"priority": "{{ steps.classify.output.priority }}"})),
                },
                allow_status: vec![404, 409],
            }
        );
        assert_eq!(g.steps[3].kind, StepKind::Delay { seconds: 1.5 });
        assert_eq!(g.steps[4].timeout, Some(Duration::from_secs(86400)));
        assert_eq!(
            g.steps[5].kind,
            StepKind::Subworkflow {
                workflow_id: "wf_support_triage".into(),
                variables: Some(json!({"ticketId": "{{ variables.ticketId }}"})),
            }
        );
        let waiting: Vec<_> = g.steps.iter().map(|s| s.kind.waits()).collect();
        assert_eq!(waiting, [false, false, false, true, true, true]);
    }

    #[test]
    fn an_http_method_defaults_to_get_and_a_bad_one_is_named() {
        let step = only_step(json!({"name": "h", "type": "http", "request": {"url": "http://x"}}));
        let StepKind::Http {
            request,
            allow_status,
        } = step.kind
        else {
            panic!("not http: {step:?}");
        };
        assert_eq!((request.method.as_str(), request.body), ("GET", None));
        assert!(request.headers.is_empty() && allow_status.is_empty());
        let lower = only_step(json!({"name": "h", "type": "http",
            "request": {"method": "delete", "url": "http://x"}}));
        assert!(matches!(lower.kind, StepKind::Http { request, .. } if request.method == "DELETE"));
        let errors = parse(json!([{"name": "h", "type": "http",
            "request": {"method": "FETCH", "url": "http://x"}}]))
        .unwrap_err();
        assert_eq!(fields(&errors), ["definition.steps[0].request.method"]);
        assert!(errors[0].message.contains("'FETCH'"), "{errors:?}");
    }

    #[test]
    fn an_http_step_needs_a_request_with_a_url() {
        assert_eq!(
            step_errors(json!({"name": "h", "type": "http", "request": {"method": "GET"}})),
            ["definition.steps[0].request.url"]
        );
        assert_eq!(
            step_errors(json!({"name": "h", "type": "http"})),
            ["definition.steps[0].request"]
        );
        assert_eq!(
            step_errors(json!({"name": "h", "type": "http",
                "request": {"url": "http://x", "methd": "POST"}})),
            ["definition.steps[0].request.methd"]
        );
    }

    #[test]
    fn http_header_templates_are_checked_and_named_with_their_path() {
        assert_eq!(
            step_errors(
                json!({"name": "h", "type": "http", "request": {"url": "http://x",
                "headers": {"X-Ok": "{{ variables.a }}", "X-Token": "Bearer {{ variables.token ",
                            "X-Count": 3},
                "body": {"a": ["{{ ("]}}})
            ),
            [
                "definition.steps[0].request.headers.X-Count",
                "definition.steps[0].request.headers.X-Token",
                "definition.steps[0].request.body.a[0]"
            ]
        );
        assert_eq!(
            step_errors(json!({"name": "h", "type": "http", "request": {"url": "{{ broken"}})),
            ["definition.steps[0].request.url"]
        );
    }

    #[test]
    fn allow_status_must_list_http_status_codes() {
        assert_eq!(
            step_errors(
                json!({"name": "h", "type": "http", "request": {"url": "http://x"},
                "allowStatus": [404, 600, 99, "500", 201.5]})
            ),
            [
                "definition.steps[0].allowStatus[1]",
                "definition.steps[0].allowStatus[2]",
                "definition.steps[0].allowStatus[3]",
                "definition.steps[0].allowStatus[4]"
            ]
        );
        let ok = only_step(
            json!({"name": "h", "type": "http", "request": {"url": "http://x"},
            "allowStatus": [100, 599]}),
        );
        assert!(
            matches!(ok.kind, StepKind::Http { allow_status, .. } if allow_status == [100, 599])
        );
    }

    #[test]
    fn a_delay_needs_seconds_in_range() {
        let missing = parse(json!([{"name": "d", "type": "delay"}])).unwrap_err();
        assert_eq!(fields(&missing), ["definition.steps[0].seconds"]);
        assert_eq!(missing[0].message, "is required");
        for bad in [json!(-1), json!(MAX_DELAY_SECONDS + 1.0), json!("10")] {
            assert_eq!(
                step_errors(json!({"name": "d", "type": "delay", "seconds": bad})),
                ["definition.steps[0].seconds"],
                "{bad}"
            );
        }
        for good in [0.0, 0.5, MAX_DELAY_SECONDS] {
            let step = only_step(json!({"name": "d", "type": "delay", "seconds": good}));
            assert_eq!(step.kind, StepKind::Delay { seconds: good });
        }
    }

    #[test]
    fn a_subworkflow_names_a_workflow_id() {
        for bad in ["support_triage", "wf_", "wf_9bad", "run_x"] {
            let errors = parse(json!([{"name": "s", "type": "subworkflow", "workflowId": bad}]))
                .unwrap_err();
            assert_eq!(fields(&errors), ["definition.steps[0].workflowId"], "{bad}");
            assert!(errors[0].message.contains("wf_<name>"), "{errors:?}");
        }
        assert_eq!(
            step_errors(json!({"name": "s", "type": "subworkflow"})),
            ["definition.steps[0].workflowId"]
        );
        assert_eq!(
            step_errors(
                json!({"name": "s", "type": "subworkflow", "workflowId": "wf_a",
                "variables": [1]})
            ),
            ["definition.steps[0].variables"]
        );
        let templated = only_step(json!({"name": "s", "type": "subworkflow",
            "workflowId": "wf_a", "variables": "{{ variables }}"}));
        assert!(matches!(
            templated.kind,
            StepKind::Subworkflow {
                variables: Some(_),
                ..
            }
        ));
        let bare = only_step(json!({"name": "s", "type": "subworkflow", "workflowId": "wf_a"}));
        assert_eq!(
            bare.kind,
            StepKind::Subworkflow {
                workflow_id: "wf_a".into(),
                variables: None
            }
        );
    }

    #[test]
    fn an_approval_takes_no_fields_of_its_own() {
        assert_eq!(
            only_step(json!({"name": "ok", "type": "approval"})).kind,
            StepKind::Approval
        );
        assert_eq!(
            step_errors(json!({"name": "ok", "type": "approval", "seconds": 5})),
            ["definition.steps[0].seconds"]
        );
    }

    #[test]
    fn retry_defaults_to_one_attempt_and_omitted_fields_take_the_defaults() {
        let plain = only_step(json!({"name": "t", "type": "transform", "value": 1}));
        assert_eq!(
            plain.retry,
            RetryPolicy {
                max_attempts: 1,
                backoff_seconds: 1.0,
                backoff_multiplier: 2.0
            }
        );
        assert_eq!(plain.retry, RetryPolicy::default());
        assert_eq!(plain.timeout, None);
        let partial = only_step(json!({"name": "t", "type": "transform", "value": 1,
            "retry": {"maxAttempts": 3}}));
        assert_eq!(
            partial.retry,
            RetryPolicy {
                max_attempts: 3,
                backoff_seconds: 1.0,
                backoff_multiplier: 2.0
            }
        );
        let full = only_step(json!({"name": "t", "type": "transform", "value": 1,
            "retry": {"maxAttempts": 20, "backoffSeconds": 0.5, "backoffMultiplier": 3}}));
        assert_eq!(
            full.retry,
            RetryPolicy {
                max_attempts: 20,
                backoff_seconds: 0.5,
                backoff_multiplier: 3.0
            }
        );
        let null = only_step(json!({"name": "t", "type": "transform", "value": 1, "retry": null}));
        assert_eq!(null.retry, RetryPolicy::default());
    }

    #[test]
    fn retry_names_unknown_fields_and_bad_attempt_counts() {
        let errors = parse(json!([{"name": "t", "type": "transform", "value": 1,
            "retry": {"maxAttempt": 3}}]))
        .unwrap_err();
        assert_eq!(fields(&errors), ["definition.steps[0].retry.maxAttempt"]);
        assert!(errors[0].message.contains("maxAttempts"), "{errors:?}");
        for bad in [json!(0), json!(2.5), json!(21), json!(-1), json!("3")] {
            assert_eq!(
                step_errors(json!({"name": "t", "type": "transform", "value": 1,
                    "retry": {"maxAttempts": bad}})),
                ["definition.steps[0].retry.maxAttempts"],
                "{bad}"
            );
        }
        assert_eq!(
            step_errors(json!({"name": "t", "type": "transform", "value": 1,
                "retry": {"backoffSeconds": -1, "backoffMultiplier": 0.5}})),
            [
                "definition.steps[0].retry.backoffSeconds",
                "definition.steps[0].retry.backoffMultiplier"
            ]
        );
        assert_eq!(
            step_errors(json!({"name": "t", "type": "transform", "value": 1, "retry": 3})),
            ["definition.steps[0].retry"]
        );
    }

    #[test]
    fn the_delay_before_an_attempt_grows_by_the_multiplier() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_seconds: 1.5,
            backoff_multiplier: 2.0,
        };
        assert_eq!(p.delay_before(2), Duration::from_secs_f64(1.5));
        assert_eq!(p.delay_before(3), Duration::from_secs_f64(3.0));
        assert_eq!(p.delay_before(4), Duration::from_secs_f64(6.0));
        // Attempt 1 (or less) has no earlier attempt; it is treated like attempt 2.
        assert_eq!(p.delay_before(1), Duration::from_secs_f64(1.5));
        // Capped, however many attempts a retried run has made.
        assert_eq!(
            p.delay_before(40),
            Duration::from_secs_f64(MAX_BACKOFF_SECONDS)
        );
        assert_eq!(
            p.delay_before(5000),
            Duration::from_secs_f64(MAX_BACKOFF_SECONDS)
        );
        let none = RetryPolicy {
            max_attempts: 5,
            backoff_seconds: 0.0,
            backoff_multiplier: 10.0,
        };
        assert_eq!(none.delay_before(3), Duration::ZERO);
        assert_eq!(none.delay_before(5000), Duration::ZERO);
    }

    #[test]
    fn timeout_seconds_must_be_in_range() {
        for bad in [
            json!(0),
            json!(-5),
            json!(MAX_TIMEOUT_SECONDS + 1.0),
            json!("30"),
        ] {
            assert_eq!(
                step_errors(json!({"name": "t", "type": "transform", "value": 1,
                    "timeoutSeconds": bad})),
                ["definition.steps[0].timeoutSeconds"],
                "{bad}"
            );
        }
        let step = only_step(json!({"name": "t", "type": "transform", "value": 1,
            "timeoutSeconds": 2.5}));
        assert_eq!(step.timeout, Some(Duration::from_millis(2500)));
        // A delay may carry one (it is ignored when the step runs, not refused).
        let delay = only_step(json!({"name": "d", "type": "delay", "seconds": 60,
            "timeoutSeconds": 1}));
        assert_eq!(delay.timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn calls_may_not_wait_longer_than_an_hour() {
        let http = json!({"name": "h", "type": "http", "request": {"url": "https://example.com"}});
        let agent = json!({"name": "a", "type": "agent", "agentId": "x", "instructions": "go"});
        for step in [http, agent] {
            let mut long = step.clone();
            long["timeoutSeconds"] = json!(MAX_CALL_TIMEOUT_SECONDS + 1.0);
            assert_eq!(
                step_errors(long),
                ["definition.steps[0].timeoutSeconds"],
                "{step}"
            );
            let mut hour = step.clone();
            hour["timeoutSeconds"] = json!(MAX_CALL_TIMEOUT_SECONDS);
            assert_eq!(
                only_step(hour).timeout,
                Some(Duration::from_secs(3600)),
                "{step}"
            );
        }
        // Waits hold no worker slot: an approval may wait a day.
        let approval = only_step(json!({"name": "ok", "type": "approval",
            "timeoutSeconds": 86400}));
        assert_eq!(approval.timeout, Some(Duration::from_secs(86400)));
    }

    #[test]
    fn a_when_that_does_not_compile_is_named() {
        let errors = parse(json!([
            {"name": "a", "type": "transform", "value": 1},
            {"name": "b", "type": "transform", "value": 1, "when": "steps.a.output =="}
        ]))
        .unwrap_err();
        assert_eq!(fields(&errors), ["definition.steps[1].when"]);
        assert!(errors[0].message.contains("condition"), "{errors:?}");
        assert_eq!(
            step_errors(json!({"name": "a", "type": "transform", "value": 1, "when": true})),
            ["definition.steps[0].when"]
        );
        let ok = only_step(json!({"name": "a", "type": "transform", "value": 1,
            "when": "variables.priority != 'low'"}));
        assert_eq!(ok.when.as_deref(), Some("variables.priority != 'low'"));
    }

    #[test]
    fn a_misspelt_depends_on_is_named_not_ignored() {
        let errors = parse(json!([
            {"name": "a", "type": "transform", "value": 1},
            {"name": "b", "type": "transform", "value": 1, "dependson": []}
        ]))
        .unwrap_err();
        assert_eq!(fields(&errors), ["definition.steps[1].dependson"]);
        assert!(errors[0].message.contains("dependsOn"), "{errors:?}");
        assert_eq!(
            step_errors(json!({"name": "a", "type": "transform", "value": 1, "dependsOn": "x"})),
            ["definition.steps[0].dependsOn"]
        );
        assert_eq!(
            step_errors(json!({"name": "a", "type": "transform", "value": 1, "dependsOn": [1]})),
            ["definition.steps[0].dependsOn[0]"]
        );
    }

    #[test]
    fn fan_out_and_fan_in_resolve_to_indexes_with_the_right_leaves() {
        // classify -> (draft, route) -> notify
        let g = parse(json!([
            {"name": "classify", "type": "transform", "value": 1},
            {"name": "draft", "type": "transform", "value": 2},
            {"name": "route", "type": "transform", "value": 3, "dependsOn": ["classify"]},
            {"name": "notify", "type": "transform", "value": 4, "dependsOn": ["draft", "route"]}
        ]))
        .unwrap();
        let deps: Vec<_> = g.steps.iter().map(|s| s.depends_on.clone()).collect();
        assert_eq!(deps, [vec![], vec![0], vec![0], vec![1, 2]]);
        assert_eq!(g.leaves(), [3]);
        assert_eq!(g.index_of("route"), Some(2));

        // Two roots, each with its own branch, and a fan-in listed before its parents.
        let g = parse(json!([
            {"name": "join", "type": "transform", "value": 0, "dependsOn": ["b2", "a1"]},
            {"name": "a", "type": "transform", "value": 1, "dependsOn": []},
            {"name": "a1", "type": "transform", "value": 2},
            {"name": "b", "type": "transform", "value": 3, "dependsOn": []},
            {"name": "b2", "type": "transform", "value": 4, "dependsOn": ["b"]},
            {"name": "b3", "type": "transform", "value": 5, "dependsOn": ["b"]}
        ]))
        .unwrap();
        let deps: Vec<_> = g.steps.iter().map(|s| s.depends_on.clone()).collect();
        assert_eq!(
            deps,
            [vec![4, 2], vec![], vec![1], vec![], vec![3], vec![3]]
        );
        assert_eq!(g.leaves(), [0, 5]);
    }

    #[test]
    fn self_and_repeated_dependencies_are_refused() {
        assert_eq!(
            fields(
                &parse(json!([
                    {"name": "a", "type": "transform", "value": 1},
                    {"name": "b", "type": "transform", "value": 1, "dependsOn": ["a", "a", "b"]}
                ]))
                .unwrap_err()
            ),
            [
                "definition.steps[1].dependsOn[1]",
                "definition.steps[1].dependsOn[2]"
            ]
        );
    }

    #[test]
    fn http_header_names_are_checked_when_the_workflow_is_saved() {
        let def = json!({"steps": [{"name": "h", "type": "http",
            "request": {"url": "http://x", "headers": {"X Token": "a", "X-Ok": "b"}}}]});
        let errors = WorkflowGraph::parse(&def, "definition").unwrap_err();
        assert_eq!(
            fields(&errors),
            ["definition.steps[0].request.headers.X Token"]
        );
    }
}
