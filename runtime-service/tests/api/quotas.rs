//! Per-org quotas this service enforces: `maxQueuedRuns` on triggers (both the group-commit
//! path and the Idempotency-Key path), `requestsPerSecond` per key, and the pruning of sent
//! outbox rows (`OUTBOX_RETENTION_SECONDS`). Event streams: events.rs.

use crate::helpers::{assert_error, spawn_app, spawn_app_with_auth, TestApp, ORG};
use diesel::prelude::*;
use runtime_service::scheduler::prune_once;
use runtime_service::storage::{self, CreateOutcome, PlainTrigger, QueuedCounts};
use serde_json::json;
use shared_models::auth::AuthConfig;
use shared_models::ids::WorkflowId;
use shared_models::limits::OrgLimitOverrides;
use shared_models::schema::{outbox, runs};
use std::time::Duration;
use thygon_testkit::fixtures;

fn max_queued(app: &TestApp, org: &str, max: i32) {
    fixtures::set_limits(
        &mut app.conn(),
        org,
        &OrgLimitOverrides {
            max_queued_runs: Some(max),
            ..Default::default()
        },
    );
}

fn count_runs(app: &TestApp) -> i64 {
    runs::table
        .filter(runs::org_id.eq(ORG))
        .count()
        .get_result(&mut app.conn())
        .expect("count runs")
}

fn count_outbox(app: &TestApp) -> i64 {
    outbox::table
        .count()
        .get_result(&mut app.conn())
        .expect("count outbox")
}

#[tokio::test]
async fn a_trigger_over_max_queued_runs_is_a_429_and_creates_nothing() {
    let app = spawn_app().await;
    max_queued(&app, ORG, 3);
    let wf = app.workflow("queued", true);
    // PENDING and WAITING runs count; RUNNING and ended ones do not.
    app.run_in(&wf, "PENDING");
    app.run_in(&wf, "WAITING");
    app.run_in(&wf, "RUNNING");
    app.run_in(&wf, "COMPLETED");
    let path = format!("/workflows/{wf}/trigger");
    let r = app.post(&path, json!({})).await;
    assert_eq!(r.status, 201, "the third queued run: {}", r.body);
    assert_eq!(app.queued().await, 1);
    let (runs_before, outbox_before) = (count_runs(&app), count_outbox(&app));

    let message = "maxQueuedRuns (3) reached: 3 runs are PENDING or WAITING";
    let r = app.post(&path, json!({})).await;
    assert_error(&r, 429, "QUOTA_EXCEEDED", "over maxQueuedRuns");
    assert_eq!(r.body["error"]["message"], message);
    let r = app
        .send(
            "POST",
            "/workflows/runs",
            Some(json!({"workflowId": wf})),
            &[("Idempotency-Key", "over-the-quota")],
        )
        .await;
    assert_error(&r, 429, "QUOTA_EXCEEDED", "over maxQueuedRuns, with a key");
    assert_eq!(r.body["error"]["message"], message);

    // No run, no outbox row, no job.
    assert_eq!(count_runs(&app), runs_before);
    assert_eq!(count_outbox(&app), outbox_before);
    assert_eq!(app.queued().await, 1);

    // Another org is not held back by this one's backlog.
    let other = app.key_for("org_other");
    let other_wf = fixtures::insert_workflow(
        &mut app.conn(),
        "org_other",
        "queued",
        json!({"steps": [{"name": "t", "type": "transform", "value": {}}]}),
        true,
    );
    let bearer = format!("Bearer {other}");
    let r = app
        .send_auth(
            Some(&bearer),
            "POST",
            &format!("/workflows/{other_wf}/trigger"),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_batch_admits_only_as_many_triggers_as_the_quota_leaves_room_for() {
    let app = spawn_app().await;
    let wf = app.workflow("batched", true);
    app.run_in(&wf, "WAITING");
    let trigger = |org: &str, max: u32| PlainTrigger {
        budget: None,
        org_id: org.to_string(),
        workflow_id: WorkflowId::parse(&wf).unwrap(),
        variables: Default::default(),
        request_id: None,
        now: shared_models::time::now(),
        max_queued: max,
    };
    // Five triggers of an org at 1 of 3: two are written, three refused, in order.
    let batch: Vec<PlainTrigger> = (0..5).map(|_| trigger(ORG, 3)).collect();
    let outcomes =
        storage::create_runs(&mut app.conn(), &batch, &QueuedCounts::default()).expect("the batch");
    let kinds: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(CreateOutcome::Created { .. }) => "created".to_string(),
            Ok(CreateOutcome::QuotaExceeded(e)) => e.to_string(),
            _ => "other".to_string(),
        })
        .collect();
    let over = "maxQueuedRuns (3) reached: 3 runs are PENDING or WAITING".to_string();
    assert_eq!(
        kinds,
        [
            "created".to_string(),
            "created".to_string(),
            over.clone(),
            over.clone(),
            over
        ]
    );
    assert_eq!(count_runs(&app), 3);
    assert_eq!(count_outbox(&app), 2);
}

