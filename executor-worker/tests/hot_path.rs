//! The worker's hot path, made cheap without changing what is written:
//! - group commit of pure-step checkpoints (`executor_worker::checkpoints`): many runs' steps
//!   in one transaction, each written exactly as the one-step-at-a-time path would write it,
//!   and the lease still fencing each run on its own;
//! - run ends batched the same way (`storage::finish_runs`), and a run's last pure step
//!   committed with its end;
//! - compiled workflow versions cached per worker (`engine::GraphCache`).
//!
//! Real PostgreSQL, a database per test.

mod common;

use common::*;
use executor_worker::engine::JobOutcome;
use executor_worker::metrics::CHECKPOINT_BATCH;
use executor_worker::storage::{self, Fenced, LeaseHolder, PureStep, StepRecord};
use serde_json::json;
use shared_models::db::blocking;
use shared_models::queue::RunJob;
use std::time::Duration;
use thygon_testkit::fixtures;

/// Make `run_id` RUNNING under `owner`'s live lease.
async fn hold(pool: &shared_models::db::PgPool, run_id: &str, owner: &str) {
    mark_held(pool, run_id, owner, chrono::Duration::minutes(1)).await;
}

fn record(run_id: &str, name: &str, position: i32) -> StepRecord {
    StepRecord {
        run_id: run_id.to_string(),
        name: name.to_string(),
        position,
        step_type: "transform",
    }
}

#[tokio::test]
async fn concurrent_runs_share_commits_and_each_step_is_recorded_as_on_its_own() {
    let db = test_db().await;
    let steps: Vec<_> = (0..5)
        .map(|i| {
            let value = if i == 0 {
                json!({ "n": "{{ variables.n }}" })
            } else {
                json!({ "n": format!("{{{{ steps.s{}.output.n + 1 }}}}", i - 1) })
            };
            json!({ "name": format!("s{i}"), "type": "transform", "value": value })
        })
        .collect();
    let (workflow_id, first) = workflow_with_run(
        &db.pool,
        "chain",
        json!({ "steps": steps }),
        json!({ "n": 0 }),
    )
    .await;
    let mut run_ids = vec![first];
    run_ids.extend(insert_runs(&db.pool, &workflow_id, 39, |i| json!({ "n": i + 1 })).await);
    let engine = engine(&db.pool, registry(&[]), Duration::from_secs(5));
    let (count_before, sum_before) = (
        CHECKPOINT_BATCH.get_sample_count(),
        CHECKPOINT_BATCH.get_sample_sum(),
    );

    let jobs: Vec<RunJob> = run_ids
        .iter()
        .map(|id| RunJob::new(id, ORG, None))
        .collect();
    let outcomes = futures_util::future::join_all(jobs.iter().map(|j| engine.process(j))).await;

    assert!(
        outcomes.iter().all(|o| *o == JobOutcome::Done),
        "{outcomes:?}"
    );
    let (batches, written) = (
        CHECKPOINT_BATCH.get_sample_count() - count_before,
        CHECKPOINT_BATCH.get_sample_sum() - sum_before,
    );
    // This file's other tests may add to the process-wide histogram meanwhile, never less.
    assert!(written >= 200.0, "{written} checkpoints written");
    assert!(
        (batches as f64) < written / 2.0,
        "40 concurrent runs: {written} steps in {batches} transactions"
    );
    for (i, run_id) in run_ids.iter().enumerate() {
        let run = get_run(&db.pool, run_id).await;
        assert_eq!(run.status, "COMPLETED", "run {run_id}");
        assert_eq!(run.output, Some(json!({ "s4": { "n": i + 4 } })));
        let steps = get_steps(&db.pool, run_id).await;
        assert_eq!(steps.len(), 5);
        let events = get_events(&db.pool, run_id).await;
        for (k, step) in steps.iter().enumerate() {
            assert_eq!(step.status, "COMPLETED");
            assert_eq!(step.attempt, 1);
            assert_eq!(step.output, Some(json!({ "n": i + k })));
            assert!(step.started_at.is_some() && step.started_at == step.completed_at);
            assert_eq!(step.error, None);
            let name = step.name.as_str();
            assert_eq!(
                transitions_of(&events, Some(name)),
                vec![ft("PENDING", "RUNNING"), ft("RUNNING", "COMPLETED")]
            );
            assert_eq!(
                logs_of(&events, Some(name)),
                vec![
                    (
                        "INFO".to_string(),
                        "transform step started (attempt 1)".to_string()
                    ),
                    ("INFO".to_string(), "step completed".to_string()),
                ]
            );
        }
        // Each step's events are in order, after the previous step's.
        let order: Vec<String> = events
            .iter()
            .filter_map(|e| e.step.clone())
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c[0].clone())
            .collect();
        assert_eq!(order, vec!["s0", "s1", "s2", "s3", "s4"]);
    }
}

