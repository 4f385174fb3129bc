//! `transform`: the output is the templated `value`.

use super::StepFailure;
use serde_json::Value;
use shared_models::template;

pub fn execute(value: &Value, ctx: &Value) -> Result<Value, StepFailure> {
    template::render_json(value, ctx).map_err(|e| StepFailure::fatal(format!("value: {e}")))
}
