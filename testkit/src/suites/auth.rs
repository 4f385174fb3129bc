//! Authentication (docs/API.md "Tenancy and keys"), the same in every HTTP service: every
//! route but health needs `Authorization: Bearer <org key>`; the admin key is no org key and
//! reaches `/admin` only; a revoked key is refused within about a second; each key has its
//! own rate limit.

use super::ServiceUnderTest;
use crate::http::{assert_error, Reply};
use crate::ADMIN_KEY;
use shared_models::auth::AuthConfig;
use std::time::{Duration, Instant};

/// A request sent this long after a revocation is refused (the lookup cache is 1 s). The
/// bound is on when a request was sent, not when it was answered: load cannot break it.
const REFUSED_AFTER: Duration = Duration::from_millis(1100);

async fn start<S: ServiceUnderTest>() -> S {
    S::start(crate::auth_config()).await
}

pub fn assert_unauthorized(r: &Reply, what: &str) {
    assert_error(r, 401, "UNAUTHORIZED", what);
    assert_eq!(r.header("www-authenticate"), "Bearer", "{what}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {}",
        r.body
    );
}

/// Authorization headers that are no valid key of anyone.
fn bad_authorizations(valid_key: &str) -> Vec<Option<String>> {
    let unknown = shared_models::auth::generate_key().expect("random key");
    vec![
        None,
        Some(format!("Bearer {unknown}")),
        Some("Bearer thy_not-a-key".into()),
        // "user:password"
        Some("Basic dXNlcjpwYXNzd29yZA==".into()),
        // A real key, but not as a bearer token.
        Some(format!("Basic {valid_key}")),
        Some(format!("Token {valid_key}")),
        Some(valid_key.to_string()),
        Some("Bearer".into()),
        // Almost the key.
        Some(format!("Bearer {valid_key}x")),
        Some(format!("Bearer {}", &valid_key[..valid_key.len() - 1])),
        Some(format!("Bearer {}", valid_key.to_uppercase())),
    ]
}

pub async fn every_route_without_a_valid_bearer_key_is_a_401_and_changes_nothing<
    S: ServiceUnderTest,
>() {
    let app: S = start().await;
    let routes = app.seed().await.served;
    let before = app.snapshot();
    for auth in bad_authorizations(app.key()) {
        for r in &routes {
            let what = format!("{} {} with {auth:?}", r.method, r.path);
            let reply = app
                .send_auth(auth.as_deref(), r.method, &r.path, r.body.clone())
                .await;
            assert_unauthorized(&reply, &what);
        }
    }
    assert_eq!(app.snapshot(), before, "a refused request changed nothing");
}

pub async fn the_admin_key_is_refused_on_every_org_route_and_org_keys_on_every_admin_route<
    S: ServiceUnderTest,
>() {
    let app: S = start().await;
    let routes = app.seed().await.served;
    let before = app.snapshot();
    for r in &routes {
        let what = format!("{} {}", r.method, r.path);
        let (key, whose) = if r.admin {
            (app.key(), "an org key")
        } else {
            (ADMIN_KEY, "the admin key")
        };
        let reply = app
            .send_as(Some(key), r.method, &r.path, r.body.clone())
            .await;
        assert_error(&reply, 403, "FORBIDDEN", &format!("{whose} on {what}"));
        // A 403 is not a 401: no challenge to send another key.
        assert_eq!(reply.header("www-authenticate"), "", "{what}");
    }
    assert_eq!(app.snapshot(), before, "a refused request changed nothing");
}

