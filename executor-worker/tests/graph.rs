//! Workflow graphs through `Engine::process`, one job at a time (no broker): fan-out and
//! fan-in, conditions, templates, retries and timeouts, `http` steps, and the waiting steps
//! (delay, approval, subworkflow) that park a run. Real PostgreSQL with a database per test;
//! agents and HTTP endpoints are wiremock servers.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use executor_worker::agents::AgentRegistry;
use executor_worker::engine::{Engine, JobOutcome};
use serde_json::{json, Value};
use shared_models::models::StepRunRow;
use shared_models::queue::RunJob;
use shared_models::runs::keys;
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::TestDb;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Long enough never to matter: the tests that time out set `timeoutSeconds` on the step.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

/// The agents `ids`, each served by `server` at `/<id>`.
fn agents_at(server: &MockServer, ids: &[&str]) -> AgentRegistry {
    let entries: Vec<(&str, String)> = ids
        .iter()
        .map(|id| (*id, format!("{}/{id}", server.uri())))
        .collect();
    registry(&entries)
}

/// When a step started and ended, from its row.
fn span(step: &StepRunRow) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        step.started_at
            .unwrap_or_else(|| panic!("{} has a startedAt", step.name)),
        step.completed_at
            .unwrap_or_else(|| panic!("{} has a completedAt", step.name)),
    )
}

fn statuses(steps: &[StepRunRow]) -> Vec<(&str, &str)> {
    steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str()))
        .collect()
}

async fn process(engine: &Engine, run_id: &str) -> JobOutcome {
    engine.process(&run_job(run_id)).await
}

/// One test's world, made the same way by every test: a fresh database, a mock server for
/// its agents and endpoints (mount answers on it before processing), and the engine that
/// runs its jobs.
struct Setup {
    db: TestDb,
    server: MockServer,
    engine: Arc<Engine>,
}

impl Setup {
    /// The agents `agents`, each served by the mock server at `/<id>`; the egress policy is
    /// the default one, so no `http` step reaches the server.
    async fn new(agents: &[&str]) -> Setup {
        Setup::build(agents, AGENT_TIMEOUT, false).await
    }

    /// [`Setup::new`] whose `http` steps may call the mock server (`EGRESS_ALLOW` lists it).
    async fn calling_server(agents: &[&str]) -> Setup {
        Setup::build(agents, AGENT_TIMEOUT, true).await
    }

    /// Every choice given: the worker's default per-call timeout, and whether `http` steps
    /// may call the mock server.
    async fn build(agents: &[&str], agent_timeout: Duration, calls_server: bool) -> Setup {
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

#[tokio::test]
async fn parallel_branches_overlap_in_time_and_the_join_waits_for_both() {
    let Setup { db, server, engine } = Setup::new(&["left", "right"]).await;
    let branch_delay = Duration::from_millis(400);
    mount_post(
        &server,
        "/left",
        agent_output(json!("from b")).set_delay(branch_delay),
        1,
    )
    .await;
    mount_post(
        &server,
        "/right",
        agent_output(json!("from c")).set_delay(branch_delay),
        1,
    )
    .await;
    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": { "ticket": "{{ variables.ticket }}" } },
        { "name": "b", "type": "agent", "agentId": "left", "dependsOn": ["a"],
          "instructions": "Look at {{ steps.a.output.ticket }}" },
        { "name": "c", "type": "agent", "agentId": "right", "dependsOn": ["a"],
          "instructions": "Also look at {{ steps.a.output.ticket }}" },
        { "name": "d", "type": "transform", "dependsOn": ["b", "c"],
          "value": { "b": "{{ steps.b.output }}", "c": "{{ steps.c.output }}" } },
    ] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "fan_out", definition, json!({ "ticket": "T-1" })).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(
        run.output,
        Some(json!({ "d": { "b": "from b", "c": "from c" } })),
        "the run's output is the leaf's only"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("a", "COMPLETED"),
            ("b", "COMPLETED"),
            ("c", "COMPLETED"),
            ("d", "COMPLETED")
        ]
    );
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|name| span(find_step(&steps, name)));
    assert!(
        b.1 - b.0 >= ms(400) && c.1 - c.0 >= ms(400),
        "each branch waited for its agent: b {b:?}, c {c:?}"
    );
    assert!(
        b.0 < c.1 && c.0 < b.1,
        "the branches overlap in time: b {b:?}, c {c:?}"
    );
    assert!(
        d.0 >= b.1 && d.0 >= c.1,
        "the join started after both branches ended: b {b:?}, c {c:?}, d {d:?}"
    );
    assert!(
        b.0 >= a.1 && c.0 >= a.1,
        "both branches started after the step they depend on: a {a:?}, b {b:?}, c {c:?}"
    );
    // (No bound on the run's wall time: the overlap above, read from the steps' own
    // timestamps, is what proves the branches ran at once, however loaded the machine.)

    let all = transitions(&get_events(&db.pool, &run_id).await);
    let at = |step: &str, from: &str, to: &str| {
        all.iter()
            .position(|x| *x == t(Some(step), from, to))
            .unwrap_or_else(|| panic!("no {step} {from}->{to} in {all:?}"))
    };
    assert!(
        at("b", "PENDING", "RUNNING") < at("c", "RUNNING", "COMPLETED")
            && at("c", "PENDING", "RUNNING") < at("b", "RUNNING", "COMPLETED"),
        "both branches started before either ended: {all:?}"
    );
    assert!(at("d", "PENDING", "RUNNING") > at("b", "RUNNING", "COMPLETED"));
    assert!(at("d", "PENDING", "RUNNING") > at("c", "RUNNING", "COMPLETED"));
}

