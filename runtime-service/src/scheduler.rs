//! The scheduler: each pass queues a job for every WAITING run whose `wake_at` has come (a
//! delay ended, an approval or child run timed out), so no waiting run holds a worker, and
//! for every PENDING run whose `wake_at` has come (a worker held it back because its org was
//! at `MAX_RUNNING_PER_ORG`), so it is tried again; and it reaps expired leases: a RUNNING run
//! whose worker died gets a new job, so another worker resumes it even when its message is
//! gone too; and it prunes outbox rows sent more than `OUTBOX_RETENTION_SECONDS` ago
//! ([`prune_once`]), so the table holds about that long's traffic and no more.
//! And, when `PENDING_REQUEUE_SECONDS` is set, it sweeps PENDING runs that have no job in
//! flight (the broker lost it) and queues them again ([`PendingSweeper`]).
//! Every replica runs one; the outbox's unique dedupe key queues each wake-up and each
//! expired lease once (and a row lock each stranded run), and the relay publishes them at
//! once.

use crate::storage;
use crate::sweeper::PendingSweeper;
use shared_models::db::{blocking, PgPool, StorageError};
use std::time::Duration;

/// Wake-ups (and, separately, expired leases) queued per pass; a larger backlog drains over
/// the next passes.
const BATCH: i64 = 500;

/// One pass: queue the jobs of due wake-ups (WAITING runs, and PENDING runs held back by
/// their org's running cap); returns how many were queued.
pub async fn schedule_once(pool: &PgPool) -> Result<usize, StorageError> {
    let queued = blocking(pool, |conn| {
        shared_models::runs::requeue::enqueue_due_wakeups(conn, BATCH)
    })
    .await?;
    if queued > 0 {
        log::info!("scheduler queued {queued} wake-up(s)");
    }
    Ok(queued)
}

/// One reaper pass: queue a job for each RUNNING run whose lease expired more than `grace`
/// ago; returns how many were queued.
pub async fn reap_once(pool: &PgPool, grace: Duration) -> Result<usize, StorageError> {
    let grace_secs = grace.as_secs_f64();
    let queued = blocking(pool, move |conn| {
        shared_models::runs::requeue::enqueue_expired_leases(conn, grace_secs, BATCH)
    })
    .await?;
    if queued > 0 {
        log::warn!("lease reaper queued {queued} run(s) whose worker stopped renewing its lease");
    }
    Ok(queued)
}

/// Outbox rows deleted per pruning pass: a pass is one short statement whatever the
/// backlog, which drains over the next passes (a pass that deleted a full batch is followed
/// by another at once, up to [`PRUNE_PASSES`]).
pub(crate) const PRUNE_BATCH: i64 = 5000;
const PRUNE_PASSES: usize = 10;

/// Delete outbox rows sent more than `retention` ago, [`PRUNE_BATCH`] at a time (see
/// `storage::prune_sent_outbox` for why that is safe); returns how many.
pub async fn prune_once(pool: &PgPool, retention: Duration) -> Result<usize, StorageError> {
    let secs = retention.as_secs_f64();
    let mut pruned = 0;
    for _ in 0..PRUNE_PASSES {
        let n = blocking(pool, move |conn| {
            storage::prune_sent_outbox(conn, secs, PRUNE_BATCH)
        })
        .await?;
        pruned += n;
        if (n as i64) < PRUNE_BATCH {
            break;
        }
    }
    if pruned > 0 {
        log::info!("pruned {pruned} outbox row(s) sent more than {secs} s ago");
    }
    Ok(pruned)
}

/// Run passes (wake-ups, then expired leases with the reaper grace of
/// `REAPER_GRACE_SECONDS`, then the PENDING sweep when there is a `sweeper`, then outbox
/// pruning with `outbox_retention`) forever, `interval` apart; the caller aborts the task at
/// shutdown (safe: each pass is one transaction).
pub(crate) async fn run(
    pool: PgPool,
    interval: Duration,
    reaper_grace: Duration,
    mut sweeper: Option<PendingSweeper>,
    outbox_retention: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = schedule_once(&pool).await {
            log::warn!("scheduler pass failed: {e}");
        }
        if let Err(e) = reap_once(&pool, reaper_grace).await {
            log::warn!("lease reaper pass failed: {e}");
        }
        if let Some(sweeper) = sweeper.as_mut() {
            if let Err(e) = sweeper.sweep_once(&pool).await {
                log::warn!("PENDING sweep failed: {e}");
            }
        }
        if let Err(e) = prune_once(&pool, outbox_retention).await {
            log::warn!("outbox pruning pass failed: {e}");
        }
    }
}
