//! The engine, one job at a time through `Engine::process` (no broker): real PostgreSQL,
//! a database per test, and stand-in agents served by wiremock.

mod common;

use common::*;
use executor_worker::engine::JobOutcome;
use serde_json::{json, Value};
use shared_models::queue::RunJob;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

fn agent_step(name: &str, agent_id: &str, instructions: &str) -> Value {
    json!({ "name": name, "type": "agent", "agentId": agent_id, "instructions": instructions })
}

#[tokio::test]
async fn a_one_step_agent_workflow_completes_with_the_agent_output() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    let definition = json!({ "steps": [agent_step("classify", "support-classifier", "Classify ticket {{ variables.ticketId }}")] });
    let variables = json!({ "ticketId": "T-42", "subject": "Refund please" });
    let (workflow_id, run_id) =
        workflow_with_run(&db.pool, "support_triage", definition, variables.clone()).await;
    let verdict = json!({ "category": "billing", "priority": "high" });
    Mock::given(method("POST"))
        .and(path("/classify"))
        .and(header(
            "idempotency-key",
            format!("{run_id}:classify").as_str(),
        ))
        .respond_with(agent_output(verdict.clone()))
        .expect(1)
        .mount(&agent)
        .await;
    let engine = engine(
        &db.pool,
        registry(&[("support-classifier", format!("{}/classify", agent.uri()))]),
        AGENT_TIMEOUT,
    );

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    agent.verify().await;
    let requests = agent
        .received_requests()
        .await
        .expect("requests are recorded");
    let body: Value = requests[0].body_json().expect("the agent is sent JSON");
    assert_eq!(
        body,
        json!({
            "runId": run_id,
            "workflowId": workflow_id,
            "step": "classify",
            "agentId": "support-classifier",
            "instructions": "Classify ticket T-42",
            "variables": variables,
            "inputs": null,
            "attempt": 1,
        })
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "classify": verdict })));
    assert_eq!(run.error, None);
    let (started, completed) = (
        run.started_at.expect("startedAt is set"),
        run.completed_at.expect("completedAt is set"),
    );
    assert!(started <= completed);
    assert_eq!(
        run.lease_owner, None,
        "the lease is released when the run ends"
    );

    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (
            steps[0].name.as_str(),
            steps[0].status.as_str(),
            steps[0].attempt
        ),
        ("classify", "COMPLETED", 1)
    );
    assert_eq!(steps[0].output, Some(verdict));
    assert!(steps[0].started_at.is_some() && steps[0].completed_at.is_some());

    assert_eq!(
        transitions(&get_events(&db.pool, &run_id).await),
        vec![
            t(None, "PENDING", "RUNNING"),
            t(Some("classify"), "PENDING", "RUNNING"),
            t(Some("classify"), "RUNNING", "COMPLETED"),
            t(None, "RUNNING", "COMPLETED"),
        ]
    );
}

#[tokio::test]
async fn steps_run_in_array_order_and_templates_see_earlier_outputs() {
    let db = test_db().await;
    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": { "n": "{{ variables.n }}" } },
        { "name": "b", "type": "transform", "value": { "value": "{{ steps.a.output.n + 1 }}" } },
        { "name": "c", "type": "transform", "value": {
            "double": "{{ steps.b.output.value * 2 }}",
            "text": "a said {{ steps.a.output.n }} and was {{ steps.a.status }}",
        } },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "chain", definition, json!({ "n": 41 })).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(
        run.output,
        Some(json!({ "c": { "double": 84, "text": "a said 41 and was COMPLETED" } })),
        "only the leaf's output"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let outputs: Vec<_> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str(), s.output.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("a", "COMPLETED", Some(json!({ "n": 41 }))),
            ("b", "COMPLETED", Some(json!({ "value": 42 }))),
            (
                "c",
                "COMPLETED",
                Some(json!({ "double": 84, "text": "a said 41 and was COMPLETED" }))
            ),
        ]
    );
    let step_transitions: Vec<_> = transitions(&get_events(&db.pool, &run_id).await)
        .into_iter()
        .filter(|(s, _, _)| s.is_some())
        .collect();
    assert_eq!(
        step_transitions,
        vec![
            t(Some("a"), "PENDING", "RUNNING"),
            t(Some("a"), "RUNNING", "COMPLETED"),
            t(Some("b"), "PENDING", "RUNNING"),
            t(Some("b"), "RUNNING", "COMPLETED"),
            t(Some("c"), "PENDING", "RUNNING"),
            t(Some("c"), "RUNNING", "COMPLETED"),
        ],
        "each step starts only after the one before it completed"
    );
}

