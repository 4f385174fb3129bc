//! Parsing a whole definition: its steps, their names and dependencies, and no cycle.

use super::steps::RawStep;
use super::types::{Step, WorkflowGraph};
use super::MAX_STEPS;
use crate::body::{Errors, Obj};
use crate::envelope::FieldError;
use serde_json::Value;
use std::collections::HashMap;

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
        let budget = obj.optional("budget").and_then(|b| {
            crate::budget::Budget::parse(b, &crate::body::join(prefix, "budget"), &mut errors)
        });
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
        let graph = WorkflowGraph { steps, budget };
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
}