#[tokio::test]
async fn a_false_when_skips_the_step_and_its_skip_propagates() {
    let Setup { db, server, engine } = Setup::new(&["pager"]).await;
    mount_post(&server, "/pager", agent_output(json!("paged")), 0).await;
    let definition = json!({ "steps": [
        { "name": "classify", "type": "transform", "value": { "priority": "low" } },
        { "name": "escalate", "type": "agent", "agentId": "pager", "instructions": "Escalate",
          "when": "steps.classify.output.priority == 'high'" },
        { "name": "page", "type": "agent", "agentId": "pager", "instructions": "Page someone",
          "dependsOn": ["escalate"] },
        { "name": "close", "type": "transform", "dependsOn": ["classify"], "value": {
            "priority": "{{ steps.classify.output.priority }}",
            "escalation": "{{ steps.escalate.status }}",
            "escalationOutput": "{{ steps.escalate.output }}",
        } },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "skips", definition, json!({})).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.error, None);
    let close_output =
        json!({ "priority": "low", "escalation": "SKIPPED", "escalationOutput": null });
    assert_eq!(
        run.output,
        Some(json!({ "close": close_output })),
        "the skipped leaf 'page' is left out of the output"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("classify", "COMPLETED"),
            ("escalate", "SKIPPED"),
            ("page", "SKIPPED"),
            ("close", "COMPLETED")
        ]
    );
    assert_eq!(find_step(&steps, "close").output, Some(close_output));
    for name in ["escalate", "page"] {
        let step = find_step(&steps, name);
        assert_eq!(step.started_at, None, "{name} never started");
        assert!(step.completed_at.is_some(), "{name} has settled");
        assert_eq!(
            (step.attempt, &step.output, &step.error),
            (0, &None, &None),
            "{name}"
        );
    }

    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("escalate")),
        vec![ft("PENDING", "SKIPPED")]
    );
    assert_eq!(
        transitions_of(&events, Some("page")),
        vec![ft("PENDING", "SKIPPED")]
    );
    let says = |step: &str, text: &str| {
        logs_of(&events, Some(step))
            .iter()
            .any(|(_, m)| m.contains(text))
    };
    assert!(
        says("escalate", "condition is false"),
        "{:?}",
        logs_of(&events, Some("escalate"))
    );
    assert!(
        says("page", "every step it depends on was skipped"),
        "{:?}",
        logs_of(&events, Some("page"))
    );
}

#[tokio::test]
async fn templates_see_earlier_outputs_and_keep_json_types() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let definition = json!({ "steps": [
        { "name": "a", "type": "transform", "value": { "n": "{{ variables.n }}" } },
        { "name": "b", "type": "transform", "value": "{{ steps.a.output.n + 1 }}" },
        { "name": "c", "type": "transform", "value": "total={{ steps.b.output }}" },
        { "name": "d", "type": "transform", "value": "{{ steps.a.status }}" },
    ] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "templates", definition, json!({ "n": 41 })).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let steps = get_steps(&db.pool, &run_id).await;
    let outputs: Vec<_> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str(), s.output.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("a", "COMPLETED", Some(json!({ "n": 41 }))),
            ("b", "COMPLETED", Some(json!(42))),
            ("c", "COMPLETED", Some(json!("total=42"))),
            ("d", "COMPLETED", Some(json!("COMPLETED"))),
        ]
    );
    assert!(
        steps[0].output.as_ref().unwrap()["n"].is_number(),
        "a sole expression keeps the number a number"
    );
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "d": "COMPLETED" })));
}

#[tokio::test]
async fn a_flaky_step_succeeds_on_its_third_attempt_with_the_same_idempotency_key() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(500).set_body_string("try again later"))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .named("the first two answers fail")
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
        .expect(1)
        .named("then it works")
        .mount(&server)
        .await;
    let definition = json!({ "steps": [{
        "name": "call", "type": "http",
        "request": { "method": "POST", "url": format!("{}/flaky", server.uri()), "body": { "x": 1 } },
        "retry": { "maxAttempts": 3, "backoffSeconds": 0.05, "backoffMultiplier": 2 },
    }] });
    let (_, run_id) = workflow_with_run(&db.pool, "flaky", definition, json!({})).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let requests = server
        .received_requests()
        .await
        .expect("requests are recorded");
    let keys: Vec<_> = requests
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .collect();
    let key = format!("{run_id}:call");
    assert_eq!(keys, vec![Some(key.clone()), Some(key.clone()), Some(key)]);

    let steps = get_steps(&db.pool, &run_id).await;
    let call = find_step(&steps, "call");
    assert_eq!((call.status.as_str(), call.attempt), ("COMPLETED", 3));
    assert_eq!(
        call.error, None,
        "the last attempt's success clears the error"
    );
    let output = call.output.clone().expect("an output");
    assert_eq!(
        (&output["status"], &output["body"]),
        (&json!(200), &json!({ "ok": true }))
    );
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "call": output })));

    let events = get_events(&db.pool, &run_id).await;
    let warnings: Vec<String> = logs_of(&events, Some("call"))
        .into_iter()
        .filter(|(level, _)| level == "WARN")
        .map(|(_, message)| message)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("attempt 1 failed") && warnings[0].contains("500"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains("next attempt in 0.050s"),
        "the first pause is backoffSeconds: {warnings:?}"
    );
    assert!(warnings[1].contains("attempt 2 failed"), "{warnings:?}");
    assert!(
        warnings[1].contains("next attempt in 0.100s"),
        "the second pause is multiplied: {warnings:?}"
    );
    assert_eq!(
        transitions_of(&events, Some("call")),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "PENDING"),
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "PENDING"),
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "COMPLETED"),
        ]
    );
}