pub async fn the_seeded_routes_are_real_ones_for_the_right_key<S: ServiceUnderTest>() {
    // The matrices above prove something only if the same requests succeed with the right key.
    let app: S = start().await;
    let mut routes = app.seed().await.served;
    // Deletes last, so every other route still has its ids.
    routes.sort_by_key(|r| r.method == "DELETE");
    for r in &routes {
        let what = format!("{} {}", r.method, r.path);
        let key = if r.admin { ADMIN_KEY } else { app.key() };
        if r.stream {
            let res = app
                .client()
                .get(format!("{}{}", app.address(), r.path))
                .bearer_auth(key)
                .send()
                .await
                .expect("subscribe");
            assert_eq!(res.status().as_u16(), 200, "{what}");
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/event-stream"), "{what}: {ct}");
            continue;
        }
        let reply = app
            .send_as(Some(key), r.method, &r.path, r.body.clone())
            .await;
        assert!(
            [200, 201].contains(&reply.status),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
    }
}

pub async fn unknown_routes_and_methods_are_a_401_without_a_key<S: ServiceUnderTest>() {
    let app: S = start().await;
    let mut cases = app.seed().await.unserved;
    for path in ["/", "/nowhere", "/healthz/x", "/metrics2"] {
        cases.push(("GET", path.to_string(), 404));
    }
    for (method, path, status) in &cases {
        let what = format!("{method} {path}");
        assert_unauthorized(&app.send_as(None, method, path, None).await, &what);
        let unknown = shared_models::auth::generate_key().expect("key");
        assert_unauthorized(
            &app.send_as(Some(&unknown), method, path, None).await,
            &what,
        );
        // With a key they are what they are: no such route, or no such method.
        let r = app.send_as(Some(app.key()), method, path, None).await;
        assert_eq!(r.status, *status, "{what}: {}", r.body);
    }
}

pub async fn health_needs_no_key_and_ignores_a_bad_one<S: ServiceUnderTest>() {
    let app: S = start().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz")] {
            let r = app.send_auth(auth, "GET", path, None).await;
            assert_ne!(r.status, 401, "GET {path} with {auth:?}: {}", r.body);
            assert_ne!(r.status, 403, "GET {path} with {auth:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), "", "GET {path}");
        }
    }
    // `/metrics` answers Prometheus text, not an envelope.
    for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz")] {
        let mut req = app.client().get(format!("{}/metrics", app.address()));
        if let Some(value) = auth {
            req = req.header("authorization", value);
        }
        let res = req.send().await.expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200, "GET /metrics with {auth:?}");
        assert!(res.headers().get("www-authenticate").is_none());
    }
    let r = app.send_as(None, "GET", "/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The test app's database and broker are up: ready, every check passed.
    let r = app.send_as(None, "GET", "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let checks = r.body["data"].as_object().expect("the checks");
    assert!(
        !checks.is_empty() && checks.values().all(|ok| ok == true),
        "{}",
        r.body
    );
}

pub async fn the_bearer_scheme_is_case_insensitive_and_the_key_exact<S: ServiceUnderTest>() {
    let app: S = start().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {}", app.key());
        let r = app.send_auth(Some(&auth), "GET", S::SECURED, None).await;
        assert_eq!(r.status, 200, "{auth}: {}", r.body);
    }
}

