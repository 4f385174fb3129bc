//! The outbox rows the relay publishes: claiming, marking sent, pruning.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Double, Jsonb};
use serde_json::Value;
use shared_models::prepared::prepared;
use shared_models::schema::outbox;

/// Mark outbox rows sent (those not already), in one statement.
pub fn mark_outbox_sent(
    conn: &mut PgConnection,
    outbox_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), Error> {
    prepared("UPDATE outbox SET sent_at = $1 WHERE id = ANY($2) AND sent_at IS NULL")
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .bind::<diesel::sql_types::Array<BigInt>, _>(outbox_ids)
        .execute(conn)
        .map(|_| ())
}

/// Mark one row the relay published sent. A row that waited longer than `grace_secs` (the
/// broker was away, or the request path's process died) got its job to the broker only now:
/// its run, if still PENDING, has `queued_at` set to now, so the PENDING sweeper
/// ([`sweeper`]) counts from now and not from the run's creation.
pub fn mark_relayed(
    conn: &mut PgConnection,
    outbox_id: i64,
    now: DateTime<Utc>,
    grace_secs: f64,
) -> Result<(), Error> {
    prepared(
        "WITH sent AS (
             UPDATE outbox SET sent_at = $1 WHERE id = $2 AND sent_at IS NULL
             RETURNING run_id, created_at)
         UPDATE runs r SET queued_at = $1 FROM sent
         WHERE r.id = sent.run_id AND r.status = 'PENDING'
           AND sent.created_at < $1 - make_interval(secs => $3)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<BigInt, _>(outbox_id)
    .bind::<Double, _>(grace_secs)
    .execute(conn)
    .map(|_| ())
}

/// Delete the outbox rows sent more than `retention_secs` ago among the `limit` oldest
/// (lowest ids: rows are made in id order and sent soon after); returns how many. The scan
/// is the first `limit` entries of the primary key, whatever the table holds: fewer deleted
/// than `limit` means the old end is pruned (or held by a row not yet sent).
///
/// Safe after an hour (the default): a sent row is never read again except through its
/// `dedupe_key`, which the scheduler and the lease reaper look up (`NOT EXISTS (... outbox
/// o WHERE o.dedupe_key = ...)`, storage/wakeups.rs and storage/reaper.rs) so as to queue a
/// wake-up or an expired lease once. Those keys name the run and its `wake_at` or
/// `lease_expires_at`, and the worker's claim clears `wake_at` and renews the lease; a key
/// can only be seen again after its row is pruned if its run kept that very `wake_at` or
/// expired lease for the whole retention, i.e. the job sent an hour ago never reached a
/// worker. Queueing it again then is what should happen, and a duplicate job is harmless
/// anyway: the worker's claim of the run decides (at-least-once delivery, docs/RELIABILITY.md
/// "Guarantees").
/// Child-start keys (`start:<run>`) are written once, when the child is made.
pub fn prune_sent_outbox(
    conn: &mut PgConnection,
    retention_secs: f64,
    limit: i64,
) -> Result<usize, Error> {
    prepared(
        "DELETE FROM outbox o USING (SELECT id, sent_at FROM outbox ORDER BY id LIMIT $2) oldest
         WHERE o.id = oldest.id
           AND oldest.sent_at IS NOT NULL
           AND oldest.sent_at < now() - make_interval(secs => $1)",
    )
    .bind::<Double, _>(retention_secs)
    .bind::<BigInt, _>(limit)
    .execute(conn)
}

#[derive(QueryableByName, Debug)]
pub struct PendingJob {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Jsonb)]
    pub payload: Value,
}

/// Take up to `limit` unsent jobs for publishing: those older than `grace_secs` (the request
/// path had its chance), and wake-ups (rows with a `dedupe_key`) at once, since no request
/// path publishes those. A claim lasts 30 s; other relays (other replicas) skip claimed
/// rows, and an abandoned claim expires.
pub fn claim_unsent(
    conn: &mut PgConnection,
    grace_secs: f64,
    limit: i64,
) -> Result<Vec<PendingJob>, Error> {
    diesel::sql_query(
        "UPDATE outbox SET claimed_until = now() + interval '30 seconds', attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM outbox
             WHERE sent_at IS NULL
               AND (dedupe_key IS NOT NULL OR created_at < now() - make_interval(secs => $1))
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT $2
             FOR UPDATE SKIP LOCKED)
         RETURNING id, payload",
    )
    .bind::<Double, _>(grace_secs)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

/// Give claimed rows back after a failed publish, so the next pass retries them at once.
pub fn release_claims(conn: &mut PgConnection, ids: &[i64]) -> Result<(), Error> {
    diesel::update(
        outbox::table
            .filter(outbox::id.eq_any(ids))
            .filter(outbox::sent_at.is_null()),
    )
    .set(outbox::claimed_until.eq(None::<DateTime<Utc>>))
    .execute(conn)
    .map(|_| ())
}
