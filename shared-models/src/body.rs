//! Reading a JSON object field by field, collecting every problem with its path.
//!
//! serde's derive stops at the first error and cannot name all unknown fields; the contract
//! wants each bad field named (`definition.steps[1].type`), so request bodies are read with
//! [`Obj`] instead. Every field that is read is "known"; [`Obj::finish`] reports the rest.

use crate::envelope::{ApiError, ErrorCode, FieldError};
use serde_json::{Map, Value};

pub type Errors = Vec<FieldError>;

/// Deeper JSON is refused: no request needs it, and deep values cost every later walk.
pub(crate) const MAX_JSON_DEPTH: usize = 32;

/// How deeply a JSON value nests (a scalar is 0, `[]` and `{}` are 1).
pub(crate) fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The path of the first string or key holding U+0000, which PostgreSQL cannot store.
pub(crate) fn find_nul(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) => s.contains('\0').then(|| path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let here = join(path, k);
            if k.contains('\0') {
                Some(here)
            } else {
                find_nul(item, &here)
            }
        }),
        _ => None,
    }
}

/// Parse a request body that must be a JSON object, nested at most [`MAX_JSON_DEPTH`] deep,
/// with no NUL character in any string (a 400 naming the field).
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the request body is empty; a JSON object is required",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map))
            if 1 + map.values().map(depth).max().unwrap_or(0) > MAX_JSON_DEPTH =>
        {
            Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!("the request body nests deeper than {MAX_JSON_DEPTH} levels"),
            ))
        }
        Ok(Value::Object(map)) => match map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(k.clone())
            } else {
                find_nul(v, k)
            }
        }) {
            Some(field) => Err(ApiError::validation(vec![FieldError::new(
                field,
                "must not contain the NUL character (U+0000)",
            )])),
            None => Ok(map),
        },
        Ok(_) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// A JSON number that is a whole number, as JSON Schema's `integer` has it: `3`, and `3.0`
/// too (the same number, however it is written); `None` for `3.5`, a negative number or
/// anything else.
pub fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
            .map(|f| f as u64)
    })
}

