//! Test support for the services, the worker and the end-to-end tests (a dev-dependency,
//! never built into a binary): every test gets its own database and its own queue names, so
//! tests run in parallel and share nothing. The database is dropped when the [`TestDb`] is.
//!
//! - [`fixtures`]: rows another service would have written, inserted directly.
//! - [`hostile`]: the hostile-request strategies, invariant and harness.
//! - [`http`]: requests to a service under test, its envelope replies, `/metrics` scrapes.
//! - [`suites`]: the authentication and metrics suites both HTTP services run.

pub mod hostile;
pub mod http;
pub mod model;
pub mod suites;

use diesel::prelude::*;
use diesel::PgConnection;
use shared_models::db::{self, PgPool};

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
}

/// `DATABASE_URL` (or the local default) with its database name replaced.
pub fn url_with_database(base: &str, database: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let prefix = match head.rfind('/') {
        Some(i) if i > head.find("//").map(|j| j + 1).unwrap_or(0) => &head[..i],
        _ => head,
    };
    format!("{prefix}/{database}{query}")
}

pub fn base_database_url() -> String {
    shared_models::config::env_or("DATABASE_URL", shared_models::config::DEFAULT_DATABASE_URL)
}

/// The test broker: `AMQP_URL` (or the local default).
pub fn broker() -> shared_models::queue::Broker {
    let url = shared_models::config::env_or("AMQP_URL", shared_models::config::DEFAULT_AMQP_URL);
    shared_models::queue::Broker::new(&url).unwrap_or_else(|e| panic!("AMQP_URL: {e}"))
}

/// The operator key every test app is built with.
pub const ADMIN_KEY: &str = "thygon-test-admin-key-0123456789";

/// Authentication as the test apps use it: [`ADMIN_KEY`], no rate limit (tests that check
/// the limit build their own).
pub fn auth_config() -> shared_models::auth::AuthConfig {
    shared_models::auth::AuthConfig {
        admin_api_key: Some(ADMIN_KEY.to_string()),
        rate_limit_per_second: 0,
    }
}

/// A unique, lowercase token for database and queue names.
pub fn unique_token() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

impl TestDb {
    /// Create a fresh database with every migration applied.
    pub fn create() -> Self {
        let db = Self::create_empty();
        db::run_migrations(&db.url).expect("migrate test database");
        db
    }

    /// Create a fresh database without any migration (nothing in it).
    pub fn create_empty() -> Self {
        let base = base_database_url();
        let admin_url = url_with_database(&base, "postgres");
        let name = format!("thygon_test_{}", unique_token());
        let mut admin = PgConnection::establish(&admin_url).unwrap_or_else(|e| {
            let at = shared_models::config::redact_url(&admin_url);
            panic!("cannot connect to PostgreSQL at {at} (run `make test`, which starts it): {e}")
        });
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .expect("create test database");
        let url = url_with_database(&base, &name);
        let pool = db::pool(&url, 8);
        TestDb {
            name,
            url,
            pool,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// A queue prefix no other test uses.
pub fn unique_queue_prefix() -> String {
    format!("thygon-test-{}", unique_token())
}

/// Delete a test's queues and exchange (they are durable, so they would outlive the test).
pub async fn delete_queues(broker: &shared_models::queue::Broker, prefix: &str) {
    let names = shared_models::queue::QueueNames::new(prefix);
    if let Ok(conn) = shared_models::queue::connect(broker, "thygon-test-cleanup").await {
        if let Ok(ch) = conn.create_channel().await {
            for q in [&names.jobs, &names.dead_letter_queue] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(
                    names.dead_letter_exchange.as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

/// [`delete_queues`] from synchronous code (a `Drop`, inside or outside a runtime): on a
/// thread of its own with a runtime of its own, waited for.
pub fn delete_queues_blocking(broker: &shared_models::queue::Broker, prefix: &str) {
    let (broker, prefix) = (broker.clone(), prefix.to_string());
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(delete_queues(&broker, &prefix));
        }
    })
    .join()
    .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/thygon", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            url_with_database("postgres://u@h/thygon?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[test]
    fn a_fixture_stores_only_definitions_the_api_accepts() {
        let db = TestDb::create();
        let mut conn = db.pool.get().expect("a connection");
        let refused = [
            serde_json::json!({"steps": []}),
            serde_json::json!({"steps": [{"name": "t", "type": "transform"}]}),
            serde_json::json!({"steps": [{"name": "t", "type": "transform", "output": {}}]}),
        ];
        for (i, definition) in refused.into_iter().enumerate() {
            let name = format!("refused_{i}");
            let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fixtures::insert_workflow(&mut conn, "org_x", &name, definition.clone(), true)
            }));
            assert!(stored.is_err(), "stored {definition}");
        }
        let stored: i64 = shared_models::schema::workflows::table
            .count()
            .get_result(&mut conn)
            .expect("count the workflows");
        assert_eq!(stored, 0, "nothing was stored");
        let valid = serde_json::json!({"steps": [{"name": "t", "type": "transform", "value": 1}]});
        assert_eq!(
            fixtures::insert_workflow(&mut conn, "org_x", "valid", valid, true),
            "wf_valid"
        );
    }
}

/// Fixtures: rows another service would have written, inserted directly so each service's
/// tests stand alone (services never import each other).
pub mod fixtures {
    use diesel::prelude::*;
    use serde_json::Value;
    use shared_models::models::{ApiKeyRow, OrgRow, WorkflowRow, WorkflowVersionRow};
    use shared_models::schema::{api_keys, orgs, runs, workflow_versions, workflows};

