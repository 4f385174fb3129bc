//! Request bodies parsed into known-good values. No I/O here.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use shared_models::body::{Errors, Obj};
use shared_models::envelope::{ApiError, FieldError};
use shared_models::graph::WorkflowGraph;
use shared_models::http::Query;
use shared_models::ids::{WorkflowId, WorkflowName};
use shared_models::pagination;

pub mod versions;

pub(crate) const MAX_DESCRIPTION_CHARS: usize = 2000;

/// A definition that passed the graph model's checks, kept as the client wrote it.
#[derive(Debug, Clone)]
pub struct Definition {
    pub json: Value,
    pub graph: WorkflowGraph,
}

fn definition(obj: &mut Obj, errors: &mut Errors) -> Option<Definition> {
    let raw = obj.required("definition", errors)?;
    match WorkflowGraph::parse(raw, &obj.path("definition")) {
        Ok(graph) => Some(Definition {
            json: raw.clone(),
            graph,
        }),
        Err(mut problems) => {
            errors.append(&mut problems);
            None
        }
    }
}

fn description(obj: &mut Obj, errors: &mut Errors) -> Option<String> {
    let d = obj.opt_str("description", errors)?;
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        errors.push(FieldError::new(
            obj.path("description"),
            format!("may be at most {MAX_DESCRIPTION_CHARS} characters long"),
        ));
    }
    Some(d.to_string())
}

/// `POST /workflows`
#[derive(Debug, Clone)]
pub(crate) struct NewWorkflow {
    pub name: WorkflowName,
    pub description: Option<String>,
    pub definition: Definition,
    pub is_active: bool,
}

impl NewWorkflow {
    pub(crate) fn id(&self) -> WorkflowId {
        WorkflowId::for_name(&self.name)
    }
}

impl TryFrom<&Map<String, Value>> for NewWorkflow {
    type Error = ApiError;

    fn try_from(map: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        let name = obj
            .req_str("name", &mut errors)
            .and_then(|n| match WorkflowName::parse(n) {
                Ok(n) => Some(n),
                Err(problem) => {
                    errors.push(FieldError::new("name", problem));
                    None
                }
            });
        let description = description(&mut obj, &mut errors);
        let definition = definition(&mut obj, &mut errors);
        let is_active = obj.opt_bool("isActive", &mut errors).unwrap_or(true);
        obj.finish(&mut errors);
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        match (name, definition) {
            (Some(name), Some(definition)) => Ok(NewWorkflow {
                name,
                description,
                definition,
                is_active,
            }),
            _ => Err(ApiError::internal()),
        }
    }
}

/// `PUT /workflows/{id}`: a new definition makes a new version; `description` and
/// `isActive` keep their values when left out; the name cannot change.
#[derive(Debug, Clone)]
pub(crate) struct WorkflowUpdate {
    pub definition: Definition,
    pub description: Option<String>,
    pub is_active: Option<bool>,
}

