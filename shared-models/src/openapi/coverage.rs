//! Route-coverage checks: the routes a service's `routes/mod.rs` registers, and the
//! operations its document describes, as `(METHOD, path)` with every `{name}` made `{}`.

use std::collections::BTreeSet;

/// Routes the description leaves out on purpose: health, metrics, the dashboard's static
/// files, the description itself and its docs page.
pub fn is_excluded(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || path.starts_with("/ui")
        || path.starts_with("/openapi")
        || path.starts_with("/docs")
}

/// `/workflows/{id}/versions/{version}` -> `/workflows/{}/versions/{}`.
pub fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0usize;
    for c in path.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("{}");
                }
                depth += 1;
            }
            '}' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// The first string literal at the start of `s` (after `"`), up to its closing quote.
fn literal(s: &str) -> Option<&str> {
    s.find('"').map(|end| &s[..end])
}

/// The HTTP methods named as `web::<method>()` in `s`, in order.
fn methods_in(s: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("web::") {
        rest = &rest[i + 5..];
        for m in METHODS {
            if rest.starts_with(m) && rest[m.len()..].starts_with("()") {
                found.push(m.to_ascii_uppercase());
            }
        }
    }
    found
}

/// Every `(METHOD, path)` registered in an actix `configure` function's source: each
/// `web::resource("<path>")` with the `web::<method>()` routes that follow it (up to the
/// next resource or route), and each `.route("<path>", web::<method>()...)`.
pub fn routes_in_source(src: &str) -> BTreeSet<(String, String)> {
    // Comments may mention routes; they register nothing.
    let code: String = src
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let markers = ["web::resource(\"", ".route(\""];
    let mut starts: Vec<(usize, &str)> = markers
        .iter()
        .flat_map(|m| code.match_indices(m).map(|(i, _)| (i, *m)))
        .collect();
    starts.sort();
    let mut routes = BTreeSet::new();
    for (n, (at, marker)) in starts.iter().enumerate() {
        let body_start = at + marker.len();
        let end = starts.get(n + 1).map_or(code.len(), |(next, _)| *next);
        let Some(path) = literal(&code[body_start..]) else {
            continue;
        };
        let after = &code[body_start + path.len()..end];
        let methods = methods_in(after);
        let methods = if *marker == ".route(\"" {
            methods.into_iter().take(1).collect()
        } else {
            methods
        };
        for m in methods {
            routes.insert((m, normalise(path)));
        }
    }
    routes
}

/// Every `(METHOD, path)` a document describes.
pub fn operations_in_spec(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    ops.insert((m.to_ascii_uppercase(), normalise(path)));
                }
            }
        }
    }
    ops
}

/// Panics, naming each difference, unless the routes registered in `routes_src` (less the
/// [`is_excluded`] ones) are exactly the operations of `doc`.
pub fn assert_routes_documented(service: &str, routes_src: &str, doc: &serde_json::Value) {
    let routes: BTreeSet<_> = routes_in_source(routes_src)
        .into_iter()
        .filter(|(_, p)| !is_excluded(p))
        .collect();
    assert!(
        !routes.is_empty(),
        "{service}: no route found in routes/mod.rs: has the registration style changed?"
    );
    let ops = operations_in_spec(doc);
    let undocumented: Vec<_> = routes.difference(&ops).collect();
    let phantom: Vec<_> = ops.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && phantom.is_empty(),
        "{service}: routes without an OpenAPI operation (annotate the handler with \
         #[utoipa::path] and list it in routes/openapi.rs): {undocumented:?}; \
         operations the routes do not serve: {phantom:?}"
    );
}

/// For each path of `doc`: the path with each `{name}` made `x`, the methods among `GET`,
/// `POST`, `PUT`, `DELETE`, `PATCH` and `OPTIONS` that it does not serve (each must be a 405),
/// and the methods it serves (the `Allow` of that 405).
pub fn unserved_methods(doc: &serde_json::Value) -> Vec<(String, Vec<String>, BTreeSet<String>)> {
    let mut out = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        let served: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let unserved = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
            .into_iter()
            .filter(|m| !served.contains(*m))
            .map(str::to_string)
            .collect();
        out.push((normalise(path).replace("{}", "x"), unserved, served));
    }
    out
}

/// The methods an `Allow` value lists.
pub fn allow_set(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}
