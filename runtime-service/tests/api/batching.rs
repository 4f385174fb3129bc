//! Group commit of triggers (runtime_service::batcher): concurrent triggers are written in
//! shared transactions, and each still gets exactly the single path's answer, its one run,
//! its one outbox row marked sent by the time it is answered, and its one job message.

use crate::helpers::{assert_error, broker, spawn_app, TestApp, ORG};
use diesel::prelude::*;
use lapin::options::BasicGetOptions;
use runtime_service::batcher::{BatchStats, Batcher};
use runtime_service::publisher::{AmqpPublisher, JobPublisher};
use runtime_service::storage::{CreateOutcome, PlainTrigger};
use serde_json::{json, Map, Value};
use shared_models::db::{PgPool, StorageError};
use shared_models::ids::WorkflowId;
use shared_models::queue::{QueueNames, RunJob};
use shared_models::schema::{outbox, runs, workflows};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Take every message from this test's job queue: the run id of each job, in order.
async fn drain_jobs(app: &TestApp) -> Vec<String> {
    let conn = shared_models::queue::connect(&broker(), "test-drain")
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let queue = QueueNames::new(&app.prefix).jobs;
    let mut run_ids = Vec::new();
    while let Some(message) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let job = RunJob::decode(&message.delivery.data).expect("a job message");
        run_ids.push(job.run_id);
    }
    let _ = conn.close(200, "done".into()).await;
    run_ids
}

/// `(outbox rows, of them sent)` of a run.
fn outbox_of(pool: &PgPool, run_id: &str) -> (usize, usize) {
    let rows: Vec<Option<chrono::DateTime<chrono::Utc>>> = outbox::table
        .filter(outbox::run_id.eq(run_id))
        .select(outbox::sent_at)
        .load(&mut pool.get().expect("conn"))
        .expect("outbox");
    (rows.len(), rows.iter().filter(|s| s.is_some()).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_triggers_each_get_their_own_answer_run_outbox_row_and_job() {
    let app = Arc::new(spawn_app().await);
    app.workflow("batch_a", true);
    app.workflow("batch_b", true);
    app.workflow("batch_off", false);
    const N: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..N {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (workflow, direct) = match i % 10 {
                0..=3 => ("wf_batch_a", i % 2 == 0),
                4..=7 => ("wf_batch_b", i % 2 == 0),
                8 => ("wf_batch_missing", false),
                _ => ("wf_batch_off", true),
            };
            let variables = json!({"i": i});
            let reply = if direct {
                app.post(
                    "/workflows/runs",
                    json!({"workflowId": workflow, "variables": variables}),
                )
                .await
            } else {
                app.post(
                    &format!("/workflows/{workflow}/trigger"),
                    json!({ "variables": variables }),
                )
                .await
            };
            // What the database holds the moment the answer arrived.
            let run_id = reply.body["data"]["id"].as_str().map(str::to_string);
            let outbox = match &run_id {
                Some(id) => {
                    let (pool, id) = (app.db.pool.clone(), id.clone());
                    tokio::task::spawn_blocking(move || outbox_of(&pool, &id))
                        .await
                        .expect("outbox read")
                }
                None => (0, 0),
            };
            (i, workflow, reply, outbox)
        }));
    }
    let mut created = BTreeSet::new();
    for task in tasks {
        let (i, workflow, reply, outbox) = task.await.expect("trigger task");
        let what = format!("trigger {i} of {workflow}");
        match workflow {
            "wf_batch_missing" => assert_error(&reply, 404, "NOT_FOUND", &what),
            "wf_batch_off" => assert_error(&reply, 409, "CONFLICT", &what),
            _ => {
                assert_eq!(reply.status, 201, "{what}: {}", reply.body);
                let data = &reply.body["data"];
                assert_eq!(
                    (&data["workflowId"], &data["variables"], &data["status"]),
                    (&json!(workflow), &json!({"i": i}), &json!("PENDING")),
                    "{what}: its own run"
                );
                assert_eq!(outbox, (1, 1), "{what}: one outbox row, sent when answered");
                assert!(created.insert(data["id"].as_str().unwrap().to_string()));
            }
        }
    }
    assert_eq!(created.len(), N * 8 / 10);

    let mut conn = app.conn();
    let run_ids: BTreeSet<String> = runs::table
        .select(runs::id)
        .load::<String>(&mut conn)
        .expect("runs")
        .into_iter()
        .collect();
    assert_eq!(run_ids, created, "exactly the runs answered 201");
    let outbox_runs: Vec<String> = outbox::table
        .select(outbox::run_id)
        .load(&mut conn)
        .expect("outbox");
    assert_eq!(outbox_runs.len(), created.len(), "one outbox row per run");
    assert_eq!(outbox_runs.into_iter().collect::<BTreeSet<_>>(), created);

    let jobs = drain_jobs(&app).await;
    assert_eq!(jobs.len(), created.len(), "one job message per run");
    assert_eq!(jobs.into_iter().collect::<BTreeSet<_>>(), created);
}