/// Runs `classify` (answered by `response`) followed by `reply` (which must never be called),
/// and returns the run id (and the agent, kept alive) once `process` is done.
async fn run_with_failing_first_agent(
    db: &thygon_testkit::TestDb,
    response: ResponseTemplate,
    agent_timeout: Duration,
) -> (String, MockServer) {
    let agent = MockServer::start().await;
    let definition = json!({ "steps": [
        agent_step("classify", "support-classifier", "Classify {{ variables.ticketId }}"),
        agent_step("reply", "support-replier", "Reply to {{ variables.ticketId }}"),
    ] });
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "failing",
        definition,
        json!({ "ticketId": "T-7" }),
    )
    .await;
    mount_post(&agent, "/classify", response, 1).await;
    mount_post(&agent, "/reply", agent_output(json!("never")), 0).await;
    let agents = registry(&[
        ("support-classifier", format!("{}/classify", agent.uri())),
        ("support-replier", format!("{}/reply", agent.uri())),
    ]);
    let engine = engine(&db.pool, agents, agent_timeout);
    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done,
        "a failed run is still a finished job"
    );
    agent.verify().await;
    (run_id, agent)
}

/// The error of the failed first step, after checking the run failed naming it and the
/// second step was cancelled without ever starting.
async fn first_step_error(db: &thygon_testkit::TestDb, run_id: &str) -> String {
    let run = get_run(&db.pool, run_id).await;
    assert_eq!(run.status, "FAILED");
    assert!(run.completed_at.is_some());
    assert_eq!(run.output, None);
    let run_error = run.error.expect("a failed run has an error");
    assert!(
        run_error.contains("classify"),
        "the run error names the step: {run_error}"
    );

    let steps = get_steps(&db.pool, run_id).await;
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].status.as_str(), steps[0].attempt), ("FAILED", 1));
    assert_eq!(steps[0].output, None);
    assert_eq!(
        (
            steps[1].name.as_str(),
            steps[1].status.as_str(),
            steps[1].attempt
        ),
        ("reply", "CANCELLED", 0)
    );
    assert_eq!(steps[1].started_at, None, "a cancelled step never started");

    assert_eq!(
        transitions(&get_events(&db.pool, run_id).await),
        vec![
            t(None, "PENDING", "RUNNING"),
            t(Some("classify"), "PENDING", "RUNNING"),
            t(Some("classify"), "RUNNING", "FAILED"),
            t(Some("reply"), "PENDING", "CANCELLED"),
            t(None, "RUNNING", "FAILED"),
        ]
    );
    let step_error = steps[0].error.clone().expect("a failed step has an error");
    assert!(
        run_error.contains(&step_error),
        "the run error carries the step's: {run_error}"
    );
    step_error
}

#[tokio::test]
async fn an_agent_answering_non_json_fails_the_run_and_cancels_the_next_step() {
    let db = test_db().await;
    let (run_id, _agent) = run_with_failing_first_agent(
        &db,
        ResponseTemplate::new(200).set_body_string("certainly! here you go"),
        AGENT_TIMEOUT,
    )
    .await;
    let error = first_step_error(&db, &run_id).await;
    assert!(
        error.contains("JSON"),
        "the error says the body is not JSON: {error}"
    );
}

