//! Request bodies, headers and queries parsed into known-good values. No I/O here.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use shared_models::body::{type_name, Errors, Obj};
use shared_models::budget::Budget;
use shared_models::envelope::{ApiError, FieldError};
use shared_models::http::Query;
use shared_models::ids::{RunId, WorkflowId};
use shared_models::pagination;
use shared_models::status::RunStatus;

/// What a new run needs, from either trigger endpoint.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// As the client wrote it; a malformed id is simply a workflow that is not found.
    pub workflow_id: String,
    pub variables: Map<String, Value>,
    /// Set when the body named an org; it must be the caller's.
    pub org_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// `budget`: overrides the definition's, field by field, for this run.
    pub budget: Option<Budget>,
}

impl RunRequest {
    /// A hash of what the request asks for, to tell a retry (same body) from a reuse of the
    /// key for something else.
    pub(crate) fn fingerprint(&self) -> String {
        // serde_json's map is ordered by key, so equal variables serialize equally.
        let canonical = match &self.budget {
            None => {
                serde_json::json!({ "workflowId": self.workflow_id, "variables": self.variables })
            }
            Some(budget) => serde_json::json!({
                "workflowId": self.workflow_id, "variables": self.variables, "budget": budget
            }),
        };
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    pub(crate) fn workflow_id(&self) -> Option<WorkflowId> {
        WorkflowId::parse(&self.workflow_id)
    }
}

/// `variables` are stored with the run and rendered into every step's context: 64 KiB of
/// JSON is far more than a trigger needs, and keeps one run from weighing on every read.
pub(crate) const MAX_VARIABLES_BYTES: usize = 64 * 1024;

fn variables(obj: &mut Obj, errors: &mut Errors) -> Map<String, Value> {
    let vars = obj
        .opt_object("variables", errors)
        .cloned()
        .unwrap_or_default();
    let size = serde_json::to_vec(&vars)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_VARIABLES_BYTES {
        errors.push(FieldError::new(
            obj.path("variables"),
            format!("is {size} bytes of JSON; at most {MAX_VARIABLES_BYTES} are accepted"),
        ));
    }
    vars
}

/// `budget`, if the body has one.
fn budget(obj: &mut Obj, errors: &mut Errors) -> Option<Budget> {
    let path = obj.path("budget");
    obj.optional("budget")
        .filter(|b| !b.is_null())
        .and_then(|b| Budget::parse(b, &path, errors))
}

impl RunRequest {
    /// The budget override as stored with the run.
    pub(crate) fn budget_json(&self) -> Option<Value> {
        self.budget
            .as_ref()
            .and_then(|b| serde_json::to_value(b).ok())
    }
}

pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header, if any: 1-255 visible ASCII characters.
pub(crate) fn idempotency_key(raw: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match std::str::from_utf8(raw) {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::validation(vec![FieldError::new(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        )])),
    }
}

/// `POST /workflows/{id}/trigger` body: `{ "variables": {...} }`, all optional.
pub(crate) fn trigger_request(
    workflow_id: String,
    body: &Map<String, Value>,
    idempotency_key: Option<String>,
) -> Result<RunRequest, ApiError> {
    let mut errors = Errors::new();
    let mut obj = Obj::new(body, "");
    let variables = variables(&mut obj, &mut errors);
    let budget = budget(&mut obj, &mut errors);
    obj.finish(&mut errors);
    shared_models::body::finish(errors, || RunRequest {
        workflow_id,
        variables,
        org_id: None,
        idempotency_key,
        budget,
    })
}

