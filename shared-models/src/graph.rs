//! The one graph model: parsing, validating and compiling a workflow definition.
//! workflow-service uses it to reject bad definitions; the worker to execute good ones.
//!
//! A definition is `{ "steps": [ ... ] }`. Array order is the default order: a step without
//! `dependsOn` depends on the step before it, the first step is a root, and `dependsOn: []`
//! makes any step a root (CONTRACT.md "Workflow graphs").

use crate::body::{Errors, Obj};
use crate::envelope::FieldError;
use crate::ids::StepName;
use crate::template;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// More steps than this is a definition no one should run; it is refused at create/update.
pub const MAX_STEPS: usize = 200;

/// The step types this build executes.
pub const STEP_TYPES: &[&str] = &["agent", "transform"];

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Ask the agent `agent_id` to carry out `instructions` (templated), with optional
    /// templated `inputs`.
    Agent {
        agent_id: String,
        instructions: String,
        inputs: Option<Value>,
    },
    /// Output the templated `value`.
    Transform { value: Value },
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent { .. } => "agent",
            StepKind::Transform { .. } => "transform",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: StepName,
    /// Indexes into [`WorkflowGraph::steps`] of the steps this one waits for.
    pub depends_on: Vec<usize>,
    pub kind: StepKind,
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
        let kind = match obj.req_str("type", errors) {
            Some("agent") => parse_agent(&mut obj, errors),
            Some("transform") => parse_transform(&mut obj, errors),
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
        })
    }
}

fn templated_string(obj: &mut Obj, key: &'static str, errors: &mut Errors) -> Option<String> {
    let s = obj.req_str(key, errors)?;
    if let Err(e) = template::check(s) {
        errors.push(FieldError::new(
            obj.path(key),
            format!("template does not compile: {e}"),
        ));
    }
    Some(s.to_string())
}

fn templated_json(obj: &mut Obj, key: &'static str, v: &Value, errors: &mut Errors) {
    if let Err((path, e)) = template::check_json(v, &obj.path(key)) {
        errors.push(FieldError::new(
            path,
            format!("template does not compile: {e}"),
        ));
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
}