#[tokio::test]
async fn a_step_that_exhausts_its_attempts_fails_the_run_and_cancels_the_next_step() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    mount_post(
        &server,
        "/down",
        ResponseTemplate::new(500).set_body_string("always down"),
        2,
    )
    .await;
    let definition = json!({ "steps": [
        { "name": "call", "type": "http",
          "request": { "method": "POST", "url": format!("{}/down", server.uri()) },
          "retry": { "maxAttempts": 2, "backoffSeconds": 0 } },
        { "name": "after", "type": "transform", "value": "{{ steps.call.output }}" },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "exhausted", definition, json!({})).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let steps = get_steps(&db.pool, &run_id).await;
    let call = find_step(&steps, "call");
    assert_eq!((call.status.as_str(), call.attempt), ("FAILED", 2));
    let error = call.error.clone().expect("a failed step has an error");
    assert!(
        error.contains("500") && error.contains("always down"),
        "{error}"
    );
    let after = find_step(&steps, "after");
    assert_eq!((after.status.as_str(), after.attempt), ("CANCELLED", 0));
    assert_eq!(after.started_at, None);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let run_error = run.error.expect("a failed run has an error");
    assert!(
        run_error.contains("'call'") && run_error.contains(&error),
        "the run's error names the step and carries its error: {run_error}"
    );
    assert_eq!(run.output, None);
    assert_eq!(run.lease_owner, None);

    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("call")),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "PENDING"),
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "FAILED"),
        ]
    );
    assert_eq!(
        transitions_of(&events, Some("after")),
        vec![ft("PENDING", "CANCELLED")]
    );
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "FAILED")]
    );
}

/// A one-step run of an agent answering after 3 s, whose step allows 0.3 s per attempt.
async fn run_slow_agent_step(retry: Value) -> (TestDb, String, Duration) {
    let Setup { db, server, engine } = Setup::calling_server(&["slow"]).await;
    let attempts = retry["maxAttempts"].as_u64().unwrap_or(1);
    mount_post(
        &server,
        "/slow",
        agent_output(json!("too late")).set_delay(Duration::from_secs(3)),
        attempts,
    )
    .await;
    let mut step = json!({ "name": "think", "type": "agent", "agentId": "slow",
                           "instructions": "Take your time", "timeoutSeconds": 0.3 });
    if !retry.is_null() {
        step["retry"] = retry;
    }
    let definition = json!({ "steps": [
        step,
        { "name": "after", "type": "transform", "value": 1 },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "slow_step", definition, json!({})).await;

    let started = std::time::Instant::now();
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);
    let took = started.elapsed();
    server.verify().await;
    (db, run_id, took)
}

async fn assert_timed_out(db: &TestDb, run_id: &str, attempts: i32) {
    let steps = get_steps(&db.pool, run_id).await;
    let think = find_step(&steps, "think");
    assert_eq!((think.status.as_str(), think.attempt), ("FAILED", attempts));
    let error = think.error.clone().unwrap_or_default();
    assert!(
        error.contains("timed out") && error.contains("0.3"),
        "the error says the attempt timed out: {error}"
    );
    assert_eq!(find_step(&steps, "after").status, "CANCELLED");
    let run = get_run(&db.pool, run_id).await;
    assert_eq!(run.status, "FAILED");
    let run_error = run.error.unwrap_or_default();
    assert!(
        run_error.contains("'think'") && run_error.contains("timed out"),
        "{run_error}"
    );
}

#[tokio::test]
async fn a_slow_step_times_out_and_fails_the_run() {
    let (db, run_id, took) = run_slow_agent_step(Value::Null).await;
    assert!(
        took < Duration::from_secs(3),
        "the attempt was cut off at its timeout, not when the agent answered ({took:?})"
    );
    assert_timed_out(&db, &run_id, 1).await;
}

#[tokio::test]
async fn a_slow_step_with_two_attempts_times_out_on_both() {
    let (db, run_id, took) =
        run_slow_agent_step(json!({ "maxAttempts": 2, "backoffSeconds": 0 })).await;
    assert!(
        took < Duration::from_secs(3),
        "both attempts were cut off at their timeout ({took:?})"
    );
    assert_timed_out(&db, &run_id, 2).await;
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("think")),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "PENDING"),
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "FAILED"),
        ]
    );
}

#[tokio::test]
async fn an_http_step_sends_its_templated_request_and_outputs_status_headers_and_json_body() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("POST"))
        .and(path("/orders/o-7"))
        .and(header("authorization", "Bearer s3cret"))
        .and(header("x-order", "o-7"))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({ "order": "o-7", "qty": 3, "note": "3 x widget", "tags": ["a", "o-7"] }),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", "req-1")
                .set_body_json(json!({ "accepted": true, "total": 29.97 })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let definition = json!({ "steps": [{
        "name": "order", "type": "http",
        "request": {
            "method": "POST",
            "url": "{{ variables.base }}/orders/{{ variables.orderId }}",
            "headers": { "Authorization": "Bearer {{ variables.token }}",
                         "X-Order": "{{ variables.orderId }}" },
            "body": { "order": "{{ variables.orderId }}", "qty": "{{ variables.qty }}",
                      "note": "{{ variables.qty }} x {{ variables.item }}",
                      "tags": ["a", "{{ variables.orderId }}"] },
        },
    }] });
    let variables = json!({ "base": server.uri(), "orderId": "o-7", "token": "s3cret",
                            "qty": 3, "item": "widget" });
    let (_, run_id) = workflow_with_run(&db.pool, "http_post", definition, variables).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let requests = server
        .received_requests()
        .await
        .expect("requests are recorded");
    assert_eq!(
        requests[0]
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(format!("{run_id}:order").as_str())
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let order = find_step(&steps, "order");
    assert_eq!((order.status.as_str(), order.attempt), ("COMPLETED", 1));
    let output = order.output.clone().expect("an output");
    assert_eq!(output["status"], json!(200));
    assert_eq!(output["body"], json!({ "accepted": true, "total": 29.97 }));
    assert_eq!(output["headers"]["x-request-id"], json!("req-1"));
    assert_eq!(output["headers"]["content-type"], json!("application/json"));
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "order": output })));
}