/// `POST /workflows/runs` body: `workflowId` (required), `variables`, `orgId`.
pub(crate) fn create_run_request(
    body: &Map<String, Value>,
    idempotency_key: Option<String>,
) -> Result<RunRequest, ApiError> {
    let mut errors = Errors::new();
    let mut obj = Obj::new(body, "");
    let workflow_id = obj.req_str("workflowId", &mut errors).map(str::to_string);
    let variables = variables(&mut obj, &mut errors);
    let org_id = obj.opt_str("orgId", &mut errors).map(str::to_string);
    let budget = budget(&mut obj, &mut errors);
    obj.finish(&mut errors);
    match workflow_id {
        Some(workflow_id) if errors.is_empty() => Ok(RunRequest {
            workflow_id,
            variables,
            org_id,
            idempotency_key,
            budget,
        }),
        _ => Err(ApiError::validation(errors)),
    }
}

/// `GET /workflows/runs` parameters.
#[derive(Debug, Clone)]
pub(crate) struct ListRuns {
    pub limit: i64,
    /// The id of the last run of the previous page (ids sort by creation time).
    pub before_id: Option<String>,
    pub workflow_id: Option<String>,
    pub status: Option<RunStatus>,
    pub org_id: Option<String>,
}

impl TryFrom<Query> for ListRuns {
    type Error = ApiError;

    fn try_from(mut q: Query) -> Result<Self, ApiError> {
        let mut errors = Errors::new();
        let limit = q.limit(&mut errors);
        let before_id = q.get("cursor").and_then(|c| {
            match pagination::decode_cursor(c)
                .ok()
                .and_then(|id| RunId::parse(&id))
            {
                Some(id) => Some(id.as_str().to_string()),
                None => {
                    errors.push(FieldError::new(
                        "cursor",
                        "is not a cursor this API returned",
                    ));
                    None
                }
            }
        });
        let workflow_id = q.get("workflowId").map(str::to_string);
        let status = q.get("status").and_then(|s| match RunStatus::parse(s) {
            Some(st) => Some(st),
            None => {
                let all: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                errors.push(FieldError::new(
                    "status",
                    format!("must be one of: {}", all.join(", ")),
                ));
                None
            }
        });
        let org_id = q.get("orgId").map(str::to_string);
        q.finish(errors)?;
        Ok(ListRuns {
            limit,
            before_id,
            workflow_id,
            status,
            org_id,
        })
    }
}

/// The longest approval comment, in characters.
pub(crate) const MAX_COMMENT_CHARS: usize = 2000;

/// A decision on an `approval` step (the run lifecycle's, in `shared_models::runs`).
pub(crate) use shared_models::runs::Approval;

/// `POST /workflows/runs/{id}/steps/{step}/approve` body.
pub(crate) fn approval_request(body: &Map<String, Value>) -> Result<Approval, ApiError> {
    let mut errors = Errors::new();
    let mut obj = Obj::new(body, "");
    let approved = match obj.required("approved", &mut errors) {
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            errors.push(FieldError::new(
                "approved",
                format!("must be a boolean, not {}", type_name(other)),
            ));
            None
        }
        None => None,
    };
    let comment = obj.opt_str("comment", &mut errors).map(str::to_string);
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        errors.push(FieldError::new(
            "comment",
            format!("must be at most {MAX_COMMENT_CHARS} characters"),
        ));
    }
    obj.finish(&mut errors);
    match approved {
        Some(approved) if errors.is_empty() => Ok(Approval { approved, comment }),
        _ => Err(ApiError::validation(errors)),
    }
}

/// The most dead letters one redrive looks at, by default and at most.
pub(crate) const DEFAULT_REDRIVE_LIMIT: u32 = 1000;
pub(crate) const MAX_REDRIVE_LIMIT: u32 = 10_000;
/// The longest `olderThanSeconds` (a year).
pub(crate) const MAX_REDRIVE_AGE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// The longest `orgId` a filter may name (org ids are at most 64 characters).
const MAX_ORG_ID_CHARS: usize = 64;

/// `POST /ops/dead-letters/redrive` body: which dead letters go back to the job queue.
#[derive(Debug, Clone)]
pub(crate) struct RedriveFilter {
    /// Only jobs of this org (`orgId`).
    pub org_id: Option<String>,
    /// Only jobs of runs of this workflow (`workflowId`).
    pub workflow_id: Option<WorkflowId>,
    /// The most letters one call takes from the queue (`limit`, 1-10000, default 1000).
    pub limit: u32,
    /// Only letters dead-lettered at least this long ago (`olderThanSeconds`).
    pub older_than: Option<std::time::Duration>,
}