fn trigger(org_id: &str, workflow_id: &str, variables: Value) -> PlainTrigger {
    let Value::Object(variables) = variables else {
        panic!("variables are an object")
    };
    PlainTrigger {
        budget: None,
        org_id: org_id.into(),
        workflow_id: WorkflowId::parse(workflow_id).expect("a workflow id"),
        variables,
        request_id: Some(format!("req-{}", thygon_testkit::unique_token())),
        now: shared_models::time::now(),
        max_queued: 0,
    }
}

/// A batcher over the test app's database and queue, and its loop (not running yet).
fn batcher(app: &TestApp, max_batch: usize) -> (Batcher, runtime_service::batcher::BatchLoop) {
    let publisher: Arc<dyn JobPublisher> =
        Arc::new(AmqpPublisher::new(&broker(), QueueNames::new(&app.prefix)));
    Batcher::with_limits(app.db.pool.clone(), publisher, max_batch, 1)
}

type Submitted = tokio::task::JoinHandle<Result<CreateOutcome, StorageError>>;

/// Submit every trigger, and return once all of them wait in the batcher's queue.
async fn submit_all(batcher: &Batcher, triggers: Vec<PlainTrigger>) -> Vec<Submitted> {
    let n = triggers.len();
    let submitted = triggers
        .into_iter()
        .map(|t| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(t).await })
        })
        .collect();
    while batcher.waiting() < n {
        tokio::task::yield_now().await;
    }
    submitted
}

#[tokio::test]
async fn triggers_waiting_together_are_one_batch_and_each_gets_the_single_paths_outcome() {
    let app = spawn_app().await;
    let active = app.workflow("grouped", true);
    let inactive = app.workflow("grouped_off", false);
    let deleted = app.workflow("grouped_deleted", true);
    diesel::update(workflows::table.filter(workflows::id.eq(&deleted)))
        .set(workflows::deleted_at.eq(Some(shared_models::time::now())))
        .execute(&mut app.conn())
        .expect("delete");
    // Another org's workflow of the same name is not this org's.
    let other = "org_batch_other";
    app.key_for(other);
    thygon_testkit::fixtures::insert_workflow(
        &mut app.conn(),
        other,
        "grouped_elsewhere",
        json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
        true,
    );

    let mut triggers = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        triggers.push(trigger(ORG, &active, json!({ "i": i })));
        expected.push("created");
    }
    for (workflow, outcome) in [
        (inactive.as_str(), "inactive"),
        ("wf_grouped_missing", "not found"),
        (deleted.as_str(), "not found"),
        ("wf_grouped_elsewhere", "not found"),
    ] {
        triggers.push(trigger(ORG, workflow, json!({})));
        expected.push(outcome);
    }
    triggers.push(trigger(other, &active, json!({})));
    expected.push("not found");
    triggers.push(trigger(other, "wf_grouped_elsewhere", json!({"o": 1})));
    expected.push("created");
    let sent: Vec<PlainTrigger> = triggers.clone();

    let (batcher, batch_loop) = batcher(&app, 128);
    let submitted = submit_all(&batcher, triggers).await;
    assert_eq!(batcher.stats(), BatchStats::default(), "nothing taken yet");
    tokio::spawn(batch_loop.run());

    let mut created = BTreeMap::new();
    for ((task, expected), trigger) in submitted.into_iter().zip(expected).zip(sent) {
        let outcome = task.await.expect("submit task").expect("no storage error");
        match (expected, outcome) {
            (
                "created",
                CreateOutcome::Created {
                    run,
                    job,
                    outbox_id,
                },
            ) => {
                assert_eq!(
                    (
                        run.org_id.as_str(),
                        run.workflow_id.as_str(),
                        &run.variables,
                    ),
                    (
                        trigger.org_id.as_str(),
                        trigger.workflow_id.as_str(),
                        &Value::Object(trigger.variables.clone())
                    )
                );
                assert_eq!(
                    (run.created_at, &run.request_id, run.workflow_version),
                    (trigger.now, &trigger.request_id, 1)
                );
                assert_eq!(
                    job,
                    RunJob::new(&run.id, &run.org_id, run.request_id.clone())
                );
                assert_eq!(
                    outbox_of(&app.db.pool, &run.id),
                    (1, 1),
                    "sent when answered"
                );
                created.insert(run.id.clone(), outbox_id);
            }
            ("inactive", CreateOutcome::WorkflowInactive) => {}
            ("not found", CreateOutcome::WorkflowNotFound) => {}
            (expected, _) => panic!(
                "{} of {}: expected {expected}",
                trigger.workflow_id.as_str(),
                trigger.org_id
            ),
        }
    }
    assert_eq!(created.len(), 41);
    assert_eq!(
        batcher.stats(),
        BatchStats {
            batches: 1,
            triggers: 46,
            largest: 46
        },
        "everything waiting went in one batch"
    );
    let jobs = drain_jobs(&app).await;
    assert_eq!(jobs.len(), 41);
    assert_eq!(
        jobs.into_iter().collect::<BTreeSet<_>>(),
        created.keys().cloned().collect()
    );
}