#[tokio::test]
async fn an_http_404_fails_its_step_unless_allow_status_lists_it() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("GET"))
        .and(path("/things/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "error": "no such thing" })))
        .expect(2)
        .mount(&server)
        .await;
    let step = |allow: Option<Value>| {
        let mut s = json!({ "name": "lookup", "type": "http",
                            "request": { "url": format!("{}/things/missing", server.uri()) } });
        if let Some(allow) = allow {
            s["allowStatus"] = allow;
        }
        json!({ "steps": [s] })
    };
    let (_, strict) = workflow_with_run(&db.pool, "http_strict", step(None), json!({})).await;
    let (_, lenient) = workflow_with_run(
        &db.pool,
        "http_lenient",
        step(Some(json!([404]))),
        json!({}),
    )
    .await;

    assert_eq!(process(&engine, &strict).await, JobOutcome::Done);
    assert_eq!(process(&engine, &lenient).await, JobOutcome::Done);

    server.verify().await;
    let failed = get_steps(&db.pool, &strict).await;
    let lookup = find_step(&failed, "lookup");
    assert_eq!(lookup.status, "FAILED");
    let error = lookup.error.clone().unwrap_or_default();
    assert!(error.contains("404"), "the error names the status: {error}");
    assert_eq!(get_run(&db.pool, &strict).await.status, "FAILED");

    let allowed = get_steps(&db.pool, &lenient).await;
    let lookup = find_step(&allowed, "lookup");
    assert_eq!(lookup.status, "COMPLETED");
    let output = lookup.output.clone().expect("an output");
    assert_eq!(output["status"], json!(404));
    assert_eq!(output["body"], json!({ "error": "no such thing" }));
    let run = get_run(&db.pool, &lenient).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.output, Some(json!({ "lookup": output })));
}

#[tokio::test]
async fn an_http_text_body_is_output_as_a_string() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("GET"))
        .and(path("/motd"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("hello, {world}", "text/plain; charset=utf-8"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let definition = json!({ "steps": [{ "name": "motd", "type": "http",
        "request": { "method": "GET", "url": format!("{}/motd", server.uri()) } }] });
    let (_, run_id) = workflow_with_run(&db.pool, "http_text", definition, json!({})).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let steps = get_steps(&db.pool, &run_id).await;
    let output = find_step(&steps, "motd").output.clone().expect("an output");
    assert_eq!(output["status"], json!(200));
    assert_eq!(output["body"], json!("hello, {world}"));
    assert_eq!(
        output["headers"]["content-type"],
        json!("text/plain; charset=utf-8")
    );
    assert_eq!(get_run(&db.pool, &run_id).await.status, "COMPLETED");
}

#[tokio::test]
async fn a_delay_parks_the_run_waiting_without_holding_it_and_a_later_job_finishes_it() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let definition = json!({ "steps": [
        { "name": "first", "type": "transform", "value": "before" },
        { "name": "pause", "type": "delay", "seconds": 0.2 },
        { "name": "then", "type": "transform", "value": {
            "waited": "{{ steps.pause.output.seconds }}", "first": "{{ steps.first.output }}" } },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "delayed", definition, json!({})).await;

    let before = shared_models::time::now();
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);
    let after = shared_models::time::now();

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "WAITING");
    assert_eq!(
        (run.lease_owner.as_deref(), run.lease_expires_at),
        (None, None),
        "a waiting run holds no worker"
    );
    assert_eq!(run.completed_at, None);
    let wake_at = run.wake_at.expect("a waiting delay sets the run's wakeAt");
    assert!(
        wake_at >= before + ms(200) && wake_at <= after + ms(200),
        "wakeAt {wake_at} is 0.2 s after the delay began (between {before} and {after})"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("first", "COMPLETED"), ("pause", "WAITING")],
        "the step after the delay has not started"
    );
    let pause = find_step(&steps, "pause");
    assert_eq!(pause.wake_at, Some(wake_at));
    assert!(pause.started_at.is_some() && pause.completed_at.is_none());
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "WAITING")]
    );

    wait_until_past(wake_at).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    assert_eq!(run.wake_at, None);
    assert_eq!(
        run.output,
        Some(json!({ "then": { "waited": 0.2, "first": "before" } }))
    );
    let steps = get_steps(&db.pool, &run_id).await;
    let pause = find_step(&steps, "pause");
    assert_eq!(pause.status, "COMPLETED");
    assert_eq!(pause.output, Some(json!({ "seconds": 0.2 })));
    assert!(
        pause.completed_at.expect("completedAt") >= wake_at,
        "the delay ended no earlier than its wake time"
    );
    assert_eq!(find_step(&steps, "then").status, "COMPLETED");
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "WAITING"),
            ft("WAITING", "RUNNING"),
            ft("RUNNING", "COMPLETED"),
        ]
    );
    assert_eq!(
        transitions_of(&events, Some("pause")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "COMPLETED")]
    );
}

