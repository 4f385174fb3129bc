//! Authentication (docs/API.md "Tenancy and keys"): every route of this service but health
//! needs `Authorization: Bearer <org key>`; the admin key is not an org key.

use crate::helpers::{assert_error, spawn_app, spawn_app_with_auth, Reply, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::auth::AuthConfig;
use shared_models::schema::{api_keys, outbox, run_events, runs, step_runs};
use std::time::{Duration, Instant};
use thygon_testkit::ADMIN_KEY;

/// A request sent this long after a revocation is refused (the lookup cache is 1 s)...
const REFUSED_AFTER: Duration = Duration::from_millis(1100);
/// ...and polling sees the refusal no later than this.
const REVOCATION_DEADLINE: Duration = Duration::from_millis(1500);

pub struct Seeded {
    pub workflow: String,
    pub pending: String,
    pub failed: String,
    pub waiting: String,
    pub completed: String,
}

/// A workflow of [`ORG`] with an approval step, and a run in each state a route acts on.
pub fn seed(app: &TestApp) -> Seeded {
    let workflow = app.workflow_with(
        "triage",
        json!({"steps": [
            {"name": "classify", "type": "agent", "agentId": "a", "instructions": "Classify."},
            {"name": "review", "type": "approval"},
            {"name": "reply", "type": "transform", "value": {"ok": true}}
        ]}),
    );
    let waiting = app.run_in(&workflow, "WAITING");
    app.step(&waiting, 0, "classify", "agent", "COMPLETED", |r| {
        r.attempt = 1
    });
    app.step(&waiting, 1, "review", "approval", "WAITING", |r| {
        r.attempt = 1;
        r.wake_at = Some(crate::helpers::seconds_from_now(3600));
    });
    Seeded {
        pending: app.run_in(&workflow, "PENDING"),
        failed: app.run_in(&workflow, "FAILED"),
        completed: app.run_in(&workflow, "COMPLETED"),
        waiting,
        workflow,
    }
}

pub struct Route {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

/// Every route and method routes/mod.rs serves, on the seeded ids.
pub fn every_route(s: &Seeded) -> Vec<Route> {
    let route = |method, path: String, body: Option<Value>| Route { method, path, body };
    vec![
        route("GET", "/workflows/runs".into(), None),
        route(
            "POST",
            "/workflows/runs".into(),
            Some(json!({"workflowId": s.workflow, "variables": {"ticketId": "T-1"}})),
        ),
        route("GET", format!("/workflows/runs/{}", s.pending), None),
        route(
            "POST",
            format!("/workflows/runs/{}/cancel", s.pending),
            None,
        ),
        route("POST", format!("/workflows/runs/{}/retry", s.failed), None),
        route(
            "POST",
            format!("/workflows/runs/{}/steps/review/approve", s.waiting),
            Some(json!({"approved": true, "comment": "fine"})),
        ),
        route(
            "GET",
            format!("/workflows/runs/{}/events", s.completed),
            None,
        ),
        route(
            "POST",
            format!("/workflows/{}/trigger", s.workflow),
            Some(json!({"variables": {"ticketId": "T-2"}})),
        ),
    ]
}

/// What the database holds of runs, to show a refused request changed nothing.
pub fn snapshot(app: &TestApp) -> Value {
    let mut conn = app.conn();
    let all_runs: Vec<(String, String, String)> = runs::table
        .select((runs::id, runs::org_id, runs::status))
        .order(runs::id)
        .load(&mut conn)
        .expect("runs");
    let run_updates: Vec<String> = runs::table
        .select(runs::updated_at)
        .order(runs::id)
        .load::<chrono::DateTime<chrono::Utc>>(&mut conn)
        .expect("runs")
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    let steps: Vec<(String, String, String, i32)> = step_runs::table
        .select((
            step_runs::run_id,
            step_runs::name,
            step_runs::status,
            step_runs::attempt,
        ))
        .order((step_runs::run_id, step_runs::name))
        .load(&mut conn)
        .expect("steps");
    let outbox: i64 = outbox::table.count().get_result(&mut conn).expect("outbox");
    let events: i64 = run_events::table
        .count()
        .get_result(&mut conn)
        .expect("events");
    json!({"runs": all_runs, "updated": run_updates, "steps": steps, "outbox": outbox, "events": events})
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_error(r, 401, "UNAUTHORIZED", what);
    assert_eq!(r.header("www-authenticate"), "Bearer", "{what}");
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
        Some(format!("Basic {valid_key}")),
        Some(valid_key.to_string()),
        Some("Bearer".into()),
        Some(format!("Bearer {valid_key}x")),
        Some(format!("Bearer {}", valid_key.to_uppercase())),
    ]
}

#[tokio::test]
async fn every_route_without_a_valid_bearer_key_is_a_401_and_changes_nothing() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = snapshot(&app);
    for auth in bad_authorizations(&app.key) {
        for r in every_route(&s) {
            let what = format!("{} {} with {auth:?}", r.method, r.path);
            let reply = app
                .send_auth(auth.as_deref(), r.method, &r.path, r.body, &[])
                .await;
            assert_unauthorized(&reply, &what);
        }
    }
    assert_eq!(snapshot(&app), before, "a refused request changed nothing");
}

