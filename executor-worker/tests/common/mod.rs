//! Helpers shared by the worker's integration tests: each test builds its own database
//! (and, for the consumer, its own queue names), seeds rows another service would have
//! written, and reads the worker's writes back through diesel.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use executor_worker::agents::AgentRegistry;
use executor_worker::engine::Engine;
use executor_worker::storage::LeaseHolder;
use serde_json::Value;
use shared_models::db::{blocking, PgPool};
use shared_models::models::{RunEventRow, RunRow, StepRunRow};
use shared_models::schema::{run_events, runs, step_runs};
use shared_models::testing::{fixtures, unique_token, TestDb};
use std::future::Future;
use std::time::{Duration, Instant};

pub const ORG: &str = "org_test";

/// A fresh, migrated database; created off the async executor because diesel blocks.
pub async fn test_db() -> TestDb {
    tokio::task::spawn_blocking(TestDb::create)
        .await
        .expect("create the test database")
}

/// An engine writing to `pool` under a worker id of its own.
pub fn engine(pool: &PgPool, agents: AgentRegistry, agent_timeout: Duration) -> Engine {
    Engine {
        pool: pool.clone(),
        agents,
        http: reqwest::Client::new(),
        me: LeaseHolder {
            worker_id: format!("test-worker-{}", unique_token()),
            lease: Duration::from_secs(30),
        },
        agent_timeout,
    }
}

/// A registry of HTTP agents, each `(id, url)`, and no `AGENT_BASE_URL` fallback.
pub fn registry(agents: &[(&str, String)]) -> AgentRegistry {
    let toml: String = agents
        .iter()
        .map(|(id, url)| format!("[agents.{id}]\nurl = \"{url}\"\n"))
        .collect();
    AgentRegistry::from_toml_str(&toml, None).expect("a valid agents file")
}

/// A workflow `wf_<name>` with `definition`, and one PENDING run of it.
pub async fn workflow_with_run(
    pool: &PgPool,
    name: &str,
    definition: Value,
    variables: Value,
) -> (String, String) {
    let name = name.to_string();
    blocking(pool, move |conn| {
        let workflow_id = fixtures::insert_workflow(conn, ORG, &name, definition, true);
        let run_id = fixtures::insert_run(conn, ORG, &workflow_id, variables);
        Ok((workflow_id, run_id))
    })
    .await
    .expect("insert the workflow and its run")
}

/// More PENDING runs of an existing workflow.
pub async fn insert_runs(
    pool: &PgPool,
    workflow_id: &str,
    count: usize,
    variables: impl Fn(usize) -> Value + Send + 'static,
) -> Vec<String> {
    let workflow_id = workflow_id.to_string();
    blocking(pool, move |conn| {
        Ok((0..count)
            .map(|i| fixtures::insert_run(conn, ORG, &workflow_id, variables(i)))
            .collect())
    })
    .await
    .expect("insert runs")
}

/// Make the run look as if `owner` claimed it and then died: RUNNING, lease expired.
pub async fn mark_held_by_dead_worker(pool: &PgPool, run_id: &str, owner: &str) {
    let (run_id, owner) = (run_id.to_string(), owner.to_string());
    let now = shared_models::time::now();
    blocking(pool, move |conn| {
        diesel::update(runs::table.find(&run_id))
            .set((
                runs::status.eq("RUNNING"),
                runs::started_at.eq(now - chrono::Duration::minutes(2)),
                runs::lease_owner.eq(&owner),
                runs::lease_expires_at.eq(now - chrono::Duration::minutes(1)),
            ))
            .execute(conn)
    })
    .await
    .expect("mark the run as held by a dead worker");
}

/// A step_runs row as an earlier worker left it.
pub async fn insert_step_run(pool: &PgPool, row: StepRunRow) {
    blocking(pool, move |conn| {
        diesel::insert_into(step_runs::table)
            .values(&row)
            .execute(conn)
    })
    .await
    .expect("insert a step run");
}

pub fn step_row(
    run_id: &str,
    name: &str,
    position: i32,
    status: &str,
    attempt: i32,
    output: Option<Value>,
) -> StepRunRow {
    let started: DateTime<Utc> = shared_models::time::now() - chrono::Duration::minutes(2);
    let mut row = StepRunRow::new(run_id, name, position, "agent", status);
    row.attempt = attempt;
    row.started_at = Some(started);
    row.completed_at = (status == "COMPLETED").then_some(started + chrono::Duration::seconds(1));
    row.output = output;
    row
}

pub async fn get_run(pool: &PgPool, run_id: &str) -> RunRow {
    let run_id = run_id.to_string();
    blocking(pool, move |conn| {
        runs::table
            .find(&run_id)
            .select(RunRow::as_select())
            .first(conn)
    })
    .await
    .expect("read the run")
}

pub async fn get_steps(pool: &PgPool, run_id: &str) -> Vec<StepRunRow> {
    let run_id = run_id.to_string();
    blocking(pool, move |conn| {
        step_runs::table
            .filter(step_runs::run_id.eq(&run_id))
            .order(step_runs::position)
            .select(StepRunRow::as_select())
            .load(conn)
    })
    .await
    .expect("read the step runs")
}

pub async fn get_events(pool: &PgPool, run_id: &str) -> Vec<RunEventRow> {
    let run_id = run_id.to_string();
    blocking(pool, move |conn| {
        run_events::table
            .filter(run_events::run_id.eq(&run_id))
            .order(run_events::id)
            .select(RunEventRow::as_select())
            .load(conn)
    })
    .await
    .expect("read the run events")
}

/// The transitions among `events`, in order, as `(step, from, to)`.
pub fn transitions(events: &[RunEventRow]) -> Vec<(Option<String>, String, String)> {
    events
        .iter()
        .filter(|e| e.kind == "transition")
        .map(|e| {
            (
                e.step.clone(),
                e.from_status.clone().unwrap_or_default(),
                e.to_status.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// `(step, from, to)` for an expected transition.
pub fn t(step: Option<&str>, from: &str, to: &str) -> (Option<String>, String, String) {
    (step.map(str::to_string), from.to_string(), to.to_string())
}

/// Poll `check` every 50 ms until it yields a value or `deadline` passes (then panic with `what`).
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