pub async fn a_revoked_key_is_refused_within_about_a_second<S: ServiceUnderTest>() {
    let app: S = start().await;
    let routes = app.seed().await.served;
    let key = app.revocable_key().await;
    // It works, and its lookup is fresh in the cache when it is revoked.
    for _ in 0..3 {
        let r = app.send_as(Some(&key), "GET", S::SECURED, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    app.revoke(&key).await;
    let revoked = Instant::now();
    loop {
        // Measured when sent: a slow answer does not make the key look slow to revoke.
        let sent = revoked.elapsed();
        let r = app.send_as(Some(&key), "GET", S::SECURED, None).await;
        if r.status == 401 {
            // When the first refusal was sent depends on how slow the answers before it
            // were; only REFUSED_AFTER (on every request that passed) is asserted.
            assert_unauthorized(&r, "the revoked key");
            break;
        }
        assert_eq!(r.status, 200, "until refused, it still works: {}", r.body);
        assert!(
            sent <= REFUSED_AFTER,
            "the revoked key still worked {sent:?} after revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays refused, on every org route; the org's other key is unaffected.
    for r in routes.iter().filter(|r| !r.admin) {
        let reply = app
            .send_as(Some(&key), r.method, &r.path, r.body.clone())
            .await;
        assert_unauthorized(&reply, &format!("{} {}", r.method, r.path));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_unauthorized(
        &app.send_as(Some(&key), "GET", S::SECURED, None).await,
        "still revoked after the cache expired",
    );
    let r = app.send_as(Some(app.key()), "GET", S::SECURED, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `Retry-After` as whole seconds; the test fails unless it is a positive integer.
fn retry_after(r: &Reply) -> u64 {
    let values: Vec<_> = r.headers.get_all("retry-after").iter().collect();
    assert_eq!(values.len(), 1, "one Retry-After: {values:?}");
    let secs: u64 = values[0]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not an integer: {:?}", values[0]));
    assert!(secs >= 1, "Retry-After is positive");
    secs
}

/// Ten quick requests with one fresh key under a limit of 5 per second: the first five
/// pass, and no more pass than the burst plus what refilled meanwhile (a cell every 200 ms);
/// when they took under 190 ms, exactly the 6th to 10th are 429. Returns whether that
/// strict check was made, and the largest `Retry-After` seen.
async fn ten_quick_requests<S: ServiceUnderTest>(app: &S, key: &str) -> (bool, Option<u64>) {
    let start = Instant::now();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(app.send_as(Some(key), "GET", S::SECURED, None).await);
    }
    let elapsed = start.elapsed();
    for (i, r) in replies.iter().enumerate().take(5) {
        assert_eq!(r.status, 200, "request {}: {}", i + 1, r.body);
    }
    let mut wait = None;
    for r in &replies[5..] {
        if r.status == 429 {
            assert_error(r, 429, "RATE_LIMITED", "over the limit");
            wait = wait.max(Some(retry_after(r)));
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    let passed = replies.iter().filter(|r| r.status == 200).count();
    // However slow: no more than the burst plus what refilled meanwhile.
    let refilled = (elapsed.as_millis() / 200) as usize;
    assert!(
        passed <= 5 + refilled,
        "{passed} of 10 passed in {elapsed:?} with a limit of 5/s"
    );
    if elapsed < Duration::from_millis(190) {
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
        return (true, wait);
    }
    (false, wait)
}

pub async fn each_key_has_its_own_rate_limit_with_retry_after<S: ServiceUnderTest>() {
    let app = S::start(AuthConfig {
        admin_api_key: Some(ADMIN_KEY.to_string()),
        rate_limit_per_second: 5,
    })
    .await;
    // A fresh key per attempt (a fresh bucket); retried only when the machine was too slow
    // for the strict check.
    let mut wait = None;
    let mut key = app.key().to_string();
    for attempt in 0..5 {
        if attempt > 0 {
            key = app.new_key();
        }
        let (strict, seen) = ten_quick_requests(&app, &key).await;
        wait = wait.max(seen);
        if strict {
            break;
        }
    }
    let wait = wait.expect("a 429 with Retry-After");
    assert!(wait <= 2, "Retry-After {wait} s at 5 requests per second");

    // Another key of the same org, and the admin key, have buckets of their own.
    let other = app.new_key();
    for i in 0..5 {
        let r = app.send_as(Some(&other), "GET", S::SECURED, None).await;
        assert_eq!(r.status, 200, "other key, request {}: {}", i + 1, r.body);
        if let Some(admin_route) = S::ADMIN_ROUTE {
            let r = app.send_as(Some(ADMIN_KEY), "GET", admin_route, None).await;
            assert_eq!(r.status, 200, "admin key, request {}: {}", i + 1, r.body);
        }
    }
    // After waiting what Retry-After said, the limited key passes again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    for i in 0..3 {
        let r = app.send_as(Some(&key), "GET", S::SECURED, None).await;
        assert_eq!(
            r.status,
            200,
            "after Retry-After, request {}: {}",
            i + 1,
            r.body
        );
    }
    // Unknown keys are refused as such, not rate limited.
    for _ in 0..8 {
        let r = app
            .send_as(Some("thy_unknown"), "GET", S::SECURED, None)
            .await;
        assert_unauthorized(&r, "unknown key");
    }
}
