//! `transform`: the output is the templated `value`.

use serde_json::Value;
use shared_models::template;

pub fn execute(value: &Value, ctx: &Value) -> Result<Value, String> {
    template::render_json(value, ctx).map_err(|e| format!("value: {e}"))
}
