//! Templates and conditions in Jinja syntax, as MiniJinja implements it
//! (docs/API.md "Workflow graphs"). The context is `variables`, `steps.<name>.output|status`
//! and `run`; undefined names are errors, never empty strings.

mod budget;
mod syntax;
#[cfg(test)]
mod tests;

pub use budget::{
    limits, set_limits, Limits, DEFAULT_TEMPLATE_FUEL, DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES,
};
pub use syntax::{
    is_lookup_only, is_simple_condition, is_templated, is_templated_json, MAX_CONDITION_CHARS,
    MAX_OPERATORS_PER_TAG, MAX_TEMPLATE_CHARS,
};

use budget::{environment, too_large, Capped};
use minijinja::{Environment, ErrorKind};
use serde_json::Value;
use syntax::{guard_complexity, guard_tags, sole_expression, within, DELIMITERS};

/// Compile a bare expression. Template delimiters inside one are refused before the parser
/// sees them (minijinja 2's expression lexer panics on a stray `}}`).
fn expression<'env, 'source>(
    env: &'env Environment<'source>,
    expr: &'source str,
) -> Result<minijinja::Expression<'env, 'source>, String> {
    if DELIMITERS.iter().any(|d| expr.contains(d)) {
        return Err(
            "an expression cannot contain template delimiters ({{, }}, {%, %}, {#, #})".into(),
        );
    }
    guard_complexity(expr)?;
    env.compile_expression(expr).map_err(|e| describe(&e))
}

/// Compile without rendering: the create/update check that turns a typo into a 400.
pub(crate) fn check(src: &str) -> Result<(), String> {
    within(src, MAX_TEMPLATE_CHARS)?;
    if !is_templated(src) {
        return Ok(());
    }
    let env = environment();
    match sole_expression(src) {
        Some(expr) => expression(&env, expr).map(|_| ()),
        None => {
            guard_tags(src)?;
            env.template_from_str(src)
                .map(|_| ())
                .map_err(|e| describe(&e))
        }
    }
}

/// Compile a condition (a bare expression, as in `when`).
pub(crate) fn check_condition(expr: &str) -> Result<(), String> {
    within(expr, MAX_CONDITION_CHARS)?;
    expression(&environment(), expr).map(|_| ())
}

/// Evaluate a condition: Jinja truthiness of the expression's value; undefined is an error.
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, String> {
    let env = environment();
    let compiled = expression(&env, expr)?;
    let value = compiled.eval(ctx).map_err(|e| describe(&e))?;
    if value.is_undefined() {
        return Err(format!(
            "undefined value: `{expr}` names nothing in the context"
        ));
    }
    Ok(value.is_true())
}

/// Check every string inside a templated JSON value; errors carry the JSON path below `path`.
pub(crate) fn check_json(v: &Value, path: &str) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => check(s).map_err(|e| (path.to_string(), e)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_json(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, item)| check_json(item, &crate::body::join(path, k))),
        _ => Ok(()),
    }
}

/// Render one string. A string that is exactly one `{{ expression }}` keeps the value's JSON
/// type; any other string renders to a string. Within this process's [`Limits`].
pub(crate) fn render_str(src: &str, ctx: &Value) -> Result<Value, String> {
    let mut left = limits().max_output_bytes;
    render_str_within(src, ctx, &mut left)
}

/// [`render_str`], its output counted against `left` bytes (what the whole value being
/// rendered may still produce).
fn render_str_within(src: &str, ctx: &Value, left: &mut usize) -> Result<Value, String> {
    let limits = limits();
    if !is_templated(src) {
        *left = left
            .checked_sub(src.len())
            .ok_or_else(|| too_large(limits))?;
        return Ok(Value::String(src.to_string()));
    }
    let env = environment();
    match sole_expression(src) {
        Some(expr) => {
            let compiled = expression(&env, expr)?;
            let value = compiled.eval(ctx).map_err(|e| describe(&e))?;
            // Strict mode errors on printing an undefined value, not on returning one.
            if value.is_undefined() {
                return Err(format!(
                    "undefined value: `{expr}` names nothing in the context"
                ));
            }
            // Measured as JSON first (counted, not kept): a value over the cap is never
            // copied into a JSON value.
            let mut size = Capped::new(*left, false);
            if let Err(e) = serde_json::to_writer(&mut size, &value) {
                return Err(if size.over {
                    too_large(limits)
                } else {
                    format!("template value is not JSON: {e}")
                });
            }
            *left = size.left;
            serde_json::to_value(&value).map_err(|e| format!("template value is not JSON: {e}"))
        }
        None => {
            guard_tags(src)?;
            let template = env.template_from_str(src).map_err(|e| describe(&e))?;
            let mut out = Capped::new(*left, true);
            if let Err(e) = template.render_captured_to(ctx, &mut out) {
                return Err(if out.over {
                    too_large(limits)
                } else {
                    describe(&e)
                });
            }
            *left = out.left;
            String::from_utf8(out.out)
                .map(Value::String)
                .map_err(|e| format!("template output is not UTF-8: {e}"))
        }
    }
}

/// Render every string inside a templated JSON value: all its strings together produce at
/// most `TEMPLATE_MAX_OUTPUT_BYTES`.
pub fn render_json(v: &Value, ctx: &Value) -> Result<Value, String> {
    let mut left = limits().max_output_bytes;
    render_json_within(v, ctx, &mut left)
}

fn render_json_within(v: &Value, ctx: &Value, left: &mut usize) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_str_within(s, ctx, left)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_json_within(i, ctx, left))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), render_json_within(i, ctx, left)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Render to text: the templated string, or the JSON of a value that is not a string.
pub fn render_text(src: &str, ctx: &Value) -> Result<String, String> {
    Ok(match render_str(src, ctx)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

fn describe(e: &minijinja::Error) -> String {
    if e.kind() == ErrorKind::OutOfFuel {
        return format!(
            "template used up its fuel (TEMPLATE_FUEL = {})",
            limits().fuel
        );
    }
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}
