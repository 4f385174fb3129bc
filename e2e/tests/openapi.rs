//! The API description through the gateway, against the real binaries: `/openapi.json` is the
//! merged description of both services and needs no key, its examples work as written, and
//! `/docs/` is Swagger UI served from the binary (no CDN); and real tools from PyPI
//! (openapi-spec-validator and schemathesis, which `make test` installs) find nothing wrong
//! with the description or with the answers to thousands of generated requests.

use serde_json::Value;
use shared_models::openapi::coverage::{allow_set, unserved_methods};
use std::collections::HashSet;
use thygon_e2e::{Stack, ADMIN_KEY, ORG};

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
    ("get", "/usage"),
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

/// Through the gateway, a method a route does not serve is a 405 whose `Allow` lists those it
/// serves, as the description has them (RFC 9110): TRACE, which nginx answers itself, as well
/// as the others, which the services answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_method_is_a_405_naming_the_right_ones() {
    let stack = Stack::start(0).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", stack.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = reqwest::Client::new();
    for (path, unserved, served) in unserved_methods(&doc) {
        let key = if path.starts_with("/admin/") || path.starts_with("/ops/") {
            ADMIN_KEY
        } else {
            stack.key.as_str()
        };
        for method in unserved.iter().map(String::as_str).chain(["TRACE"]) {
            let r = client
                .request(method.parse().unwrap(), format!("{}{path}", stack.base_url))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            let allow = r
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            assert_eq!(
                allow_set(&allow),
                served,
                "{method} {path}: Allow {allow:?}"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(
                body["error"]["code"], "METHOD_NOT_ALLOWED",
                "{method} {path}"
            );
        }
    }
}

/// A `nextCursor` of the list at `path` (which must hold more than one item).
async fn next_cursor(stack: &Stack, key: &str, path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, body) = stack
        .call_as(Some(key), "GET", &format!("{path}{sep}limit=1"), None)
        .await;
    assert_eq!(status, 200, "{path}: {body}");
    body["pagination"]["nextCursor"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has one page: {body}"))
        .to_string()
}

/// Schemathesis's configuration (`schemathesis.toml`) for the checks that need more than the
/// description:
///
/// - a list's `cursor` is a `nextCursor` the API returned: no schema can say which strings
///   those are, so the lists are given real ones (as schemathesis advises for identifiers)
///   rather than strings that merely look like cursors, which are rightly a 400;
/// - the run controls (cancel, retry, approve) are given a real run and step, so that they
///   answer something other than the 404 of a made-up id;
/// - a string holding U+0000 is a 400 wherever it is (the description says so once, in its
///   `info`): no schema of a free-form value (a run's `variables`, a step's `value`) can say
///   it of the strings inside, so schemathesis is told not to make such strings
///   (`allow-x00 = false`); shared_models::body and e2e/tests/hostile_tenants.rs test them;
/// - a workflow definition has rules that JSON Schema cannot state (step names unique in the
///   definition, `dependsOn` naming steps that exist and making no cycle, templates and
///   conditions that compile: the `Step` schema's description lists them), so a definition
///   valid by the schema may still be a 400. For the three operations that take one, the
///   `positive_data_acceptance` check accepts that 400; every other check still holds there,
///   and that check holds as it is everywhere else;
/// - `GET /usage`'s window is a rule between two parameters (`from` before `to`, at most 366
///   days apart; `from` defaults to 30 days before `to`, `to` to now): two timestamps valid by
///   their schemas may still be a 400, which `positive_data_acceptance` accepts there too.
fn schemathesis_config(cursors: &[(&str, String)], run: &str) -> String {
    let mut toml = String::from("[generation]\nallow-x00 = false\n\n");
    for (operation, step) in [
        ("POST /workflows/runs/{id}/cancel", ""),
        ("POST /workflows/runs/{id}/retry", ""),
        (
            "POST /workflows/runs/{id}/steps/{step}/approve",
            ", \"path.step\" = \"t\"",
        ),
    ] {
        toml.push_str(&format!(
            "[[operations]]\ninclude-name = \"{operation}\"\nparameters = {{ \"path.id\" = \"{run}\"{step} }}\n\n"
        ));
    }
    for (operation, cursor) in cursors {
        toml.push_str(&format!(
            "[[operations]]\ninclude-name = \"{operation}\"\nparameters = {{ \"query.cursor\" = \"{cursor}\" }}\n\n"
        ));
    }
    for operation in [
        "POST /workflows",
        "PUT /workflows/{id}",
        "POST /workflows/validate",
        "GET /usage",
    ] {
        toml.push_str(&format!(
            "[[operations]]\ninclude-name = \"{operation}\"\n\
             checks.positive_data_acceptance.expected-statuses = \
             [\"2xx\", \"3xx\", \"400\", \"401\", \"403\", \"404\", \"409\", \"429\", \"5xx\"]\n\n"
        ));
    }
    toml
}

/// A checker from PyPI: `$<env>`, or where `make test` installs it (`.tools/api-venv`, made by
/// `ensure_api_tools` in scripts/lib.sh). Missing is a failure, not a skip: a check that did
/// not run proves nothing.
fn api_tool(env: &str, name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            thygon_e2e::workspace_root()
                .join(".tools/api-venv/bin")
                .join(name)
        });
    assert!(
        path.is_file(),
        "{name} is not installed at {} (set {env}, or run `make test`, which installs it)",
        path.display()
    );
    path
}