/// `prepare`, then an approval `approve` (with `timeout` seconds, if any), then `ship`, which
/// reads the decision. The first job has run: the run is parked on the approval.
async fn run_parked_on_an_approval(timeout: Option<f64>) -> (TestDb, Arc<Engine>, String) {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let mut approve = json!({ "name": "approve", "type": "approval" });
    if let Some(secs) = timeout {
        approve["timeoutSeconds"] = json!(secs);
    }
    let definition = json!({ "steps": [
        { "name": "prepare", "type": "transform", "value": { "amount": "{{ variables.amount }}" } },
        approve,
        { "name": "ship", "type": "transform", "value": {
            "approved": "{{ steps.approve.output.approved }}",
            "comment": "{{ steps.approve.output.comment }}",
            "amount": "{{ steps.prepare.output.amount }}" } },
    ] });
    let (_, run_id) =
        workflow_with_run(&db.pool, "approvals", definition, json!({ "amount": 120 })).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "WAITING");
    assert_eq!(run.lease_owner, None, "a waiting run holds no worker");
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("prepare", "COMPLETED"), ("approve", "WAITING")]
    );
    let approve = find_step(&steps, "approve");
    assert_eq!(approve.output, None);
    assert_eq!(
        run.wake_at, approve.wake_at,
        "the run wakes at the approval's deadline, if it has one"
    );
    assert_eq!(approve.wake_at.is_some(), timeout.is_some());
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING")]
    );
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "WAITING")]
    );
    (db, engine, run_id)
}

/// What the approve endpoint's transition leaves on a parked run before any worker looks:
/// the step decided (`to`), its log line (`log`), the run still WAITING, and one job queued
/// in the outbox (`job`, the row `decide_approval` returned) to resume it.
async fn assert_decision_recorded(
    db: &TestDb,
    run_id: &str,
    job: Option<i64>,
    log: (&str, &str),
    to: &str,
) {
    let job = job.expect("a parked run gets a job to resume it");
    let outbox = get_outbox(&db.pool).await;
    let row = outbox
        .iter()
        .find(|o| o.id == job)
        .unwrap_or_else(|| panic!("job {job} is not in the outbox: {outbox:?}"));
    assert_eq!(row.run_id, run_id);
    assert_eq!(
        row.payload,
        serde_json::to_value(run_job(run_id)).expect("a job as JSON")
    );
    assert_eq!((row.sent_at, row.dedupe_key.as_deref()), (None, None));
    assert_eq!(
        outbox.iter().filter(|o| o.run_id == run_id).count(),
        1,
        "one job for the decision"
    );
    assert_eq!(get_run(&db.pool, run_id).await.status, "WAITING");
    assert_eq!(
        find_step(&get_steps(&db.pool, run_id).await, "approve").status,
        to
    );
    let events = get_events(&db.pool, run_id).await;
    assert_eq!(
        logs_of(&events, Some("approve")).last(),
        Some(&(log.0.to_string(), log.1.to_string())),
        "the decision's log line"
    );
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", to)]
    );
}

#[tokio::test]
async fn an_approval_parks_the_run_until_approved_and_later_steps_see_the_decision() {
    let (db, engine, run_id) = run_parked_on_an_approval(None).await;
    assert_eq!(get_run(&db.pool, &run_id).await.wake_at, None);

    let job = decide_approval(&db.pool, &run_id, "approve", true, "ok").await;
    assert_decision_recorded(&db, &run_id, job, ("INFO", "approved: ok"), "COMPLETED").await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED");
    let shipped = json!({ "approved": true, "comment": "ok", "amount": 120 });
    assert_eq!(run.output, Some(json!({ "ship": shipped })));
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("prepare", "COMPLETED"),
            ("approve", "COMPLETED"),
            ("ship", "COMPLETED")
        ]
    );
    assert_eq!(
        find_step(&steps, "approve").output,
        Some(json!({ "approved": true, "comment": "ok" })),
        "the decision is kept as the approval's output"
    );
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, None),
        vec![
            ft("PENDING", "RUNNING"),
            ft("RUNNING", "WAITING"),
            ft("WAITING", "RUNNING"),
            ft("RUNNING", "COMPLETED"),
        ]
    );
}

#[tokio::test]
async fn a_rejected_approval_fails_the_run_and_cancels_the_rest() {
    let (db, engine, run_id) = run_parked_on_an_approval(None).await;

    let job = decide_approval(&db.pool, &run_id, "approve", false, "no").await;
    assert_decision_recorded(&db, &run_id, job, ("WARN", "rejected: no"), "FAILED").await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("'approve'") && error.contains("rejected: no"),
        "{error}"
    );
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("prepare", "COMPLETED"),
            ("approve", "FAILED"),
            ("ship", "CANCELLED")
        ]
    );
    assert_eq!(find_step(&steps, "ship").started_at, None);
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("ship")),
        vec![ft("PENDING", "CANCELLED")]
    );
    assert_eq!(
        transitions_of(&events, None).last(),
        Some(&ft("RUNNING", "FAILED"))
    );
}

#[tokio::test]
async fn an_approval_past_its_timeout_fails_its_step_saying_it_timed_out() {
    let (db, engine, run_id) = run_parked_on_an_approval(Some(0.2)).await;
    let deadline = get_run(&db.pool, &run_id)
        .await
        .wake_at
        .expect("the run wakes at the deadline");

    wait_until_past(deadline).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let steps = get_steps(&db.pool, &run_id).await;
    let approve = find_step(&steps, "approve");
    assert_eq!(approve.status, "FAILED");
    let error = approve.error.clone().unwrap_or_default();
    assert!(
        error.contains("timed out") && error.contains("waiting for approval"),
        "{error}"
    );
    assert_eq!(find_step(&steps, "ship").status, "CANCELLED");
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    assert!(run.error.unwrap_or_default().contains("timed out"));
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        transitions_of(&events, Some("approve")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "FAILED")]
    );
}

