//! Merging two services' parts into one document.

use serde_json::{json, Value};

/// Merge the document `other` into `doc`, both as JSON, by the rules of utoipa's
/// `OpenApi::merge`: `doc` keeps its `info` and everything it has, and takes from `other`
/// the operations, schemas, responses, security schemes, servers, security requirements and
/// tags it lacks. (On JSON because utoipa cannot read back every schema it writes: one without
/// a `type`, such as `{}` for any value, does not deserialize.)
///
/// `other` must be an OpenAPI 3.1 document with at least one path.
pub fn merge_json(doc: &mut Value, other: Value) -> Result<(), String> {
    let Value::Object(mut other) = other else {
        return Err("not a JSON object".into());
    };
    if !other
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("3.1"))
    {
        return Err("not an OpenAPI 3.1 document".into());
    }
    let Some(Value::Object(paths)) = other.remove("paths") else {
        return Err("it has no paths".into());
    };
    if paths.is_empty() {
        return Err("it has no paths".into());
    }
    let Value::Object(target) = doc else {
        return Err("the document is not a JSON object".into());
    };
    let own_paths = target
        .entry("paths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("the document's paths are not an object")?;
    for (path, item) in paths {
        match (own_paths.get_mut(&path), item) {
            (Some(Value::Object(own)), Value::Object(item)) => {
                for (key, value) in item {
                    own.entry(key).or_insert(value);
                }
            }
            (Some(_), _) => {}
            (None, item) => {
                own_paths.insert(path, item);
            }
        }
    }
    if let Some(Value::Object(components)) = other.remove("components") {
        let own = target
            .entry("components")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("the document's components are not an object")?;
        for (kind, entries) in components {
            let Value::Object(entries) = entries else {
                continue;
            };
            let Value::Object(own_entries) = own.entry(kind).or_insert_with(|| json!({})) else {
                continue;
            };
            for (name, value) in entries {
                own_entries.entry(name).or_insert(value);
            }
        }
    }
    for list in ["servers", "security", "tags"] {
        if let Some(Value::Array(items)) = other.remove(list) {
            if let Value::Array(own) = target.entry(list).or_insert_with(|| json!([])) {
                for item in items {
                    if !own.contains(&item) {
                        own.push(item);
                    }
                }
            }
        }
    }
    Ok(())
}
