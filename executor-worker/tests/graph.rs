//! Workflow graphs through `Engine::process`, one job at a time (no broker): fan-out and
//! fan-in, conditions, templates, retries and timeouts, `http` steps (the steps that park a
//! run, and cancellation, are in `waits.rs`). Real PostgreSQL with a database per test;
//! agents and HTTP endpoints are wiremock servers.

mod common;

use common::*;
use executor_worker::engine::JobOutcome;
use serde_json::{json, Value};
use std::time::Duration;
use thygon_testkit::TestDb;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, ResponseTemplate};

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
