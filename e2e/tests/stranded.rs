//! No stranded runs (issue 14), on the real binaries: a PENDING run whose job the broker lost
//! is queued again by the runtime's sweeper and runs once; a run whose job was dead-lettered
//! runs once after `POST /ops/dead-letters/redrive`, which only the operator may call.
//! Jobs are taken from the queue, or moved to the dead-letter queue, by hand while the stack
//! has no worker.

use diesel::prelude::*;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection as AmqpConnection};
use serde_json::{json, Value};
use shared_models::queue::{self, QueueNames, RunJob};
use shared_models::schema::outbox;
use std::time::{Duration, Instant};
use thygon_e2e::{Stack, ADMIN_KEY};

/// An agent step and a transform: the agent is the stack's example agent.
fn two_steps() -> Value {
    json!({"steps": [
        {"name": "classify", "type": "agent", "agentId": "support-classifier",
         "instructions": "Determine ticket category and priority."},
        {"name": "shape", "type": "transform", "value": "{{ steps.classify.output.category }}"}
    ]})
}

async fn broker(stack: &Stack) -> (AmqpConnection, Channel, QueueNames) {
    let names = QueueNames::new(&stack.prefix);
    let conn = queue::connect(&stack.broker, "e2e-stranded")
        .await
        .expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, channel, names)
}

/// Take the job of `run_id` off the job queue (the trigger published it; no worker consumes),
/// acked: the broker has lost it. Returns the message's body.
async fn take_job(channel: &Channel, names: &QueueNames, run_id: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = channel
            .basic_get(
                names.jobs.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .expect("get");
        if let Some(m) = got {
            let job = RunJob::decode(&m.delivery.data).expect("a job");
            assert_eq!(job.run_id, run_id, "the only job in the queue");
            channel
                .basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
            return m.delivery.data;
        }
        assert!(
            Instant::now() < deadline,
            "the job of {run_id} never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The steps' and the run's transitions, `(step or "run", from, to)`.
fn transitions(run: &Value) -> Vec<(String, String, String)> {
    run["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("run").to_string();
            (s("step"), s("from"), s("to"))
        })
        .collect()
}

/// What a run that ran once shows: each transition once, each step at its first attempt.
fn assert_ran_once(run: &Value) {
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let t = |step: &str, from: &str, to: &str| (step.to_string(), from.to_string(), to.to_string());
    assert_eq!(
        transitions(run),
        [
            t("run", "PENDING", "RUNNING"),
            t("classify", "PENDING", "RUNNING"),
            t("classify", "RUNNING", "COMPLETED"),
            t("shape", "PENDING", "RUNNING"),
            t("shape", "RUNNING", "COMPLETED"),
            t("run", "RUNNING", "COMPLETED"),
        ],
        "{run}"
    );
    for step in run["steps"].as_array().expect("steps") {
        assert_eq!(step["attempt"], 1, "{step}");
    }
}

/// A queue of `GET /ops/queues`, once `done` holds for it (10 s at most).
async fn ops_queue(stack: &Stack, kind: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = stack
            .call_as(Some(ADMIN_KEY), "GET", "/ops/queues", None)
            .await;
        let queue = body["data"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["kind"] == kind).cloned());
        if let Some(q) = queue.filter(|q| status == 200 && done(q)) {
            return q;
        }
        assert!(Instant::now() < deadline, "/ops/queues: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_run_whose_job_was_lost_is_queued_again_and_runs_once() {
    let mut stack = Stack::start_with(
        0,
        &[
            ("PENDING_REQUEUE_SECONDS", "6"),
            ("OPS_SAMPLE_SECONDS", "0.2"),
        ],
    )
    .await;
    stack.create_workflow("lost", two_steps()).await;
    let (_conn, channel, names) = broker(&stack).await;
    let lost = stack.trigger("wf_lost", json!({})).await;
    take_job(&channel, &names, &lost).await;
    stack.start_worker(0).await;

    let started = Instant::now();
    let run = stack.wait_for_run(&lost, Duration::from_secs(30)).await;
    println!(
        "the run whose job was lost completed {:.1} s after a worker started",
        started.elapsed().as_secs_f64()
    );
    assert_ran_once(&run);
    let warnings: Vec<&Value> = run["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter(|l| l["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("queued again")),
        "{warnings:?}"
    );

    // A run whose job is not lost runs without being queued again, and nothing more is
    // queued for the first after a few more periods.
    let fine = stack.trigger("wf_lost", json!({})).await;
    assert_ran_once(&stack.wait_for_run(&fine, Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut db = PgConnection::establish(&stack.database_url).expect("database");
    let keys: Vec<Option<String>> = outbox::table
        .select(outbox::dedupe_key)
        .load(&mut db)
        .expect("outbox");
    let requeued: Vec<&String> = keys
        .iter()
        .flatten()
        .filter(|k| k.starts_with("pending:"))
        .collect();
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    assert!(requeued[0].contains(&lost), "{requeued:?}");
    ops_queue(&stack, "jobs", |q| q["pendingRunsRequeued"] == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_run_runs_once_after_a_redrive_which_only_the_operator_may_ask_for() {
    let mut stack = Stack::start_with(0, &[("OPS_SAMPLE_SECONDS", "0.2")]).await;
    stack.create_workflow("first", two_steps()).await;
    stack.create_workflow("second", two_steps()).await;
    let (_conn, channel, names) = broker(&stack).await;
    let first = stack.trigger("wf_first", json!({})).await;
    let second = stack.trigger("wf_second", json!({})).await;
    // Both jobs moved to the dead-letter queue, as the worker moves a poison job: the copy
    // confirmed before the original is acked.
    for run in [&first, &second] {
        let body = take_job(&channel, &names, run).await;
        channel
            .basic_publish(
                names.dead_letter_exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    ops_queue(&stack, "dead-letter", |q| q["messages"] == 2).await;

    let redrive = "/ops/dead-letters/redrive";
    let filter = json!({"workflowId": "wf_first"});
    let (status, body) = stack
        .call_as(None, "POST", redrive, Some(filter.clone()))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("UNAUTHORIZED"))
    );
    let (status, body) = stack.call("POST", redrive, Some(filter.clone())).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("FORBIDDEN")));

    let (status, body) = stack
        .call_as(Some(ADMIN_KEY), "POST", redrive, Some(filter.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"redriven": 1, "skipped": 0, "kept": 1, "remaining": 1})
    );
    stack.start_worker(0).await;
    assert_ran_once(&stack.wait_for_run(&first, Duration::from_secs(30)).await);
    let (status, body) = stack
        .call_as(Some(ADMIN_KEY), "POST", redrive, Some(filter))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"redriven": 0, "skipped": 0, "kept": 1, "remaining": 1}),
        "the second call finds nothing of that workflow"
    );
    let (status, body) = stack
        .call("GET", &format!("/workflows/runs/{second}"), None)
        .await;
    assert_eq!((status, &body["data"]["status"]), (200, &json!("PENDING")));

    // Without a filter, the other one.
    let (status, body) = stack.call_as(Some(ADMIN_KEY), "POST", redrive, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"redriven": 1, "skipped": 0, "kept": 0, "remaining": 0})
    );
    assert_ran_once(&stack.wait_for_run(&second, Duration::from_secs(30)).await);
    let dead = ops_queue(&stack, "dead-letter", |q| {
        q["messages"] == 0 && q["deadLettersRedriven"] == 2
    })
    .await;
    assert_eq!(dead["consumers"], 0, "{dead}");
}