/// `Ok(value)` when no error was collected, else the 400 naming every field.
pub fn finish<T>(errors: Errors, value: impl FnOnce() -> T) -> Result<T, ApiError> {
    if errors.is_empty() {
        Ok(value())
    } else {
        Err(ApiError::validation(errors))
    }
}

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A view of one JSON object at a path, tracking which fields were read.
pub struct Obj<'a> {
    prefix: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub fn new(map: &'a Map<String, Value>, prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            map,
            known: Vec::new(),
        }
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.prefix, key)
    }

    /// The value of `key`; `null` counts as absent (the field takes its default).
    pub fn optional(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn required(&mut self, key: &'static str, errors: &mut Errors) -> Option<&'a Value> {
        let v = self.optional(key);
        if v.is_none() {
            errors.push(FieldError::new(self.path(key), "is required"));
        }
        v
    }

    fn typed<T>(
        &self,
        key: &str,
        v: Option<&'a Value>,
        errors: &mut Errors,
        expected: &str,
        cast: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let v = v?;
        let out = cast(v);
        if out.is_none() {
            errors.push(FieldError::new(
                self.path(key),
                format!("must be {expected}, not {}", type_name(v)),
            ));
        }
        out
    }

    pub fn opt_str(&mut self, key: &'static str, errors: &mut Errors) -> Option<&'a str> {
        let v = self.optional(key);
        self.typed(key, v, errors, "a string", Value::as_str)
    }

    pub fn req_str(&mut self, key: &'static str, errors: &mut Errors) -> Option<&'a str> {
        let v = self.required(key, errors);
        self.typed(key, v, errors, "a string", Value::as_str)
    }

    pub fn opt_bool(&mut self, key: &'static str, errors: &mut Errors) -> Option<bool> {
        let v = self.optional(key);
        self.typed(key, v, errors, "a boolean", Value::as_bool)
    }

    pub fn opt_f64(&mut self, key: &'static str, errors: &mut Errors) -> Option<f64> {
        let v = self.optional(key);
        self.typed(key, v, errors, "a number", Value::as_f64)
    }

    pub fn opt_object(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
    ) -> Option<&'a Map<String, Value>> {
        let v = self.optional(key);
        self.typed(key, v, errors, "an object", Value::as_object)
    }

    pub(crate) fn req_object(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
    ) -> Option<&'a Map<String, Value>> {
        let v = self.required(key, errors);
        self.typed(key, v, errors, "an object", Value::as_object)
    }

    pub(crate) fn opt_array(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
    ) -> Option<&'a Vec<Value>> {
        let v = self.optional(key);
        self.typed(key, v, errors, "an array", Value::as_array)
    }

    pub(crate) fn req_array(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
    ) -> Option<&'a Vec<Value>> {
        let v = self.required(key, errors);
        self.typed(key, v, errors, "an array", Value::as_array)
    }

    /// Report every field that no one asked for: a misspelt field is never silently ignored.
    pub fn finish(self, errors: &mut Errors) {
        let mut unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            let mut expected = self.known.clone();
            expected.sort_unstable();
            expected.dedup();
            errors.push(FieldError::new(
                join(&self.prefix, key),
                format!(
                    "is not a known field (expected one of: {})",
                    expected.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_every_unknown_and_missing_field() {
        let v = json!({"nmae": "x", "extra": 1});
        let mut errors = Errors::new();
        let mut obj = Obj::new(v.as_object().unwrap(), "body");
        obj.req_str("name", &mut errors);
        obj.finish(&mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["body.name", "body.extra", "body.nmae"]);
    }

    #[test]
    fn null_means_absent_and_types_are_checked() {
        let v = json!({"a": null, "b": 3});
        let mut errors = Errors::new();
        let mut obj = Obj::new(v.as_object().unwrap(), "");
        assert!(obj.opt_object("a", &mut errors).is_none());
        assert!(obj.opt_str("b", &mut errors).is_none());
        obj.finish(&mut errors);
        assert_eq!(
            errors,
            vec![FieldError::new("b", "must be a string, not a number")]
        );
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let err = parse_object(br#"{"a": {"b": ["ok", "x\u0000y"]}}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert_eq!(err.details[0].field, "a.b[1]");
        assert_eq!(
            parse_object(br#"{"k\u0000": 1}"#).unwrap_err().details[0].field,
            "k\u{0}"
        );
        assert!(parse_object(br#"{"a": "fine"}"#).is_ok());
    }

    #[test]
    fn bodies_nested_too_deeply_are_refused() {
        let nest = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        assert!(parse_object(nest(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = parse_object(nest(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err.message.contains("deeper"), "{}", err.message);
        // Far deeper input stops at serde_json's own recursion limit, also a 400.
        assert_eq!(
            parse_object(nest(5000).as_bytes()).unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_invalid_json() {
        assert_eq!(
            parse_object(b"[1]").unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(parse_object(b"{").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(parse_object(b"").unwrap_err().code, ErrorCode::InvalidJson);
        assert!(parse_object(b" {} ").is_ok());
    }

    #[test]
    fn whole_numbers_are_integers_however_written() {
        assert_eq!(whole_number(&json!(3)), Some(3));
        assert_eq!(whole_number(&json!(3.0)), Some(3));
        for not_whole in [json!(3.5), json!(-1), json!(-2.0), json!("3"), json!(null)] {
            assert_eq!(whole_number(&not_whole), None, "{not_whole}");
        }
    }

    #[test]
    fn numbers_survive_the_databases_decimal_form() {
        // PostgreSQL keeps a JSON number as an exact decimal and gives it back written out in
        // full: what a request held must read back the same (serde_json's float_roundtrip).
        for written in [
            "-1.7976931348623155e+308",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let body = parse_object(format!("{{\"v\": {written}}}").as_bytes()).unwrap();
            let v = body["v"].as_f64().unwrap();
            assert_eq!(v, written.parse::<f64>().unwrap(), "{written}");
            let stored = serde_json::to_string(&body["v"]).unwrap();
            let (mantissa, exponent) = stored.split_once('e').unwrap_or((stored.as_str(), "0"));
            let exponent: i32 = exponent.trim_start_matches('+').parse().unwrap();
            let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            let digits = format!("{int}{frac}");
            let shift = exponent - frac.len() as i32;
            let decimal = if shift >= 0 {
                format!("{digits}{}", "0".repeat(shift as usize))
            } else {
                let (sign, digits) = digits
                    .strip_prefix('-')
                    .map_or(("", digits.as_str()), |d| ("-", d));
                let point = -shift as usize;
                let padded = format!(
                    "{}{digits}",
                    "0".repeat(point.saturating_sub(digits.len()) + 1)
                );
                let at = padded.len() - point;
                format!("{sign}{}.{}", &padded[..at], &padded[at..])
            };
            let read: Value =
                serde_json::from_str(&decimal).unwrap_or_else(|e| panic!("{decimal}: {e}"));
            assert_eq!(read.as_f64(), Some(v), "{written} as {decimal}");
        }
    }
}
