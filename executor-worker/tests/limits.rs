//! Bounded work (issue 13): what a hostile tenant's definition can do fails its own step or
//! run, naming the limit, quickly, and never keeps a run RUNNING or holds up another run.
//! Real PostgreSQL with a database per test; HTTP endpoints on 127.0.0.1 only.

mod common;

use common::*;
use executor_worker::checkpoints::Checkpointer;
use executor_worker::engine::JobOutcome;
use executor_worker::limits::WorkLimits;
use executor_worker::storage::{self, Claim, Fenced, LeaseHolder, PureStep, RunFinish, StepRecord};
use serde_json::{json, Value};
use shared_models::db::{blocking, StorageError};
use shared_models::status::RunStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thygon_testkit::unique_token;

const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

fn transform(name: &str, value: Value) -> Value {
    json!({ "name": name, "type": "transform", "value": value })
}

/// The first step's error (the run's failure names it too).
async fn step_error(pool: &shared_models::db::PgPool, run_id: &str, step: &str) -> String {
    let steps = get_steps(pool, run_id).await;
    find_step(&steps, step).error.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_transform_rendering_a_nul_fails_its_run_at_once() {
    let db = test_db().await;
    let definition = json!({ "steps": [transform("nul", json!("{{ \"\\0\" }}"))] });
    let (_, run_id) = workflow_with_run(&db.pool, "nul", definition, json!({})).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);

    let started = Instant::now();
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let error = step_error(&db.pool, &run_id, "nul").await;
    assert_eq!(
        error,
        "the step's output contains U+0000, which PostgreSQL cannot store"
    );
    assert!(run.error.unwrap_or_default().contains("U+0000"));
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        find_step(&steps, "nul").attempt,
        1,
        "a limit is never retried"
    );
}

#[tokio::test]
async fn a_nul_in_an_error_text_is_replaced_not_refused() {
    let db = test_db().await;
    // An endpoint's answer goes into the step's error (a snippet of it), NUL included.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(500).set_body_bytes(b"a\0b".to_vec()))
        .mount(&server)
        .await;
    let definition = json!({ "steps": [{ "name": "call", "type": "http",
        "request": { "url": format!("{}/nul", server.uri()) } }] });
    let (_, run_id) = workflow_with_run(&db.pool, "nul-error", definition, json!({})).await;
    let engine = engine_allowing(
        &db.pool,
        registry(&[]),
        AGENT_TIMEOUT,
        &allow_server(&server),
    );

    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let error = run.error.unwrap_or_default();
    assert!(
        error.ends_with("answered HTTP 500: a\u{FFFD}b"),
        "{error:?}"
    );
    let logs = logs_of(&get_events(&db.pool, &run_id).await, Some("call"));
    assert!(logs.iter().any(|(_, m)| m.contains('\u{FFFD}')), "{logs:?}");
}