impl WorkflowUpdate {
    pub(crate) fn parse(map: &Map<String, Value>, id: &WorkflowId) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        if let Some(name) = obj.opt_str("name", &mut errors) {
            if WorkflowId::parse(&format!("{}{name}", WorkflowId::PREFIX)).as_ref() != Some(id) {
                errors.push(FieldError::new(
                    "name",
                    "cannot be changed (create a new workflow instead)",
                ));
            }
        }
        let description = description(&mut obj, &mut errors);
        let definition = definition(&mut obj, &mut errors);
        let is_active = obj.opt_bool("isActive", &mut errors);
        obj.finish(&mut errors);
        match definition {
            Some(definition) if errors.is_empty() => Ok(WorkflowUpdate {
                definition,
                description,
                is_active,
            }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// `POST /workflows/validate`: a definition checked exactly as a create checks it, so the
/// answer is the 400 a create would give (same `details` paths), or nothing at all.
#[derive(Debug, Clone)]
pub struct DefinitionCheck {
    pub definition: Definition,
}

impl TryFrom<&Map<String, Value>> for DefinitionCheck {
    type Error = ApiError;

    fn try_from(map: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let mut obj = Obj::new(map, "");
        let definition = definition(&mut obj, &mut errors);
        obj.finish(&mut errors);
        match definition {
            Some(definition) if errors.is_empty() => Ok(DefinitionCheck { definition }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// `GET /workflows` parameters.
#[derive(Debug, Clone)]
pub(crate) struct ListWorkflows {
    pub limit: i64,
    /// The (createdAt, id) of the last workflow of the previous page.
    pub after: Option<(DateTime<Utc>, String)>,
    pub is_active: Option<bool>,
}

impl TryFrom<Query> for ListWorkflows {
    type Error = ApiError;

    fn try_from(mut q: Query) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let limit = q.limit(&mut errors);
        let after = q.get("cursor").and_then(|c| match decode_cursor(c) {
            Some(key) => Some(key),
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API returned",
                ));
                None
            }
        });
        let is_active = q.get("isActive").and_then(|v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                errors.push(FieldError::new("isActive", "must be true or false"));
                None
            }
        });
        q.finish(errors)?;
        Ok(ListWorkflows {
            limit,
            after,
            is_active,
        })
    }
}

pub(crate) fn encode_cursor(created_at: &DateTime<Utc>, id: &str) -> String {
    pagination::encode_cursor(&format!("{}|{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let key = pagination::decode_cursor(cursor).ok()?;
    let (micros, id) = key.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.to_string(),
    ))
}

/// A workflow id from a path: anything that cannot name a workflow is simply not found.
pub(crate) fn parse_id(raw: &str) -> Option<WorkflowId> {
    WorkflowId::parse(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed() -> Value {
        json!({
            "name": "support_triage",
            "description": "Categorize and route incoming support tickets",
            "definition": {"steps": [{"name": "classify", "type": "agent", "agentId": "support-classifier",
                "instructions": "Determine ticket category and priority."}]}
        })
    }

    #[test]
    fn the_seed_body_parses() {
        let w = NewWorkflow::try_from(seed().as_object().unwrap()).unwrap();
        assert_eq!(w.id().as_str(), "wf_support_triage");
        assert!(w.is_active);
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = json!({"name": "9bad", "descripton": "typo", "definition": {"steps": [{"name": "a", "type": "nope"}]}});
        let err = NewWorkflow::try_from(body.as_object().unwrap()).unwrap_err();
        let fields: Vec<_> = err.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["name", "definition.steps[0].type", "descripton"]);
    }

    #[test]
    fn an_update_may_repeat_the_name_but_not_change_it() {
        let id = WorkflowId::parse("wf_support_triage").unwrap();
        let mut body = seed();
        assert!(WorkflowUpdate::parse(body.as_object().unwrap(), &id).is_ok());
        body["name"] = json!("other");
        let err = WorkflowUpdate::parse(body.as_object().unwrap(), &id).unwrap_err();
        assert_eq!(err.details[0].field, "name");
    }

    #[test]
    fn a_check_names_the_same_fields_a_create_does() {
        let definition =
            json!({"steps": [{"name": "a", "type": "transform"}, {"name": "b", "type": "nope"}]});
        let create = json!({"name": "ok", "definition": definition});
        let check = json!({"definition": definition, "name": "ok"});
        let create_err = NewWorkflow::try_from(create.as_object().unwrap()).unwrap_err();
        let check_err = DefinitionCheck::try_from(check.as_object().unwrap()).unwrap_err();
        let check_fields: Vec<_> = check_err.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            check_fields,
            [
                "definition.steps[0].value",
                "definition.steps[1].type",
                "name"
            ]
        );
        assert_eq!(create_err.details, check_err.details[..2]);
        let ok = json!({"definition": seed()["definition"]});
        assert!(DefinitionCheck::try_from(ok.as_object().unwrap()).is_ok());
    }

    #[test]
    fn cursors_round_trip() {
        let t = DateTime::from_timestamp_micros(1_750_000_000_123_000).unwrap();
        assert_eq!(
            decode_cursor(&encode_cursor(&t, "wf_a")),
            Some((t, "wf_a".to_string()))
        );
    }
}
