//! Helpers shared by the worker's integration tests: each test builds its own database
//! (and, for the consumer, its own queue names), seeds rows another service would have
//! written, and reads the worker's writes back through diesel.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use executor_worker::agents::AgentRegistry;
use executor_worker::config::DEFAULT_MAX_RUNNING_PER_ORG;
use executor_worker::engine::Engine;
use executor_worker::outbound::{Outbound, OutboundSettings};
use executor_worker::storage::LeaseHolder;
use serde_json::{json, Value};
use shared_models::db::{blocking, PgPool};
use shared_models::models::{OutboxRow, RunEventRow, RunRow, StepRunRow};
use shared_models::queue::RunJob;
use shared_models::schema::{outbox, run_events, runs, step_runs};
use std::future::Future;
use std::time::{Duration, Instant};
use thygon_testkit::{fixtures, unique_token, TestDb};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod setup;
#[allow(unused_imports)] // Only the graph tests use the setup.
pub use setup::*;

pub const ORG: &str = "org_test";

/// A fresh, migrated database; created off the async executor because diesel blocks.
pub async fn test_db() -> TestDb {
    tokio::task::spawn_blocking(TestDb::create)
        .await
        .expect("create the test database")
}

/// An engine writing to `pool` under a worker id of its own, with the default per-org
/// running cap ([`engine_with_cap`] for another).
pub fn engine(pool: &PgPool, agents: AgentRegistry, agent_timeout: Duration) -> Engine {
    engine_with_cap(pool, agents, agent_timeout, DEFAULT_MAX_RUNNING_PER_ORG)
}

/// [`engine`] with `MAX_RUNNING_PER_ORG` = `cap`.
pub fn engine_with_cap(
    pool: &PgPool,
    agents: AgentRegistry,
    agent_timeout: Duration,
    cap: u32,
) -> Engine {
    engine_with(
        pool,
        agents,
        agent_timeout,
        cap,
        OutboundSettings::default(),
    )
}

/// [`engine`] whose `http` steps may reach what `allow` lists (`EGRESS_ALLOW`): the
/// wiremock servers of these tests listen on 127.0.0.1, which is refused by default.
pub fn engine_allowing(
    pool: &PgPool,
    agents: AgentRegistry,
    agent_timeout: Duration,
    allow: &str,
) -> Engine {
    let outbound = OutboundSettings::allowing(allow).expect("a valid EGRESS_ALLOW");
    engine_with(
        pool,
        agents,
        agent_timeout,
        DEFAULT_MAX_RUNNING_PER_ORG,
        outbound,
    )
}

/// An engine with every setting given.
pub fn engine_with(
    pool: &PgPool,
    agents: AgentRegistry,
    agent_timeout: Duration,
    cap: u32,
    outbound: OutboundSettings,
) -> Engine {
    let me = LeaseHolder {
        worker_id: format!("test-worker-{}", unique_token()),
        lease: Duration::from_secs(30),
    };
    Engine::new(
        pool.clone(),
        agents,
        Outbound::new(outbound).expect("the HTTP clients"),
        me,
        agent_timeout,
        cap,
    )
}

/// The `EGRESS_ALLOW` entry of a wiremock server: its address and port only.
pub fn allow_server(server: &MockServer) -> String {
    server.address().to_string()
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
    mark_held(pool, run_id, owner, -chrono::Duration::minutes(1)).await;
}

/// Make the PENDING (or WAITING) run RUNNING under `owner`'s lease through the worker's own
/// claim (`storage::claim_run`), then move the lease's end to `lease_left` from now
/// (negative: already expired). A lease that ran out is a state only a crash leaves (its
/// worker died without renewing it), so that one field is moved by hand ([`expire_lease`]).
pub async fn mark_held(pool: &PgPool, run_id: &str, owner: &str, lease_left: chrono::Duration) {
    let (id, worker_id) = (run_id.to_string(), owner.to_string());
    let claim = blocking(pool, move |conn| {
        let holder = LeaseHolder {
            worker_id,
            lease: Duration::from_secs(60),
        };
        let now = shared_models::time::now();
        executor_worker::storage::claim_run(conn, &id, ORG, &holder, 0, now, |_| true)
    })
    .await
    .expect("claim the run");
    assert!(
        matches!(claim, executor_worker::storage::Claim::Claimed(_)),
        "{owner} could not claim run {run_id}: {claim:?}"
    );
    set_lease_end(pool, run_id, shared_models::time::now() + lease_left).await;
}

/// The run's holder died: its lease ends a minute ago (a state only a crash leaves; the
/// worker's own writes only ever extend a lease or clear it).
pub async fn expire_lease(pool: &PgPool, run_id: &str) {
    set_lease_end(
        pool,
        run_id,
        shared_models::time::now() - chrono::Duration::minutes(1),
    )
    .await;
}

async fn set_lease_end(pool: &PgPool, run_id: &str, at: DateTime<Utc>) {
    let run_id = run_id.to_string();
    let n = blocking(pool, move |conn| {
        diesel::update(runs::table.find(&run_id))
            .set(runs::lease_expires_at.eq(at))
            .execute(conn)
    })
    .await
    .expect("move the lease's end");
    assert_eq!(n, 1, "the run exists");
}

