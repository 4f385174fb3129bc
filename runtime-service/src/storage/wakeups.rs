//! Wake-ups: a WAITING run whose `wake_at` has come (a delay ended, a wait timed out) gets
//! a job, so a worker resumes it; so does a PENDING run whose `wake_at` has come (a worker
//! held it back because its org was at `MAX_RUNNING_PER_ORG`), so a worker tries to start it
//! again.

use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text};
use shared_models::runs::enqueue_job;

/// A run to queue a job for, with the key that makes the job unique.
#[derive(QueryableByName)]
pub(super) struct RunToQueue {
    #[diesel(sql_type = Text)]
    pub(super) id: String,
    #[diesel(sql_type = Text)]
    pub(super) org_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(super) request_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub(super) dedupe_key: String,
}

/// The dedupe key of the wake-up of run `r` at its `wake_at` (SQL, over a row `r` of `runs`):
/// the scheduler writes it, the PENDING sweeper looks it up.
macro_rules! wake_key_sql {
    () => {
        "'wake:' || r.id || ':' || (extract(epoch FROM r.wake_at) * 1000000)::bigint"
    };
}
pub(super) use wake_key_sql;

/// Queue one job per due wake-up (a WAITING or held-back PENDING run whose `wake_at` has
/// come), up to `limit` per call, in one transaction. The dedupe key
/// names the run and its `wake_at` (epoch microseconds), so however many passes or replicas
/// see a wake-up, it is queued once; a later `wake_at` of the same run is a new wake-up.
/// Returns how many jobs were queued.
pub(crate) fn enqueue_due_wakeups(conn: &mut PgConnection, limit: i64) -> Result<usize, Error> {
    conn.transaction(|conn| {
        // Runs already queued are skipped here, so a backlog larger than `limit` drains.
        let due: Vec<RunToQueue> = diesel::sql_query(concat!(
            "SELECT r.id, r.org_id, r.request_id, k.dedupe_key
             FROM runs r
             CROSS JOIN LATERAL (SELECT ",
            wake_key_sql!(),
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
pub(super) fn queue_each(conn: &mut PgConnection, runs: Vec<RunToQueue>) -> Result<usize, Error> {
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