#[tokio::test]
async fn hostile_templates_fail_naming_the_setting_while_another_run_completes() {
    let db = test_db().await;
    let loops =
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
    let huge = "{% set s = 'x' * 1000000 %}{% for i in range(2000) %}{{ s }}{% endfor %}";
    let (_, loops_run) = workflow_with_run(
        &db.pool,
        "loops",
        json!({ "steps": [transform("t", json!(loops))] }),
        json!({}),
    )
    .await;
    let (_, huge_run) = workflow_with_run(
        &db.pool,
        "huge",
        json!({ "steps": [transform("t", json!(huge))] }),
        json!({}),
    )
    .await;
    let (_, calm_run) = workflow_with_run(
        &db.pool,
        "calm",
        json!({ "steps": [transform("t", json!("{{ variables.n + 1 }}"))] }),
        json!({ "n": 1 }),
    )
    .await;
    let mut engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);
    // Only the fuel and the output cap stop them, however slowly a loaded machine renders at
    // the render threads' low priority: the deadline (2 s by default) is not what is tested.
    engine.limits.template_deadline = Duration::from_secs(120);
    let engine = Arc::new(engine);

    let started = Instant::now();
    let hostile: Vec<_> = [&loops_run, &huge_run]
        .into_iter()
        .map(|id| {
            let (engine, job) = (engine.clone(), run_job(id));
            tokio::spawn(async move { engine.process(&job).await })
        })
        .collect();
    // The calm run goes while both hostile ones render.
    assert_eq!(engine.process(&run_job(&calm_run)).await, JobOutcome::Done);
    let calm_done = started.elapsed();
    for task in hostile {
        assert_eq!(task.await.expect("the job task"), JobOutcome::Done);
    }
    let all_done = started.elapsed();

    assert_eq!(get_run(&db.pool, &calm_run).await.status, "COMPLETED");
    // No wall-clock bound: with the deadline out of the way, the fuel and the output cap
    // (named in the errors below) are what stopped the renders, however loaded the machine.
    println!("the calm run took {calm_done:?}; both hostile runs ended after {all_done:?}");
    assert_eq!(get_run(&db.pool, &loops_run).await.status, "FAILED");
    assert_eq!(get_run(&db.pool, &huge_run).await.status, "FAILED");
    assert!(
        step_error(&db.pool, &loops_run, "t")
            .await
            .contains("TEMPLATE_FUEL"),
        "{}",
        step_error(&db.pool, &loops_run, "t").await
    );
    assert!(
        step_error(&db.pool, &huge_run, "t")
            .await
            .contains("TEMPLATE_MAX_OUTPUT_BYTES"),
        "{}",
        step_error(&db.pool, &huge_run, "t").await
    );
}

#[tokio::test]
async fn a_render_past_its_deadline_fails_its_step_naming_the_setting() {
    let db = test_db().await;
    let loops =
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "slow",
        json!({ "steps": [transform("t", json!(loops))] }),
        json!({}),
    )
    .await;
    let mut engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);
    engine.limits.template_deadline = Duration::from_millis(5);

    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);

    assert_eq!(get_run(&db.pool, &run_id).await.status, "FAILED");
    assert_eq!(
        step_error(&db.pool, &run_id, "t").await,
        "value: template took longer than TEMPLATE_DEADLINE_SECONDS (0.005s)"
    );
}

#[tokio::test]
async fn step_and_run_outputs_over_their_caps_fail_naming_the_setting() {
    let db = test_db().await;
    let (_, big_step) = workflow_with_run(
        &db.pool,
        "big-step",
        json!({ "steps": [transform("t", json!("{{ 'x' * 200 }}"))] }),
        json!({}),
    )
    .await;
    // Two leaves of 60 bytes each: each step fits, the run's output does not.
    let (_, big_run) = workflow_with_run(
        &db.pool,
        "big-run",
        json!({ "steps": [
            transform("a", json!("{{ 'x' * 60 }}")),
            { "name": "b", "type": "transform", "value": "{{ 'y' * 60 }}", "dependsOn": [] },
        ] }),
        json!({}),
    )
    .await;
    let mut engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);
    engine.limits = WorkLimits {
        step_output_max_bytes: 100,
        run_output_max_bytes: 100,
        ..WorkLimits::default()
    };

    assert_eq!(engine.process(&run_job(&big_step)).await, JobOutcome::Done);
    assert_eq!(engine.process(&run_job(&big_run)).await, JobOutcome::Done);

    assert_eq!(get_run(&db.pool, &big_step).await.status, "FAILED");
    assert_eq!(
        step_error(&db.pool, &big_step, "t").await,
        "the step's output is larger than STEP_OUTPUT_MAX_BYTES (100 bytes)"
    );
    let run = get_run(&db.pool, &big_run).await;
    assert_eq!(run.status, "FAILED");
    assert_eq!(
        run.error.as_deref(),
        Some("the run's output is larger than RUN_OUTPUT_MAX_BYTES (100 bytes)")
    );
    assert_eq!(run.output, None);
}