#[tokio::test]
async fn the_admin_key_is_no_org_key_here() {
    let app = spawn_app().await;
    let s = seed(&app);
    let before = snapshot(&app);
    let admin = format!("Bearer {ADMIN_KEY}");
    for r in every_route(&s) {
        let what = format!("admin key on {} {}", r.method, r.path);
        let reply = app
            .send_auth(Some(&admin), r.method, &r.path, r.body, &[])
            .await;
        assert_error(&reply, 403, "FORBIDDEN", &what);
        assert_eq!(reply.header("www-authenticate"), "", "{what}");
    }
    // Nor does it reach the admin routes of the other service through this one.
    let r = app
        .send_auth(Some(&admin), "GET", "/admin/orgs", None, &[])
        .await;
    assert_error(&r, 404, "NOT_FOUND", "/admin/orgs is not served here");
    assert_eq!(snapshot(&app), before, "a refused request changed nothing");
}

#[tokio::test]
async fn the_seeded_routes_are_real_ones_for_the_right_key() {
    // The matrices above prove something only if the same requests succeed with the key.
    let app = spawn_app().await;
    let s = seed(&app);
    for r in every_route(&s) {
        let what = format!("{} {}", r.method, r.path);
        if r.path.ends_with("/events") {
            let res = app
                .client
                .get(format!("{}{}", app.address, r.path))
                .bearer_auth(&app.key)
                .send()
                .await
                .expect("subscribe");
            assert_eq!(res.status().as_u16(), 200, "{what}");
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/event-stream"), "{what}: {ct}");
            continue;
        }
        let reply = app.send(r.method, &r.path, r.body, &[]).await;
        assert!(
            [200, 201].contains(&reply.status),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_a_401_without_a_key() {
    let app = spawn_app().await;
    let s = seed(&app);
    let cases = [
        ("GET", "/".to_string()),
        ("GET", "/nowhere".to_string()),
        ("GET", "/admin/orgs".to_string()),
        ("POST", "/admin/orgs".to_string()),
        ("GET", "/ops/nothing".to_string()),
        ("GET", "/workflows".to_string()),
        ("GET", format!("/workflows/{}", s.workflow)),
        ("DELETE", "/workflows/runs".to_string()),
        ("DELETE", format!("/workflows/runs/{}", s.pending)),
        ("GET", format!("/workflows/runs/{}/cancel", s.pending)),
        ("POST", format!("/workflows/runs/{}/events", s.completed)),
        ("GET", format!("/workflows/{}/trigger", s.workflow)),
        ("GET", "/healthz/x".to_string()),
        ("GET", "/metrics2".to_string()),
    ];
    for (method, path) in &cases {
        let what = format!("{method} {path}");
        assert_unauthorized(&app.send_auth(None, method, path, None, &[]).await, &what);
        let unknown = format!("Bearer {}", shared_models::auth::generate_key().unwrap());
        assert_unauthorized(
            &app.send_auth(Some(&unknown), method, path, None, &[]).await,
            &what,
        );
        // With a key they are what they are: no such route, or no such method.
        let r = app.send(method, path, None, &[]).await;
        assert!([404, 405].contains(&r.status), "{what}: {}", r.status);
    }
}

#[tokio::test]
async fn health_needs_no_key_and_ignores_a_bad_one() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz")] {
            let r = app.send_auth(auth, "GET", path, None, &[]).await;
            assert_ne!(r.status, 401, "GET {path} with {auth:?}: {}", r.body);
            assert_ne!(r.status, 403, "GET {path} with {auth:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), "", "GET {path}");
        }
    }
    // `/metrics` answers Prometheus text, not an envelope.
    for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz")] {
        let mut req = app.client.get(format!("{}/metrics", app.address));
        if let Some(value) = auth {
            req = req.header("authorization", value);
        }
        let res = req.send().await.expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200, "GET /metrics with {auth:?}");
        assert!(res.headers().get("www-authenticate").is_none());
    }
    let r = app.send_auth(None, "GET", "/healthz", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.send_auth(None, "GET", "/readyz", None, &[]).await;
    assert!([200, 503].contains(&r.status), "{}", r.status);
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_about_a_second() {
    let app = spawn_app().await;
    let key = app.key_for(ORG);
    let other = app.key_for(ORG);
    let bearer = format!("Bearer {key}");
    // It works, and its lookup is fresh in the cache when it is revoked.
    for _ in 0..3 {
        let r = app
            .send_auth(Some(&bearer), "GET", "/workflows/runs", None, &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let n = diesel::update(
        api_keys::table.filter(api_keys::key_hash.eq(shared_models::auth::hash_key(&key))),
    )
    .set(api_keys::revoked_at.eq(shared_models::time::now()))
    .execute(&mut app.conn())
    .expect("revoke");
    assert_eq!(n, 1);
    let revoked = Instant::now();
    loop {
        // Measured when sent: a slow answer does not make the key look slow to revoke.
        let sent = revoked.elapsed();
        let r = app
            .send_auth(Some(&bearer), "GET", "/workflows/runs", None, &[])
            .await;
        if r.status == 401 {
            assert_unauthorized(&r, "the revoked key");
            assert!(
                sent <= REVOCATION_DEADLINE,
                "the revocation was first seen {sent:?} after it"
            );
            break;
        }
        assert_eq!(r.status, 200, "until refused, it still works: {}", r.body);
        assert!(
            sent <= REFUSED_AFTER,
            "the revoked key still worked {sent:?} after revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app
        .send_auth(
            Some(&bearer),
            "POST",
            "/workflows/runs",
            Some(json!({"workflowId": "wf_x"})),
            &[],
        )
        .await;
    assert_unauthorized(&r, "still revoked after the cache expired");
    // The org's other keys are unaffected.
    let r = app
        .send_auth(
            Some(&format!("Bearer {other}")),
            "GET",
            "/workflows/runs",
            None,
            &[],
        )
        .await;
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
async fn ten_quick_requests(app: &TestApp, key: &str) -> (bool, Option<u64>) {
    let bearer = format!("Bearer {key}");
    let start = Instant::now();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(
            app.send_auth(Some(&bearer), "GET", "/workflows/runs", None, &[])
                .await,
        );
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

#[tokio::test]
async fn each_key_has_its_own_rate_limit_with_retry_after() {
    let app = spawn_app_with_auth(AuthConfig {
        admin_api_key: Some(ADMIN_KEY.to_string()),
        rate_limit_per_second: 5,
    })
    .await;
    // A fresh key per attempt (a fresh bucket); retried only when the machine was too slow
    // for the strict check.
    let mut wait = None;
    let mut key = app.key.clone();
    for attempt in 0..5 {
        if attempt > 0 {
            key = app.key_for(ORG);
        }
        let (strict, seen) = ten_quick_requests(&app, &key).await;
        wait = wait.max(seen);
        if strict {
            break;
        }
    }
    let wait = wait.expect("a 429 with Retry-After");
    assert!(wait <= 2, "Retry-After {wait} s at 5 requests per second");

    // Another key of the same org has a bucket of its own.
    let other = format!("Bearer {}", app.key_for(ORG));
    for i in 0..5 {
        let r = app
            .send_auth(Some(&other), "GET", "/workflows/runs", None, &[])
            .await;
        assert_eq!(r.status, 200, "other key, request {}: {}", i + 1, r.body);
    }
    // After waiting what Retry-After said, the limited key passes again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let bearer = format!("Bearer {key}");
    for i in 0..3 {
        let r = app
            .send_auth(Some(&bearer), "GET", "/workflows/runs", None, &[])
            .await;
        assert_eq!(
            r.status,
            200,
            "after Retry-After, request {}: {}",
            i + 1,
            r.body
        );
    }
}