/// A step_runs row as an earlier worker left it: a checkpoint, or a step cut off by a crash.
/// The worker's step writes are its engine's (crate-private, under the run's lease); these
/// rows stand for what an earlier worker's would have left.
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
    let status = shared_models::status::StepStatus::parse(status).expect("a step status");
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

/// The job the runtime (or the outbox relay) would queue for a run of [`ORG`].
pub fn run_job(run_id: &str) -> RunJob {
    RunJob::new(run_id, ORG, None)
}

/// A workflow `wf_<name>` with `definition` and no run (a subworkflow's child, say).
pub async fn insert_workflow(pool: &PgPool, name: &str, definition: Value) -> String {
    let name = name.to_string();
    blocking(pool, move |conn| {
        Ok(fixtures::insert_workflow(
            conn, ORG, &name, definition, true,
        ))
    })
    .await
    .expect("insert the workflow")
}

/// The row of step `name` among `steps` (panics when the step has none).
pub fn find_step<'a>(steps: &'a [StepRunRow], name: &str) -> &'a StepRunRow {
    steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("step '{name}' has no step_runs row: {steps:?}"))
}

/// The transitions of one step (`Some(name)`) or of the run itself (`None`), as `(from, to)`.
pub fn transitions_of(events: &[RunEventRow], step: Option<&str>) -> Vec<(String, String)> {
    transitions(events)
        .into_iter()
        .filter(|(s, _, _)| s.as_deref() == step)
        .map(|(_, from, to)| (from, to))
        .collect()
}

/// `(from, to)` for an expected transition.
pub fn ft(from: &str, to: &str) -> (String, String) {
    (from.to_string(), to.to_string())
}

/// The log lines of one step (`Some(name)`) or of the run itself (`None`), as `(level, message)`.
pub fn logs_of(events: &[RunEventRow], step: Option<&str>) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.kind == "log" && e.step.as_deref() == step)
        .map(|e| {
            (
                e.level.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Every outbox row (jobs waiting to be published), oldest first.
pub async fn get_outbox(pool: &PgPool) -> Vec<OutboxRow> {
    blocking(pool, move |conn| {
        outbox::table
            .order(outbox::id)
            .select(OutboxRow::as_select())
            .load(conn)
    })
    .await
    .expect("read the outbox")
}

/// The child runs that steps of `parent_run_id` started.
pub async fn child_runs(pool: &PgPool, parent_run_id: &str) -> Vec<RunRow> {
    let parent_run_id = parent_run_id.to_string();
    blocking(pool, move |conn| {
        runs::table
            .filter(runs::parent_run_id.eq(&parent_run_id))
            .order(runs::id)
            .select(RunRow::as_select())
            .load(conn)
    })
    .await
    .expect("read the child runs")
}

/// A decision on a WAITING approval step of a run of [`ORG`], as the approve endpoint makes
/// it: the run lifecycle's own transition (`shared_models::runs::decide_approval`). Returns
/// the outbox row id of the job it queued to resume the run (a parked run gets one).
pub async fn decide_approval(
    pool: &PgPool,
    run_id: &str,
    step: &str,
    approved: bool,
    comment: &str,
) -> Option<i64> {
    use shared_models::runs::{Approval, Decide};
    let (run_id, step) = (run_id.to_string(), step.to_string());
    let approval = Approval {
        approved,
        comment: Some(comment.to_string()),
    };
    let now = shared_models::time::now();
    let decided = blocking(pool, move |conn| {
        conn.transaction(|conn| {
            shared_models::runs::decide_approval(conn, ORG, &run_id, &step, &approval, None, now)
        })
    })
    .await
    .expect("record the approval decision");
    match decided {
        Decide::Decided { job } => job.map(|(id, _)| id),
        Decide::NotWaiting(why) => panic!("the approval step takes no decision: {why}"),
        Decide::RunNotFound | Decide::StepNotFound => panic!("no such run or step"),
    }
}

/// Cancel a run of [`ORG`], as the cancel endpoint does: the run lifecycle's own transition
/// (`shared_models::runs::cancel`).
pub async fn cancel_run(pool: &PgPool, run_id: &str) {
    let run_id = run_id.to_string();
    let now = shared_models::time::now();
    let cancelled = blocking(pool, move |conn| {
        conn.transaction(|conn| shared_models::runs::cancel(conn, ORG, &run_id, None, now))
    })
    .await
    .expect("cancel the run");
    assert!(
        matches!(cancelled, shared_models::runs::Cancel::Cancelled { .. }),
        "the run was not cancelled"
    );
}

/// Wait (polling the clock, with a deadline) until `at` is in the past.
pub async fn wait_until_past(at: DateTime<Utc>) {
    wait_for(
        "the wake-up time to pass",
        Duration::from_secs(10),
        || async move { (shared_models::time::now() > at).then_some(()) },
    )
    .await
}

/// An HTTP agent's answer completing its step with `value`.
pub fn agent_output(value: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "output": value }))
}

/// `POST <at>` answers `response`, and must be called exactly `times` times.
pub async fn mount_post(server: &MockServer, at: &str, response: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(response)
        .expect(times)
        .named(at)
        .mount(server)
        .await;
}

/// Read an HTTP request's head (up to the blank line) from `socket`, for the raw loopback
/// servers of the tests; false if the client went away first.
pub async fn read_request_head(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    true
}
