//! Per-org quotas the worker enforces when a `subworkflow` step starts a child run:
//! `maxDescendantsPerRun` (a run tree, counted from its root) and `maxQueuedRuns`. Over
//! either, the step FAILS naming the quota, so a self-recursive tree ends.
//! Real PostgreSQL, a database per test; jobs are taken from the outbox as the relay would.

mod common;

use common::*;
use diesel::prelude::*;
use executor_worker::engine::{Engine, JobOutcome};
use serde_json::json;
use shared_models::db::{blocking, PgPool};
use shared_models::limits::OrgLimitOverrides;
use shared_models::schema::{outbox, runs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_testkit::fixtures;

const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn set_limits(pool: &PgPool, overrides: OrgLimitOverrides) {
    blocking(pool, move |conn| {
        fixtures::set_limits(conn, ORG, &overrides);
        Ok(())
    })
    .await
    .expect("set the org's limits");
}

/// Take every unsent job from the outbox (marking it sent, as the relay does).
async fn take_jobs(pool: &PgPool) -> Vec<String> {
    blocking(pool, |conn| {
        diesel::update(outbox::table.filter(outbox::sent_at.is_null()))
            .set(outbox::sent_at.eq(diesel::dsl::now))
            .returning(outbox::run_id)
            .get_results::<String>(conn)
    })
    .await
    .expect("take the outbox's jobs")
}

/// Run `root` and every job its tree queues, over `engines` at once, until `root` has ended
/// or `deadline` passed; returns how long it took.
async fn drive(pool: &PgPool, engines: &[Arc<Engine>], root: &str, deadline: Duration) -> Duration {
    let started = Instant::now();
    let mut jobs = vec![root.to_string()];
    while started.elapsed() < deadline {
        let tasks: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (engine, job) = (engines[i % engines.len()].clone(), run_job(id));
                tokio::spawn(async move { engine.process(&job).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("the job task");
        }
        let status = get_run(pool, root).await.status;
        if status.is_terminal() {
            return started.elapsed();
        }
        jobs = take_jobs(pool).await;
        jobs.dedup();
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("run {root} did not end within {deadline:?}");
}

async fn count_runs(pool: &PgPool) -> i64 {
    blocking(pool, |conn| {
        runs::table
            .filter(runs::org_id.eq(ORG))
            .count()
            .get_result(conn)
    })
    .await
    .expect("count runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_self_recursive_fan_out_ends_at_max_descendants_per_run() {
    let db = test_db().await;
    set_limits(
        &db.pool,
        OrgLimitOverrides {
            max_descendants_per_run: Some(20),
            ..Default::default()
        },
    )
    .await;
    // Three subworkflow steps at once, each starting this very workflow.
    let step = |name: &str| json!({ "name": name, "type": "subworkflow", "workflowId": "wf_fan", "dependsOn": [] });
    let definition = json!({ "steps": [step("a"), step("b"), step("c")] });
    let (_, root) = workflow_with_run(&db.pool, "fan", definition, json!({})).await;
    // Two workers, so children of one tree are started concurrently.
    let engines: Vec<Arc<Engine>> = (0..2)
        .map(|_| Arc::new(engine(&db.pool, registry(&[]), AGENT_TIMEOUT)))
        .collect();

    let took = drive(&db.pool, &engines, &root, Duration::from_secs(60)).await;

    let ended = get_run(&db.pool, &root).await;
    assert_eq!(ended.status, "FAILED", "{:?}", ended.error);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let total = count_runs(&db.pool).await;
    eprintln!("fan-out: {total} runs, the root FAILED after {took:?}");
    assert!(
        total <= 21,
        "{total} runs: at most the root and 20 descendants"
    );
    assert!(
        total > 3,
        "{total} runs: the tree grew before it was stopped"
    );
    // Every descendant carries the root; some step failed naming the quota.
    let (roots, errors) = blocking(&db.pool, |conn| {
        let roots: Vec<Option<String>> = runs::table
            .filter(runs::parent_run_id.is_not_null())
            .select(runs::root_run_id)
            .load(conn)?;
        let errors: Vec<Option<String>> = shared_models::schema::step_runs::table
            .filter(shared_models::schema::step_runs::status.eq("FAILED"))
            .select(shared_models::schema::step_runs::error)
            .load(conn)?;
        Ok((roots, errors))
    })
    .await
    .expect("the tree");
    assert!(roots.iter().all(|r| r.as_deref() == Some(root.as_str())));
    let named = format!("maxDescendantsPerRun (20) reached: the run tree of {root} has 20 runs");
    assert!(
        errors.iter().flatten().any(|e| e.starts_with(&named)),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_child_run_over_max_queued_runs_fails_its_subworkflow_step() {
    let db = test_db().await;
    set_limits(
        &db.pool,
        OrgLimitOverrides {
            max_queued_runs: Some(2),
            ..Default::default()
        },
    )
    .await;
    insert_workflow(
        &db.pool,
        "leaf",
        json!({ "steps": [{ "name": "t", "type": "transform", "value": 1 }] }),
    )
    .await;
    let definition =
        json!({ "steps": [{ "name": "child", "type": "subworkflow", "workflowId": "wf_leaf" }] });
    let (workflow_id, parent) = workflow_with_run(&db.pool, "parent", definition, json!({})).await;
    // Two more runs of the org wait: the queue is full once the parent is running.
    insert_runs(&db.pool, &workflow_id, 2, |_| json!({})).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);

    assert_eq!(engine.process(&run_job(&parent)).await, JobOutcome::Done);

    let run = get_run(&db.pool, &parent).await;
    assert_eq!(run.status, "FAILED");
    let steps = get_steps(&db.pool, &parent).await;
    let step = find_step(&steps, "child");
    assert_eq!(step.status, "FAILED");
    assert_eq!(
        step.error.as_deref(),
        Some("maxQueuedRuns (2) reached: 2 runs are PENDING or WAITING")
    );
    assert!(child_runs(&db.pool, &parent).await.is_empty(), "no child");
    assert!(get_outbox(&db.pool).await.is_empty(), "no job");
}
