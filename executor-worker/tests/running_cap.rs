//! The per-org cap on RUNNING runs (`MAX_RUNNING_PER_ORG`): `claim_run` holds back a run
//! whose org is at the cap (it stays PENDING or WAITING with a `wake_at` for the scheduler),
//! other orgs are not affected, takeovers are never held, and a held run can be cancelled.
//! Claims batched together (`claim_runs`, the worker's `Claimer`) keep every cap and answer
//! each job with its own run.
//! Real PostgreSQL, a database per test, stand-in agents served by wiremock.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use diesel::prelude::*;
use executor_worker::claims::Claimer;
use executor_worker::engine::{Engine, GraphCache, JobOutcome};
use executor_worker::storage::{self, Claim, ClaimJob, LeaseHolder, RUNNING_SLOT_HOLD};
use serde_json::json;
use shared_models::db::{blocking, PgPool};
use shared_models::queue::RunJob;
use shared_models::schema::runs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thygon_testkit::fixtures;
use wiremock::MockServer;

const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
const OTHER_ORG: &str = "org_other";
const SLOT_MESSAGE: &str =
    "waiting for a running slot: org has 2 of 2 runs running (MAX_RUNNING_PER_ORG)";

fn slow_workflow() -> serde_json::Value {
    json!({ "steps": [{
        "name": "think",
        "type": "agent",
        "agentId": "slow-thinker",
        "instructions": "Take your time."
    }] })
}

/// How many runs of `org` are RUNNING now.
async fn running_in(pool: &PgPool, org: &str) -> i64 {
    let org = org.to_string();
    blocking(pool, move |conn| {
        runs::table
            .filter(runs::org_id.eq(&org))
            .filter(runs::status.eq("RUNNING"))
            .count()
            .get_result(conn)
    })
    .await
    .expect("count the running runs")
}

/// The "waiting for a running slot" log lines of a run.
async fn slot_logs(pool: &PgPool, run_id: &str) -> Vec<(String, String)> {
    logs_of(&get_events(pool, run_id).await, None)
        .into_iter()
        .filter(|(_, message)| message.starts_with("waiting for a running slot"))
        .collect()
}

/// Process the jobs of `run_ids` (of [`ORG`]) all at once, spread over `engines`.
async fn process_all(engines: &[Arc<Engine>], run_ids: &[String]) -> Vec<JobOutcome> {
    let tasks: Vec<_> = run_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let engine = engines[i % engines.len()].clone();
            let job = run_job(id);
            tokio::spawn(async move { engine.process(&job).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("the job task"));
    }
    outcomes
}