#[tokio::test]
async fn one_batch_fences_each_run_on_its_own_and_resumes_cut_off_attempts() {
    let db = test_db().await;
    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": 1 },
        { "name": "b", "type": "transform", "value": 2 },
    ] });
    let (workflow_id, mine) = workflow_with_run(&db.pool, "pair", definition, json!({})).await;
    let others = insert_runs(&db.pool, &workflow_id, 2, |_| json!({})).await;
    let (also_mine, theirs) = (others[0].clone(), others[1].clone());
    let me = LeaseHolder {
        worker_id: "worker-me".into(),
        // Longer than `hold` gives, so the extension shows.
        lease: Duration::from_secs(300),
    };
    hold(&db.pool, &mine, "worker-me").await;
    hold(&db.pool, &also_mine, "worker-me").await;
    hold(&db.pool, &theirs, "worker-other").await;
    // `also_mine`'s step `a` was cut off during its first attempt.
    insert_step_run(&db.pool, step_row(&also_mine, "a", 0, "RUNNING", 1, None)).await;
    let before = get_run(&db.pool, &mine).await;
    // What the claims wrote; the batch's writes come after.
    let theirs_claimed = get_events(&db.pool, &theirs).await.len();

    let batch = vec![
        PureStep {
            record: record(&mine, "a", 0),
            output: json!(1),
            first: false,
        },
        PureStep {
            record: record(&theirs, "a", 0),
            output: json!(1),
            first: false,
        },
        PureStep {
            record: record(&also_mine, "a", 0),
            output: json!(1),
            first: false,
        },
        PureStep {
            record: record(&mine, "b", 1),
            output: json!(2),
            first: false,
        },
    ];
    let now = shared_models::time::now();
    let fenced = blocking(&db.pool, move |conn| {
        storage::checkpoint_pure_steps(conn, &batch, &me, now)
    })
    .await
    .expect("the batch commits");

    assert_eq!(
        fenced,
        vec![
            Fenced::Written,
            Fenced::LeaseLost,
            Fenced::Written,
            Fenced::Written
        ]
    );
    // Another worker's run: nothing written, its lease untouched.
    assert!(get_steps(&db.pool, &theirs).await.is_empty());
    assert_eq!(get_events(&db.pool, &theirs).await.len(), theirs_claimed);
    assert_eq!(
        get_run(&db.pool, &theirs).await.lease_owner.as_deref(),
        Some("worker-other")
    );
    // Mine: both steps, and the lease extended.
    let after = get_run(&db.pool, &mine).await;
    assert!(after.lease_expires_at > before.lease_expires_at);
    let steps = get_steps(&db.pool, &mine).await;
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str(), s.output.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("a", "COMPLETED", Some(json!(1))),
            ("b", "COMPLETED", Some(json!(2)))
        ]
    );
    // The cut-off attempt: attempt 2, RUNNING -> RUNNING -> COMPLETED, with the warning.
    let step = find_step(&get_steps(&db.pool, &also_mine).await, "a").clone();
    assert_eq!((step.status.as_str(), step.attempt), ("COMPLETED", 2));
    let events = get_events(&db.pool, &also_mine).await;
    assert_eq!(
        transitions_of(&events, Some("a")),
        vec![ft("RUNNING", "RUNNING"), ft("RUNNING", "COMPLETED")]
    );
    assert_eq!(
        logs_of(&events, Some("a")),
        vec![
            (
                "WARN".to_string(),
                "attempt 1 was cut off before it finished; trying again".to_string()
            ),
            (
                "INFO".to_string(),
                "transform step started (attempt 2)".to_string()
            ),
            ("INFO".to_string(), "step completed".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_workflow_version_is_read_and_compiled_once_per_worker() {
    let db = test_db().await;
    let definition = json!({ "steps": [{ "name": "a", "type": "transform", "value": 7 }] });
    let (workflow_id, first) = workflow_with_run(&db.pool, "once", definition, json!({})).await;
    let more = insert_runs(&db.pool, &workflow_id, 2, |_| json!({})).await;
    let cached = engine(&db.pool, registry(&[]), Duration::from_secs(5));
    assert!(cached.graphs.is_empty());
    let done = cached.process(&RunJob::new(&first, ORG, None)).await;
    assert_eq!(done, JobOutcome::Done);
    assert_eq!(cached.graphs.len(), 1);

    // Proof that the second run does not read the stored definition again: break it.
    let id = workflow_id.clone();
    blocking(&db.pool, move |conn| {
        fixtures::corrupt_stored_definition(conn, ORG, &id, json!({ "steps": 1 }));
        Ok(())
    })
    .await
    .expect("break the stored definition");
    let done = cached.process(&RunJob::new(&more[0], ORG, None)).await;
    assert_eq!(done, JobOutcome::Done);
    assert_eq!(get_run(&db.pool, &more[0]).await.status, "COMPLETED");
    assert_eq!(cached.graphs.len(), 1);

    // A worker without it in its cache reads the (now broken) definition and fails the run.
    let fresh = engine(&db.pool, registry(&[]), Duration::from_secs(5));
    let done = fresh.process(&RunJob::new(&more[1], ORG, None)).await;
    assert_eq!(done, JobOutcome::Done);
    let run = get_run(&db.pool, &more[1]).await;
    assert_eq!(run.status, "FAILED", "{run:?}");
    let error = run.error.unwrap_or_default();
    assert!(error.starts_with("stored definition is invalid"), "{error}");
    assert!(fresh.graphs.is_empty());
}

#[tokio::test]
async fn run_ends_are_batched_each_fenced_by_its_own_lease() {
    use executor_worker::storage::RunFinish;
    use shared_models::status::RunStatus;
    let db = test_db().await;
    let definition = json!({ "steps": [{ "name": "a", "type": "transform", "value": 1 }] });
    let (workflow_id, done) = workflow_with_run(&db.pool, "ends", definition, json!({})).await;
    let others = insert_runs(&db.pool, &workflow_id, 2, |_| json!({})).await;
    let (failed, theirs) = (others[0].clone(), others[1].clone());
    for (run, owner) in [
        (&done, "worker-me"),
        (&failed, "worker-me"),
        (&theirs, "worker-other"),
    ] {
        hold(&db.pool, run, owner).await;
    }
    let me = LeaseHolder {
        worker_id: "worker-me".into(),
        lease: Duration::from_secs(30),
    };
    let end = |run_id: &str, status, output, error: Option<&str>| RunFinish {
        run_id: run_id.to_string(),
        status,
        output,
        error: error.map(str::to_string),
    };
    let ends = vec![
        end(&done, RunStatus::Completed, Some(json!({ "a": 1 })), None),
        end(&theirs, RunStatus::Completed, Some(json!({ "a": 1 })), None),
        end(
            &failed,
            RunStatus::Failed,
            None,
            Some("step 'a' failed: boom"),
        ),
    ];
    // What the claims wrote; the batch's writes come after.
    let claimed = |events: Vec<shared_models::models::RunEventRow>| events.len();
    let done_claimed = claimed(get_events(&db.pool, &done).await);
    let failed_claimed = claimed(get_events(&db.pool, &failed).await);
    let theirs_claimed = claimed(get_events(&db.pool, &theirs).await);
    let now = shared_models::time::now();
    let fenced = blocking(&db.pool, move |conn| {
        storage::finish_runs(conn, &ends, &me, now)
    })
    .await
    .expect("the batch commits");

    assert_eq!(
        fenced,
        vec![Fenced::Written, Fenced::LeaseLost, Fenced::Written]
    );
    let run = get_run(&db.pool, &done).await;
    assert_eq!(
        (run.status.as_str(), run.output, run.error, run.lease_owner),
        ("COMPLETED", Some(json!({ "a": 1 })), None, None)
    );
    assert!(run.completed_at.is_some() && run.lease_expires_at.is_none());
    let events = get_events(&db.pool, &done).await[done_claimed..].to_vec();
    // In the stream's order: the transition, then the last line (as finish_run writes them).
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["transition", "log"]);
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("RUNNING", "COMPLETED")]
    );
    assert_eq!(
        logs_of(&events, None),
        vec![("INFO".to_string(), "run completed".to_string())]
    );
    let run = get_run(&db.pool, &failed).await;
    assert_eq!(
        (run.status.as_str(), run.output, run.error.as_deref()),
        ("FAILED", None, Some("step 'a' failed: boom"))
    );
    assert_eq!(
        logs_of(&get_events(&db.pool, &failed).await[failed_claimed..], None),
        vec![(
            "ERROR".to_string(),
            "run failed: step 'a' failed: boom".to_string()
        )]
    );
    // Another worker's run: untouched.
    let run = get_run(&db.pool, &theirs).await;
    assert_eq!(
        (run.status.as_str(), run.lease_owner.as_deref()),
        ("RUNNING", Some("worker-other"))
    );
    assert_eq!(get_events(&db.pool, &theirs).await.len(), theirs_claimed);
}