    /// A new API key of `org_id` (the org is created if it does not exist), as the admin
    /// routes of workflow-service make it; returns the key.
    pub fn org_key(conn: &mut PgConnection, org_id: &str) -> String {
        let now = shared_models::time::now();
        diesel::insert_into(orgs::table)
            .values(OrgRow {
                id: org_id.into(),
                name: org_id.into(),
                created_at: now,
            })
            .on_conflict_do_nothing()
            .execute(conn)
            .expect("insert org");
        let key = shared_models::auth::generate_key().expect("random key");
        diesel::insert_into(api_keys::table)
            .values(ApiKeyRow {
                id: shared_models::auth::new_key_id(),
                org_id: org_id.into(),
                name: "test".into(),
                key_hash: shared_models::auth::hash_key(&key),
                key_prefix: shared_models::auth::display_prefix(&key),
                created_at: now,
                revoked_at: None,
            })
            .execute(conn)
            .expect("insert API key");
        key
    }

    /// Set every quota override of `org_id` (as `PUT /admin/orgs/{orgId}/limits` would),
    /// creating the org if needed.
    /// A key's lookup is cached for a second: set them before its first request.
    pub fn set_limits(
        conn: &mut PgConnection,
        org_id: &str,
        limits: &shared_models::limits::OrgLimitOverrides,
    ) {
        // The org too, if no key made it yet (the worker's tests have no keys).
        diesel::insert_into(orgs::table)
            .values(OrgRow {
                id: org_id.into(),
                name: org_id.into(),
                created_at: shared_models::time::now(),
            })
            .on_conflict_do_nothing()
            .execute(conn)
            .expect("insert org");
        let n = diesel::update(orgs::table.find(org_id))
            .set(limits)
            .execute(conn)
            .expect("set the org's limits");
        assert_eq!(n, 1, "org {org_id} exists");
    }

    /// A live workflow `wf_<name>` at version 1 with `definition`, which must pass the
    /// checks `POST /workflows` makes (`WorkflowGraph::parse`, as workflow-service calls
    /// it): a test cannot store a definition the API would refuse. Panics with the
    /// validation errors otherwise.
    pub fn insert_workflow(
        conn: &mut PgConnection,
        org_id: &str,
        name: &str,
        definition: Value,
        is_active: bool,
    ) -> String {
        if let Err(errors) = shared_models::graph::WorkflowGraph::parse(&definition, "definition") {
            let problems: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            panic!(
                "workflow '{name}': the API would refuse this definition ({}): {definition}",
                problems.join("; ")
            );
        }
        let now = shared_models::time::now();
        let id = format!("wf_{name}");
        diesel::insert_into(workflows::table)
            .values(WorkflowRow {
                org_id: org_id.into(),
                id: id.clone(),
                name: name.into(),
                description: None,
                is_active,
                version: 1,
                created_at: now,
                updated_at: now,
                deleted_at: None,
            })
            .execute(conn)
            .expect("insert workflow");
        diesel::insert_into(workflow_versions::table)
            .values(WorkflowVersionRow {
                org_id: org_id.into(),
                workflow_id: id.clone(),
                version: 1,
                definition,
                created_at: now,
            })
            .execute(conn)
            .expect("insert workflow version");
        id
    }

    /// Overwrite the stored definition of version 1 of `workflow_id` with `definition`,
    /// bypassing validation ON PURPOSE: the API never stores such a definition, so this is
    /// only for tests of what a worker does with a stored row that is corrupt.
    pub fn corrupt_stored_definition(
        conn: &mut PgConnection,
        org_id: &str,
        workflow_id: &str,
        definition: Value,
    ) {
        let n = diesel::update(
            workflow_versions::table
                .filter(workflow_versions::org_id.eq(org_id))
                .filter(workflow_versions::workflow_id.eq(workflow_id))
                .filter(workflow_versions::version.eq(1)),
        )
        .set(workflow_versions::definition.eq(definition))
        .execute(conn)
        .expect("overwrite the stored definition");
        assert_eq!(n, 1, "{workflow_id} has a version 1");
    }

    /// A PENDING run of version 1 of `workflow_id`, as the runtime service creates it.
    pub fn insert_run(
        conn: &mut PgConnection,
        org_id: &str,
        workflow_id: &str,
        variables: Value,
    ) -> String {
        let run = shared_models::runs::pending_run(
            shared_models::runs::NewRun {
                org_id,
                workflow_id,
                version: 1,
                variables,
                idempotency_key: None,
                request_hash: None,
                request_id: None,
                parent: None,
                budget: None,
            },
            shared_models::time::now(),
        );
        let id = run.id.clone();
        diesel::insert_into(runs::table)
            .values(run)
            .execute(conn)
            .expect("insert run");
        id
    }
}