/// The number in schemathesis's summary line `N generated, N passed, ...` (0 without one).
fn generated_cases(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| line.trim().split_once(" generated,"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// How long one schemathesis pass may take before it is stopped and the test fails (about a
/// minute each on an idle 2-core machine with the default examples).
const SCHEMATHESIS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The served description is valid OpenAPI 3.1 (openapi-spec-validator), and schemathesis,
/// driven by it against a whole stack, finds nothing: every operation with generated valid
/// and invalid requests, with every check schemathesis has (`--checks all`): nothing is a
/// 5xx, every status, content type, header and body is the described one, valid requests are
/// accepted and invalid ones refused, a missing key is a 401, and a method a route does not
/// serve is a 405 with its `Allow`. `THYGON_SCHEMATHESIS_EXAMPLES` sets the examples per
/// operation (default 10 in `make test`; `make openapi-check` runs more). What the
/// description alone cannot give schemathesis is in [`schemathesis_config`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_is_valid_and_schemathesis_finds_no_undescribed_answer() {
    let validator = api_tool("THYGON_OPENAPI_VALIDATOR", "openapi-spec-validator");
    let st = api_tool("THYGON_SCHEMATHESIS", "st");
    let examples =
        std::env::var("THYGON_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "10".to_string());
    let stack = Stack::start(1).await;

    let description = stack.dir.join("openapi.json");
    let (status, doc) = stack.call("GET", "/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    std::fs::write(&description, doc.to_string()).expect("write openapi.json");
    let out = tokio::process::Command::new(&validator)
        .arg(&description)
        .output()
        .await
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the description:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Something to find, and lists of more than one page: two workflows, two versions of
    // one, two runs, two orgs, two keys of the org.
    let definition = serde_json::json!({"steps": [
        {"name": "t", "type": "transform", "value": {"ok": true}}]});
    for name in ["support_triage", "escalation"] {
        let create = serde_json::json!({"name": name, "definition": definition});
        let (status, body) = stack.call("POST", "/workflows", Some(create)).await;
        assert_eq!(status, 201, "{body}");
    }
    let update = serde_json::json!({"definition": definition});
    let (status, body) = stack
        .call("PUT", "/workflows/wf_support_triage", Some(update))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut runs = Vec::new();
    for _ in 0..2 {
        runs.push(
            stack
                .trigger("wf_support_triage", serde_json::json!({}))
                .await,
        );
    }
    stack.provision("org_other").await;
    stack.provision(ORG).await;
    let key = stack.key.as_str();
    let cursors = [
        (
            "GET /workflows",
            next_cursor(&stack, key, "/workflows").await,
        ),
        (
            "GET /workflows/{id}/versions",
            next_cursor(&stack, key, "/workflows/wf_support_triage/versions").await,
        ),
        (
            "GET /workflows/runs",
            next_cursor(&stack, key, "/workflows/runs").await,
        ),
        (
            "GET /admin/orgs",
            next_cursor(&stack, ADMIN_KEY, "/admin/orgs").await,
        ),
        (
            "GET /admin/orgs/{orgId}/keys",
            next_cursor(&stack, ADMIN_KEY, &format!("/admin/orgs/{ORG}/keys")).await,
        ),
    ];
    let config = stack.dir.join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config(&cursors, &runs[0]))
        .expect("write schemathesis.toml");
    let started = std::time::Instant::now();
    // The org's key on the org routes, the operator's key on /admin and /ops. The operator's
    // key is not an org key (`thy_...`), so the gateway limits it as unkeyed traffic (50
    // requests a second, bursts of 200): that pass keeps under it, lest its answers be 429s.
    let passes = [
        ("org", stack.key.as_str(), "--exclude-path-regex", None),
        ("admin", ADMIN_KEY, "--include-path-regex", Some("40/s")),
    ];
    let mut failed = Vec::new();
    for (name, key, filter, rate) in passes {
        let rate: &[&str] = match &rate {
            Some(rate) => &["--rate-limit", rate],
            None => &[],
        };
        let run = tokio::process::Command::new(&st)
            .kill_on_drop(true)
            // Its caches (.hypothesis, .schemathesis) go with the stack's directory.
            .current_dir(&stack.dir)
            .arg("--config-file")
            .arg(&config)
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
                "all",
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
            .args(rate)
            .output();
        let out = tokio::time::timeout(SCHEMATHESIS_DEADLINE, run)
            .await
            .unwrap_or_else(|_| {
                panic!("schemathesis ({name} key) did not finish within {SCHEMATHESIS_DEADLINE:?}")
            })
            .expect("run schemathesis");
        println!(
            "==== schemathesis, {name} key ====\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            failed.push(name);
        }
        // A pass that selected no operation, or whose filter matched nothing, exits 0 too.
        let generated = generated_cases(&String::from_utf8_lossy(&out.stdout));
        assert!(
            generated >= 100,
            "schemathesis ({name} key) generated only {generated} test cases"
        );
    }
    println!("schemathesis took {:?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "schemathesis found problems with the {failed:?} key (above)"
    );
}