/// A parent `wf_parent` whose step `child` runs `child_workflow` (with templated variables)
/// and whose step `report` reads the child's output, and a PENDING run of it.
async fn parent_and_child(db: &TestDb, child_workflow: &str, child_steps: Option<Value>) -> String {
    if let Some(steps) = child_steps {
        let name = child_workflow.strip_prefix("wf_").expect("a workflow id");
        insert_workflow(&db.pool, name, json!({ "steps": steps })).await;
    }
    let definition = json!({ "steps": [
        { "name": "child", "type": "subworkflow", "workflowId": child_workflow,
          "variables": { "n": "{{ variables.n }}", "parent": "{{ run.id }}" } },
        { "name": "report", "type": "transform", "value": "{{ steps.child.output.double.doubled + 1 }}" },
    ] });
    workflow_with_run(&db.pool, "parent", definition, json!({ "n": 21 }))
        .await
        .1
}

#[tokio::test]
async fn a_subworkflow_starts_a_child_run_and_waits_for_its_output() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "double", "type": "transform",
        "value": { "doubled": "{{ variables.n * 2 }}", "parent": "{{ variables.parent }}" } }]);
    let parent_id = parent_and_child(&db, "wf_child_flow", Some(child_steps)).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "WAITING");
    assert_eq!((parent.lease_owner, parent.wake_at), (None, None));
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1, "one child run");
    let child = &children[0];
    assert_eq!(
        (
            child.status.as_str(),
            child.workflow_id.as_str(),
            child.workflow_version,
            child.org_id.as_str(),
            child.parent_step.as_deref()
        ),
        ("PENDING", "wf_child_flow", 1, ORG, Some("child"))
    );
    assert_eq!(child.variables, json!({ "n": 21, "parent": parent_id }));
    let steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(statuses(&steps), vec![("child", "WAITING")]);
    assert_eq!(
        find_step(&steps, "child").child_run_id.as_deref(),
        Some(child.id.as_str())
    );
    let outbox = get_outbox(&db.pool).await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].run_id, child.id);
    assert_eq!(
        outbox[0].dedupe_key.as_deref(),
        Some(keys::child_start(&child.id).as_str())
    );
    let job: RunJob = serde_json::from_value(outbox[0].payload.clone()).expect("a job");
    assert_eq!(
        (job.run_id.as_str(), job.org_id.as_str()),
        (child.id.as_str(), ORG)
    );

    assert_eq!(process(&engine, &child.id).await, JobOutcome::Done);

    let ended = get_run(&db.pool, &child.id).await;
    assert_eq!(ended.status, "COMPLETED");
    let child_output = json!({ "double": { "doubled": 42, "parent": parent_id } });
    assert_eq!(ended.output, Some(child_output.clone()));
    let outbox = get_outbox(&db.pool).await;
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!(outbox[1].run_id, parent_id, "the parent is woken up");
    assert_eq!(
        outbox[1].dedupe_key.as_deref(),
        Some(keys::child_ended(&child.id).as_str())
    );
    assert_eq!(
        get_run(&db.pool, &parent_id).await.status,
        "WAITING",
        "the child's end only queues a job for the parent"
    );

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "COMPLETED");
    assert_eq!(parent.output, Some(json!({ "report": 43 })));
    let steps = get_steps(&db.pool, &parent_id).await;
    let step = find_step(&steps, "child");
    assert_eq!(step.status, "COMPLETED");
    assert_eq!(
        step.output,
        Some(child_output),
        "the step's output is the child's"
    );
    assert_eq!(step.child_run_id.as_deref(), Some(child.id.as_str()));
    let events = get_events(&db.pool, &parent_id).await;
    assert_eq!(
        transitions_of(&events, Some("child")),
        vec![ft("PENDING", "WAITING"), ft("WAITING", "COMPLETED")]
    );
}

#[tokio::test]
async fn a_failing_child_run_fails_the_subworkflow_step_naming_the_child() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "broken", "type": "transform",
                               "value": "{{ variables.missing }}" }]);
    let parent_id = parent_and_child(&db, "wf_broken_child", Some(child_steps)).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1);
    let child_id = children[0].id.clone();
    assert_eq!(process(&engine, &child_id).await, JobOutcome::Done);
    let child = get_run(&db.pool, &child_id).await;
    assert_eq!(child.status, "FAILED");
    assert!(get_outbox(&db.pool)
        .await
        .iter()
        .any(|o| o.run_id == parent_id
            && o.dedupe_key.as_deref() == Some(keys::child_ended(&child_id).as_str())));

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let steps = get_steps(&db.pool, &parent_id).await;
    let step = find_step(&steps, "child");
    assert_eq!(step.status, "FAILED");
    let error = step.error.clone().unwrap_or_default();
    assert!(
        error.contains(&child_id) && error.contains("failed") && error.contains("'broken'"),
        "the error names the child run and carries its error: {error}"
    );
    assert_eq!(find_step(&steps, "report").status, "CANCELLED");
    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "FAILED");
    assert!(parent.error.unwrap_or_default().contains(&child_id));
}

#[tokio::test]
async fn a_subworkflow_naming_an_unknown_workflow_fails_its_step_at_once() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let parent_id = parent_and_child(&db, "wf_nowhere", None).await;

    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);

    let parent = get_run(&db.pool, &parent_id).await;
    assert_eq!(parent.status, "FAILED", "nothing to wait for");
    let steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(
        statuses(&steps),
        vec![("child", "FAILED"), ("report", "CANCELLED")]
    );
    let error = find_step(&steps, "child").error.clone().unwrap_or_default();
    assert!(error.contains("'wf_nowhere'"), "{error}");
    assert!(parent.error.unwrap_or_default().contains("'wf_nowhere'"));
    assert!(child_runs(&db.pool, &parent_id).await.is_empty());
    assert!(get_outbox(&db.pool).await.is_empty(), "no job is queued");
}