/// The id of the transaction that wrote the row `sql` selects (its `xmin`).
async fn writer_of(pool: &shared_models::db::PgPool, sql: &'static str, run_id: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct Xmin {
        #[diesel(sql_type = diesel::sql_types::Text)]
        xmin: String,
    }
    let id = run_id.to_string();
    blocking(pool, move |conn| {
        use diesel::RunQueryDsl;
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(id)
            .get_result::<Xmin>(conn)
    })
    .await
    .expect("xmin")
    .xmin
}

#[tokio::test]
async fn a_runs_last_pure_step_and_its_end_are_one_commit() {
    let db = test_db().await;
    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": { "n": 1 } },
        { "name": "b", "type": "transform", "value": { "n": "{{ steps.a.output.n + 1 }}" },
          "dependsOn": ["a"] },
    ]});
    let (_, run_id) = workflow_with_run(&db.pool, "last", definition, json!({})).await;
    let engine = engine(&db.pool, registry(&[]), Duration::from_secs(5));

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "b": { "n": 2 } })));
    assert!(run.lease_owner.is_none() && run.completed_at.is_some());
    let step = |name: &'static str| {
        let sql = match name {
            "a" => "SELECT xmin::text AS xmin FROM step_runs WHERE run_id = $1 AND name = 'a'",
            _ => "SELECT xmin::text AS xmin FROM step_runs WHERE run_id = $1 AND name = 'b'",
        };
        writer_of(&db.pool, sql, &run_id)
    };
    let (a, b) = (step("a").await, step("b").await);
    let ended = writer_of(
        &db.pool,
        "SELECT xmin::text AS xmin FROM runs WHERE id = $1",
        &run_id,
    )
    .await;
    assert_eq!(b, ended, "the last step and the run's end: one transaction");
    assert_ne!(a, ended, "an earlier step commits before the next starts");
    // The stream reads as before: the last step's transitions, then the run's.
    let events = get_events(&db.pool, &run_id).await;
    let tail: Vec<(Option<String>, String, String)> = transitions(&events)
        .into_iter()
        .rev()
        .take(3)
        .rev()
        .collect();
    assert_eq!(
        tail,
        vec![
            t(Some("b"), "PENDING", "RUNNING"),
            t(Some("b"), "RUNNING", "COMPLETED"),
            t(None, "RUNNING", "COMPLETED"),
        ]
    );
    assert_eq!(
        logs_of(&events, None).last(),
        Some(&("INFO".to_string(), "run completed".to_string()))
    );
}