#[tokio::test]
async fn a_batch_takes_at_most_its_limit_and_the_rest_follow() {
    let app = spawn_app().await;
    let wf = app.workflow("limited", true);
    let (batcher, batch_loop) = batcher(&app, 8);
    let triggers = (0..20)
        .map(|i| trigger(ORG, &wf, json!({ "i": i })))
        .collect();
    let submitted = submit_all(&batcher, triggers).await;
    tokio::spawn(batch_loop.run());
    for task in submitted {
        let outcome = task.await.expect("submit task").expect("written");
        assert!(matches!(outcome, CreateOutcome::Created { .. }));
    }
    assert_eq!(
        batcher.stats(),
        BatchStats {
            batches: 3,
            triggers: 20,
            largest: 8
        }
    );
    assert_eq!(app.queued().await, 20);
}

#[tokio::test]
async fn a_trigger_that_fails_its_batch_fails_alone() {
    let app = spawn_app().await;
    let wf = app.workflow("poisoned", true);
    let mut triggers: Vec<PlainTrigger> = (0..5)
        .map(|i| trigger(ORG, &wf, json!({ "i": i })))
        .collect();
    // PostgreSQL refuses U+0000 in JSONB, so this run's INSERT fails the whole statement
    // (the HTTP edge refuses such a body earlier; here it stands for any failing row).
    let mut poison = Map::new();
    poison.insert("bad".into(), json!("nul\u{0}"));
    triggers.insert(2, trigger(ORG, &wf, Value::Object(poison)));
    let (batcher, batch_loop) = batcher(&app, 128);
    let submitted = submit_all(&batcher, triggers).await;
    tokio::spawn(batch_loop.run());
    let mut created = 0;
    for (i, task) in submitted.into_iter().enumerate() {
        match task.await.expect("submit task") {
            Ok(CreateOutcome::Created { run, .. }) if i != 2 => {
                assert_eq!(outbox_of(&app.db.pool, &run.id), (1, 1));
                created += 1;
            }
            Err(StorageError::Query(_)) if i == 2 => {}
            other => panic!("trigger {i}: {:?}", other.map(|_| "an outcome")),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(
        batcher.stats().batches,
        1,
        "one batch, written again one by one"
    );
    let runs: i64 = runs::table
        .count()
        .get_result(&mut app.conn())
        .expect("count");
    assert_eq!(runs, 5);
    assert_eq!(app.queued().await, 5);
}

#[tokio::test]
async fn every_trigger_of_a_batch_gets_the_outage_when_the_database_is_away() {
    let pool = shared_models::db::pool("postgres://thygon:thygon@127.0.0.1:1/nowhere", 1);
    let publisher: Arc<dyn JobPublisher> = Arc::new(AmqpPublisher::new(
        &broker(),
        QueueNames::new(&thygon_testkit::unique_queue_prefix()),
    ));
    let (batcher, batch_loop) = Batcher::with_limits(pool, publisher, 128, 1);
    let triggers = (0..6)
        .map(|i| trigger(ORG, "wf_anything", json!({ "i": i })))
        .collect();
    let submitted = submit_all(&batcher, triggers).await;
    tokio::spawn(batch_loop.run());
    for task in submitted {
        let outcome = task.await.expect("submit task");
        assert!(
            matches!(outcome, Err(StorageError::Unavailable(_))),
            "a 503 for each"
        );
    }
    assert_eq!(batcher.stats().batches, 1);
}
