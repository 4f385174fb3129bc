//! The workflow definition's schema (`{"steps": [...]}`), as the API reads it
//! (`crate::graph`): what JSON Schema can say of it. What it cannot say (step names unique in
//! the definition, `dependsOn` naming steps that exist and making no cycle, templates and
//! conditions that compile) is in the descriptions, and is a 400 naming the field.

use serde_json::Value;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// `{ "steps": [...] }`: the order of the array is the default order (a step without
/// `dependsOn` depends on the step before it).
#[derive(ToSchema)]
#[schema(example = json!({"steps": [{"name": "classify", "type": "agent",
    "agentId": "support-classifier", "instructions": "Determine ticket category and priority."}]}))]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    #[schema(min_items = 1, max_items = 200)]
    pub steps: Vec<Step>,
}

/// `retry`: omitted fields take these defaults (one attempt).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[schema(minimum = 1, maximum = 20, default = 1)]
    pub max_attempts: Option<u32>,
    #[schema(minimum = 0, maximum = 3600, default = 1.0)]
    pub backoff_seconds: Option<f64>,
    #[schema(minimum = 1, maximum = 10, default = 2.0)]
    pub backoff_multiplier: Option<f64>,
}

/// An `http` step's request; every string is a template.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStepRequest {
    #[schema(value_type = Option<HttpMethod>, default = "GET")]
    pub method: Option<String>,
    pub url: String,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// Any JSON (templated).
    pub body: Option<Value>,
}

/// An HTTP status code that does not fail the attempt.
pub struct StatusCode;

impl PartialSchema for StatusCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(100))
            .maximum(Some(599))
            .into()
    }
}

impl ToSchema for StatusCode {}

#[derive(ToSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
    HEAD,
}

/// A step of a definition, by its `type`: the schema of [`StepVariants`], each variant closed
/// to unknown fields (the API rejects them; serde's `deny_unknown_fields` reaches only the
/// enum, not its variants).
pub struct Step;

impl PartialSchema for Step {
    fn schema() -> RefOr<Schema> {
        let mut schema = StepVariants::schema();
        if let RefOr::T(Schema::OneOf(one_of)) = &mut schema {
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
        schema
    }
}

impl ToSchema for Step {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        StepVariants::schemas(schemas);
    }
}

/// A step of a definition, by its `type`. Every step has a `name` (unique in the definition;
/// the workflow-name rule) and may have `dependsOn` (names of other steps of the definition,
/// making no cycle), `when` (a condition that compiles), `retry` and `timeoutSeconds`; the
/// templated strings must compile. Unknown fields are rejected. Each rule broken is a 400
/// naming its field.
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StepVariants {
    /// Ask the agent `agentId` to carry out `instructions`.
    #[serde(rename_all = "camelCase")]
    Agent {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 3600)]
        timeout_seconds: Option<f64>,
        #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
        agent_id: String,
        /// Templated.
        instructions: String,
        /// Any JSON (templated).
        inputs: Option<Value>,
    },
    /// Call a URL; a non-2xx status fails the attempt unless `allowStatus` lists it.
    #[serde(rename_all = "camelCase")]
    Http {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 3600)]
        timeout_seconds: Option<f64>,
        request: HttpStepRequest,
        #[schema(inline, value_type = Option<Vec<StatusCode>>)]
        allow_status: Option<Vec<u16>>,
    },
    /// Output `value` (templated JSON).
    #[serde(rename_all = "camelCase")]
    Transform {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 2592000)]
        timeout_seconds: Option<f64>,
        value: Value,
    },
    /// Wait `seconds` (the run is WAITING and holds no worker).
    #[serde(rename_all = "camelCase")]
    Delay {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 2592000)]
        timeout_seconds: Option<f64>,
        #[schema(minimum = 0, maximum = 2592000)]
        seconds: f64,
    },
    /// Wait for `POST /workflows/runs/{id}/steps/{step}/approve`.
    #[serde(rename_all = "camelCase")]
    Approval {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 2592000)]
        timeout_seconds: Option<f64>,
    },
    /// Start a run of `workflowId` and wait for it; its output is the step's.
    #[serde(rename_all = "camelCase")]
    Subworkflow {
        #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        name: String,
        depends_on: Option<Vec<String>>,
        #[schema(pattern = "\\S")]
        when: Option<String>,
        retry: Option<Retry>,
        #[schema(minimum = 0.001, maximum = 2592000)]
        timeout_seconds: Option<f64>,
        #[schema(pattern = "^wf_[A-Za-z][A-Za-z0-9_-]{0,63}$")]
        workflow_id: String,
        /// An object, or a template that renders one.
        variables: Option<Value>,
    },
}