#[tokio::test]
async fn a_last_step_whose_lease_is_lost_writes_neither_the_step_nor_the_end() {
    use executor_worker::checkpoints::Checkpointer;
    use executor_worker::storage::RunFinish;
    use shared_models::status::RunStatus;
    let db = test_db().await;
    let definition = json!({ "steps": [{ "name": "a", "type": "transform", "value": 1 }] });
    let (_, run_id) = workflow_with_run(&db.pool, "lost", definition, json!({})).await;
    hold(&db.pool, &run_id, "worker-other").await;
    let me = LeaseHolder {
        worker_id: "worker-me".into(),
        lease: Duration::from_secs(30),
    };
    let checkpoints = Checkpointer::start(db.pool.clone(), me);
    let answer = checkpoints
        .checkpoint_and_finish(
            PureStep {
                record: record(&run_id, "a", 0),
                output: json!(1),
                first: true,
            },
            RunFinish {
                run_id: run_id.clone(),
                status: RunStatus::Completed,
                output: Some(json!({ "a": 1 })),
                error: None,
            },
        )
        .await
        .expect("the batch commits");

    assert_eq!(answer, Fenced::LeaseLost);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(
        (run.status.as_str(), run.lease_owner.as_deref()),
        ("RUNNING", Some("worker-other"))
    );
    assert!(get_steps(&db.pool, &run_id).await.is_empty());
}
