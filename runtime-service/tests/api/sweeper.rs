//! The PENDING sweeper: a PENDING run none of whose jobs went out for a period, with none
//! waiting in the outbox, is queued again (once per period, however many passes and
//! replicas look); runs with a job in flight, and runs held at their org's running cap while
//! their wake-ups come and go, are left alone.

use crate::helpers::{broker, seconds_from_now, spawn_app, TestApp, ORG};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use runtime_service::publisher::AmqpPublisher;
use runtime_service::relay::relay_once;
use runtime_service::storage::counters;
use runtime_service::sweeper::PendingSweeper;
use serde_json::json;
use shared_models::metrics::sample;
use shared_models::queue::QueueNames;
use shared_models::runs::keys;
use shared_models::schema::{outbox, run_events, runs};
use std::time::Duration;

const PERIOD: Duration = Duration::from_secs(300);

fn one_step_workflow(app: &TestApp) -> String {
    app.workflow_with(
        "stranded",
        json!({"steps": [{"name": "only", "type": "transform", "value": 1}]}),
    )
}

/// A PENDING run created (and last updated) `age_secs` ago.
fn pending_since(app: &TestApp, wf: &str, age_secs: i64) -> String {
    let id = app.run_in(wf, "PENDING");
    let at = seconds_from_now(-age_secs);
    diesel::update(runs::table.find(&id))
        .set((runs::created_at.eq(at), runs::updated_at.eq(at)))
        .execute(&mut app.conn())
        .expect("age the run");
    id
}

/// The job of `run_id` as production queues it (`runs::enqueue_job`), then aged: written
/// `age_secs` ago and sent at `sent_at` (unsent: `None`). Only the clock moves by hand: the
/// time that passed, and the relay's send (its own tests publish for real).
fn job_row(
    app: &TestApp,
    run_id: &str,
    dedupe_key: Option<&str>,
    age_secs: i64,
    sent_at: Option<DateTime<Utc>>,
) {
    let mut conn = app.conn();
    let (id, _) = shared_models::runs::enqueue_job(&mut conn, run_id, ORG, None, dedupe_key)
        .expect("queue the job")
        .expect("a key no job had");
    diesel::update(outbox::table.find(id))
        .set((
            outbox::created_at.eq(seconds_from_now(-age_secs)),
            outbox::sent_at.eq(sent_at),
        ))
        .execute(&mut conn)
        .expect("age the job");
}

/// The sweeper's jobs of a run: its outbox rows with a `pending:` key.
fn requeues(app: &TestApp, run_id: &str) -> Vec<String> {
    app.outbox(run_id)
        .into_iter()
        .filter_map(|row| row.dedupe_key)
        .filter(|k| k.starts_with("pending:"))
        .collect()
}

fn warnings(app: &TestApp, run_id: &str) -> Vec<String> {
    run_events::table
        .filter(run_events::run_id.eq(run_id))
        .filter(run_events::level.eq("WARN"))
        .select(run_events::message)
        .load::<Option<String>>(&mut app.conn())
        .expect("events")
        .into_iter()
        .flatten()
        .collect()
}

fn requeued_count(app: &TestApp) -> i64 {
    counters::read_all(&mut app.conn())
        .expect("counters")
        .get(counters::PENDING_RUNS_REQUEUED)
        .copied()
        .unwrap_or(0)
}

fn set_queued_at(app: &TestApp, run_id: &str, at: DateTime<Utc>) {
    diesel::update(runs::table.find(run_id))
        .set(runs::queued_at.eq(at))
        .execute(&mut app.conn())
        .expect("set queued_at");
}

