//! JSON Schemas a tenant writes in a definition (an agent step's `outputSchema`, its tools'
//! `parameters`): checked when the definition is stored, and used by the worker to check a
//! model's answer.
//!
//! Built with the `jsonschema` crate, without its default features, so that no `$ref` is
//! ever fetched (a remote reference is a compile error: a tenant's schema must not make
//! Thygon reach the network), and with the `regex` crate as the pattern engine (linear time:
//! a `pattern` cannot make a check backtrack for minutes).

use serde_json::Value;

/// A compiled schema.
pub struct Schema(jsonschema::Validator);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// At most this many problems are reported for one instance (they go back to a model, and
/// into a step's error).
pub const MAX_PROBLEMS: usize = 10;

/// Compile `schema`; the error says why it is not one (shortened to one line).
pub fn compile(schema: &Value) -> Result<Schema, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("must be a JSON Schema (an object)".into());
    }
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map(Schema)
        .map_err(|e| format!("is not a valid JSON Schema: {}", one_line(&e.to_string())))
}

impl Schema {
    /// What is wrong with `instance`, at most [`MAX_PROBLEMS`], each "at <JSON pointer>:
    /// <problem>"; empty when it matches.
    pub fn problems(&self, instance: &Value) -> Vec<String> {
        self.0
            .iter_errors(instance)
            .take(MAX_PROBLEMS)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("at {at}: {}", one_line(&e.to_string()))
            })
            .collect()
    }
}

/// `text` on one line, at most 300 characters (a problem quotes the instance, which may be
/// long).
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn problems_name_where_and_what() {
        let schema = compile(&json!({
            "type": "object",
            "properties": {"label": {"enum": ["billing", "bug"]}, "score": {"type": "number"}},
            "required": ["label", "score"]
        }))
        .unwrap();
        assert!(schema
            .problems(&json!({"label": "bug", "score": 1}))
            .is_empty());
        let problems = schema.problems(&json!({"label": "spam"}));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("at /label:")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("score")), "{problems:?}");
    }

    #[test]
    fn a_remote_reference_is_refused_not_fetched() {
        // Documentation addresses only: compiling must fail without any connection (the
        // crate is built without its resolvers).
        for target in ["http://192.0.2.1/schema.json", "file:///etc/passwd"] {
            let e = compile(&json!({"$ref": target})).unwrap_err();
            assert!(e.starts_with("is not a valid JSON Schema"), "{target}: {e}");
        }
    }

    #[test]
    fn a_backtracking_pattern_is_checked_in_linear_time() {
        let schema = compile(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let long = format!("{}b", "a".repeat(100_000));
        // With a backtracking engine this would not finish; with `regex` it is immediate.
        assert_eq!(schema.problems(&json!(long)).len(), 1);
    }

    #[test]
    fn not_a_schema_is_refused() {
        assert!(compile(&json!("object")).is_err());
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
        assert!(compile(&json!({"type": "object"})).is_ok());
    }
}
