//! The API description through the gateway, against the real binaries: `/openapi.json` is the
//! merged description of both services and needs no key, its examples work as written, and
//! `/docs/` is Swagger UI served from the binary (no CDN).
//!
//! With `THYGON_OPENAPI_OUT=<file>` the description is also written to that file (for
//! `scripts/openapi-check.sh`, which validates it with openapi-spec-validator).

use serde_json::Value;
use std::collections::HashSet;
use thygon_e2e::{Stack, ADMIN_KEY};

/// Every route of both services that the description must hold (docs/API.md "One base URL,
/// two services"), as the description spells them.
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/workflows"),
    ("get", "/workflows"),
    ("get", "/workflows/{id}"),
    ("put", "/workflows/{id}"),
    ("delete", "/workflows/{id}"),
    ("post", "/workflows/validate"),
    ("get", "/workflows/{id}/versions"),
    ("get", "/workflows/{id}/versions/{version}"),
    ("post", "/admin/orgs"),
    ("get", "/admin/orgs"),
    ("post", "/admin/orgs/{orgId}/keys"),
    ("get", "/admin/orgs/{orgId}/keys"),
    ("delete", "/admin/keys/{id}"),
    ("get", "/admin/orgs/{orgId}/limits"),
    ("put", "/admin/orgs/{orgId}/limits"),
    ("post", "/workflows/{id}/trigger"),
    ("post", "/workflows/runs"),
    ("get", "/workflows/runs"),
    ("get", "/workflows/runs/{id}"),
    ("post", "/workflows/runs/{id}/cancel"),
    ("post", "/workflows/runs/{id}/retry"),
    ("post", "/workflows/runs/{id}/steps/{step}/approve"),
    ("get", "/workflows/runs/{id}/events"),
];

fn example<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["example"]
}

/// The `required` fields of a component schema.
fn required(doc: &Value, schema: &str) -> Vec<String> {
    doc["components"]["schemas"][schema]["required"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema} has no required fields"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_and_its_docs_page_are_public_at_the_base_url() {
    let stack = Stack::start(0).await;
    let anon = reqwest::Client::new();

    let r = anon
        .get(format!("{}/openapi.json", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if let Ok(out) = std::env::var("THYGON_OPENAPI_OUT") {
        std::fs::write(&out, &text).expect("write THYGON_OPENAPI_OUT");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Thygon API");
    assert_eq!(doc["servers"][0]["url"], "/");
    for (method, path) in OPERATIONS {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        assert_eq!(op["security"][0]["bearer"], serde_json::json!([]));
    }
    let mut ids = HashSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
        }
    }
    // Each service's own part, as the gateway routes it, is public too.
    let r = anon
        .get(format!("{}/openapi/workflow-service.json", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The examples work as written, and answer what the description says.
    let create = example(&doc, "post", "/workflows").clone();
    let (status, body) = stack.call("POST", "/workflows", Some(create)).await;
    assert_eq!(status, 201, "{body}");
    for field in required(&doc, "WorkflowView") {
        assert!(
            !body["data"][&field].is_null() || field == "description",
            "{field}: {body}"
        );
    }
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let trigger = example(&doc, "post", "/workflows/{id}/trigger").clone();
    let (status, body) = stack
        .call("POST", &format!("/workflows/{id}/trigger"), Some(trigger))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Run queued — execution is asynchronous");
    for field in required(&doc, "RunView") {
        assert!(body["data"].get(&field).is_some(), "{field}: {body}");
    }
    let validate = example(&doc, "post", "/workflows/validate").clone();
    let (status, body) = stack
        .call("POST", "/workflows/validate", Some(validate))
        .await;
    assert_eq!((status, &body["data"]["valid"]), (200, &Value::Bool(true)));

    // Swagger UI, with its assets from the binary: no CDN.
    let r = anon
        .get(format!("{}/docs/", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(external), "{external} in {html}");
    }
    let r = anon
        .get(format!("{}/docs/swagger-ui-bundle.js", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(r.bytes().await.unwrap().len() > 100_000);
    let init = anon
        .get(format!("{}/docs/swagger-initializer.js", stack.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
}

/// Schemathesis (from PyPI) against a whole stack, driven by the served description: every
/// operation with generated valid and invalid requests, checking that nothing is a 5xx and
/// that every answer's status, content type and body are the described ones. Manual (it
/// needs schemathesis): `scripts/openapi-check.sh` installs it and runs this with
/// `THYGON_SCHEMATHESIS=<path of st>`; `THYGON_SCHEMATHESIS_EXAMPLES` bounds the examples
/// per operation (default 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs schemathesis: scripts/openapi-check.sh"]
async fn schemathesis_finds_no_server_error_and_no_undescribed_answer() {
    let st = std::env::var("THYGON_SCHEMATHESIS").expect("THYGON_SCHEMATHESIS=<path of st>");
    let examples =
        std::env::var("THYGON_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_string());
    let stack = Stack::start(1).await;
    // Something to find: a workflow and a finished run of it.
    let create = serde_json::json!({"name": "support_triage", "definition": {"steps": [
        {"name": "t", "type": "transform", "value": {"ok": true}}]}});
    let (status, _) = stack.call("POST", "/workflows", Some(create)).await;
    assert_eq!(status, 201);
    let started = std::time::Instant::now();
    // The org's key on the org routes, the operator's key on /admin and /ops.
    let passes = [
        ("org", stack.key.as_str(), "--exclude-path-regex"),
        ("admin", ADMIN_KEY, "--include-path-regex"),
    ];
    let mut failed = Vec::new();
    for (name, key, filter) in passes {
        let out = tokio::process::Command::new(&st)
            // Its caches (.hypothesis, .schemathesis) go with the stack's directory.
            .current_dir(&stack.dir)
            .args([
                "run",
                &format!("{}/openapi.json", stack.base_url),
                "--url",
                &stack.base_url,
                "--header",
                &format!("Authorization: Bearer {key}"),
                filter,
                "^/(admin|ops)/",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                &examples,
                "--seed",
                "1",
                // One worker: Hypothesis can trip over itself across threads (an "AST
                // constructor recursion depth mismatch" seen with two).
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
                "--generation-database",
                "none",
                "--report",
                "junit",
                "--report-dir",
                &stack
                    .dir
                    .join(format!("schemathesis-{name}"))
                    .display()
                    .to_string(),
            ])
            .output()
            .await
            .expect("run schemathesis");
        println!(
            "==== schemathesis, {name} key ====\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            failed.push(name);
        }
    }
    println!("schemathesis took {:?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "schemathesis found problems with the {failed:?} key (above)"
    );
}