#[tokio::test]
async fn a_pending_run_whose_job_was_lost_is_queued_again_once_per_period() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let id = pending_since(&app, &wf, 600);
    // Its first job went out ten minutes ago, and no worker ever claimed it.
    job_row(&app, &id, None, 600, Some(seconds_from_now(-600)));
    let mut sweeper = PendingSweeper::new(PERIOD, 100);

    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 0);
    let keys = requeues(&app, &id);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let job = app.outbox(&id).pop().expect("the new job");
    assert_eq!(job.payload, json!({"v": 1, "runId": id, "orgId": ORG}));
    assert_eq!(job.sent_at, None, "published by the relay, not yet");
    assert_eq!(warnings(&app, &id).len(), 1, "a WARN line in the run's log");
    assert_eq!(requeued_count(&app), 1);

    // The relay publishes it at once (a dedupe key), without the request path's grace.
    let publisher = AmqpPublisher::new(&broker(), QueueNames::new(&app.prefix));
    let published = relay_once(&app.db.pool, &publisher, Duration::from_secs(60))
        .await
        .expect("relay");
    assert_eq!((published, app.queued().await), (1, 1));

    // A whole period later the run is still PENDING: that job was lost too.
    set_queued_at(&app, &id, seconds_from_now(-301));
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 0);
    assert_eq!(requeues(&app, &id).len(), 2);
    assert_eq!(requeued_count(&app), 2);
    // The process's counter (other tests of this binary add to it too).
    let metrics = reqwest::get(format!("{}/metrics", app.address))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let counted = sample(&metrics, "thygon_pending_runs_requeued_total", "");
    assert!(counted.is_some_and(|n| n >= 2.0), "{counted:?}");
}

#[tokio::test]
async fn runs_with_a_job_in_flight_or_waiting_for_a_wake_up_are_left_alone() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let mut untouched = Vec::new();
    // Created a minute ago: its job may well be in the queue.
    untouched.push(pending_since(&app, &wf, 60));
    // Old, but its job still waits in the outbox (the broker was away).
    let unsent = pending_since(&app, &wf, 600);
    job_row(&app, &unsent, None, 600, None);
    untouched.push(unsent);
    // Old, but retried a minute ago.
    let retried = pending_since(&app, &wf, 600);
    diesel::update(runs::table.find(&retried))
        .set(runs::updated_at.eq(seconds_from_now(-60)))
        .execute(&mut app.conn())
        .unwrap();
    untouched.push(retried);
    // Old, but queued again (or published late) a minute ago.
    let requeued = pending_since(&app, &wf, 600);
    set_queued_at(&app, &requeued, seconds_from_now(-60));
    untouched.push(requeued);
    // Held at its org's running cap (an old hold, as a worker writes it): its wake-up is to
    // come, or is due and not queued yet, or waits unsent, or went out a minute ago.
    let held = |wake_in: i64| {
        let id = pending_since(&app, &wf, 600);
        diesel::update(runs::table.find(&id))
            .set(runs::wake_at.eq(seconds_from_now(wake_in)))
            .execute(&mut app.conn())
            .unwrap();
        let wake_at: Option<DateTime<Utc>> = runs::table
            .find(&id)
            .select(runs::wake_at)
            .first(&mut app.conn())
            .unwrap();
        let key = keys::wake(&id, wake_at.unwrap());
        (id, key)
    };
    let (to_come, _) = held(30);
    let (due, _) = held(-400);
    let (waiting_unsent, key) = held(-400);
    job_row(&app, &waiting_unsent, Some(&key), 400, None);
    let (sent_lately, key) = held(-400);
    job_row(
        &app,
        &sent_lately,
        Some(&key),
        400,
        Some(seconds_from_now(-60)),
    );
    untouched.extend([to_come, due, waiting_unsent, sent_lately]);
    // Not PENDING at all.
    for status in ["RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"] {
        let id = pending_since(&app, &wf, 600);
        diesel::update(runs::table.find(&id))
            .set(runs::status.eq(status))
            .execute(&mut app.conn())
            .unwrap();
        untouched.push(id);
    }

    let mut sweeper = PendingSweeper::new(PERIOD, 100);
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 0);
    for id in &untouched {
        assert!(requeues(&app, id).is_empty(), "run {id} was queued again");
    }

    // A held run whose wake-up went out a whole period ago and left it as it was: that
    // wake-up was lost, and the run is stranded like any other.
    let (lost, key) = held(-400);
    job_row(&app, &lost, Some(&key), 400, Some(seconds_from_now(-390)));
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 1);
    assert_eq!(requeues(&app, &lost).len(), 1);
}