#[tokio::test]
async fn an_agent_answering_http_500_fails_its_step_with_the_status() {
    let db = test_db().await;
    let (run_id, _agent) = run_with_failing_first_agent(
        &db,
        ResponseTemplate::new(500).set_body_string("upstream exploded"),
        AGENT_TIMEOUT,
    )
    .await;
    let error = first_step_error(&db, &run_id).await;
    assert!(error.contains("500"), "the error names the status: {error}");
}

#[tokio::test]
async fn an_agent_slower_than_the_timeout_fails_its_step_saying_it_timed_out() {
    let db = test_db().await;
    let slow = agent_output(json!("too late")).set_delay(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let (run_id, _agent) =
        run_with_failing_first_agent(&db, slow, Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the engine gave up at its timeout, not when the agent answered"
    );
    let error = first_step_error(&db, &run_id).await;
    assert!(
        error.contains("timed out"),
        "the error says it timed out: {error}"
    );
}

#[tokio::test]
async fn an_agent_id_in_neither_the_file_nor_a_base_url_fails_its_step_naming_the_id() {
    let db = test_db().await;
    let definition = json!({ "steps": [agent_step("classify", "no-such-agent", "Classify")] });
    let (_, run_id) = workflow_with_run(&db.pool, "unknown_agent", definition, json!({})).await;
    let engine = engine(
        &db.pool,
        registry(&[("someone-else", "http://127.0.0.1:9/x".to_string())]),
        AGENT_TIMEOUT,
    );

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!((steps[0].status.as_str(), steps[0].attempt), ("FAILED", 1));
    let error = steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("'no-such-agent'"),
        "the error names the agent id: {error}"
    );
    assert!(run.error.unwrap_or_default().contains("classify"));
}

#[tokio::test]
async fn a_redelivered_run_resumes_after_its_completed_steps() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    let definition = json!({ "steps": [
        agent_step("classify", "support-classifier", "Classify {{ variables.ticketId }}"),
        agent_step("reply", "support-replier", "Reply in category {{ steps.classify.output.category }}"),
    ] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "resume", definition, json!({ "ticketId": "T-9" })).await;
    let checkpoint = json!({ "category": "billing" });
    insert_step_run(
        &db.pool,
        step_row(
            &run_id,
            "classify",
            0,
            "COMPLETED",
            1,
            Some(checkpoint.clone()),
        ),
    )
    .await;
    mark_held_by_dead_worker(&db.pool, &run_id, "dead-worker").await;
    mount_post(
        &agent,
        "/classify",
        agent_output(json!("must not be asked again")),
        0,
    )
    .await;
    mount_post(
        &agent,
        "/reply",
        agent_output(json!({ "text": "Refund issued" })),
        1,
    )
    .await;
    let agents = registry(&[
        ("support-classifier", format!("{}/classify", agent.uri())),
        ("support-replier", format!("{}/reply", agent.uri())),
    ]);
    let engine = engine(&db.pool, agents, AGENT_TIMEOUT);

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    agent.verify().await;
    let requests = agent
        .received_requests()
        .await
        .expect("requests are recorded");
    let body: Value = requests[0].body_json().expect("JSON body");
    assert_eq!(
        body["instructions"], "Reply in category billing",
        "the checkpoint's output feeds later steps"
    );
    assert_eq!(body["attempt"], 1);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(
        run.output,
        Some(json!({ "reply": { "text": "Refund issued" } }))
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        (
            steps[0].status.as_str(),
            steps[0].attempt,
            steps[0].output.clone()
        ),
        ("COMPLETED", 1, Some(checkpoint))
    );
    assert_eq!(
        (steps[1].status.as_str(), steps[1].attempt),
        ("COMPLETED", 1)
    );
    let step_transitions: Vec<_> = transitions(&get_events(&db.pool, &run_id).await);
    assert!(
        !step_transitions
            .iter()
            .any(|(s, _, _)| s.as_deref() == Some("classify")),
        "the checkpoint is not touched: {step_transitions:?}"
    );
}

