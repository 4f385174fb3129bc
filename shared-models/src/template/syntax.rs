//! What a template or condition is made of, and the bounds checked before the parser sees it.

use serde_json::Value;

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
pub(super) fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// Longer templates are refused at create/update: nothing legitimate needs them, and every
/// render of every run would pay for them.
pub const MAX_TEMPLATE_CHARS: usize = 64 * 1024;
/// Conditions (`when`) are single expressions.
pub const MAX_CONDITION_CHARS: usize = 4096;

pub(super) fn within(src: &str, max: usize) -> Result<(), String> {
    if src.len() > max && src.chars().count() > max {
        return Err(format!("is longer than {max} characters"));
    }
    Ok(())
}

/// Operators, filters, attribute links and keywords one tag may chain. The parser recurses
/// once per link and only guards bracket nesting, so a 10,000-link chain would overflow a
/// thread's stack; no real template comes near this.
pub const MAX_OPERATORS_PER_TAG: usize = 256;

pub(super) const DELIMITERS: [&str; 6] = ["{{", "}}", "{%", "%}", "{#", "#}"];

/// Refuse what would make the parser misbehave rather than fail: chains too long for its
/// recursion.
pub(super) fn guard_complexity(code: &str) -> Result<(), String> {
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
pub(super) fn guard_tags(src: &str) -> Result<(), String> {
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
