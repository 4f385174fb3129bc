//! Templates and conditions in Jinja syntax, as MiniJinja implements it
//! (CONTRACT.md "Workflow graphs"). The context is `variables`, `steps.<name>.output|status`
//! and `run`; undefined names are errors, never empty strings.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The expression of a string that is exactly one `{{ expression }}`, which keeps its JSON type.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// Longer templates are refused at create/update: nothing legitimate needs them, and every
/// render of every run would pay for them.
pub const MAX_TEMPLATE_CHARS: usize = 64 * 1024;
/// Conditions (`when`) are single expressions.
pub const MAX_CONDITION_CHARS: usize = 4096;

fn within(src: &str, max: usize) -> Result<(), String> {
    if src.len() > max && src.chars().count() > max {
        return Err(format!("is longer than {max} characters"));
    }
    Ok(())
}

/// Operators, filters, attribute links and keywords one tag may chain. The parser recurses
/// once per link and only guards bracket nesting, so a 10,000-link chain would overflow a
/// thread's stack; no real template comes near this.
pub const MAX_OPERATORS_PER_TAG: usize = 256;

const DELIMITERS: [&str; 6] = ["{{", "}}", "{%", "%}", "{#", "#}"];

/// Refuse what would make the parser misbehave rather than fail: chains too long for its
/// recursion.
fn guard_complexity(code: &str) -> Result<(), String> {
    let symbols = code.chars().filter(|c| ".|-+*/~%([".contains(*c)).count();
    let words = code
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| matches!(*w, "not" | "and" | "or" | "if" | "else" | "is" | "in"))
        .count();
    if symbols + words > MAX_OPERATORS_PER_TAG {
        return Err(format!("an expression chains more than {MAX_OPERATORS_PER_TAG} operators, filters or attributes"));
    }
    Ok(())
}

/// Every tag of a template (`{{ }}`, `{% %}`) within the complexity bound.
fn guard_tags(src: &str) -> Result<(), String> {
    let mut rest = src;
    while let Some(start) = rest.find("{{").into_iter().chain(rest.find("{%")).min() {
        let body = &rest[start + 2..];
        let end = body
            .find("}}")
            .into_iter()
            .chain(body.find("%}"))
            .min()
            .unwrap_or(body.len());
        guard_complexity(&body[..end])?;
        rest = &body[end.min(body.len())..];
    }
    Ok(())
}

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
pub fn check(src: &str) -> Result<(), String> {
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
pub fn check_condition(expr: &str) -> Result<(), String> {
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
pub fn check_json(v: &Value, path: &str) -> Result<(), (String, String)> {
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
/// type; any other string renders to a string.
pub fn render_str(src: &str, ctx: &Value) -> Result<Value, String> {
    if !is_templated(src) {
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
            serde_json::to_value(&value).map_err(|e| format!("template value is not JSON: {e}"))
        }
        None => guard_tags(src)
            .and_then(|()| env.render_str(src, ctx).map_err(|e| describe(&e)))
            .map(Value::String),
    }
}

/// Render every string inside a templated JSON value.
pub fn render_json(v: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_str(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_json(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), render_json(i, ctx)?)))
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
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({"variables": {"ticketId": "TCK-101", "n": 3, "o": {"a": 1}}, "steps": {}, "run": {"id": "run_x"}})
    }

    #[test]
    fn a_sole_expression_keeps_its_json_type() {
        assert_eq!(render_str("{{ variables.n }}", &ctx()).unwrap(), json!(3));
        assert_eq!(
            render_str(" {{ variables.o }} ", &ctx()).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            render_str("n={{ variables.n }}", &ctx()).unwrap(),
            json!("n=3")
        );
        assert_eq!(render_str("plain", &ctx()).unwrap(), json!("plain"));
    }

    #[test]
    fn undefined_names_are_errors() {
        assert!(render_str("{{ variables.missing }}", &ctx()).is_err());
        assert!(render_str("x {{ nope }}", &ctx()).is_err());
    }

    #[test]
    fn syntax_errors_are_caught_by_check() {
        assert!(check("{{ variables.ticketId ").is_err());
        assert!(check("{% if %}").is_err());
        assert!(check("Ticket {{ variables.ticketId }}").is_ok());
        let err = check_json(&json!({"a": ["ok", "{{ ("]}), "inputs").unwrap_err();
        assert_eq!(err.0, "inputs.a[1]");
    }

    #[test]
    fn conditions_use_jinja_truthiness_and_refuse_undefined_names() {
        let c = json!({"steps": {"classify": {"output": {"priority": "high"}, "status": "COMPLETED"}}, "variables": {}});
        assert_eq!(
            eval_condition("steps.classify.output.priority == 'high'", &c),
            Ok(true)
        );
        assert_eq!(
            eval_condition("steps.classify.output.priority == 'low'", &c),
            Ok(false)
        );
        assert!(eval_condition("steps.nope.output", &c).is_err());
        assert!(check_condition("a ==").is_err());
    }

    #[test]
    fn stray_delimiters_in_expressions_are_errors_not_panics() {
        for expr in ["}}{{", "x }} y", "1 }}", "}}x", "a %} b", "{# c"] {
            assert!(check_condition(expr).is_err(), "{expr}");
            assert!(eval_condition(expr, &ctx()).is_err(), "{expr}");
        }
    }

    #[test]
    fn chains_too_long_for_the_parser_are_refused() {
        let chain = format!("{{{{ {}1 }}}}", "-".repeat(5000));
        assert!(check(&chain).unwrap_err().contains("chains more than"));
        let attrs = format!("x {{{{ a{} }}}} y", ".b".repeat(3000));
        assert!(check(&attrs).unwrap_err().contains("chains more than"));
        assert!(check_condition(&"not ".repeat(1000)).is_err());
        assert!(check("{{ a.b.c | lower }} and {{ x + 1 }}").is_ok());
    }

    #[test]
    fn oversized_templates_and_conditions_are_refused() {
        assert!(check(&"a".repeat(MAX_TEMPLATE_CHARS)).is_ok());
        assert_eq!(
            check(&"a".repeat(MAX_TEMPLATE_CHARS + 1)),
            Err(format!("is longer than {MAX_TEMPLATE_CHARS} characters"))
        );
        assert!(check_condition(&format!("{} == 1", "a".repeat(MAX_CONDITION_CHARS))).is_err());
    }

    #[test]
    fn render_json_walks_nested_values() {
        let out = render_json(
            &json!({"t": "{{ variables.ticketId }}", "l": [1, "{{ run.id }}"]}),
            &ctx(),
        )
        .unwrap();
        assert_eq!(out, json!({"t": "TCK-101", "l": [1, "run_x"]}));
    }
}