#[tokio::test]
async fn a_step_cut_off_by_a_crash_runs_again_as_the_next_attempt_with_the_same_key() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    let definition = json!({ "steps": [agent_step("classify", "support-classifier", "Classify {{ variables.ticketId }}")] });
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "crashed",
        definition,
        json!({ "ticketId": "T-3" }),
    )
    .await;
    insert_step_run(
        &db.pool,
        step_row(&run_id, "classify", 0, "RUNNING", 1, None),
    )
    .await;
    mark_held_by_dead_worker(&db.pool, &run_id, "dead-worker").await;
    Mock::given(method("POST"))
        .and(path("/classify"))
        .and(header(
            "idempotency-key",
            format!("{run_id}:classify").as_str(),
        ))
        .respond_with(agent_output(json!({ "category": "bug" })))
        .expect(1)
        .mount(&agent)
        .await;
    let engine = engine(
        &db.pool,
        registry(&[("support-classifier", format!("{}/classify", agent.uri()))]),
        AGENT_TIMEOUT,
    );

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    agent.verify().await;
    let requests = agent
        .received_requests()
        .await
        .expect("requests are recorded");
    let body: Value = requests[0].body_json().expect("JSON body");
    assert_eq!(body["attempt"], 2);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        (steps[0].status.as_str(), steps[0].attempt),
        ("COMPLETED", 2)
    );
    assert_eq!(steps[0].output, Some(json!({ "category": "bug" })));

    let events = get_events(&db.pool, &run_id).await;
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.level.as_deref() == Some("WARN"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.step.as_deref() == Some("classify")
                && e.message.as_deref().unwrap_or("").contains("attempt 1")),
        "a WARN line says the cut-off attempt is tried again: {warnings:?}"
    );
    assert!(
        warnings.iter().any(|e| e.step.is_none() && e.message.as_deref().unwrap_or("").contains("dead-worker")),
        "a WARN line says the run was taken over from the dead worker: {warnings:?}"
    );
    let started = t(None, "PENDING", "RUNNING");
    assert_eq!(
        transitions(&events)
            .iter()
            .filter(|x| **x == started)
            .count(),
        1,
        "the dead worker's claim started the run; a resumed run does not start again"
    );
    assert_eq!(
        transitions(&events).last(),
        Some(&t(None, "RUNNING", "COMPLETED"))
    );
}

#[tokio::test]
async fn processing_a_completed_run_again_is_done_and_changes_nothing() {
    let db = test_db().await;
    let definition =
        json!({ "steps": [{ "name": "only", "type": "transform", "value": "{{ variables.x }}" }] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "twice", definition, json!({ "x": [1, 2] })).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);
    let job = RunJob::new(&run_id, ORG, None);
    assert_eq!(engine.process(&job).await, JobOutcome::Done);
    let (run_before, steps_before, events_before) = (
        get_run(&db.pool, &run_id).await,
        get_steps(&db.pool, &run_id).await,
        get_events(&db.pool, &run_id).await,
    );
    assert_eq!(run_before.status, "COMPLETED");

    assert_eq!(engine.process(&job).await, JobOutcome::Done);

    let (run_after, steps_after, events_after) = (
        get_run(&db.pool, &run_id).await,
        get_steps(&db.pool, &run_id).await,
        get_events(&db.pool, &run_id).await,
    );
    assert_eq!(format!("{run_after:?}"), format!("{run_before:?}"));
    assert_eq!(format!("{steps_after:?}"), format!("{steps_before:?}"));
    assert_eq!(events_after.len(), events_before.len(), "no new events");
}

