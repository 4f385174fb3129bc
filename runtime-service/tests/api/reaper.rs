use crate::helpers::{broker, seconds_from_now, spawn_app, TestApp, ORG};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use runtime_service::publisher::AmqpPublisher;
use runtime_service::relay::relay_once;
use runtime_service::scheduler::reap_once;
use serde_json::json;
use shared_models::queue::QueueNames;
use shared_models::runs::keys;
use shared_models::schema::runs;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(5);

/// A run in `status` whose lease is held by `owner` (or nobody) until `expires`.
fn leased(
    app: &TestApp,
    wf: &str,
    status: &str,
    owner: Option<&str>,
    expires: DateTime<Utc>,
) -> String {
    let id = app.run_in(wf, status);
    set_lease(app, &id, owner, expires);
    id
}

fn set_lease(app: &TestApp, id: &str, owner: Option<&str>, expires: DateTime<Utc>) {
    diesel::update(runs::table.find(id))
        .set((
            runs::lease_owner.eq(owner),
            runs::lease_expires_at.eq(expires),
        ))
        .execute(&mut app.conn())
        .expect("set the lease");
}

fn one_step_workflow(app: &TestApp) -> String {
    app.workflow_with(
        "reaped",
        json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
    )
}

#[tokio::test]
async fn an_expired_lease_gets_exactly_one_job_however_many_passes_see_it() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let expired = seconds_from_now(-60);
    let id = leased(&app, &wf, "RUNNING", Some("worker-gone"), expired);

    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 1);
    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 0);
    let jobs = app.outbox(&id);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload, json!({"v": 1, "runId": id, "orgId": ORG}));
    assert_eq!(
        jobs[0].dedupe_key.as_deref(),
        Some(keys::reap(&id, expired).as_str())
    );

    // Like a wake-up, it goes out with the next relay pass, without the request path's grace.
    let publisher = AmqpPublisher::new(&broker(), QueueNames::new(&app.prefix));
    let published = relay_once(&app.db.pool, &publisher, Duration::from_secs(60))
        .await
        .expect("relay");
    assert_eq!(published, 1);
    assert_eq!(app.queued().await, 1);
}

#[tokio::test]
async fn a_live_lease_a_lease_within_its_grace_and_runs_not_running_get_no_job() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let live = leased(&app, &wf, "RUNNING", Some("worker-1"), seconds_from_now(30));
    let just_expired = leased(&app, &wf, "RUNNING", Some("worker-2"), seconds_from_now(-1));
    let mut untouched = vec![live, just_expired.clone()];
    for status in ["PENDING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"] {
        untouched.push(leased(
            &app,
            &wf,
            status,
            Some("worker-3"),
            seconds_from_now(-60),
        ));
    }
    // Never claimed: no lease at all.
    untouched.push(app.run_in(&wf, "RUNNING"));

    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 0);
    for id in &untouched {
        assert!(app.outbox(id).is_empty(), "run {id} got a job");
    }

    // Without a grace the lease that ran out a second ago is reaped (and only that one).
    assert_eq!(
        reap_once(&app.db.pool, Duration::ZERO).await.expect("pass"),
        1
    );
    assert_eq!(app.outbox(&just_expired).len(), 1);
}

#[tokio::test]
async fn a_lease_renewed_and_then_expired_again_gets_a_second_job() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let first = seconds_from_now(-120);
    let id = leased(&app, &wf, "RUNNING", Some("worker-1"), first);
    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 1);

    // A worker took the run over, renewed its lease, and died as well.
    let second = seconds_from_now(-60);
    set_lease(&app, &id, Some("worker-2"), second);
    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 1);
    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 0);

    let keys: Vec<Option<String>> = app.outbox(&id).into_iter().map(|j| j.dedupe_key).collect();
    assert_eq!(
        keys,
        vec![Some(keys::reap(&id, first)), Some(keys::reap(&id, second))]
    );
}

#[tokio::test]
async fn a_run_handed_back_at_shutdown_is_reaped_like_an_expired_one() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let released = seconds_from_now(-30);
    let id = leased(&app, &wf, "RUNNING", None, released);
    assert_eq!(reap_once(&app.db.pool, GRACE).await.expect("pass"), 1);
    assert_eq!(
        app.outbox(&id)[0].dedupe_key.as_deref(),
        Some(keys::reap(&id, released).as_str())
    );
}
