//! Templates and conditions in Jinja syntax, as MiniJinja implements it
//! (docs/API.md "Workflow graphs"). The context is `variables`, `steps.<name>.output|status`
//! and `run`; undefined names are errors, never empty strings.

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;
use std::sync::OnceLock;

/// What one render may spend: a tenant's template must never wedge or exhaust the process
/// that renders it (issue 13). Set once per process ([`set_limits`]); [`Limits::default`]
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MiniJinja instructions one template (or condition) may execute (`TEMPLATE_FUEL`).
    pub fuel: u64,
    /// Bytes one render may produce: a template's text, a sole expression's JSON, all the
    /// strings of a templated JSON value together (`TEMPLATE_MAX_OUTPUT_BYTES`).
    pub max_output_bytes: usize,
}

/// `TEMPLATE_FUEL` when unset. Measured on the dev machine (debug build, the slowest case):
/// the nested `range(100000)` loops of issue 13 use up 1,000,000 units in about 0.23 s, and
/// a 1,000-iteration loop that prints renders in under 1 ms; a legitimate template (a few
/// dozen tags, a loop over a step's list of some thousands) spends far less.
pub const DEFAULT_TEMPLATE_FUEL: u64 = 1_000_000;
/// `TEMPLATE_MAX_OUTPUT_BYTES` when unset (1 MiB).
pub const DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_TEMPLATE_FUEL,
            max_output_bytes: DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Set this process's limits (the worker does it once at start, from its settings). The
/// first call wins; returns false when limits were already set (to other values or not).
pub fn set_limits(limits: Limits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// This process's limits: those set, or the defaults.
pub fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits().fuel));
    env
}

fn too_large(limits: Limits) -> String {
    format!(
        "template output is larger than TEMPLATE_MAX_OUTPUT_BYTES ({} bytes)",
        limits.max_output_bytes
    )
}

/// A writer that keeps what it is given up to a number of bytes and fails past it, so a
/// template that prints more stops there instead of building its whole output.
struct Capped {
    out: Vec<u8>,
    left: usize,
    /// Set once a write went over: the render's error is the cap's.
    over: bool,
    /// Only count (a sole expression's JSON is measured, not kept).
    keep: bool,
}

