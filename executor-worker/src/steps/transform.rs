//! `transform`: the output is the templated `value`.

use super::{StepEnv, StepFailure};
use crate::render::{self, Ctx};
use serde_json::Value;

pub async fn execute(value: &Value, ctx: &Ctx, env: &StepEnv<'_>) -> Result<Value, StepFailure> {
    render::json(value, ctx, env.template_deadline)
        .await
        .map_err(|e| StepFailure::fatal(format!("value: {e}")))
}
