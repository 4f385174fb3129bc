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

/// The gateway's own limits (deploy/nginx/thygon.conf.template): bodies over the services'
/// 1 MiB are refused there, and traffic without an org key is limited per client address,
/// while keyed traffic is left to the services' per-key limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_large_bodies_and_limits_unkeyed_traffic_per_address() {
    let stack = Stack::start(1).await;
    let client = reqwest::Client::new();

    // One byte over 1 MiB: nginx answers the JSON 413 itself.
    let big = vec![b' '; 1024 * 1024 + 1];
    let res = client
        .post(format!("{}/workflows", stack.base_url))
        .bearer_auth(&stack.key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("request through the gateway");
    assert_eq!(res.status().as_u16(), 413);
    let body: serde_json::Value = res.json().await.expect("JSON 413");
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");

    // A flood without a key from one address: far more than the burst (200) plus what
    // 50 requests a second refill while it lasts. Some are refused with the gateway's 429.
    let (limited, other) = flood(&client, &stack.base_url, None, 1000).await;
    assert!(
        limited > 0,
        "no request of 1000 without a key was limited ({other:?})"
    );
    assert!(
        other.iter().all(|s| *s == 200),
        "unkeyed /healthz answered {other:?}"
    );

    // With an org key, the gateway does not limit: no 429 of its own, even right after.
    let (limited, _) = flood(&client, &stack.base_url, Some(&stack.key), 300).await;
    assert_eq!(limited, 0, "the gateway limited keyed requests");
}

/// Send `n` GET /healthz, 100 at a time; returns how many got the gateway's own 429 (with
/// its JSON envelope and Retry-After), and the other statuses.
async fn flood(
    client: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    n: usize,
) -> (usize, Vec<u16>) {
    let mut limited = 0;
    let mut other = Vec::new();
    for _ in 0..n / 100 {
        let sends = (0..100).map(|_| {
            let mut req = client.get(format!("{base_url}/healthz"));
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            async move {
                let res = req.send().await.expect("request through the gateway");
                let status = res.status().as_u16();
                let retry_after = res.headers().contains_key("retry-after");
                let text = res.text().await.unwrap_or_default();
                (status, retry_after, text)
            }
        });
        for (status, retry_after, text) in futures_util::future::join_all(sends).await {
            if status == 429 && text.contains("without an API key") {
                assert!(retry_after, "the gateway's 429 has no Retry-After");
                let body: serde_json::Value = serde_json::from_str(&text).expect("JSON 429");
                assert_eq!(body["error"]["code"], "RATE_LIMITED");
                limited += 1;
            } else {
                other.push(status);
            }
        }
    }
    (limited, other)
}