/// Far below the quota a batch is admitted against the count kept from an earlier batch (no
/// count); past half of it every batch counts again, so runs another replica admitted
/// meanwhile are seen and the quota holds.
#[tokio::test]
async fn a_kept_count_stands_in_far_below_the_quota_and_near_it_batches_count_again() {
    let app = spawn_app().await;
    let wf = app.workflow("kept", true);
    let trigger = || PlainTrigger {
        budget: None,
        org_id: ORG.to_string(),
        workflow_id: WorkflowId::parse(&wf).unwrap(),
        variables: Default::default(),
        request_id: None,
        now: shared_models::time::now(),
        max_queued: 20,
    };
    let created = |batch: usize, known: &QueuedCounts| {
        let triggers: Vec<PlainTrigger> = (0..batch).map(|_| trigger()).collect();
        storage::create_runs(&mut app.conn(), &triggers, known)
            .expect("the batch")
            .iter()
            .filter(|o| matches!(o, Ok(CreateOutcome::Created { .. })))
            .count()
    };
    let (this, other_replica) = (QueuedCounts::default(), QueuedCounts::default());
    // The first batch counts (nothing kept yet); the next four, far below 20, do not.
    for _ in 0..5 {
        assert_eq!(created(1, &this), 1);
    }
    assert_eq!(
        this.counts(),
        1,
        "batches far below the quota counted again"
    );
    // Another replica admits 6 (this one's kept figure does not see them): 11 queued.
    assert_eq!(created(6, &other_replica), 6);
    // Kept 5 is trusted up to half the quota (10); past it the batch counts again, sees the
    // other replica's runs and its own, and stops at 20.
    assert_eq!(created(12, &this), 9);
    assert_eq!(count_runs(&app), 20);
    assert!(this.counts() >= 2, "no count near the quota");
    // At the quota, every batch counts: nothing more.
    let before = this.counts();
    assert_eq!(created(1, &this), 0);
    assert_eq!(created(1, &other_replica), 0);
    assert_eq!(this.counts(), before + 1);
    assert_eq!(count_runs(&app), 20);
}

#[tokio::test]
async fn an_org_s_requests_per_second_replaces_the_default_for_its_keys() {
    let app = spawn_app_with_auth(AuthConfig {
        rate_limit_per_second: 100,
        ..thygon_testkit::auth_config()
    })
    .await;
    let limited = app.key_for("org_slow");
    fixtures::set_limits(
        &mut app.conn(),
        "org_slow",
        &OrgLimitOverrides {
            requests_per_second: Some(3),
            ..Default::default()
        },
    );
    const BURST: usize = 10;
    let burst = |key: String| {
        let app = &app;
        async move {
            let bearer = format!("Bearer {key}");
            let mut statuses = Vec::new();
            for _ in 0..BURST {
                let r = app
                    .send_auth(Some(&bearer), "GET", "/workflows/runs", None, &[])
                    .await;
                statuses.push(r.status);
                if r.status == 429 {
                    assert_eq!(r.body["error"]["code"], "RATE_LIMITED", "{}", r.body);
                    assert!(!r.header("retry-after").is_empty());
                }
            }
            statuses
        }
    };
    // Retried only when the machine was too slow to send 4 requests within a third of a
    // second (a fresh key each time: a fresh bucket).
    let (mut fast, mut limited_seen) = (false, false);
    for attempt in 0..5 {
        let key = if attempt == 0 {
            limited.clone()
        } else {
            app.key_for("org_slow")
        };
        let started = std::time::Instant::now();
        let statuses = burst(key).await;
        let took = started.elapsed();
        // However slow: the burst of 3 passes, and no more than the burst plus what refilled
        // meanwhile (3 a second).
        assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?} in {took:?}");
        let passed = statuses.iter().filter(|s| **s == 200).count();
        let refilled = (took.as_secs_f64() * 3.0).floor() as usize;
        assert!(
            passed <= 3 + refilled,
            "{passed} of {BURST} passed in {took:?} at 3 a second: {statuses:?}"
        );
        limited_seen |= passed < BURST;
        // Retried (a fresh key: a fresh bucket) only when the machine was too slow to send
        // them within a third of a second, when exactly the 4th on are refused.
        if took < Duration::from_millis(300) {
            let mut expected = vec![200u16; 3];
            expected.resize(BURST, 429);
            assert_eq!(statuses, expected);
            fast = true;
            break;
        }
    }
    assert!(limited_seen, "no request was ever refused at 3 a second");
    if !fast {
        println!("every burst took 300 ms or more: the bound on what passed was checked");
    }
    // Another org keeps the default (100 a second).
    assert_eq!(burst(app.key.clone()).await, [200; BURST]);
}

#[tokio::test]
async fn outbox_rows_sent_longer_ago_than_the_retention_are_pruned() {
    let app = spawn_app().await;
    let wf = app.workflow("pruned", true);
    let run = app.run_in(&wf, "COMPLETED");
    let now = shared_models::time::now();
    let hours_ago = |h: i64| now - chrono::Duration::hours(h);
    // Jobs as production queues them, aged by hand (the time that passed, the relay's send).
    let mut conn = app.conn();
    for (sent, key) in [
        (Some(hours_ago(2)), "old-sent-1"),
        (Some(hours_ago(2)), "old-sent-2"),
        (Some(now), "just-sent"),
        (None, "never-sent"),
    ] {
        let (id, _) = shared_models::runs::enqueue_job(&mut conn, &run, ORG, None, Some(key))
            .expect("queue a job")
            .expect("a new key");
        diesel::update(outbox::table.find(id))
            .set((
                outbox::created_at.eq(hours_ago(3)),
                outbox::sent_at.eq(sent),
            ))
            .execute(&mut conn)
            .expect("age the job");
    }
    drop(conn);

    let pruned = prune_once(&app.db.pool, Duration::from_secs(3600))
        .await
        .expect("prune");
    assert_eq!(pruned, 2);
    let mut left: Vec<Option<String>> = outbox::table
        .select(outbox::dedupe_key)
        .load(&mut app.conn())
        .expect("outbox");
    left.sort();
    assert_eq!(
        left,
        [
            Some("just-sent".to_string()),
            Some("never-sent".to_string())
        ]
    );
    let again = prune_once(&app.db.pool, Duration::from_secs(3600))
        .await
        .expect("prune");
    assert_eq!(again, 0);
}