#[tokio::test]
async fn a_failure_lets_a_branch_in_flight_finish_and_be_recorded_before_the_run_fails() {
    let Setup { db, server, engine } = Setup::calling_server(&["slow"]).await;
    Mock::given(method("GET"))
        .and(path("/fail"))
        .respond_with(ResponseTemplate::new(500).set_body_string("broken"))
        .expect(1)
        .mount(&server)
        .await;
    mount_post(
        &server,
        "/slow",
        agent_output(json!({ "done": true })).set_delay(Duration::from_millis(300)),
        1,
    )
    .await;
    let definition = json!({ "steps": [
        { "name": "fast_fail", "type": "http",
          "request": { "method": "GET", "url": format!("{}/fail", server.uri()) },
          "retry": { "maxAttempts": 1 } },
        { "name": "slow_ok", "type": "agent", "agentId": "slow", "instructions": "Slowly",
          "dependsOn": [] },
        { "name": "after", "type": "transform", "value": 1, "dependsOn": ["fast_fail", "slow_ok"] },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "in_flight", definition, json!({})).await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    server.verify().await;
    let steps = get_steps(&db.pool, &run_id).await;
    assert_eq!(
        statuses(&steps),
        vec![
            ("fast_fail", "FAILED"),
            ("slow_ok", "COMPLETED"),
            ("after", "CANCELLED")
        ]
    );
    let (fast, slow) = (
        span(find_step(&steps, "fast_fail")),
        span(find_step(&steps, "slow_ok")),
    );
    assert!(
        fast.1 < slow.1,
        "fast_fail ended while slow_ok was in flight: {fast:?} {slow:?}"
    );
    assert_eq!(
        find_step(&steps, "slow_ok").output,
        Some(json!({ "done": true }))
    );
    assert_eq!(find_step(&steps, "after").started_at, None);
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    assert!(run.error.unwrap_or_default().contains("'fast_fail'"));
    assert!(
        run.completed_at.expect("completedAt") >= slow.1,
        "the run failed only after the branch in flight was recorded"
    );
    let all = transitions(&get_events(&db.pool, &run_id).await);
    let at = |x: (Option<String>, String, String)| {
        all.iter()
            .position(|y| *y == x)
            .unwrap_or_else(|| panic!("{x:?} not in {all:?}"))
    };
    let slow_done = at(t(Some("slow_ok"), "RUNNING", "COMPLETED"));
    assert!(at(t(Some("fast_fail"), "RUNNING", "FAILED")) < slow_done);
    assert!(slow_done < at(t(Some("after"), "PENDING", "CANCELLED")));
    assert!(slow_done < at(t(None, "RUNNING", "FAILED")));
}

#[tokio::test]
async fn cancellation_stops_the_run_at_the_next_step_boundary() {
    let Setup { db, server, engine } = Setup::new(&["slow", "next"]).await;
    mount_post(
        &server,
        "/slow",
        agent_output(json!("late")).set_delay(Duration::from_millis(500)),
        1,
    )
    .await;
    mount_post(&server, "/next", agent_output(json!("never")), 0).await;
    let definition = json!({ "steps": [
        { "name": "slow", "type": "agent", "agentId": "slow", "instructions": "Slowly" },
        { "name": "next", "type": "agent", "agentId": "next", "instructions": "Never" },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "cancelled", definition, json!({})).await;

    let job = run_job(&run_id);
    let worker = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.process(&job).await })
    };
    wait_for(
        "the slow step to be RUNNING",
        Duration::from_secs(10),
        || async {
            let steps = get_steps(&db.pool, &run_id).await;
            steps
                .iter()
                .any(|s| s.name == "slow" && s.status == "RUNNING")
                .then_some(())
        },
    )
    .await;
    cancel_run(&db.pool, &run_id).await;
    let events_at_cancel = get_events(&db.pool, &run_id).await.len();

    assert_eq!(
        worker.await.expect("process does not panic"),
        JobOutcome::Done
    );

    server.verify().await;
    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "CANCELLED");
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.output, None);
    let steps = get_steps(&db.pool, &run_id).await;
    // The cancel endpoint's transition cancels every step not yet ended, those not yet
    // started included (a hand-written copy of it here used to leave them out).
    assert_eq!(
        statuses(&steps),
        vec![("slow", "CANCELLED"), ("next", "CANCELLED")],
        "the late answer is not recorded over the cancellation"
    );
    assert_eq!(find_step(&steps, "slow").output, None);
    assert_eq!(
        find_step(&steps, "next").started_at,
        None,
        "the next step never starts"
    );
    let events = get_events(&db.pool, &run_id).await;
    assert_eq!(
        events.len(),
        events_at_cancel,
        "the worker wrote nothing after the cancellation"
    );
    assert_eq!(
        logs_of(&events, None).last(),
        Some(&("INFO".to_string(), "run cancelled".to_string())),
        "the cancellation's own log line"
    );
    assert_eq!(
        transitions_of(&events, None),
        vec![ft("PENDING", "RUNNING"), ft("RUNNING", "CANCELLED")]
    );
    assert_eq!(
        transitions_of(&events, Some("next")),
        vec![ft("PENDING", "CANCELLED")],
        "the unstarted step's cancellation is recorded"
    );
}

