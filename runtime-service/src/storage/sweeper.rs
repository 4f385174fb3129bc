//! The PENDING sweeper: a PENDING run whose job the broker lost (a volume lost, a message
//! purged or dead-lettered) is never claimed, so nothing else would ever queue it again.
//!
//! What the database knows of a PENDING run's job: one was queued when the run was created
//! or retried (`updated_at`), when the outbox relay published it late (`queued_at`), when
//! the sweeper queued one (`queued_at`), and, for a run a worker held back at its org's
//! running cap (`wake_at` set), when its wake-up was sent (the wake-up's outbox row). A job
//! in the queue is claimed within seconds unless the workers are far behind, so a PENDING
//! run none of whose jobs went out in the last `PENDING_REQUEUE_SECONDS`, and with none
//! waiting in the outbox, has no job in flight: it gets one, through the outbox, and its
//! `queued_at` restarts the clock, so it is queued once per period however many passes and
//! replicas look. A run held at its cap is left to the scheduler while its wake-ups come and
//! go (each hold moves `wake_at`); only a wake-up sent a whole period ago that left the run
//! as it was (lost) makes it stranded.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Double, Text, Timestamptz};
use shared_models::models::NewRunEvent;
use shared_models::prepared::prepared;
use shared_models::runs::insert_events;
use shared_models::runs::requeue::{queue_each, RunToQueue};
use shared_models::wake_key_sql;

/// While the outbox holds this many unsent jobs or more, the relay is behind (the broker is
/// away or slow): jobs are waiting, not lost, and the sweep waits too. It also keeps the
/// sweep's look-up of unsent jobs small.
pub(crate) const OUTBOX_BACKLOG: i64 = 1000;

/// Where the walk over PENDING runs (oldest first) stands: the last run looked at. Each pass
/// looks at the next `batch` runs, so runs that are not stranded (held at their org's cap,
/// queued again recently) cost one look per walk, and cannot hide newer stranded ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SweepCursor {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

impl Default for SweepCursor {
    /// Before every run.
    fn default() -> Self {
        Self {
            created_at: DateTime::UNIX_EPOCH,
            id: String::new(),
        }
    }
}

/// What one pass did.
#[derive(Debug)]
pub(crate) enum Sweep {
    /// The outbox holds [`OUTBOX_BACKLOG`] unsent jobs or more: nothing was looked at.
    OutboxBehind,
    Swept {
        /// The runs queued again: (run id, the request id their jobs carry).
        requeued: Vec<(String, Option<String>)>,
        /// Where the next pass goes on; the start when this one reached the newest run.
        next: SweepCursor,
    },
}

#[derive(QueryableByName)]
struct Seen {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// The next `$3` PENDING runs created more than `$4` seconds ago, after the cursor
/// (`$1`, `$2`): a range of `runs_pending_by_age`.
const NEXT_PENDING: &str = "SELECT id, created_at FROM runs
     WHERE status = 'PENDING' AND created_at < now() - make_interval(secs => $4)
       AND (created_at, id) > ($1, $2)
     ORDER BY created_at, id
     LIMIT $3";

/// Of the runs `$1`, lock those stranded for `$2` seconds (see the module docs) and restart
/// their clock; rows another replica holds are skipped, and one it has just queued no longer
/// matches once locked (PostgreSQL re-checks the row it waited for).
const TAKE_STRANDED: &str = concat!(
    "WITH stranded AS (
         SELECT r.id FROM runs r
         WHERE r.id = ANY($1) AND r.status = 'PENDING'
           AND GREATEST(r.updated_at, r.queued_at) < now() - make_interval(secs => $2)
           AND (r.wake_at IS NULL OR EXISTS (
               SELECT 1 FROM outbox w
               WHERE w.dedupe_key = ",
    wake_key_sql!(),
    "
                 AND w.sent_at < now() - make_interval(secs => $2)))
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sent_at IS NULL AND o.run_id = r.id)
         ORDER BY r.created_at, r.id
         FOR NO KEY UPDATE OF r SKIP LOCKED
     )
     UPDATE runs r SET queued_at = now() FROM stranded WHERE r.id = stranded.id
     RETURNING r.id, r.org_id, r.request_id, ",
    shared_models::pending_key_sql!(),
    " AS dedupe_key"
);

/// One pass of the sweeper, in one transaction: look at the `batch` PENDING runs after
/// `after` that are older than `stale_secs`, and queue a job (outbox row, dedupe key
/// `pending:<run>:<queued_at>`) for each that is stranded, with a WARN line in its log;
/// `counters::PENDING_RUNS_REQUEUED` counts them.
pub(crate) fn requeue_stranded(
    conn: &mut PgConnection,
    stale_secs: f64,
    batch: i64,
    after: &SweepCursor,
    now: DateTime<Utc>,
) -> Result<Sweep, Error> {
    conn.transaction(|conn| {
        let seen: Vec<Seen> = prepared(NEXT_PENDING)
            .bind::<Timestamptz, _>(after.created_at)
            .bind::<Text, _>(&after.id)
            .bind::<BigInt, _>(batch)
            .bind::<Double, _>(stale_secs)
            .load(conn)?;
        let next = match seen.last() {
            Some(last) if seen.len() as i64 >= batch => SweepCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            },
            _ => SweepCursor::default(),
        };
        if seen.is_empty() {
            return Ok(Sweep::Swept {
                requeued: Vec::new(),
                next,
            });
        }
        let unsent: i64 = prepared(
            "SELECT count(*) AS n FROM (SELECT 1 FROM outbox WHERE sent_at IS NULL LIMIT $1) u",
        )
        .bind::<BigInt, _>(OUTBOX_BACKLOG)
        .get_result::<Count>(conn)?
        .n;
        if unsent >= OUTBOX_BACKLOG {
            return Ok(Sweep::OutboxBehind);
        }
        let ids: Vec<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        let stranded: Vec<RunToQueue> = prepared(TAKE_STRANDED)
            .bind::<Array<Text>, _>(ids)
            .bind::<Double, _>(stale_secs)
            .load(conn)?;
        let requeued: Vec<(String, Option<String>)> = stranded
            .iter()
            .map(|r| (r.id.clone(), r.request_id.clone()))
            .collect();
        queue_each(conn, stranded)?;
        let message = format!(
            "no job of this run went out for {stale_secs} s and none is waiting to: \
             the broker lost it (PENDING_REQUEUE_SECONDS); queued again"
        );
        let events: Vec<NewRunEvent> = requeued
            .iter()
            .map(|(id, _)| NewRunEvent::log(id, now, None, "WARN", message.clone()))
            .collect();
        insert_events(conn, &events)?;
        super::counters::add(
            conn,
            super::counters::PENDING_RUNS_REQUEUED,
            requeued.len() as i64,
        )?;
        Ok(Sweep::Swept { requeued, next })
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}