/// The PENDING sweeper and the redrive of dead letters may queue a job for a run whose first
/// job was not lost after all: the two reach two workers at once, or one after the other.
#[tokio::test]
async fn duplicate_jobs_of_a_run_at_two_workers_run_its_steps_once() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    let definition = json!({ "steps": [agent_step("classify", "support-classifier", "Classify")] });
    let (_, run_id) = workflow_with_run(&db.pool, "duplicated", definition, json!({})).await;
    let slow = agent_output(json!({ "category": "billing" })).set_delay(Duration::from_millis(300));
    mount_post(&agent, "/classify", slow, 1).await;
    let agents = || registry(&[("support-classifier", format!("{}/classify", agent.uri()))]);
    let (first, second) = (
        engine(&db.pool, agents(), AGENT_TIMEOUT),
        engine(&db.pool, agents(), AGENT_TIMEOUT),
    );
    let job = RunJob::new(&run_id, ORG, None);

    let (a, b) = tokio::join!(first.process(&job), second.process(&job));
    assert_eq!((a, b), (JobOutcome::Done, JobOutcome::Done));
    // And once more after the run has ended.
    assert_eq!(second.process(&job).await, JobOutcome::Done);

    agent.verify().await;
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!((steps.len(), steps[0].attempt), (1, 1));
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        [ft("PENDING", "RUNNING"), ft("RUNNING", "COMPLETED")]
    );
    assert_eq!(
        transitions_of(&events, Some("classify")),
        [ft("PENDING", "RUNNING"), ft("RUNNING", "COMPLETED")]
    );
}

#[tokio::test]
async fn a_run_held_by_another_live_worker_is_left_alone() {
    let db = test_db().await;
    let definition = json!({ "steps": [{ "name": "only", "type": "transform", "value": 1 }] });
    let (_, run_id) = workflow_with_run(&db.pool, "held", definition, json!({})).await;
    let (id, lease_until) = (
        run_id.clone(),
        shared_models::time::now() + chrono::Duration::minutes(5),
    );
    shared_models::db::blocking(&db.pool, move |conn| {
        use diesel::prelude::*;
        use shared_models::schema::runs;
        diesel::update(runs::table.find(&id))
            .set((
                runs::status.eq("RUNNING"),
                runs::lease_owner.eq("other-worker"),
                runs::lease_expires_at.eq(lease_until),
            ))
            .execute(conn)
    })
    .await
    .expect("hand the run to another worker");
    let before = get_run(&db.pool, &run_id).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);

    assert_eq!(
        engine.process(&RunJob::new(&run_id, ORG, None)).await,
        JobOutcome::Done
    );

    let after = get_run(&db.pool, &run_id).await;
    assert_eq!(format!("{after:?}"), format!("{before:?}"));
    assert_eq!(after.lease_owner.as_deref(), Some("other-worker"));
    assert!(get_steps(&db.pool, &run_id).await.is_empty());
    assert!(get_events(&db.pool, &run_id).await.is_empty());
}

#[tokio::test]
async fn a_job_for_an_unknown_run_or_another_org_is_poison() {
    let db = test_db().await;
    let definition = json!({ "steps": [{ "name": "only", "type": "transform", "value": 1 }] });
    let (_, run_id) = workflow_with_run(&db.pool, "orgs", definition, json!({})).await;
    let engine = engine(&db.pool, registry(&[]), AGENT_TIMEOUT);

    let unknown = engine
        .process(&RunJob::new("run_01nosuchrun0000000000000", ORG, None))
        .await;
    assert!(
        matches!(unknown, JobOutcome::Poison(ref reason) if reason.contains("run_01nosuchrun0000000000000")),
        "{unknown:?}"
    );
    let other_org = engine
        .process(&RunJob::new(&run_id, "org_someone_else", None))
        .await;
    assert!(matches!(other_org, JobOutcome::Poison(_)), "{other_org:?}");
    assert_eq!(
        get_run(&db.pool, &run_id).await.status,
        "PENDING",
        "another org's job does not touch the run"
    );
}
