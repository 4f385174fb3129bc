//! Tenancy through the gateway against the real binaries: the `/admin` routes are reachable
//! at the base URL, keys isolate orgs, and no secret (org key, admin key, an agent's API
//! key) reaches any process's log, even at debug level.

use serde_json::json;
use std::time::Duration;
use thygon_e2e::{Stack, ADMIN_KEY, AGENT_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_isolate_orgs_through_the_gateway_and_no_secret_reaches_a_log() {
    let stack = Stack::start_with(1, &[("RUST_LOG", "debug,tracing::span=warn")]).await;

    // No key, a bad key: 401 at the base URL, for routes of both services and unknown ones.
    for path in ["/workflows", "/workflows/runs", "/admin/orgs", "/nowhere"] {
        let (status, body) = stack.call_as(None, "GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        let (status, _) = stack
            .call_as(Some("thy_not-a-real-key"), "GET", path, None)
            .await;
        assert_eq!(status, 401, "{path}");
    }
    // The public routes need none.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = stack.call_as(None, "GET", path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    // The admin key is not an org key; an org key is not the admin key.
    let (status, _) = stack
        .call_as(Some(ADMIN_KEY), "GET", "/workflows", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = stack.call("GET", "/admin/orgs", None).await;
    assert_eq!(status, 403);

    // The seed flow with the org's key, the agent called with its secret header.
    let (status, body) = stack
        .call(
            "POST",
            "/workflows",
            Some(json!({"name": "support_triage", "definition": {"steps": [
                {"name": "classify", "type": "agent", "agentId": "support-classifier",
                 "instructions": "Determine ticket category and priority."}]}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stack
        .call(
            "POST",
            "/workflows/wf_support_triage/trigger",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run = body["data"]["id"].as_str().unwrap().to_string();
    let done = stack.wait_for_run(&run, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    // Another org sees none of it, through either service.
    let other_key = stack.provision("org_other").await;
    let other = Some(other_key.as_str());
    let (status, body) = stack.call_as(other, "GET", "/workflows", None).await;
    assert_eq!(
        (status, body["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, body) = stack.call_as(other, "GET", "/workflows/runs", None).await;
    assert_eq!(
        (status, body["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    for (method, path) in [
        ("GET", "/workflows/wf_support_triage".to_string()),
        ("POST", "/workflows/wf_support_triage/trigger".to_string()),
        ("GET", format!("/workflows/runs/{run}")),
        ("POST", format!("/workflows/runs/{run}/cancel")),
    ] {
        let body = (method == "POST").then(|| json!({}));
        let (status, answer) = stack.call_as(other, method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }

    // Revoked through the gateway: refused within a second or so.
    let (status, keys) = stack
        .call_as(Some(ADMIN_KEY), "GET", "/admin/orgs/org_other/keys", None)
        .await;
    assert_eq!(status, 200, "{keys}");
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    assert!(
        keys["data"][0].get("key").is_none(),
        "a listing never shows the key"
    );
    let (status, body) = stack
        .call_as(
            Some(ADMIN_KEY),
            "DELETE",
            &format!("/admin/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!((status, &body["data"]["revoked"]), (200, &json!(true)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = stack.call_as(other, "GET", "/workflows", None).await;
    assert_eq!(status, 401);

    // No secret in any log, at debug level, of any process (the gateway's too).
    let secrets = [
        stack.key.as_str(),
        other_key.as_str(),
        ADMIN_KEY,
        AGENT_SECRET,
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(&stack.dir).expect("stack dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            checked += text.len();
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{} holds a secret ({}...)",
                    path.display(),
                    &secret[..8]
                );
            }
        }
    }
    assert!(checked > 10_000, "the logs were read ({checked} bytes)");
    let worker_log =
        std::fs::read_to_string(stack.dir.join("executor-worker-0.log")).unwrap_or_default();
    assert!(
        worker_log.contains(&run),
        "the worker's log was among those read"
    );
}
