//! Jobs for runs that wait on time or lost their worker; neither changes a status, both
//! make sure a worker looks again:
//!
//! - wake-ups: a WAITING run whose `wake_at` has come (a delay ended, a wait timed out) gets
//!   a job, so a worker resumes it; so does a PENDING run whose `wake_at` has come (a worker
//!   held it back because its org was at `MAX_RUNNING_PER_ORG`), so a worker tries again;
//! - the lease reaper: a RUNNING run whose lease ran out some time ago has lost its worker
//!   (killed, machine gone), and maybe its message too (a duplicate delivery was acked
//!   elsewhere, the delivery limit was reached). It gets a new job, so a worker takes it over
//!   (a claim accepts a RUNNING run with an expired lease) and resumes after its last
//!   completed step. A run handed back at shutdown (no owner, lease ended) is treated alike.
//!
//! The runtime's scheduler calls both; its PENDING sweeper uses [`queue_each`] and
//! [`wake_key_sql!`](crate::wake_key_sql); the keys are [`super::keys`].

use super::enqueue_job;
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

/// A run to queue a job for, with the key that makes the job unique.
#[derive(QueryableByName)]
pub struct RunToQueue {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub org_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub dedupe_key: String,
}

/// Queue one job per due wake-up (a WAITING or held-back PENDING run whose `wake_at` has
/// come), up to `limit` per call, in one transaction. The dedupe key
/// names the run and its `wake_at` (epoch microseconds), so however many passes or replicas
/// see a wake-up, it is queued once; a later `wake_at` of the same run is a new wake-up.
/// Returns how many jobs were queued.
pub fn enqueue_due_wakeups(conn: &mut PgConnection, limit: i64) -> Result<usize, Error> {
    conn.transaction(|conn| {
        // Runs already queued are skipped here, so a backlog larger than `limit` drains.
        let due: Vec<RunToQueue> = diesel::sql_query(concat!(
            "SELECT r.id, r.org_id, r.request_id, k.dedupe_key
             FROM runs r
             CROSS JOIN LATERAL (SELECT ",
            crate::wake_key_sql!(),
            " AS dedupe_key) k
             WHERE r.status IN ('WAITING', 'PENDING') AND r.wake_at <= now()
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.dedupe_key = k.dedupe_key)
             ORDER BY r.wake_at
             LIMIT $1"
        ))
        .bind::<BigInt, _>(limit)
        .load(conn)?;
        queue_each(conn, due)
    })
}

/// Queue a job for each run (in the caller's transaction); returns how many were queued.
pub fn queue_each(conn: &mut PgConnection, runs: Vec<RunToQueue>) -> Result<usize, Error> {
    let mut queued = 0;
    for run in runs {
        // Another replica may have queued it since: the unique key makes this a no-op.
        if enqueue_job(
            conn,
            &run.id,
            &run.org_id,
            run.request_id,
            Some(&run.dedupe_key),
        )?
        .is_some()
        {
            queued += 1;
        }
    }
    Ok(queued)
}

/// Queue one job per lease that expired more than `grace_secs` ago, up to `limit` per call,
/// in one transaction. The dedupe key names the run and its `lease_expires_at` (epoch
/// microseconds), so however many passes or replicas see an expired lease, it is queued
/// once; a lease renewed by a worker that then died too is a new expiry and a new job.
/// The grace leaves a redelivery (which normally follows a worker's death) the first go.
/// Returns how many jobs were queued.
pub fn enqueue_expired_leases(
    conn: &mut PgConnection,
    grace_secs: f64,
    limit: i64,
) -> Result<usize, Error> {
    conn.transaction(|conn| {
        // Leases already queued are skipped here, so a backlog larger than `limit` drains.
        // A run with no owner and a lease in the past was handed back at shutdown: the same
        // predicate covers it.
        let expired: Vec<RunToQueue> = diesel::sql_query(concat!(
            "SELECT r.id, r.org_id, r.request_id, k.dedupe_key
             FROM runs r
             CROSS JOIN LATERAL (SELECT ",
            crate::reap_key_sql!(),
            " AS dedupe_key) k
             WHERE r.status = 'RUNNING'
               AND r.lease_expires_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.dedupe_key = k.dedupe_key)
             ORDER BY r.lease_expires_at
             LIMIT $2"
        ))
        .bind::<Double, _>(grace_secs)
        .bind::<BigInt, _>(limit)
        .load(conn)?;
        queue_each(conn, expired)
    })
}