/// Sample how many runs of [`ORG`] are RUNNING every 10 ms until stopped; returns the most seen.
fn sample_running(pool: &PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut most = 0;
        while !stop.load(Ordering::SeqCst) {
            most = most.max(running_in(&pool, ORG).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_org_at_its_cap_runs_no_more_and_its_held_runs_start_once_slots_free_up() {
    let db = test_db().await;
    let agent = MockServer::start().await;
    // Slow enough that every first claim happens while the first two runs still run.
    let slow = agent_output(json!("thought")).set_delay(Duration::from_millis(600));
    mount_post(&agent, "/think", slow, 6).await;
    let agents = || registry(&[("slow-thinker", format!("{}/think", agent.uri()))]);
    // Two workers sharing the cap: the org's advisory lock is what keeps them to it.
    let engines: Vec<Arc<Engine>> = (0..2)
        .map(|_| Arc::new(engine_with_cap(&db.pool, agents(), AGENT_TIMEOUT, 2)))
        .collect();
    let ids = slow_runs(&db.pool, "slow", 5).await;
    let other_run = blocking(&db.pool, |conn| {
        let wf = fixtures::insert_workflow(conn, OTHER_ORG, "slow", slow_workflow(), true);
        Ok(fixtures::insert_run(conn, OTHER_ORG, &wf, json!({})))
    })
    .await
    .expect("a run of another org");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_running(&db.pool, stop.clone());

    // Round 1: five jobs at once; two start, three are held.
    let before = shared_models::time::now();
    let round = {
        let (engines, ids) = (engines.clone(), ids.clone());
        tokio::spawn(async move { process_all(&engines, &ids).await })
    };
    wait_for(
        "two runs of the org RUNNING",
        Duration::from_secs(5),
        || {
            let pool = db.pool.clone();
            async move { (running_in(&pool, ORG).await == 2).then_some(()) }
        },
    )
    .await;
    // Meanwhile another org's run is not held by this org's cap.
    assert_eq!(
        engines[0]
            .process(&RunJob::new(&other_run, OTHER_ORG, None))
            .await,
        JobOutcome::Done
    );
    assert_eq!(get_run(&db.pool, &other_run).await.status, "COMPLETED");
    let outcomes = round.await.expect("round 1");
    assert!(
        outcomes.iter().all(|o| *o == JobOutcome::Done),
        "{outcomes:?}"
    );

    let mut held = Vec::new();
    for id in &ids {
        let run = get_run(&db.pool, id).await;
        match run.status.as_str() {
            "COMPLETED" => assert!(slot_logs(&db.pool, id).await.is_empty()),
            "PENDING" => {
                let wake_at = run.wake_at.expect("a held run has a wake_at");
                assert!(wake_at > before, "wake_at is set by the hold");
                assert_eq!(run.lease_owner, None);
                assert_eq!(run.started_at, None);
                assert!(get_steps(&db.pool, id).await.is_empty());
                let events = get_events(&db.pool, id).await;
                assert!(transitions(&events).is_empty(), "held runs do not move");
                assert_eq!(
                    logs_of(&events, None),
                    vec![("INFO".to_string(), SLOT_MESSAGE.to_string())]
                );
                held.push((id.clone(), wake_at));
            }
            other => panic!("run {id} is {other} after round 1"),
        }
    }
    assert_eq!(held.len(), 3, "two started and three were held");

    // Round 2 (what the scheduler queues once the wake_at has come): the three again; two
    // start, one is held again (a later wake_at, and still one log line).
    let held_ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
    let outcomes = process_all(&engines, &held_ids).await;
    assert!(
        outcomes.iter().all(|o| *o == JobOutcome::Done),
        "{outcomes:?}"
    );
    let mut still_held = Vec::new();
    for (id, first_wake) in &held {
        let run = get_run(&db.pool, id).await;
        if run.status == "PENDING" {
            assert!(run.wake_at.expect("still held") > *first_wake);
            assert_eq!(slot_logs(&db.pool, id).await.len(), 1);
            still_held.push(id.clone());
        } else {
            assert_eq!(run.status, "COMPLETED");
        }
    }
    assert_eq!(still_held.len(), 1, "two of the three started");

    // Round 3: the last one.
    assert_eq!(
        process_all(&engines, &still_held).await,
        vec![JobOutcome::Done]
    );

    stop.store(true, Ordering::SeqCst);
    let most = sampler.await.expect("the sampler");
    assert_eq!(most, 2, "never more than the cap of 2 RUNNING at once");
    for id in &ids {
        let run = get_run(&db.pool, id).await;
        assert_eq!((run.status.as_str(), run.wake_at), ("COMPLETED", None));
        assert_eq!(
            transitions_of(&get_events(&db.pool, id).await, None),
            vec![ft("PENDING", "RUNNING"), ft("RUNNING", "COMPLETED")]
        );
    }
    agent.verify().await;
}

/// `count` PENDING runs of a new slow workflow of `ORG`.
async fn slow_runs(pool: &PgPool, name: &str, count: usize) -> Vec<String> {
    let (workflow_id, first) = workflow_with_run(pool, name, slow_workflow(), json!({})).await;
    let mut ids = vec![first];
    ids.extend(insert_runs(pool, &workflow_id, count - 1, |_| json!({})).await);
    ids
}

/// How many of `claims` started their run, and how many were held at the cap.
fn claimed_and_held<'a>(claims: impl IntoIterator<Item = &'a Claim> + Clone) -> (usize, usize) {
    let count = |f: fn(&Claim) -> bool| claims.clone().into_iter().filter(|c| f(c)).count();
    (
        count(|c| matches!(c, Claim::Claimed(_))),
        count(|c| matches!(c, Claim::Held)),
    )
}

/// A lease holder for calling `claim_run` directly.
fn holder() -> LeaseHolder {
    LeaseHolder {
        worker_id: format!("cap-test-{}", thygon_testkit::unique_token()),
        lease: Duration::from_secs(30),
    }
}

/// Set a run's status (and its lease: live, expired or none).
async fn set_status(pool: &PgPool, run_id: &str, status: &str, lease: Option<DateTime<Utc>>) {
    let (run_id, status) = (run_id.to_string(), status.to_string());
    blocking(pool, move |conn| {
        diesel::update(runs::table.find(&run_id))
            .set((
                runs::status.eq(&status),
                runs::lease_owner.eq(lease.map(|_| "some-other-worker")),
                runs::lease_expires_at.eq(lease),
            ))
            .execute(conn)
    })
    .await
    .expect("set the run's status");
}

async fn claim(pool: &PgPool, run_id: &str, cap: u32, now: DateTime<Utc>) -> Claim {
    claim_as(pool, run_id, ORG, &holder(), cap, now).await
}

/// `claim_run` of `run_id` in `org` by `me` (the definition asked for).
async fn claim_as(
    pool: &PgPool,
    run_id: &str,
    org: &str,
    me: &LeaseHolder,
    cap: u32,
    now: DateTime<Utc>,
) -> Claim {
    let (run_id, org, me) = (run_id.to_string(), org.to_string(), me.clone());
    blocking(pool, move |conn| {
        storage::claim_run(conn, &run_id, &org, &me, cap, now, |_| false)
    })
    .await
    .expect("claim the run")
}

#[tokio::test]
async fn claim_run_holds_a_run_at_the_cap_and_claims_it_below_or_without_one() {
    let db = test_db().await;
    let (workflow_id, a) = workflow_with_run(&db.pool, "capped", slow_workflow(), json!({})).await;
    let more = insert_runs(&db.pool, &workflow_id, 3, |_| json!({})).await;
    let (b, pending, waiting) = (&more[0], &more[1], &more[2]);
    let now = shared_models::time::now();
    let live = Some(now + chrono::Duration::seconds(30));
    set_status(&db.pool, &a, "RUNNING", live).await;
    set_status(&db.pool, b, "RUNNING", live).await;
    set_status(&db.pool, waiting, "WAITING", None).await;

    // At the cap: held, twice (a later wake_at, one log line).
    assert!(matches!(
        claim(&db.pool, pending, 2, now).await,
        Claim::Held
    ));
    let run = get_run(&db.pool, pending).await;
    let hold = chrono::Duration::from_std(RUNNING_SLOT_HOLD).expect("a short hold");
    assert_eq!(run.status, "PENDING");
    assert_eq!(run.wake_at, Some(now + hold));
    assert_eq!(run.updated_at, now);
    assert_eq!(run.lease_owner, None);
    let later = now + chrono::Duration::seconds(2);
    assert!(matches!(
        claim(&db.pool, pending, 2, later).await,
        Claim::Held
    ));
    assert_eq!(get_run(&db.pool, pending).await.wake_at, Some(later + hold));
    assert_eq!(
        slot_logs(&db.pool, pending).await,
        vec![("INFO".to_string(), SLOT_MESSAGE.to_string())]
    );

    // A WAITING run is held too, staying WAITING, without a log line.
    assert!(matches!(
        claim(&db.pool, waiting, 2, now).await,
        Claim::Held
    ));
    let run = get_run(&db.pool, waiting).await;
    assert_eq!(
        (run.status.as_str(), run.wake_at),
        ("WAITING", Some(now + hold))
    );
    assert!(get_events(&db.pool, waiting).await.is_empty());

    // Taking over a RUNNING run adds no running run: never held.
    set_status(
        &db.pool,
        b,
        "RUNNING",
        Some(now - chrono::Duration::seconds(1)),
    )
    .await;
    assert!(matches!(
        claim(&db.pool, b, 2, now).await,
        Claim::Claimed(_)
    ));

    // Below the cap, the held run starts, and its wake_at is cleared.
    assert!(matches!(
        claim(&db.pool, pending, 3, later).await,
        Claim::Claimed(_)
    ));
    let run = get_run(&db.pool, pending).await;
    assert_eq!((run.status.as_str(), run.wake_at), ("RUNNING", None));
    assert_eq!(
        transitions_of(&get_events(&db.pool, pending).await, None),
        vec![ft("PENDING", "RUNNING")]
    );

    // 0 is no cap: three RUNNING, and the WAITING one starts anyway.
    assert!(matches!(
        claim(&db.pool, waiting, 0, later).await,
        Claim::Claimed(_)
    ));
    assert_eq!(running_in(&db.pool, ORG).await, 4);
}

#[tokio::test]
async fn a_held_run_can_be_cancelled_and_its_job_then_does_nothing() {
    let db = test_db().await;
    let [a, held]: [String; 2] = slow_runs(&db.pool, "capped", 2)
        .await
        .try_into()
        .expect("two runs");
    let live = Some(shared_models::time::now() + chrono::Duration::seconds(30));
    set_status(&db.pool, &a, "RUNNING", live).await;
    let engine = engine_with_cap(&db.pool, registry(&[]), AGENT_TIMEOUT, 1);

    assert_eq!(engine.process(&run_job(&held)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &held).await;
    assert_eq!(run.status, "PENDING");
    assert!(run.wake_at.is_some());

    cancel_run(&db.pool, &held).await;
    let run = get_run(&db.pool, &held).await;
    assert_eq!((run.status.as_str(), run.wake_at), ("CANCELLED", None));

    // The slot frees up; the held run's job (queued by the scheduler before the cancel) does
    // nothing.
    set_status(&db.pool, &a, "COMPLETED", None).await;
    assert_eq!(engine.process(&run_job(&held)).await, JobOutcome::Done);
    let run = get_run(&db.pool, &held).await;
    assert_eq!((run.status.as_str(), run.started_at), ("CANCELLED", None));
    assert_eq!(
        transitions_of(&get_events(&db.pool, &held).await, None),
        vec![ft("PENDING", "CANCELLED")]
    );
}

/// What a claim wrote, with the worker's name (different per holder) taken out.
async fn claim_written(pool: &PgPool, run_id: &str, me: &LeaseHolder) -> String {
    let run = get_run(pool, run_id).await;
    let events: Vec<String> = get_events(pool, run_id)
        .await
        .iter()
        .map(|e| {
            format!(
                "{} {:?} {:?} {:?} {:?} {:?} {}",
                e.kind, e.step, e.from_status, e.to_status, e.level, e.message, e.at
            )
        })
        .collect();
    format!(
        "{} started {:?} updated {} wake {:?} lease {:?} until {:?} events {events:?}",
        run.status,
        run.started_at,
        run.updated_at,
        run.wake_at,
        run.lease_owner,
        run.lease_expires_at
    )
    .replace(&me.worker_id, "<me>")
}

#[tokio::test]
async fn a_pending_run_below_its_cap_is_claimed_in_one_statement_writing_what_a_claim_writes() {
    let db = test_db().await;
    let [a, b]: [String; 2] = slow_runs(&db.pool, "plain", 2)
        .await
        .try_into()
        .expect("two runs");
    let now = shared_models::time::now();
    let (me_a, me_b) = (holder(), holder());

    // a: no cap; b: a cap far from reached (counted under the org's lock, same statement).
    let claims = [(&a, &me_a, 0), (&b, &me_b, 1000)];
    for (run_id, me, cap) in claims {
        let claim = claim_as(&db.pool, run_id, ORG, me, cap, now).await;
        let Claim::Claimed(claimed) = claim else {
            panic!("claimed: {claim:?}");
        };
        assert_eq!(claimed.run.status, "RUNNING");
        assert!(claimed.definition.is_some(), "the definition, asked for");
        assert!(claimed.steps.is_empty());
    }
    let written_a = claim_written(&db.pool, &a, &me_a).await;
    assert_eq!(written_a, claim_written(&db.pool, &b, &me_b).await);
    let at = now.to_string();
    let expected = format!(
        "RUNNING started Some({now:?}) updated {at} wake None lease Some(\"<me>\") until Some({:?}) \
         events [\"transition None Some(\\\"PENDING\\\") Some(\\\"RUNNING\\\") None None {at}\", \
         \"log None None None Some(\\\"INFO\\\") Some(\\\"run started on worker <me>\\\") {at}\"]",
        now + chrono::Duration::seconds(30)
    );
    assert_eq!(written_a, expected);

    // Claimed again (a redelivery), by the same worker: no longer PENDING, so the locked
    // path takes it, and writes nothing more; by another worker: held elsewhere.
    let again = claim_as(&db.pool, &a, ORG, &me_a, 0, now).await;
    assert!(matches!(again, Claim::Claimed(_)));
    assert_eq!(get_events(&db.pool, &a).await.len(), 2);
    let elsewhere = claim_as(&db.pool, &a, ORG, &holder(), 0, now).await;
    assert!(matches!(elsewhere, Claim::HeldElsewhere));

    // Another org's id is not claimed by this one.
    let other_org = claim_as(&db.pool, &b, OTHER_ORG, &holder(), 0, now).await;
    assert!(matches!(other_org, Claim::Missing));
}

#[tokio::test]
async fn concurrent_claims_of_one_org_never_start_more_than_its_cap() {
    let db = test_db().await;
    let ids = slow_runs(&db.pool, "crowd", 40).await;
    let now = shared_models::time::now();
    // Each claim on its own connection (the pool has 8), all at once, each by its own worker.
    let claims = ids.iter().map(|id| {
        let (pool, id) = (db.pool.clone(), id.clone());
        tokio::spawn(async move { claim_as(&pool, &id, ORG, &holder(), 5, now).await })
    });
    let outcomes: Vec<Claim> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .map(|o| o.expect("the claim's task"))
        .collect();
    assert_eq!(claimed_and_held(&outcomes), (5, 35));
    assert_eq!(running_in(&db.pool, ORG).await, 5);
}

#[tokio::test]
async fn prepared_claims_keep_working_on_their_connection_after_a_column_is_added_to_runs() {
    let db = test_db().await;
    let ids = slow_runs(&db.pool, "migrated", 4).await;
    let now = shared_models::time::now();
    set_status(&db.pool, &ids[1], "WAITING", None).await;
    set_status(&db.pool, &ids[3], "WAITING", None).await;
    let db_url = db.url.clone();
    let claims = tokio::task::spawn_blocking(move || {
        // One connection throughout, as a pooled one lives on while a new release migrates.
        let mut conn = PgConnection::establish(&db_url).expect("connect");
        let claim = |conn: &mut PgConnection, id: &str| {
            storage::claim_run(conn, id, ORG, &holder(), 100, now, |_| true)
        };
        // A PENDING run (one statement) and a WAITING one (the locked path), prepared here.
        let before = [claim(&mut conn, &ids[0]), claim(&mut conn, &ids[1])];
        let mut other = PgConnection::establish(&db_url).expect("connect");
        diesel::sql_query("ALTER TABLE runs ADD COLUMN added_by_a_later_release TEXT")
            .execute(&mut other)
            .expect("add a column");
        let after = [claim(&mut conn, &ids[2]), claim(&mut conn, &ids[3])];
        before.into_iter().chain(after).collect::<Vec<_>>()
    })
    .await
    .expect("the claims");
    for claim in claims {
        assert!(matches!(claim, Ok(Claim::Claimed(_))), "{claim:?}");
    }
}

/// Runs of `OTHER_ORG` (a workflow of its own), PENDING.
async fn other_org_runs(pool: &PgPool, count: usize) -> Vec<String> {
    blocking(pool, move |conn| {
        let wf = fixtures::insert_workflow(conn, OTHER_ORG, "other", slow_workflow(), true);
        Ok((0..count)
            .map(|_| fixtures::insert_run(conn, OTHER_ORG, &wf, json!({})))
            .collect())
    })
    .await
    .expect("runs of another org")
}

fn job(run_id: &str, org_id: &str) -> ClaimJob {
    ClaimJob {
        run_id: run_id.to_string(),
        org_id: org_id.to_string(),
    }
}

/// `claim_runs` of `jobs` by `me`, each answer unwrapped.
async fn claim_batch(
    pool: &PgPool,
    jobs: Vec<ClaimJob>,
    me: &LeaseHolder,
    cap: u32,
    now: DateTime<Utc>,
) -> Vec<Claim> {
    let me = me.clone();
    blocking(pool, move |conn| {
        storage::claim_runs(conn, &jobs, &me, cap, now, |_| false)
    })
    .await
    .expect("claim the batch")
    .into_iter()
    .map(|claim| claim.expect("a claim"))
    .collect()
}

#[tokio::test]
async fn a_batch_claims_each_orgs_pending_runs_in_order_up_to_its_cap_and_answers_every_job() {
    let db = test_db().await;
    let (workflow_id, r0) = workflow_with_run(&db.pool, "batch", slow_workflow(), json!({})).await;
    let ids = insert_runs(&db.pool, &workflow_id, 8, |_| json!({})).await;
    let live = Some(shared_models::time::now() + chrono::Duration::seconds(30));
    // Two RUNNING elsewhere, one WAITING, one ended; a1..a5 PENDING.
    set_status(&db.pool, &r0, "RUNNING", live).await;
    set_status(&db.pool, &ids[0], "RUNNING", live).await;
    set_status(&db.pool, &ids[1], "WAITING", None).await;
    set_status(&db.pool, &ids[2], "COMPLETED", None).await;
    let (waiting, ended, a) = (&ids[1], &ids[2], &ids[3..]);
    let b = other_org_runs(&db.pool, 3).await;
    let jobs = vec![
        job(&a[0], ORG),
        job(&b[0], OTHER_ORG),
        job(&a[1], ORG),
        job(waiting, ORG),
        job(&a[2], ORG),
        job(&b[1], OTHER_ORG),
        job("run_nope", ORG),
        job(ended, ORG),
        job(&a[3], ORG),
        job(&b[2], OTHER_ORG),
        job(&a[4], ORG),
        // Another org's id is not claimed by this one.
        job(&b[0], ORG),
    ];
    let me = holder();
    let now = shared_models::time::now();
    let claims = claim_batch(&db.pool, jobs.clone(), &me, 4, now).await;

    let answers: Vec<String> = claims
        .iter()
        .zip(&jobs)
        .map(|(claim, job)| match claim {
            Claim::Claimed(c) => {
                // Each job is answered with its own run.
                assert_eq!(c.run.id, job.run_id);
                assert_eq!(c.run.lease_owner.as_deref(), Some(me.worker_id.as_str()));
                assert!(c.definition.is_some() && c.steps.is_empty());
                "claimed".to_string()
            }
            other => format!("{other:?}"),
        })
        .collect();
    // ORG had 2 of 4 running: its first two PENDING runs start, in the jobs' order; the
    // rest and the WAITING run are held. OTHER_ORG has room for all three.
    let expected = [
        "claimed",
        "claimed",
        "claimed",
        "Held",
        "Held",
        "claimed",
        "Missing",
        "Ended",
        "Held",
        "claimed",
        "Held",
        // A duplicate of b[0] in the batch: after its first, another task holds it.
        "HeldElsewhere",
    ];
    assert_eq!(answers, expected);
    assert_eq!(running_in(&db.pool, ORG).await, 4);
    assert_eq!(running_in(&db.pool, OTHER_ORG).await, 3);
    for id in [&a[0], &a[1], &b[0]] {
        let events = get_events(&db.pool, id).await;
        assert_eq!(
            transitions_of(&events, None),
            vec![ft("PENDING", "RUNNING")]
        );
        let started = format!("run started on worker {}", me.worker_id);
        assert_eq!(logs_of(&events, None), vec![("INFO".to_string(), started)]);
        let run = get_run(&db.pool, id).await;
        assert_eq!((run.started_at, run.updated_at), (Some(now), now));
    }
    for id in [&a[2], &a[3], &a[4], waiting] {
        let run = get_run(&db.pool, id).await;
        assert_ne!(run.status, "RUNNING");
        assert!(run.wake_at.is_some(), "{id} is held with a wake_at");
    }
}

#[tokio::test]
async fn concurrent_batches_of_two_orgs_keep_both_caps_and_never_deadlock() {
    let db = test_db().await;
    let ours = slow_runs(&db.pool, "crowd", 40).await;
    let theirs = other_org_runs(&db.pool, 40).await;
    let now = shared_models::time::now();
    let start = Arc::new(std::sync::Barrier::new(8));
    // Eight batches at once, each by its own worker: five runs of each org, half of them
    // this org's first, half the other's (the orgs' locks taken in opposite job orders).
    let batches = (0..8).map(|i| {
        let ours = ours[i * 5..i * 5 + 5].iter().map(|id| job(id, ORG));
        let theirs = theirs[i * 5..i * 5 + 5].iter().map(|id| job(id, OTHER_ORG));
        let jobs: Vec<ClaimJob> = if i % 2 == 0 {
            ours.chain(theirs).collect()
        } else {
            theirs.chain(ours).collect()
        };
        let (pool, start) = (db.pool.clone(), start.clone());
        tokio::spawn(async move {
            blocking(&pool, move |conn| {
                // Every batch on its own connection, all let go at once.
                start.wait();
                storage::claim_runs(conn, &jobs, &holder(), 5, now, |_| false)
            })
            .await
            .expect("claim the batch")
            .into_iter()
            .map(|claim| claim.expect("a claim"))
            .collect::<Vec<_>>()
        })
    });
    let outcomes: Vec<Claim> = futures_util::future::join_all(batches)
        .await
        .into_iter()
        .flat_map(|batch| batch.expect("a batch"))
        .collect();
    assert_eq!(claimed_and_held(&outcomes), (10, 70));
    assert_eq!(running_in(&db.pool, ORG).await, 5);
    assert_eq!(running_in(&db.pool, OTHER_ORG).await, 5);
}

#[tokio::test]
async fn jobs_handed_to_the_claimer_at_once_are_each_answered_with_their_own_run() {
    let db = test_db().await;
    let ids = slow_runs(&db.pool, "many", 30).await;
    let graphs = Arc::new(GraphCache::default());
    let claimer = Claimer::start(db.pool.clone(), holder(), 0, graphs);
    let claims = ids.iter().map(|id| {
        let (claimer, id) = (claimer.clone(), id.clone());
        tokio::spawn(async move { (id.clone(), claimer.claim(job(&id, ORG)).await) })
    });
    for outcome in futures_util::future::join_all(claims).await {
        let (id, claim) = outcome.expect("the task");
        match claim.expect("a claim") {
            (Claim::Claimed(c), None) => assert_eq!(c.run.id, id),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(running_in(&db.pool, ORG).await, 30);
}

#[tokio::test]
async fn an_org_s_max_running_runs_override_replaces_the_default_cap() {
    let db = test_db().await;
    let ids = slow_runs(&db.pool, "overridden", 3).await;
    let other_ids = blocking(&db.pool, |conn| {
        let wf = fixtures::insert_workflow(conn, OTHER_ORG, "slow", slow_workflow(), true);
        Ok((0..2)
            .map(|_| fixtures::insert_run(conn, OTHER_ORG, &wf, json!({})))
            .collect::<Vec<_>>())
    })
    .await
    .expect("runs of another org");
    blocking(&db.pool, |conn| {
        fixtures::set_limits(
            conn,
            ORG,
            &shared_models::limits::OrgLimitOverrides {
                max_running_runs: Some(1),
                ..Default::default()
            },
        );
        Ok(())
    })
    .await
    .expect("the override");
    let (me, now) = (holder(), shared_models::time::now());

    // The worker's default is 100; the org's own cap is 1. Batched: one of two starts.
    let jobs: Vec<ClaimJob> = ids[..2]
        .iter()
        .map(|id| ClaimJob {
            run_id: id.clone(),
            org_id: ORG.to_string(),
        })
        .collect();
    let batch = {
        let me = me.clone();
        blocking(&db.pool, move |conn| {
            storage::claim_runs(conn, &jobs, &me, 100, now, |_| false)
        })
        .await
        .expect("the batch")
    };
    let claims: Vec<Claim> = batch.into_iter().map(|c| c.expect("a claim")).collect();
    assert_eq!(claimed_and_held(&claims), (1, 1));
    // One at a time (the locked path): held too, and the log names the org's quota.
    let third = claim_as(&db.pool, &ids[2], ORG, &me, 100, now).await;
    assert!(matches!(third, Claim::Held), "{third:?}");
    assert_eq!(
        slot_logs(&db.pool, &ids[2]).await,
        vec![(
            "INFO".to_string(),
            "waiting for a running slot: org has 1 of 1 runs running (maxRunningRuns)".to_string()
        )]
    );
    assert_eq!(running_in(&db.pool, ORG).await, 1);

    // Another org keeps the default.
    for id in &other_ids {
        let c = claim_as(&db.pool, id, OTHER_ORG, &me, 100, now).await;
        assert!(matches!(c, Claim::Claimed(_)), "{c:?}");
    }
    // And with no default cap at all (0), the override still holds.
    let fourth = claim_as(&db.pool, &ids[1], ORG, &me, 0, now).await;
    assert!(matches!(fourth, Claim::Held), "{fourth:?}");
}
