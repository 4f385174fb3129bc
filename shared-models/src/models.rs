//! Row types of the shared database. Storage code in each service reads and writes these;
//! HTTP views are built from them in the owning service.

use crate::schema::*;
use crate::status::{RunStatus, StepStatus};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = orgs, check_for_backend(diesel::pg::Pg))]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: its hash and a short prefix, never the key.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = workflows, check_for_backend(diesel::pg::Pg))]
pub struct WorkflowRow {
    pub org_id: String,
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub is_active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = workflow_versions, check_for_backend(diesel::pg::Pg))]
pub struct WorkflowVersionRow {
    pub org_id: String,
    pub workflow_id: String,
    pub version: i32,
    pub definition: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = runs, check_for_backend(diesel::pg::Pg))]
pub struct RunRow {
    pub id: String,
    pub org_id: String,
    pub workflow_id: String,
    pub workflow_version: i32,
    pub status: RunStatus,
    pub variables: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub request_id: Option<String>,
    pub parent_run_id: Option<String>,
    pub parent_step: Option<String>,
    pub wake_at: Option<DateTime<Utc>>,
    /// The root of the run's tree (NULL for a root run): descendants are counted by it.
    pub root_run_id: Option<String>,
    /// The trigger's `budget` override ([`crate::budget::Budget`] as JSON), if it gave one.
    pub budget: Option<Value>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub run_id: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub dedupe_key: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewOutbox<'a> {
    pub run_id: &'a str,
    pub payload: &'a Value,
    /// Set for jobs that must be queued once only (wake-ups).
    pub dedupe_key: Option<&'a str>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = step_runs, check_for_backend(diesel::pg::Pg))]
pub struct StepRunRow {
    pub run_id: String,
    pub name: String,
    pub position: i32,
    pub step_type: String,
    pub status: StepStatus,
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub wake_at: Option<DateTime<Utc>>,
    pub child_run_id: Option<String>,
}

impl StepRunRow {
    /// A step's row in a given state, with nothing recorded yet.
    pub fn new(
        run_id: &str,
        name: &str,
        position: i32,
        step_type: &str,
        status: StepStatus,
    ) -> Self {
        Self {
            run_id: run_id.to_string(),
            name: name.to_string(),
            position,
            step_type: step_type.to_string(),
            status,
            attempt: 0,
            started_at: None,
            completed_at: None,
            output: None,
            error: None,
            wake_at: None,
            child_run_id: None,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = run_events, check_for_backend(diesel::pg::Pg))]
pub struct RunEventRow {
    pub id: i64,
    pub run_id: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub level: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = run_events)]
pub struct NewRunEvent {
    pub run_id: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub level: Option<String>,
    pub message: Option<String>,
}

impl NewRunEvent {
    pub fn transition(
        run_id: &str,
        at: DateTime<Utc>,
        step: Option<&str>,
        from: impl AsRef<str>,
        to: impl AsRef<str>,
    ) -> Self {
        Self {
            run_id: run_id.to_string(),
            at,
            kind: "transition".into(),
            step: step.map(str::to_string),
            from_status: Some(from.as_ref().to_string()),
            to_status: Some(to.as_ref().to_string()),
            level: None,
            message: None,
        }
    }

    pub fn log(
        run_id: &str,
        at: DateTime<Utc>,
        step: Option<&str>,
        level: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            run_id: run_id.to_string(),
            at,
            kind: "log".into(),
            step: step.map(str::to_string),
            from_status: None,
            to_status: None,
            level: Some(level.to_string()),
            message: Some(message.into()),
        }
    }
}

/// A worker's presence row: written by executor-worker, read by runtime-service's
/// `GET /ops/workers`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = workers, check_for_backend(diesel::pg::Pg))]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub concurrency: i32,
    pub in_flight: i32,
}