/// `POST /ops/dead-letters/redrive` body: `orgId`, `workflowId`, `limit`, `olderThanSeconds`,
/// all optional (no body at all is `{}`).
pub(crate) fn redrive_request(body: &Map<String, Value>) -> Result<RedriveFilter, ApiError> {
    let mut errors = Errors::new();
    let mut obj = Obj::new(body, "");
    let org_id = obj.opt_str("orgId", &mut errors).and_then(|o| {
        if (1..=MAX_ORG_ID_CHARS).contains(&o.chars().count()) {
            Some(o.to_string())
        } else {
            errors.push(FieldError::new(
                "orgId",
                format!("must be 1 to {MAX_ORG_ID_CHARS} characters"),
            ));
            None
        }
    });
    let workflow_id =
        obj.opt_str("workflowId", &mut errors)
            .and_then(|w| match WorkflowId::parse(w) {
                Some(id) => Some(id),
                None => {
                    errors.push(FieldError::new(
                        "workflowId",
                        "must be a workflow id (wf_ and a name)",
                    ));
                    None
                }
            });
    let limit = match obj.optional("limit") {
        None => DEFAULT_REDRIVE_LIMIT,
        Some(v) => match shared_models::body::whole_number(v)
            .filter(|n| (1..=u64::from(MAX_REDRIVE_LIMIT)).contains(n))
        {
            Some(n) => n as u32,
            None => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_REDRIVE_LIMIT}"),
                ));
                DEFAULT_REDRIVE_LIMIT
            }
        },
    };
    let older_than = obj
        .opt_f64("olderThanSeconds", &mut errors)
        .and_then(|secs| {
            if (0.0..=MAX_REDRIVE_AGE_SECONDS).contains(&secs) {
                Some(std::time::Duration::from_secs_f64(secs))
            } else {
                errors.push(FieldError::new(
                    "olderThanSeconds",
                    format!("must be from 0 to {MAX_REDRIVE_AGE_SECONDS}"),
                ));
                None
            }
        });
    obj.finish(&mut errors);
    shared_models::body::finish(errors, || RedriveFilter {
        org_id,
        workflow_id,
        limit,
        older_than,
    })
}