impl Capped {
    fn new(left: usize, keep: bool) -> Self {
        Self {
            out: Vec::new(),
            left,
            over: false,
            keep,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            self.over = true;
            return Err(std::io::Error::other("template output cap"));
        }
        self.left -= buf.len();
        if self.keep {
            self.out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `s` has template syntax (a string without renders as itself).
pub fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Whether any string inside `v` has template syntax.
pub fn is_templated_json(v: &Value) -> bool {
    match v {
        Value::String(s) => is_templated(s),
        Value::Array(items) => items.iter().any(is_templated_json),
        Value::Object(map) => map.values().any(is_templated_json),
        _ => false,
    }
}

/// Whether rendering `src` is provably short, so a caller may render it inline (on an async
/// runtime's thread): every tag is a `{{ }}` holding a lookup (`a.b[0]['c']`), with no loop,
/// call, filter or operator. Such a render does a few map lookups and prints values of the
/// context, whose size the context's own limits bound.
pub fn is_lookup_only(src: &str) -> bool {
    if src.contains("{%") || src.contains("{#") {
        return false;
    }
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let body = &rest[start + 2..];
        let Some(end) = body.find("}}") else {
            return false;
        };
        if !simple_expression(&body[..end], false) {
            return false;
        }
        rest = &body[end + 2..];
    }
    true
}

/// Whether a condition is provably short to evaluate (see [`is_lookup_only`]): lookups and
/// literals compared (`==`, `!=`, `<`, `>`, `<=`, `>=`) and combined (`and`, `or`, `not`).
pub fn is_simple_condition(expr: &str) -> bool {
    expr.len() <= MAX_CONDITION_CHARS && simple_expression(expr, true)
}

/// Lookups only; with `compare`, also literals, comparisons and `and`/`or`/`not`.
fn simple_expression(expr: &str, compare: bool) -> bool {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut terms = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            let keyword = matches!(word, "and" | "or" | "not");
            if keyword && !compare {
                return false;
            }
            // Other keywords (`in`, `is`, `if`, ...) are operators, not lookups.
            if !keyword && terms_forbidden(word) {
                return false;
            }
            terms += 1;
        } else if matches!(c, b'.' | b'[' | b']') {
            i += 1;
        } else if c == b'\'' || c == b'"' {
            let close = b[i + 1..].iter().position(|&x| x == c || x == b'\\');
            match close {
                Some(n) if b[i + 1 + n] == c => i += n + 2,
                _ => return false,
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
        } else if compare && matches!(c, b'=' | b'!' | b'<' | b'>') {
            i += 1;
        } else {
            return false;
        }
    }
    terms > 0
}

/// Words that are not lookups of the context.
fn terms_forbidden(word: &str) -> bool {
    matches!(
        word,
        "in" | "is" | "if" | "else" | "for" | "recursive" | "with" | "without"
    )
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
/// type; any other string renders to a string. Within this process's [`Limits`].
pub fn render_str(src: &str, ctx: &Value) -> Result<Value, String> {
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

    /// The two templates of issue 13 that wedged every worker.
    const NESTED_LOOPS: &str =
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
    const HUGE_OUTPUT: &str =
        "{% set s = 'x' * 1000000 %}{% for i in range(2000) %}{{ s }}{% endfor %}";

    #[test]
    fn nested_loops_use_up_their_fuel_quickly_naming_the_setting() {
        let started = std::time::Instant::now();
        let e = render_str(NESTED_LOOPS, &ctx()).unwrap_err();
        assert_eq!(
            e,
            format!("template used up its fuel (TEMPLATE_FUEL = {DEFAULT_TEMPLATE_FUEL})")
        );
        assert!(check(NESTED_LOOPS).is_ok(), "it passes validation");
        // Debug builds are several times slower than the release build the default is
        // measured on; still well under the deadline.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn output_over_the_cap_stops_there_naming_the_setting() {
        let started = std::time::Instant::now();
        let e = render_str(HUGE_OUTPUT, &ctx()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "template output is larger than TEMPLATE_MAX_OUTPUT_BYTES ({DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES} bytes)"
            )
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Just under the cap renders.
        let fits = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 10);
        assert_eq!(
            render_text(&format!("a{fits}"), &ctx()).unwrap().len(),
            DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 9
        );
    }

    #[test]
    fn a_sole_expression_is_capped_on_its_json() {
        let over = format!("{{{{ 'x' * {DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES} }}}}");
        // Its JSON has two quotes more than the string.
        assert!(render_str(&over, &ctx())
            .unwrap_err()
            .contains("TEMPLATE_MAX_OUTPUT_BYTES"));
        let fits = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES - 2);
        assert!(render_str(&fits, &ctx()).is_ok());
    }

    #[test]
    fn a_json_value_is_capped_as_a_whole() {
        let half = format!("{{{{ 'x' * {} }}}}", DEFAULT_TEMPLATE_MAX_OUTPUT_BYTES / 2);
        assert!(render_json(&json!({"a": half}), &ctx()).is_ok());
        let e = render_json(&json!({"a": half, "b": [half]}), &ctx()).unwrap_err();
        assert!(e.contains("TEMPLATE_MAX_OUTPUT_BYTES"), "{e}");
    }

    #[test]
    fn a_loop_of_some_thousands_is_well_within_the_fuel() {
        let out = render_text("{% for a in range(10000) %}{{ a }},{% endfor %}", &ctx()).unwrap();
        assert!(out.starts_with("0,1,2,") && out.ends_with("9999,"));
    }

    #[test]
    fn lookups_and_simple_conditions_are_told_from_the_rest() {
        for t in [
            "plain",
            "{{ variables.ticketId }}",
            "Ticket {{ variables.ticketId }} is {{ steps.classify.output['priority'] }}",
            "{{ steps.a.output.items[0] }}",
        ] {
            assert!(is_lookup_only(t), "{t}");
        }
        for t in [
            "{% for a in range(3) %}{{ a }}{% endfor %}",
            "{{ 'x' * 1000 }}",
            "{{ a | upper }}",
            "{{ range(10) }}",
            "{{ a ~ b }}",
            "{{ a == b }}",
            "{{ a if b }}",
            "{# c #}",
            "{{ a }",
        ] {
            assert!(!is_lookup_only(t), "{t}");
        }
        for c in [
            "steps.classify.output.priority == 'high'",
            "not variables.skip and variables.n >= 3",
            "steps.a.status != \"FAILED\" or variables.force",
        ] {
            assert!(is_simple_condition(c), "{c}");
        }
        for c in [
            "range(10) | length > 3",
            "'a' in variables.s",
            "a * 3 > 1",
            "x is defined",
        ] {
            assert!(!is_simple_condition(c), "{c}");
        }
    }
}
