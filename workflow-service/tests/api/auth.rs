//! Authentication (docs/API.md "Tenancy and keys"): every route of this service but health
//! needs `Authorization: Bearer <org key>`; the admin key reaches `/admin` only. The suite is
//! the one every HTTP service runs ([`thygon_testkit::suites::auth`]); this file says what
//! this service serves.

use crate::helpers::{spawn_app_with, workflow, TestApp, ORG};
use diesel::prelude::*;
use serde_json::{json, Value};
use shared_models::auth::AuthConfig;
use shared_models::schema::{api_keys, orgs, workflow_versions, workflows};
use thygon_testkit::suites::{Route, Routes, ServiceUnderTest, Timed};
use thygon_testkit::ADMIN_KEY;

thygon_testkit::auth_suite!(TestApp);

impl ServiceUnderTest for TestApp {
    const NAME: &'static str = "workflow-service";
    const SECURED: &'static str = "/workflows";
    const ADMIN_ROUTE: Option<&'static str> = Some("/admin/orgs");
    const ROUTES_SOURCE: &'static str = include_str!("../../src/routes/mod.rs");

    fn description() -> serde_json::Value {
        serde_json::to_value(workflow_service::openapi()).expect("the description")
    }

    async fn start(auth: AuthConfig) -> Self {
        spawn_app_with(auth).await
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

    /// Made through the admin routes.
    async fn revocable_key(&self) -> String {
        let r = self
            .send_as(
                Some(ADMIN_KEY),
                "POST",
                &format!("/admin/orgs/{ORG}/keys"),
                Some(json!({"name": "soon-revoked"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["data"]["key"].as_str().unwrap().to_string()
    }

    /// Through `DELETE /admin/keys/{id}`.
    async fn revoke(&self, key: &str) {
        let id: String = api_keys::table
            .filter(api_keys::key_hash.eq(shared_models::auth::hash_key(key)))
            .select(api_keys::id)
            .first(&mut self.conn())
            .expect("the key's id");
        let r = self
            .send_as(
                Some(ADMIN_KEY),
                "DELETE",
                &format!("/admin/keys/{id}"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Every route and method routes/mod.rs serves, on real ids of [`ORG`]: `wf_alpha` (two
    /// versions) and the app's own key.
    async fn seed(&self) -> Routes {
        let r = self
            .send("POST", "/workflows", Some(workflow("alpha")))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let def = workflow("alpha")["definition"].clone();
        let r = self
            .send(
                "PUT",
                "/workflows/wf_alpha",
                Some(json!({"definition": def})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let key_id = app_key_id(self);
        let served = vec![
            Route::new("GET", "/workflows", None),
            Route::new("POST", "/workflows", Some(workflow("beta"))),
            Route::new(
                "POST",
                "/workflows/validate",
                Some(json!({"definition": def})),
            ),
            Route::new("GET", "/workflows/wf_alpha", None),
            Route::new(
                "PUT",
                "/workflows/wf_alpha",
                Some(json!({"definition": def, "description": "changed"})),
            ),
            Route::new("DELETE", "/workflows/wf_alpha", None),
            Route::new("GET", "/workflows/wf_alpha/versions", None),
            Route::new("GET", "/workflows/wf_alpha/versions/1", None),
            Route::new("GET", "/workflows/wf_alpha/versions/2", None),
            Route::new("GET", "/admin/orgs", None),
            Route::new(
                "POST",
                "/admin/orgs",
                Some(json!({"id": "org_new", "name": "New"})),
            ),
            Route::new("GET", format!("/admin/orgs/{ORG}/keys"), None),
            Route::new(
                "POST",
                format!("/admin/orgs/{ORG}/keys"),
                Some(json!({"name": "ci"})),
            ),
            Route::new("DELETE", format!("/admin/keys/{key_id}"), None),
        ];
        let unserved = [
            ("GET", "/admin", 404),
            ("GET", "/admin/keys", 404),
            ("GET", "/ops/queues", 404),
            ("GET", "/workflows/runs", 404),
            ("PATCH", "/workflows", 405),
            ("DELETE", "/workflows", 405),
            ("GET", "/workflows/validate", 405),
            ("POST", "/workflows/wf_alpha", 405),
            ("POST", "/workflows/wf_alpha/versions", 405),
            ("GET", "/workflows/wf_alpha/versions/1/extra", 404),
            ("PUT", "/admin/orgs", 405),
            ("GET", "/admin/keys/key_x", 405),
            ("GET", "/uix", 404),
        ]
        .into_iter()
        .map(|(method, path, status)| (method, path.to_string(), status))
        .collect();
        Routes { served, unserved }
    }

    fn snapshot(&self) -> Value {
        snapshot(self)
    }

    async fn timed(&self) -> Vec<Timed> {
        vec![Timed {
            path: "/workflows/wf_not_there_42".into(),
            route: "/workflows/{id}",
            status: 404,
            id: "wf_not_there_42".into(),
        }]
    }
}

/// The id of the app's key (the only key of [`ORG`] when the app starts).
fn app_key_id(app: &TestApp) -> String {
    api_keys::table
        .filter(api_keys::org_id.eq(ORG))
        .select(api_keys::id)
        .order(api_keys::id)
        .first(&mut app.conn())
        .expect("the app's key")
}

/// What the database holds of the seeded rows, to show a refused request changed nothing.
fn snapshot(app: &TestApp) -> Value {
    let mut conn = app.conn();
    let wfs: Vec<(String, String, i32, bool, Option<String>)> = workflows::table
        .select((
            workflows::org_id,
            workflows::id,
            workflows::version,
            workflows::deleted_at.is_null(),
            workflows::description,
        ))
        .order((workflows::org_id, workflows::id))
        .load(&mut conn)
        .expect("workflows");
    let versions: i64 = workflow_versions::table
        .count()
        .get_result(&mut conn)
        .expect("versions");
    let org_ids: Vec<String> = orgs::table
        .select(orgs::id)
        .order(orgs::id)
        .load(&mut conn)
        .expect("orgs");
    let keys: Vec<(String, bool)> = api_keys::table
        .select((api_keys::id, api_keys::revoked_at.is_null()))
        .order(api_keys::id)
        .load(&mut conn)
        .expect("keys");
    json!({"workflows": wfs, "versions": versions, "orgs": org_ids, "keys": keys})
}
