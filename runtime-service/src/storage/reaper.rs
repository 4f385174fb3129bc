//! The lease reaper: a RUNNING run whose lease ran out some time ago has lost its worker
//! (killed, machine gone), and maybe its message too (a duplicate delivery was acked
//! elsewhere, the delivery limit was reached). It gets a new job, so a worker takes it over
//! (`claim_run` accepts a RUNNING run with an expired lease) and resumes after its last
//! completed step. A run handed back at shutdown (no owner, lease ended) is treated alike.

use super::wakeups::{queue_each, RunToQueue};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Double};

/// Queue one job per lease that expired more than `grace_secs` ago, up to `limit` per call,
/// in one transaction. The dedupe key names the run and its `lease_expires_at` (epoch
/// microseconds), so however many passes or replicas see an expired lease, it is queued
/// once; a lease renewed by a worker that then died too is a new expiry and a new job.
/// The grace leaves a redelivery (which normally follows a worker's death) the first go.
/// Returns how many jobs were queued.
pub(crate) fn enqueue_expired_leases(
    conn: &mut PgConnection,
    grace_secs: f64,
    limit: i64,
) -> Result<usize, Error> {
    conn.transaction(|conn| {
        // Leases already queued are skipped here, so a backlog larger than `limit` drains.
        // A run with no owner and a lease in the past was handed back at shutdown: the same
        // predicate covers it.
        let expired: Vec<RunToQueue> = diesel::sql_query(
            "SELECT r.id, r.org_id, r.request_id, k.dedupe_key
             FROM runs r
             CROSS JOIN LATERAL (SELECT 'reap:' || r.id || ':'
                 || (extract(epoch FROM r.lease_expires_at) * 1000000)::bigint AS dedupe_key) k
             WHERE r.status = 'RUNNING'
               AND r.lease_expires_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.dedupe_key = k.dedupe_key)
             ORDER BY r.lease_expires_at
             LIMIT $2",
        )
        .bind::<Double, _>(grace_secs)
        .bind::<BigInt, _>(limit)
        .load(conn)?;
        queue_each(conn, expired)
    })
}