#[tokio::test]
async fn replicas_sweeping_at_once_queue_each_stranded_run_once() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let ids: Vec<String> = (0..60).map(|_| pending_since(&app, &wf, 600)).collect();

    let pool = app.db.pool.clone();
    let replicas = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut sweeper = PendingSweeper::new(PERIOD, 100);
            sweeper.sweep_once(&pool).await.expect("pass")
        })
    });
    let queued: usize = futures_util::future::join_all(replicas)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .sum();

    assert_eq!(queued, ids.len());
    for id in &ids {
        assert_eq!(requeues(&app, id).len(), 1, "run {id}");
    }
    assert_eq!(requeued_count(&app), ids.len() as i64);
}

#[tokio::test]
async fn each_pass_looks_at_a_batch_and_the_walk_reaches_runs_behind_held_ones() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    // Five old runs held at their org's cap (a wake-up to come), then two stranded ones.
    for age in 0..5 {
        let id = pending_since(&app, &wf, 900 - age);
        diesel::update(runs::table.find(&id))
            .set(runs::wake_at.eq(seconds_from_now(30)))
            .execute(&mut app.conn())
            .unwrap();
    }
    let stranded = [pending_since(&app, &wf, 700), pending_since(&app, &wf, 650)];
    let mut sweeper = PendingSweeper::new(PERIOD, 3);

    let passes: Vec<usize> = {
        let mut passes = Vec::new();
        for _ in 0..4 {
            passes.push(sweeper.sweep_once(&app.db.pool).await.expect("pass"));
        }
        passes
    };
    // Held 1-3; held 4-5 and the first stranded run; the second (the end: back to the start);
    // held 1-3 again.
    assert_eq!(passes, [0, 1, 1, 0]);
    for id in &stranded {
        assert_eq!(requeues(&app, id).len(), 1, "run {id}");
    }
}

#[tokio::test]
async fn the_sweep_waits_while_the_outbox_is_behind() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    let id = pending_since(&app, &wf, 600);
    // Another run's jobs pile up unsent: the broker is away.
    let other = pending_since(&app, &wf, 10);
    diesel::sql_query(
        "INSERT INTO outbox (run_id, payload) SELECT $1, '{}'::jsonb FROM generate_series(1, 1000)",
    )
    .bind::<diesel::sql_types::Text, _>(&other)
    .execute(&mut app.conn())
    .expect("a backlog");
    let mut sweeper = PendingSweeper::new(PERIOD, 100);
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 0);
    assert!(requeues(&app, &id).is_empty());

    diesel::update(outbox::table.filter(outbox::run_id.eq(&other)))
        .set(outbox::sent_at.eq(shared_models::time::now()))
        .execute(&mut app.conn())
        .unwrap();
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 1);
}

#[tokio::test]
async fn a_job_the_relay_publishes_late_restarts_the_clock() {
    let app = spawn_app().await;
    let wf = one_step_workflow(&app);
    // Triggered ten minutes ago while the broker was away: its job waited in the outbox.
    let id = pending_since(&app, &wf, 600);
    job_row(&app, &id, None, 600, None);
    let publisher = AmqpPublisher::new(&broker(), QueueNames::new(&app.prefix));
    let published = relay_once(&app.db.pool, &publisher, Duration::from_secs(2))
        .await
        .expect("relay");
    assert_eq!(published, 1);

    // The job went out just now, so it is in flight: nothing to sweep.
    let mut sweeper = PendingSweeper::new(PERIOD, 100);
    assert_eq!(sweeper.sweep_once(&app.db.pool).await.expect("pass"), 0);
    let queued_at: Option<DateTime<Utc>> = runs::table
        .find(&id)
        .select(runs::queued_at)
        .first(&mut app.conn())
        .unwrap();
    assert!(
        queued_at.is_some_and(|t| t > seconds_from_now(-60)),
        "{queued_at:?}"
    );
}
