use crate::helpers::{broker, seconds_from_now, spawn_app, TestApp, ORG};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use runtime_service::publisher::AmqpPublisher;
use runtime_service::relay::relay_once;
use runtime_service::scheduler::schedule_once;
use serde_json::json;
use shared_models::queue::QueueNames;
use shared_models::runs::keys;
use shared_models::schema::runs;
use std::time::Duration;

fn waiting_until(app: &TestApp, wf: &str, status: &str, wake_at: DateTime<Utc>) -> String {
    let id = app.run_in(wf, status);
    diesel::update(runs::table.find(&id))
        .set(runs::wake_at.eq(wake_at))
        .execute(&mut app.conn())
        .expect("set wake_at");
    id
}

fn delay_workflow(app: &TestApp) -> String {
    app.workflow_with(
        "sleepy",
        json!({"steps": [{"name": "pause", "type": "delay", "seconds": 5}]}),
    )
}

#[tokio::test]
async fn a_due_wake_up_is_queued_once_however_many_passes_see_it() {
    let app = spawn_app().await;
    let wf = delay_workflow(&app);
    let wake_at = seconds_from_now(-1);
    let id = waiting_until(&app, &wf, "WAITING", wake_at);
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 0);
    let jobs = app.outbox(&id);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].payload,
        json!({"v": 1, "runId": id, "orgId": ORG}),
        "the RunJob message"
    );
    assert_eq!(
        jobs[0].dedupe_key.as_deref(),
        Some(keys::wake(&id, wake_at).as_str())
    );

    // Wake-ups go out with the next relay pass, without the request path's grace delay.
    let publisher = AmqpPublisher::new(&broker(), QueueNames::new(&app.prefix));
    let published = relay_once(&app.db.pool, &publisher, Duration::from_secs(60))
        .await
        .expect("relay");
    assert_eq!(published, 1);
    assert_eq!(app.queued().await, 1);

    // Parked again with a later wake-up: that one is a new job.
    diesel::update(runs::table.find(&id))
        .set(runs::wake_at.eq(shared_models::time::now() - chrono::Duration::milliseconds(1)))
        .execute(&mut app.conn())
        .expect("set wake_at");
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(app.outbox(&id).len(), 2);
}

#[tokio::test]
async fn runs_not_due_or_not_waiting_are_not_woken() {
    let app = spawn_app().await;
    let wf = delay_workflow(&app);
    let later = waiting_until(&app, &wf, "WAITING", seconds_from_now(60));
    let running = waiting_until(&app, &wf, "RUNNING", seconds_from_now(-1));
    let ended = waiting_until(&app, &wf, "CANCELLED", seconds_from_now(-1));
    let parked = app.run_in(&wf, "WAITING");
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 0);
    for id in [later, running, ended, parked] {
        assert!(app.outbox(&id).is_empty());
    }
}

#[tokio::test]
async fn a_pending_run_held_back_by_its_orgs_running_cap_is_queued_once_when_due() {
    let app = spawn_app().await;
    let wf = app.workflow("capped", true);
    // A worker held these back (MAX_RUNNING_PER_ORG): PENDING with a wake_at.
    let wake_at = seconds_from_now(-1);
    let due = waiting_until(&app, &wf, "PENDING", wake_at);
    let later = waiting_until(&app, &wf, "PENDING", seconds_from_now(60));
    // Never held: its job came with the trigger.
    let fresh = app.run_in(&wf, "PENDING");
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(schedule_once(&app.db.pool).await.expect("pass"), 0);
    let jobs = app.outbox(&due);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload, json!({"v": 1, "runId": due, "orgId": ORG}));
    assert_eq!(
        jobs[0].dedupe_key.as_deref(),
        Some(keys::wake(&due, wake_at).as_str())
    );
    assert!(app.outbox(&later).is_empty());
    assert!(app.outbox(&fresh).is_empty());
}