#[tokio::test]
async fn cancelling_a_parent_parked_on_a_subworkflow_cancels_its_child_and_the_worker_leaves_it() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let child_steps = json!([{ "name": "gate", "type": "approval" }]);
    let parent_id = parent_and_child(&db, "wf_child_cancelled", Some(child_steps)).await;
    assert_eq!(process(&engine, &parent_id).await, JobOutcome::Done);
    let children = child_runs(&db.pool, &parent_id).await;
    assert_eq!(children.len(), 1, "the parent started its child");
    let child_id = children[0].id.clone();
    assert_eq!(
        (
            get_run(&db.pool, &parent_id).await.status.as_str(),
            children[0].status.as_str()
        ),
        ("WAITING", "PENDING"),
        "the parent waits for its child, which has not started"
    );

    cancel_run(&db.pool, &parent_id).await;

    let parent_steps = get_steps(&db.pool, &parent_id).await;
    assert_eq!(
        statuses(&parent_steps),
        vec![("child", "CANCELLED"), ("report", "CANCELLED")]
    );
    let child = get_run(&db.pool, &child_id).await;
    assert_eq!(
        child.status, "CANCELLED",
        "the child is cancelled with its parent"
    );
    let child_events = get_events(&db.pool, &child_id).await;
    assert_eq!(
        logs_of(&child_events, None),
        vec![(
            "INFO".to_string(),
            format!("run cancelled with its parent run {parent_id}")
        )]
    );
    assert_eq!(
        statuses(&get_steps(&db.pool, &child_id).await),
        vec![("gate", "CANCELLED")],
        "the child's unstarted step is cancelled too"
    );

    // The child's start job (queued before the cancel) reaches a worker: it leaves the run.
    assert_eq!(process(&engine, &child_id).await, JobOutcome::Done);
    assert_eq!(get_run(&db.pool, &child_id).await.status, "CANCELLED");
    assert_eq!(
        get_events(&db.pool, &child_id).await.len(),
        child_events.len(),
        "the worker wrote nothing to the cancelled child"
    );
}

#[tokio::test]
async fn a_redelivered_waiting_run_whose_delay_is_not_due_parks_again_unchanged() {
    let Setup { db, engine, .. } = Setup::new(&[]).await;
    let definition = json!({ "steps": [
        { "name": "pause", "type": "delay", "seconds": 3600 },
        { "name": "then", "type": "transform", "value": 1 },
    ] });
    let (_, run_id) = workflow_with_run(&db.pool, "not_due", definition, json!({})).await;
    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);
    let run_before = get_run(&db.pool, &run_id).await;
    assert_eq!(run_before.status, "WAITING");
    let steps_before = get_steps(&db.pool, &run_id).await;
    assert_eq!(statuses(&steps_before), vec![("pause", "WAITING")]);
    let mut seen = get_events(&db.pool, &run_id).await.len();

    for delivery in 2..=3 {
        assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

        let run = get_run(&db.pool, &run_id).await;
        assert_eq!(
            (
                run.status.as_str(),
                run.wake_at,
                run.lease_owner.as_deref(),
                run.lease_expires_at
            ),
            ("WAITING", run_before.wake_at, None, None),
            "delivery {delivery}"
        );
        assert_eq!(run.started_at, run_before.started_at);
        assert_eq!(
            format!("{:?}", get_steps(&db.pool, &run_id).await),
            format!("{steps_before:?}"),
            "delivery {delivery} left the steps alone"
        );
        let events = get_events(&db.pool, &run_id).await;
        let new = &events[seen..];
        assert!(
            new.iter().all(|e| e.step.is_none()),
            "delivery {delivery} only moved the run: {new:?}"
        );
        assert_eq!(
            transitions_of(new, None),
            vec![ft("WAITING", "RUNNING"), ft("RUNNING", "WAITING")],
            "delivery {delivery}"
        );
        seen = events.len();
    }
}

#[tokio::test]
async fn a_steps_own_timeout_wins_over_the_workers_default_call_timeout() {
    // The worker's default per-call timeout is shorter than the answer takes.
    let Setup { db, server, engine } = Setup::build(&[], Duration::from_millis(200), true).await;
    Mock::given(method("GET"))
        .and(path("/slowish"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .set_delay(Duration::from_millis(600)),
        )
        .mount(&server)
        .await;
    let definition = json!({ "steps": [{ "name": "call", "type": "http", "timeoutSeconds": 5,
        "request": { "url": "{{ variables.base }}/slowish" } }] });
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "patient",
        definition,
        json!({ "base": server.uri() }),
    )
    .await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "COMPLETED", "{:?}", run.error);
}

#[tokio::test]
async fn a_failing_branch_cancels_a_waiting_subworkflow_and_its_child_run() {
    let Setup { db, server, engine } = Setup::calling_server(&[]).await;
    Mock::given(method("GET"))
        .and(path("/boom"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    insert_workflow(
        &db.pool,
        "child_gate",
        json!({ "steps": [{ "name": "gate", "type": "approval" }] }),
    )
    .await;
    let definition = json!({ "steps": [
        { "name": "sub", "type": "subworkflow", "workflowId": "wf_child_gate" },
        { "name": "boom", "type": "http", "dependsOn": [], "request": { "url": "{{ variables.base }}/boom" } }
    ] });
    let (_, run_id) = workflow_with_run(
        &db.pool,
        "parent_fails",
        definition,
        json!({ "base": server.uri() }),
    )
    .await;

    assert_eq!(process(&engine, &run_id).await, JobOutcome::Done);

    let run = get_run(&db.pool, &run_id).await;
    assert_eq!(run.status, "FAILED");
    let steps = get_steps(&db.pool, &run_id).await;
    let sub = find_step(&steps, "sub");
    assert_eq!(sub.status, "CANCELLED");
    assert!(
        sub.started_at.is_some(),
        "the cancelled row keeps when it started"
    );
    let children = child_runs(&db.pool, &run_id).await;
    assert_eq!(children.len(), 1);
    assert_eq!(
        sub.child_run_id.as_deref(),
        Some(children[0].id.as_str()),
        "and which child it waited for"
    );
    assert_eq!(
        children[0].status, "CANCELLED",
        "no orphan child keeps running"
    );
}