/// Runs of a one-step workflow, RUNNING under `me`'s lease.
async fn held_runs(db: &thygon_testkit::TestDb, me: &LeaseHolder, n: usize) -> Vec<String> {
    let definition = json!({ "steps": [transform("t", json!(1))] });
    let (workflow_id, first) = workflow_with_run(&db.pool, "held", definition, json!({})).await;
    let mut ids = vec![first];
    ids.extend(insert_runs(&db.pool, &workflow_id, n - 1, |_| json!({})).await);
    for id in &ids {
        let (id, me) = (id.clone(), me.clone());
        let claim = blocking(&db.pool, move |conn| {
            storage::claim_run(conn, &id, ORG, &me, 0, shared_models::time::now(), |_| {
                false
            })
        })
        .await
        .expect("claim");
        assert!(matches!(claim, Claim::Claimed(_)));
    }
    ids
}

fn pure_step(run_id: &str, output: Value, first: bool) -> PureStep {
    PureStep {
        first,
        record: StepRecord {
            run_id: run_id.to_string(),
            name: "t".into(),
            position: 0,
            step_type: "transform",
        },
        output,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_write_fails_alone_and_the_rest_of_its_batch_commits() {
    // First attempts: the batch is one statement.
    refused_write_fails_alone(true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_write_fails_alone_in_a_batch_of_later_attempts_too() {
    // Later attempts (their previous states read): the batch is a transaction.
    refused_write_fails_alone(false).await;
}

async fn refused_write_fails_alone(first: bool) {
    let db = test_db().await;
    let me = LeaseHolder {
        worker_id: format!("split-{}", unique_token()),
        lease: Duration::from_secs(30),
    };
    let runs = held_runs(&db, &me, 11).await;
    let checkpoints = Checkpointer::start(db.pool.clone(), me.clone());
    // Below the engine's NUL check: PostgreSQL itself refuses these two.
    let nul = json!({ "bad": "\u{0}" });
    let steps = (0..6).map(|i| {
        let output = if i == 3 { nul.clone() } else { json!(i) };
        let checkpoints = checkpoints.clone();
        let step = pure_step(&runs[i], output, first);
        async move { checkpoints.checkpoint(step).await }
    });
    let ends = (6..9).map(|i| {
        let output = if i == 7 {
            nul.clone()
        } else {
            json!({ "t": i })
        };
        let checkpoints = checkpoints.clone();
        let end = RunFinish {
            run_id: runs[i].clone(),
            status: RunStatus::Completed,
            output: Some(output),
            error: None,
        };
        async move { checkpoints.finish(end).await }
    });
    // A run's last step with its end: the end refused (10) or not (9); one write each.
    let last_steps = (9..11).map(|i| {
        let output = if i == 10 {
            nul.clone()
        } else {
            json!({ "t": i })
        };
        let checkpoints = checkpoints.clone();
        let (step, end) = (
            pure_step(&runs[i], json!(i), first),
            RunFinish {
                run_id: runs[i].clone(),
                status: RunStatus::Completed,
                output: Some(output),
                error: None,
            },
        );
        async move { checkpoints.checkpoint_and_finish(step, end).await }
    });
    // On a current-thread runtime every write is queued before the writer runs: one batch.
    let (steps, ends, last_steps) = tokio::join!(
        futures_util::future::join_all(steps),
        futures_util::future::join_all(ends),
        futures_util::future::join_all(last_steps)
    );

    for (i, answer) in steps.iter().chain(&ends).chain(&last_steps).enumerate() {
        match (i, answer) {
            (3 | 7 | 10, Err(StorageError::Query(_))) => {}
            (3 | 7 | 10, other) => panic!("write {i}: {other:?}"),
            (_, Ok(Fenced::Written)) => {}
            (_, other) => panic!("write {i}: {other:?}"),
        }
    }
    for (i, id) in runs.iter().enumerate() {
        let steps = get_steps(&db.pool, id).await;
        let run = get_run(&db.pool, id).await;
        match i {
            0..=5 if i != 3 => assert_eq!(steps[0].output, Some(json!(i))),
            3 => assert!(steps.is_empty()),
            7 => assert_eq!(run.status, "RUNNING"),
            // The step and the end go together or not at all.
            10 => assert!(run.status == "RUNNING" && steps.is_empty()),
            9 => {
                assert_eq!(run.status, "COMPLETED");
                assert_eq!(steps[0].output, Some(json!(9)));
            }
            _ => assert_eq!(run.status, "COMPLETED"),
        }
    }
}

/// The run's holder dies (its lease expires), and `me` claims it; returns the claim's
/// takeover count.
async fn take_over(pool: &shared_models::db::PgPool, run_id: &str, me: &LeaseHolder) -> i32 {
    expire_lease(pool, run_id).await;
    let (id, me) = (run_id.to_string(), me.clone());
    let claim = blocking(pool, move |conn| {
        storage::claim_run(conn, &id, ORG, &me, 0, shared_models::time::now(), |_| true)
    })
    .await
    .expect("claim");
    match claim {
        Claim::Claimed(c) => c.lease_takeovers,
        other => panic!("not claimed: {other:?}"),
    }
}

#[tokio::test]
async fn a_run_taken_over_too_often_ends_failed_as_a_poison_run() {
    let db = test_db().await;
    let definition = json!({ "steps": [
        transform("a", json!(1)),
        { "name": "b", "type": "transform", "value": 2, "dependsOn": ["a"] },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "poison", definition, json!({})).await;
    let other = LeaseHolder {
        worker_id: format!("other-{}", unique_token()),
        lease: Duration::from_secs(30),
    };
    // Two workers, each dying in turn with the run, after a first that claimed it.
    let another = LeaseHolder {
        worker_id: format!("another-{}", unique_token()),
        lease: Duration::from_secs(30),
    };
    mark_held_by_dead_worker(&db.pool, &run_id, &format!("dead-{}", unique_token())).await;
    for n in 1..=3 {
        let me = if n % 2 == 1 { &other } else { &another };
        assert_eq!(take_over(&db.pool, &run_id, me).await, n);
    }
    // A run handed back at shutdown (no owner) is not a takeover.
    let now = shared_models::time::now();
    let id = run_id.clone();
    blocking(&db.pool, move |conn| {
        use diesel::prelude::*;
        use shared_models::schema::runs;
        diesel::update(runs::table.find(&id))
            .set((
                runs::lease_owner.eq(None::<String>),
                runs::lease_expires_at.eq(now),
            ))
            .execute(conn)
    })
    .await
    .expect("hand back");
    let (id, me) = (run_id.clone(), other.clone());
    let claim = blocking(&db.pool, move |conn| {
        storage::claim_run(conn, &id, ORG, &me, 0, shared_models::time::now(), |_| true)
    })
    .await
    .expect("claim");
    assert!(
        matches!(claim, Claim::Claimed(ref c) if c.lease_takeovers == 0),
        "{claim:?}"
    );

    // The fourth takeover (its holder died again): the engine ends it instead of running it.
    expire_lease(&db.pool, &run_id).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);
    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    assert_eq!(
        run.error.as_deref(),
        Some("poison run: taken over 4 times (MAX_LEASE_TAKEOVERS); it keeps killing or wedging workers")
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let statuses: Vec<&str> = steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses, vec!["CANCELLED", "CANCELLED"], "nothing ran");
}

/// An HTTP endpoint on 127.0.0.1 that answers `{}` after `delay`, counting the requests it
/// serves at once; returns its base URL and the most it saw at once.
async fn counting_server(delay: Duration) -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (now, most) = (now.clone(), most.clone());
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn no_more_steps_of_one_run_execute_at_once_than_the_cap() {
    let db = test_db().await;
    let (url, most) = counting_server(Duration::from_millis(200)).await;
    let steps: Vec<Value> = (0..6)
        .map(|i| {
            json!({ "name": format!("call{i}"), "type": "http", "dependsOn": [],
                         "request": { "url": format!("{url}/x{i}") } })
        })
        .collect();
    let (_, run_id) =
        workflow_with_run(&db.pool, "fan-out", json!({ "steps": steps }), json!({})).await;
    let allow = url.trim_start_matches("http://");
    let mut engine = engine_allowing(&db.pool, registry(&[]), AGENT_TIMEOUT, allow);
    engine.limits.max_steps_in_flight_per_run = 2;

    assert_eq!(engine.process(&run_job(&run_id)).await, JobOutcome::Done);

    assert_eq!(get_run(&db.pool, &run_id).await.status, "COMPLETED");
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most 2 at once, and 2 did go together"
    );
}
