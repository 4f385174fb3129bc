//! What the graph tests share (`graph.rs`, `waits.rs`): one [`Setup`] per test, and readers
//! of the rows the engine wrote.

use super::*;
use chrono::{DateTime, Utc};
use executor_worker::agents::AgentRegistry;
use executor_worker::engine::{Engine, JobOutcome};
use shared_models::models::StepRunRow;
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::TestDb;
use wiremock::MockServer;

/// Long enough never to matter: the tests that time out set `timeoutSeconds` on the step.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

/// The agents `ids`, each served by `server` at `/<id>`.
pub fn agents_at(server: &MockServer, ids: &[&str]) -> AgentRegistry {
    let entries: Vec<(&str, String)> = ids
        .iter()
        .map(|id| (*id, format!("{}/{id}", server.uri())))
        .collect();
    registry(&entries)
}

/// When a step started and ended, from its row.
pub fn span(step: &StepRunRow) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        step.started_at
            .unwrap_or_else(|| panic!("{} has a startedAt", step.name)),
        step.completed_at
            .unwrap_or_else(|| panic!("{} has a completedAt", step.name)),
    )
}

pub fn statuses(steps: &[StepRunRow]) -> Vec<(&str, &str)> {
    steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str()))
        .collect()
}

pub async fn process(engine: &Engine, run_id: &str) -> JobOutcome {
    engine.process(&run_job(run_id)).await
}

/// One test's world, made the same way by every test: a fresh database, a mock server for
/// its agents and endpoints (mount answers on it before processing), and the engine that
/// runs its jobs.
pub struct Setup {
    pub db: TestDb,
    pub server: MockServer,
    pub engine: Arc<Engine>,
}

impl Setup {
    /// The agents `agents`, each served by the mock server at `/<id>`; the egress policy is
    /// the default one, so no `http` step reaches the server.
    pub async fn new(agents: &[&str]) -> Setup {
        Setup::build(agents, AGENT_TIMEOUT, false).await
    }

    /// [`Setup::new`] whose `http` steps may call the mock server (`EGRESS_ALLOW` lists it).
    pub async fn calling_server(agents: &[&str]) -> Setup {
        Setup::build(agents, AGENT_TIMEOUT, true).await
    }

    /// Every choice given: the worker's default per-call timeout, and whether `http` steps
    /// may call the mock server.
    pub async fn build(agents: &[&str], agent_timeout: Duration, calls_server: bool) -> Setup {
        let db = test_db().await;
        let server = MockServer::start().await;
        let agents = agents_at(&server, agents);
        let engine = if calls_server {
            engine_allowing(&db.pool, agents, agent_timeout, &allow_server(&server))
        } else {
            engine(&db.pool, agents, agent_timeout)
        };
        Setup {
            db,
            server,
            engine: Arc::new(engine),
        }
    }
}
