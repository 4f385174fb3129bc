//! `POST /ops/dead-letters/redrive` against this test's own queues: letters of live runs go
//! back to the job queue once, letters of ended runs are dropped, the rest stay; the filter,
//! the limit and the admin key hold.

use crate::helpers::{assert_error, spawn_app, spawn_app_sampling, Reply, TestApp, ORG};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};
use shared_models::queue::{QueueNames, RunJob};
use std::time::{Duration, Instant};

const REDRIVE: &str = "/ops/dead-letters/redrive";

/// Put `body` in the dead-letter queue, as dead-lettered `age_secs` ago (its `timestamp`).
async fn dead_letter(channel: &Channel, names: &QueueNames, body: &[u8], age_secs: u64) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - age_secs;
    channel
        .basic_publish(
            "".into(),
            names.dead_letter_queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_timestamp(at),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

fn job(run_id: &str, org: &str) -> Vec<u8> {
    RunJob::new(run_id, org, None).encode()
}

/// The job queue's messages, taken (and acked) one by one: their run ids.
async fn take_jobs(channel: &Channel, names: &QueueNames) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(m) = channel
        .basic_get(names.jobs.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        ids.push(RunJob::decode(&m.delivery.data).expect("a job").run_id);
    }
    ids.sort();
    ids
}

async fn redrive(app: &TestApp, body: Value) -> Reply {
    let admin = format!("Bearer {}", thygon_testkit::ADMIN_KEY);
    app.send_auth(Some(&admin), "POST", REDRIVE, Some(body), &[])
        .await
}

/// `(redriven, skipped, kept, remaining)` of a 200 answer.
fn outcome(r: &Reply) -> (u64, u64, u64, u64) {
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k} in {d}"));
    (n("redriven"), n("skipped"), n("kept"), n("remaining"))
}

#[tokio::test]
async fn redrive_needs_the_admin_key() {
    let app = spawn_app().await;
    let r = app
        .send_auth(None, "POST", REDRIVE, Some(json!({})), &[])
        .await;
    assert_error(&r, 401, "UNAUTHORIZED", "no key");
    let r = app.send("POST", REDRIVE, Some(json!({})), &[]).await;
    assert_error(&r, 403, "FORBIDDEN", "an org key");
    let r = app.get_as_admin(REDRIVE).await;
    assert_eq!(r.status, 405, "{}", r.body);
    let r = redrive(&app, json!({"limit": 0, "queue": "x"})).await;
    assert_error(&r, 400, "VALIDATION_ERROR", "a bad body");
}

#[tokio::test]
async fn letters_of_live_runs_go_back_once_those_of_ended_runs_are_dropped_the_rest_stay() {
    let app = spawn_app_sampling().await;
    let (_conn, channel, names) = app.queues().await;
    let wf = app.workflow("redriven", true);
    let live = app.run_in(&wf, "PENDING");
    let ended = app.run_in(&wf, "COMPLETED");
    for body in [
        job(&live, ORG),
        job(&ended, ORG),
        b"{not a job".to_vec(),
        job("run_01nosuchrun0000000000000", ORG),
    ] {
        dead_letter(&channel, &names, &body, 60).await;
    }

    // Without a body: everything, up to 1000 letters.
    let admin = format!("Bearer {}", thygon_testkit::ADMIN_KEY);
    let r = app
        .send_auth(Some(&admin), "POST", REDRIVE, None, &[])
        .await;
    assert_eq!(outcome(&r), (1, 1, 2, 2));
    assert_eq!(take_jobs(&channel, &names).await, vec![live.clone()]);

    // The second call finds nothing to move: the two letters no run can use stay.
    let r = redrive(&app, json!({})).await;
    assert_eq!(outcome(&r), (0, 0, 2, 2));
    assert!(take_jobs(&channel, &names).await.is_empty());

    // The operators' view counts what was redriven, on the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get_as_admin("/ops/queues").await;
        let dead = r.body["data"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["kind"] == "dead-letter").cloned());
        // A sample taken while the second call held a letter shows it out of the queue
        // (and that call's consumer): wait for one taken after it.
        if let Some(q) = dead.filter(|q| q["deadLettersRedriven"] == 1 && q["consumers"] == 0) {
            assert_eq!(q["messages"], 2, "{q}");
            assert_eq!(q["pendingRunsRequeued"], Value::Null, "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_filter_and_the_limit_choose_what_goes_back() {
    let app = spawn_app().await;
    let (_conn, channel, names) = app.queues().await;
    let (wf, other_wf) = (app.workflow("chosen", true), app.workflow("other", true));
    let other_org = "org_elsewhere";
    app.key_for(other_org);
    thygon_testkit::fixtures::insert_workflow(
        &mut app.conn(),
        other_org,
        "chosen",
        json!({"steps": [
        {"name": "only", "type": "transform", "value": 1}]}),
        true,
    );
    let chosen_old = app.run_in(&wf, "PENDING");
    let chosen_new = app.run_in(&wf, "WAITING");
    let other_workflow = app.run_in(&other_wf, "PENDING");
    let other_org_run = app.run_of(other_org, &wf, "PENDING");
    dead_letter(&channel, &names, &job(&chosen_old, ORG), 7200).await;
    dead_letter(&channel, &names, &job(&chosen_new, ORG), 10).await;
    dead_letter(&channel, &names, &job(&other_workflow, ORG), 7200).await;
    dead_letter(&channel, &names, &job(&other_org_run, other_org), 7200).await;

    let filter = json!({"orgId": ORG, "workflowId": wf, "olderThanSeconds": 3600});
    assert_eq!(outcome(&redrive(&app, filter.clone()).await), (1, 0, 3, 3));
    assert_eq!(take_jobs(&channel, &names).await, vec![chosen_old]);
    assert_eq!(outcome(&redrive(&app, filter).await), (0, 0, 3, 3));

    // Without the age: the newer letter of that workflow too; the others still stay.
    let r = redrive(&app, json!({"orgId": ORG, "workflowId": wf})).await;
    assert_eq!(outcome(&r), (1, 0, 2, 2));
    assert_eq!(take_jobs(&channel, &names).await, vec![chosen_new]);

    // `limit` bounds the letters one call takes: one of the two left.
    assert_eq!(
        outcome(&redrive(&app, json!({"limit": 1})).await),
        (1, 0, 0, 1)
    );
    assert_eq!(
        outcome(&redrive(&app, json!({"limit": 1})).await),
        (1, 0, 0, 0)
    );
    let mut both = vec![other_workflow, other_org_run];
    both.sort();
    assert_eq!(take_jobs(&channel, &names).await, both);
}