/// The `Last-Event-ID` header of an event stream, if any: the id of the last event the
/// client has (a non-negative integer, as this service sends them).
pub(crate) fn last_event_id(raw: Option<&[u8]>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::validation(vec![FieldError::new(
                "Last-Event-ID",
                "must be the id of an event this stream sent (a non-negative integer)",
            )])
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared_models::status::StepStatus;

    #[test]
    fn trigger_bodies_default_variables_and_refuse_unknown_fields() {
        let r = trigger_request("wf_a".into(), json!({}).as_object().unwrap(), None).unwrap();
        assert!(r.variables.is_empty());
        let r = trigger_request(
            "wf_a".into(),
            json!({"variables": null}).as_object().unwrap(),
            None,
        )
        .unwrap();
        assert!(r.variables.is_empty());
        let e = trigger_request(
            "wf_a".into(),
            json!({"variables": [1], "vars": {}}).as_object().unwrap(),
            None,
        )
        .unwrap_err();
        let fields: Vec<_> = e.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["variables", "vars"]);
    }

    #[test]
    fn oversized_variables_are_refused() {
        let big = "x".repeat(MAX_VARIABLES_BYTES);
        let e = trigger_request(
            "wf_a".into(),
            json!({"variables": {"blob": big}}).as_object().unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.details[0].field, "variables");
        assert!(trigger_request(
            "wf_a".into(),
            json!({"variables": {"blob": "x".repeat(1000)}})
                .as_object()
                .unwrap(),
            None
        )
        .is_ok());
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a = create_run_request(
            json!({"workflowId": "wf_a", "variables": {"x": 1, "y": 2}})
                .as_object()
                .unwrap(),
            None,
        )
        .unwrap();
        let b = create_run_request(
            json!({"variables": {"y": 2, "x": 1}, "workflowId": "wf_a"})
                .as_object()
                .unwrap(),
            None,
        )
        .unwrap();
        let c = create_run_request(
            json!({"workflowId": "wf_a", "variables": {"x": 2}})
                .as_object()
                .unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(idempotency_key(None).unwrap(), None);
        assert_eq!(
            idempotency_key(Some(b"abc-1")).unwrap(),
            Some("abc-1".into())
        );
        assert!(idempotency_key(Some(b"")).is_err());
        assert!(idempotency_key(Some(b"has space")).is_err());
    }

    #[test]
    fn approval_bodies_need_a_boolean_and_a_short_comment() {
        let a = approval_request(json!({"approved": true}).as_object().unwrap()).unwrap();
        assert_eq!(a.output(), json!({"approved": true, "comment": null}));
        assert_eq!((a.step_status(), a.error()), (StepStatus::Completed, None));
        let r = approval_request(
            json!({"approved": false, "comment": "too risky"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.step_status(), StepStatus::Failed);
        assert_eq!(r.error().as_deref(), Some("rejected: too risky"));
        assert_eq!(r.log_line(), ("WARN", "rejected: too risky".to_string()));
        let e = approval_request(
            json!({"approved": "yes", "comment": 3, "note": 1})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        let fields: Vec<_> = e.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["approved", "comment", "note"]);
        let e = approval_request(json!({}).as_object().unwrap()).unwrap_err();
        assert_eq!(e.details[0].field, "approved");
        let long = "é".repeat(MAX_COMMENT_CHARS);
        assert!(approval_request(
            json!({"approved": true, "comment": long})
                .as_object()
                .unwrap()
        )
        .is_ok());
        let longer = "x".repeat(MAX_COMMENT_CHARS + 1);
        assert!(approval_request(
            json!({"approved": true, "comment": longer})
                .as_object()
                .unwrap()
        )
        .is_err());
    }

    #[test]
    fn redrive_bodies_are_optional_fields_in_range() {
        let f = redrive_request(json!({}).as_object().unwrap()).unwrap();
        assert_eq!(
            (f.org_id, f.workflow_id, f.limit, f.older_than),
            (None, None, DEFAULT_REDRIVE_LIMIT, None)
        );
        let f = redrive_request(
            json!({"orgId": "org_a", "workflowId": "wf_triage", "limit": 10000,
                   "olderThanSeconds": 1.5})
            .as_object()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(f.org_id.as_deref(), Some("org_a"));
        assert_eq!(
            f.workflow_id.map(|w| w.as_str().to_string()).as_deref(),
            Some("wf_triage")
        );
        assert_eq!(f.limit, 10_000);
        assert_eq!(f.older_than, Some(std::time::Duration::from_millis(1500)));
        let e = redrive_request(
            json!({"orgId": "", "workflowId": "triage", "limit": 0,
                   "olderThanSeconds": -1, "queue": "x"})
            .as_object()
            .unwrap(),
        )
        .unwrap_err();
        let fields: Vec<_> = e.details.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            ["orgId", "workflowId", "limit", "olderThanSeconds", "queue"]
        );
        for limit in [json!(10001), json!(2.5), json!("5")] {
            let body = json!({ "limit": limit });
            assert!(
                redrive_request(body.as_object().unwrap()).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn last_event_ids_are_numbers() {
        assert_eq!(last_event_id(None).unwrap(), None);
        assert_eq!(last_event_id(Some(b"42")).unwrap(), Some(42));
        for bad in [&b""[..], b"-1", b"abc", b"1.5", b"99999999999999999999"] {
            assert!(last_event_id(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
