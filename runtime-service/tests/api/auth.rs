//! Authentication (docs/API.md "Tenancy and keys"): every route of this service but health
//! needs `Authorization: Bearer <org key>`; the admin key is not an org key. The suite is the
//! one every HTTP service runs ([`thygon_testkit::suites::auth`]); this file says what this
//! service serves, and what only it does.

use crate::helpers::{assert_error, spawn_app, spawn_app_with_auth, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::auth::AuthConfig;
use shared_models::schema::{api_keys, outbox, run_events, runs, step_runs};
use thygon_testkit::suites::{Route, Routes, ServiceUnderTest, Timed};
use thygon_testkit::ADMIN_KEY;

thygon_testkit::auth_suite!(TestApp);

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

/// Every route and method routes/mod.rs serves, on the seeded ids.
pub fn every_route(s: &Seeded) -> Vec<Route> {
    vec![
        Route::new("GET", "/workflows/runs", None),
        Route::new(
            "POST",
            "/workflows/runs",
            Some(json!({"workflowId": s.workflow, "variables": {"ticketId": "T-1"}})),
        ),
        Route::new("GET", format!("/workflows/runs/{}", s.pending), None),
        Route::new(
            "POST",
            format!("/workflows/runs/{}/cancel", s.pending),
            None,
        ),
        Route::new("POST", format!("/workflows/runs/{}/retry", s.failed), None),
        Route::new(
            "POST",
            format!("/workflows/runs/{}/steps/review/approve", s.waiting),
            Some(json!({"approved": true, "comment": "fine"})),
        ),
        Route::stream(format!("/workflows/runs/{}/events", s.completed)),
        Route::new("GET", "/usage?groupBy=agent", None),
        Route::new(
            "POST",
            format!("/workflows/{}/trigger", s.workflow),
            Some(json!({"variables": {"ticketId": "T-2"}})),
        ),
    ]
}

impl ServiceUnderTest for TestApp {
    const NAME: &'static str = "runtime-service";
    const SECURED: &'static str = "/workflows/runs";
    const ADMIN_ROUTE: Option<&'static str> = None;
    const ROUTES_SOURCE: &'static str = include_str!("../../src/routes/mod.rs");

    fn description() -> serde_json::Value {
        serde_json::to_value(runtime_service::openapi()).expect("the description")
    }

    async fn start(auth: AuthConfig) -> Self {
        spawn_app_with_auth(auth).await
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn new_key(&self) -> String {
        self.key_for(ORG)
    }

    /// In the database, as workflow-service's admin routes do.
    async fn revoke(&self, key: &str) {
        let n = diesel::update(
            api_keys::table.filter(api_keys::key_hash.eq(shared_models::auth::hash_key(key))),
        )
        .set(api_keys::revoked_at.eq(shared_models::time::now()))
        .execute(&mut self.conn())
        .expect("revoke");
        assert_eq!(n, 1);
    }

    async fn seed(&self) -> Routes {
        let s = seed(self);
        let unserved = vec![
            ("GET", "/admin/orgs".to_string(), 404),
            ("POST", "/admin/orgs".to_string(), 404),
            ("GET", "/ops/nothing".to_string(), 404),
            ("GET", "/workflows".to_string(), 404),
            ("GET", format!("/workflows/{}", s.workflow), 404),
            ("DELETE", "/workflows/runs".to_string(), 405),
            ("DELETE", format!("/workflows/runs/{}", s.pending), 405),
            ("GET", format!("/workflows/runs/{}/cancel", s.pending), 405),
            (
                "POST",
                format!("/workflows/runs/{}/events", s.completed),
                405,
            ),
            ("GET", format!("/workflows/{}/trigger", s.workflow), 405),
        ];
        Routes {
            served: every_route(&s),
            unserved,
        }
    }

    fn snapshot(&self) -> Value {
        snapshot(self)
    }

    async fn timed(&self) -> Vec<Timed> {
        let wf = self.workflow("metrics_routes", true);
        let run = self.run_in(&wf, "COMPLETED");
        vec![Timed {
            path: format!("/workflows/runs/{run}"),
            route: "/workflows/runs/{id}",
            status: 200,
            id: run,
        }]
    }
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

#[tokio::test]
async fn the_admin_key_does_not_reach_the_other_services_admin_routes_through_this_one() {
    let app = spawn_app().await;
    let before = snapshot(&app);
    let r = app
        .send_auth(
            Some(&format!("Bearer {ADMIN_KEY}")),
            "GET",
            "/admin/orgs",
            None,
            &[],
        )
        .await;
    assert_error(&r, 404, "NOT_FOUND", "/admin/orgs is not served here");
    assert_eq!(r.header("www-authenticate"), "", "GET /admin/orgs");
    assert_eq!(snapshot(&app), before, "a refused request changed nothing");
}
